"""`portal services create`, `portal grants ...` and `portal environments list` against a real
portal, and messages in the command's own words (its options, not the API's field names)."""

import json

import pytest

from accounts.services import token_create
from deployments.models import Grant, Service
from tests.portal_client.test_cli_errors import one_line_error

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]


@pytest.fixture
def as_user(cli):
    """`as_user(user)(*args)` runs `portal` with a token of that user."""

    def runner(user):
        _, raw = token_create(actor=None, user=user, name="cli")
        return lambda *args, **env: cli(*args, **{"PORTAL_TOKEN": raw, **env})

    return runner


def test_create_a_service(as_user, owner, member, team, iris_file, environments):
    from registry import services as registry
    from tests.factories import make_version

    make_version(registry.registered_model_create(actor=owner, name="iris", team=team), iris_file, actor=owner)
    portal = as_user(owner)
    created = portal(
        "services", "create", "iris-api", "--team", team.name, "--model", "iris", "--description", "Iris species."
    )
    assert created.returncode == 0, created.stderr
    assert "Created service iris-api for team vision, serving model iris." in created.stderr
    assert "portal deploy iris-api VERSION --env development" in created.stderr
    service = Service.objects.get(name="iris-api")
    assert (service.team, service.model.name, service.description) == (team, "iris", "Iris species.")

    as_json = portal("services", "create", "iris-2", "--team", team.name, "--model", "iris", "--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert (body["name"], body["team"], body["model"], body["live"]) == ("iris-2", "vision", "iris", [])

    one_line_error(portal("services", "create", "iris-api", "--team", team.name, "--model", "iris"), 1, "iris-api")
    # The model is an option here: the message names --model, as the person typed it.
    one_line_error(
        portal("services", "create", "x-api", "--team", team.name, "--model", "ghost"), 1, "--model", "ghost"
    )
    too_long = portal("services", "create", "x" * 101, "--team", team.name, "--model", "iris")
    one_line_error(too_long, 1, "Invalid input: NAME: ")
    one_line_error(portal("services", "create", "x-api", "--model", "iris"), 2, "Missing option '--team'")
    assert Service.objects.count() == 2


def test_grant_list_add_and_revoke(as_user, owner, outsider, service_account, iris_service):
    portal = as_user(owner)
    added = portal(
        "grants", "add", "iris-api",
        "--user", outsider.username,
        "--rate", "5",
        "--burst", "10",
        "--daily-quota", "1000",
        "--expires", "2099-03-01",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    grant = Grant.objects.get(user=outsider)
    assert (grant.rate_per_second, grant.burst, grant.daily_quota) == (5.0, 10, 1000)
    assert grant.expires_at.date().isoformat() == "2099-03-01"
    assert added.stderr.strip() == (
        f"Grant {grant.pk}: user {outsider.username} may call iris-api within 5/s burst 10, 1000/day until 2099-03-01."
    )

    by_json = portal("grants", "add", "iris-api", "--user", service_account.username, "--json")
    assert by_json.returncode == 0, by_json.stderr
    second = json.loads(by_json.stdout)
    assert second["user"] == service_account.username and second["rate_per_second"] is None

    listed = json.loads(portal("grants", "list", "iris-api", "--json").stdout)
    mine = {g["id"]: g for g in listed}
    assert mine[grant.pk]["daily_quota"] == 1000 and mine[second["id"]]["expires_at"] is None
    text = portal("grants", "list", "iris-api")
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if outsider.username in line)
    assert "5/s burst 10, 1000/day" in row and "2099-03-01" in row and owner.username in row

    not_confirmed = portal("grants", "revoke", "iris-api", str(grant.pk), input="n\n")
    assert not_confirmed.returncode != 0 and Grant.objects.filter(pk=grant.pk).exists()
    revoked = portal("grants", "revoke", "iris-api", str(grant.pk), input="y\n")
    assert revoked.returncode == 0, revoked.stderr
    assert not Grant.objects.filter(pk=grant.pk).exists()
    one_line_error(portal("grants", "revoke", "iris-api", str(grant.pk), "--yes"), 4)
    assert portal("grants", "revoke", "iris-api", str(second["id"]), "--yes").returncode == 0


def test_grant_errors_in_the_command_words(as_user, owner, member, outsider, iris_service):
    portal = as_user(owner)
    one_line_error(portal("grants", "add", "iris-api"), 2, "Give exactly one of --user and --team")
    one_line_error(portal("grants", "add", "iris-api", "--user", "x", "--team", "y"), 2, "exactly one")
    one_line_error(portal("grants", "add", "iris-api", "--user", outsider.username, "--rate", "0"), 2, "--rate")
    bad_day = portal("grants", "add", "iris-api", "--user", outsider.username, "--expires", "2099-02-30")
    one_line_error(bad_day, 1, "--expires")
    assert "expires_at" not in bad_day.stderr
    past = portal("grants", "add", "iris-api", "--user", outsider.username, "--expires", "2001-01-01")
    one_line_error(past, 1, "--expires")
    assert "expires_at" not in past.stderr
    one_line_error(portal("grants", "add", "iris-api", "--user", "nobody-here"), 1, "nobody-here")
    one_line_error(portal("grants", "list", "ghost-api"), 4, "ghost-api")
    # A member of the team may see the grants, not change them.
    one_line_error(
        as_user(member)("grants", "add", "iris-api", "--user", outsider.username), 3, "owners and maintainers"
    )
    # Someone outside the team does not see the service at all.
    one_line_error(as_user(outsider)("grants", "list", "iris-api"), 4)
    assert not Grant.objects.filter(user=outsider).exists()


def test_environments_list(as_user, member, environments):
    portal = as_user(member)
    listed = portal("environments", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {e["name"]: e for e in json.loads(listed.stdout)}
    assert set(rows) == set(environments)
    assert rows["production"]["requires_approval"] is True and rows["development"]["requires_approval"] is False
    text = portal("environments", "list")
    line = next(line for line in text.stdout.splitlines() if line.startswith("production"))
    assert "required" in line and environments["production"].runtime in line
    assert "not needed" in next(line for line in text.stdout.splitlines() if line.startswith("development"))


def test_models_show_renders_the_markdown(as_user, owner, team):
    card = "# Iris classifier\n\nPredicts the **species** from `four` measurements.\n\n- setosa\n- versicolor\n"
    portal = as_user(owner)
    assert portal("models", "create", "iris", "--team", team.name, "--description", card).returncode == 0
    shown = portal("models", "show", "iris")
    assert shown.returncode == 0, shown.stderr
    assert "Predicts the species from four measurements." in shown.stdout
    assert "• setosa" in shown.stdout and "• versicolor" in shown.stdout
    assert "Iris classifier" in shown.stdout
    for literal in ("**", "# Iris", "`four`", "- setosa"):
        assert literal not in shown.stdout, shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 100  # not a 1000-column heading when piped
    assert json.loads(portal("models", "show", "iris", "--json").stdout)["description"].strip() == card.strip()


def test_messages_name_the_options(as_user, owner, team, iris_file, tmp_path):
    from portal.demo_models import iris_instances
    from registry import services as registry

    registry.registered_model_create(actor=owner, name="iris", team=team)
    portal = as_user(owner)
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"instances": iris_instances()}))
    model = tmp_path / "model.bin"
    model.write_bytes(iris_file.read_bytes())
    unknown = portal("versions", "register", "iris", str(model), "--version", "1.0.0", "--sample-input", str(sample))
    one_line_error(unknown, 2, "give --flavor sklearn, onnx or pyfunc")
    assert "flavor=" not in unknown.stderr
    huge = portal(
        "versions", "register", "iris", str(iris_file), "--version", "1234567890.0.0", "--sample-input", str(sample)
    )
    one_line_error(huge, 1, "--version: ", "at most 9 digits (the portal's limit)")


def test_a_token_cut_short(cli, member):
    _, raw = token_create(actor=None, user=member, name="cli")
    result = cli("models", "list", PORTAL_TOKEN=raw[:30])
    one_line_error(result, 3, "not a whole Portal token", "ptl_ followed by 49 characters", "copy it again")


def test_models_show_lists_each_versions_task(as_user, owner, iris_service):
    shown = as_user(owner)("models", "show", "iris")
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "VERSION" in line)
    assert "FLAVOR" in header and "TASK" in header
    assert "classification" in next(line for line in shown.stdout.splitlines() if line.lstrip().startswith("1.0.0"))
