"""Every bad input to the `portal` command gives one line on stderr and a meaningful exit code."""

import json

import pytest

from accounts.services import token_create
from tests.factories import make_version
from tests.portal_client.harness import Cli
from tests.ports import port as free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]


@pytest.fixture
def signed_in(cli, member, team):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    _, raw = token_create(actor=None, user=member, name="cli")
    return lambda *args, **env: cli(*args, **{"PORTAL_TOKEN": raw, **env})


def one_line_error(result, code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("portal: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def sample(tmp_path):
    from portal.demo_models import iris_instances

    path = tmp_path / "sample.json"
    path.write_text(json.dumps({"instances": iris_instances()}))
    return str(path)


def test_unknown_model(signed_in, iris_file, sample):
    result = signed_in("versions", "register", "nope", str(iris_file), "--version", "1.0.0", "--sample-input", sample)
    one_line_error(result, 4, "No model named 'nope'")


def test_bad_version(signed_in, iris_file, sample):
    result = signed_in("versions", "register", "iris", str(iris_file), "--version", "one", "--sample-input", sample)
    one_line_error(result, 1, "'one' is not a semantic version")


def test_missing_file(signed_in, sample, tmp_path):
    missing = tmp_path / "nothing.joblib"
    result = signed_in("versions", "register", "iris", str(missing), "--version", "1.0.0", "--sample-input", sample)
    one_line_error(result, 2, "No such file", "nothing.joblib")
    one_line_error(signed_in("predict", "development", "iris", "1", "--data", str(missing)), 2, "No such file")


def test_sample_that_is_not_json(signed_in, iris_file, tmp_path):
    bad = tmp_path / "sample.json"
    bad.write_text("{instances: oops")
    result = signed_in("versions", "register", "iris", str(iris_file), "--version", "1.0.0", "--sample-input", str(bad))
    one_line_error(result, 2, "not valid JSON")


def test_wrong_token(cli, sample, iris_file):
    one_line_error(cli("models", "list", PORTAL_TOKEN="ptl_abcdefgh_" + "x" * 40), 3, "refused the token")
    one_line_error(cli("models", "list"), 3, "Not signed in", "portal login")


def test_wrong_password(cli, member):
    result = cli("login", "--username", member.username, "--password-stdin", input="not-it\n")
    one_line_error(result, 3, "Wrong username or password")
    assert not (cli.home / "config" / "config.json").exists()


def test_not_allowed(cli, viewer, team, iris_file, sample):
    from registry import services

    services.registered_model_create(actor=team.memberships.get(role="owner").user, name="iris", team=team)
    _, raw = token_create(actor=None, user=viewer, name="cli")
    result = cli(
        "versions", "register", "iris", str(iris_file), "--version", "1.0.0", "--sample-input", sample, PORTAL_TOKEN=raw
    )
    one_line_error(result, 3, "may not register a version")


def test_server_down(cli_home, iris_file, sample):
    down = Cli(home=cli_home, url=f"http://127.0.0.1:{free_port()}")
    one_line_error(down("models", "list", PORTAL_TOKEN="ptl_abcdefgh_" + "x" * 40), 5, "Cannot reach the portal")
    result = down(
        "versions",
        "register",
        "iris",
        str(iris_file),
        "--version",
        "1.0.0",
        "--sample-input",
        sample,
        PORTAL_TOKEN="ptl_abcdefgh_" + "x" * 40,
    )
    one_line_error(result, 5, "Cannot reach the portal")


def test_usage_mistakes(signed_in, iris_file):
    one_line_error(signed_in("versions", "register", "iris", str(iris_file)), 2, "Missing option")
    one_line_error(signed_in("models", "lis"), 2, "No such command")
    one_line_error(signed_in("deployments", "show", "abc"), 2, "is not a valid integer")
    one_line_error(signed_in("deployments", "show", "999"), 4, "999")
    one_line_error(signed_in("deploy", "nope", "1.0.0", "--env", "development"), 4)


def test_a_deployment_that_does_not_go_live_exits_6(signed_in, member, team, iris_file, environments):
    """Following a deployment that ends without going live exits 6 with the reason."""
    from deployments import services, states
    from registry.models import RegisteredModel

    model = RegisteredModel.objects.get(name="iris")
    make_version(model, iris_file, actor=member)
    service = services.service_create(actor=member, name="iris-api", team=team, model=model)
    deployment = services.deployment_request(
        actor=member, service=service, version=model.versions.get(), environment=environments["production"]
    )
    states.transition(deployment, "rejected", message="Rejected.", decision_comment="Not before the audit.")
    result = signed_in("deployments", "show", str(deployment.pk), "--follow")
    assert result.returncode == 6, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"portal: error: Deployment {deployment.pk} ended rejected: Not before the audit."
    )


def test_deprecate_and_take_back_from_the_command_line(cli, owner, team, iris_file):
    from datetime import UTC, datetime

    from deployments import services
    from registry import services as registry

    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    make_version(model, iris_file, actor=owner)
    services.service_create(actor=owner, name="iris-api", team=team, model=model)
    _, raw = token_create(actor=None, user=owner, name="cli")
    sunset = f"{datetime.now(UTC).year + 1}-06-30"
    done = cli("services", "deprecate", "iris-api", "1", "--sunset", sunset, "--note", "Move to /v2.", PORTAL_TOKEN=raw)
    assert done.returncode == 0 and f"sunset {sunset}" in done.stderr, done.stderr
    shown = json.loads(cli("services", "show", "iris-api", "--json", PORTAL_TOKEN=raw).stdout)
    assert shown["deprecations"][0]["major"] == 1 and shown["deprecations"][0]["note"] == "Move to /v2."
    assert cli("services", "undeprecate", "iris-api", "1", PORTAL_TOKEN=raw).returncode == 0
    one_line_error(cli("services", "undeprecate", "iris-api", "1", PORTAL_TOKEN=raw), 4, "not deprecated")
    one_line_error(
        cli("services", "deprecate", "iris-api", "1", "--sunset", "2001-01-01", PORTAL_TOKEN=raw), 1, "in the future"
    )


def test_deploy_with_autoscaling_and_its_refusals(signed_in, member, team, iris_file, environments):
    """The autoscaling options reach the portal, and what it refuses comes back as one line."""
    from deployments import services
    from registry.models import RegisteredModel

    model = RegisteredModel.objects.get(name="iris")
    make_version(model, iris_file, actor=member)
    services.service_create(actor=member, name="iris-api", team=team, model=model)
    common = ("deploy", "iris-api", "1.0.0")
    no_target = signed_in(*common, "--env", "development", "--min-replicas", "2")
    one_line_error(no_target, 1, "--min-replicas is an autoscaling setting: set --target-in-flight too")
    assert "target_in_flight" not in no_target.stderr  # the options the person typed, not the API's fields
    to_zero = signed_in(*common, "--env", "production", "--target-in-flight", "4", "--min-replicas", "0")
    one_line_error(to_zero, 1, "zero")
    result = signed_in(
        *common,
        "--env", "development",
        "--target-in-flight", "4",
        "--min-replicas", "1",
        "--max-replicas", "3",
        "--scale-down-after", "30",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deployment = json.loads(result.stdout)
    assert (deployment["target_in_flight"], deployment["min_replicas"], deployment["max_replicas"]) == (4, 1, 3)
    assert deployment["scale_down_after_seconds"] == 30
