"""`portal access ...` and the catalog in `portal services list`, against a real portal."""

import json

import pytest

from accounts.services import token_create
from deployments.models import AccessRequest, Grant
from tests.portal_client.harness import PORTAL
from tests.portal_client.test_cli_errors import one_line_error

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]


@pytest.fixture
def as_user(cli, iris_service):
    """`as_user(user)(*args)` runs `portal` with a token of that user."""

    def runner(user):
        _, raw = token_create(actor=None, user=user, name="cli")
        return lambda *args: cli(*args, PORTAL_TOKEN=raw)

    return runner


def test_find_ask_approve(as_user, outsider, maintainer):
    consumer = as_user(outsider)
    found = consumer("services", "list", "-q", "iris", "--json")
    assert found.returncode == 0, found.stderr
    (entry,) = json.loads(found.stdout)
    assert entry["name"] == "iris-api" and entry["model"] is None and entry["may_call"] is False
    text = consumer("services", "list")
    assert "iris-api" in text.stdout and "vision" in text.stdout

    asked = consumer("access", "request", "iris-api", "--reason", "Shop app", "--days", "30", "--json")
    assert asked.returncode == 0, asked.stderr
    request_id = json.loads(asked.stdout)["id"]
    assert json.loads(asked.stdout)["status"] == "pending"

    again = consumer("access", "request", "iris-api", "--reason", "Again")
    one_line_error(again, 1, f"#{request_id} is pending")

    team = as_user(maintainer)
    waiting = team("access", "list", "--status", "pending", "--to-decide")
    assert waiting.returncode == 0 and "Shop app" in waiting.stdout and "oscar-outsider" in waiting.stdout

    approved = team("access", "approve", str(request_id), "--comment", "Welcome", "--expires", "2099-03-01")
    assert approved.returncode == 0, approved.stderr
    assert f"#{request_id} oscar-outsider → iris-api: approved by mark-maintainer (Welcome), until 2099-03-01" in (
        approved.stderr
    )
    grant = Grant.objects.get(user=outsider)
    assert grant.expires_at.date().isoformat() == "2099-03-01"

    mine = json.loads(consumer("access", "list", "--mine", "--json").stdout)
    assert [(r["id"], r["status"]) for r in mine] == [(request_id, "approved")]
    one_line_error(consumer("access", "request", "iris-api", "--reason", "More"), 1, "may already call")


def test_reject_withdraw_and_their_errors(as_user, outsider, owner, member):
    consumer = as_user(outsider)
    request_id = json.loads(consumer("access", "request", "iris-api", "-r", "Batch", "--json").stdout)["id"]
    team = as_user(owner)
    missing = team("access", "reject", str(request_id))
    assert missing.returncode == 2 and "--comment" in missing.stderr
    one_line_error(as_user(member)("access", "approve", str(request_id)), 4, f"No access request #{request_id}")
    rejected = team("access", "reject", str(request_id), "-m", "Use the public dataset", "--json")
    assert rejected.returncode == 0 and json.loads(rejected.stdout)["status"] == "rejected"
    one_line_error(consumer("access", "withdraw", str(request_id)), 1, "is rejected")

    second = json.loads(consumer("access", "request", "iris-api", "-r", "Please", "--json").stdout)["id"]
    withdrawn = consumer("access", "withdraw", str(second))
    assert withdrawn.returncode == 0 and "withdrawn" in withdrawn.stderr
    assert AccessRequest.objects.get(pk=second).status == "withdrawn"


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["access", "request", "nope", "-r", "x"], 4, ["No service named 'nope'"]),
        (["access", "request", "iris-api", "-r", "x", "--expires", "2001-01-01"], 1, ["--expires: ", "in the future"]),
        (["access", "request", "iris-api", "-r", "x", "--expires", "tomorrow"], 1, ["--expires", "YYYY-MM-DD"]),
        (["access", "request", "iris-api", "-r", "x", "--days", "3", "--expires", "2099-01-01"], 2, ["not both"]),
        (["access", "request", "iris-api", "-r", "x", "--for", "svc-consumer"], 3, ["svc-consumer"]),
        (["access", "approve", "999"], 4, ["No access request #999"]),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(as_user, outsider, service_account, args, code, words):
    result = as_user(outsider)(*args)
    one_line_error(result, code, *words)
    assert "expires_at" not in result.stderr  # the option's name, not the API's field


def test_help_lists_the_commands(cli):
    result = cli("access", "--help")
    assert result.returncode == 0
    for command in ("request", "list", "approve", "reject", "withdraw"):
        assert command in result.stdout


def test_services_show_gives_outsiders_the_catalog_entry(as_user, cli, outsider, owner, iris_service, environments):
    from deployments.models import Deployment, Status

    version = iris_service.model.versions.get()
    Deployment.objects.create(
        service=iris_service,
        version=version,
        environment=environments["production"],
        major=1,
        status=Status.LIVE,
        requested_by=owner,
    )
    consumer = as_user(outsider)
    shown = consumer("services", "show", "iris-api")
    assert shown.returncode == 0, shown.stderr
    assert "iris-api · team vision" in shown.stdout and "production /v1 1.0.0" in shown.stdout
    assert "curl -H" in shown.stdout and "/serve/production/iris-api/v1/predict" in shown.stdout
    assert "Bearer $PORTAL_TOKEN" in shown.stdout  # where this caller's token is
    assert "portal access request iris-api" in shown.stderr
    entry = json.loads(consumer("services", "show", "iris-api", "--json").stdout)
    assert entry["model"] is None and entry["live"][0]["input_schema"]["properties"]
    one_line_error(consumer("services", "show", "iris"), 4, "No service named 'iris'")
    own = as_user(owner)("services", "show", "iris-api", "--json")
    assert json.loads(own.stdout)["model"] == "iris"  # the team still gets the service's own details

    # With the token kept by `portal login`, the line fetches it, by the command's full path.
    _, raw = token_create(actor=None, user=outsider, name="kept")
    assert cli("login", "--token-stdin", input=raw + "\n").returncode == 0
    kept = cli("services", "show", "iris-api")
    assert kept.returncode == 0, kept.stderr
    assert f'Bearer $({PORTAL} print-token)"' in kept.stdout and "$PORTAL_TOKEN" not in kept.stdout
