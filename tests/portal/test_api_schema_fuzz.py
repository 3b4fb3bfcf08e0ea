"""The OpenAPI schema states what the API enforces: schemathesis generates requests from
/api/schema, valid and invalid ones, against the real web server (gunicorn on the test
database), signed in with a member's token, and checks that no answer is a server error,
that every status code is one the operation documents, and that every body matches the
documented response schema.

The run is bounded (a few examples per operation and mode) and derandomized: the same
requests on every run. Nothing it does starts a process: every environment requires
approval, so a deployment request only waits, and the member is no approver. Operations
added later are covered as they appear in the schema."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from accounts import services as accounts
from deployments import services as deployments
from deployments.models import Environment

pytestmark = pytest.mark.django_db(transaction=True)

# Requests per operation: schema-valid ones, then invalid ones (about 90 operations).
EXAMPLES = {GenerationMode.POSITIVE: 5, GenerationMode.NEGATIVE: 3}

# What the run leaves alone, and why.
EXCLUDED = {
    # Revoking the token the run signs in with would leave the rest of the run at 401.
    ("DELETE", "/api/v1/tokens/{token_id}"),
}

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture
def member_token(member, owner, iris_service, environments) -> str:
    """The member's token, with a service, a version and a request waiting for approval to
    find. Every environment requires approval, so no worker ever carries out what the run
    asks for."""
    Environment.objects.update(requires_approval=True)
    deployments.deployment_request(
        actor=owner,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=Environment.objects.get(name="production"),
    )
    _, raw = accounts.token_create(actor=member, user=member, name="schema fuzz")
    return raw


def test_every_operation_answers_as_its_schema_says(portal_server, member_token):
    answer = requests.get(f"{portal_server.url}/api/schema?format=json", timeout=30)
    answer.raise_for_status()
    schema = schemathesis.openapi.from_dict(answer.json())
    schema.config.update(base_url=portal_server.url)
    headers = {"Authorization": f"Bearer {member_token}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 50, "the schema lost its operations"
    for operation in operations:
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        for mode, examples in EXAMPLES.items():

            @settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(headers=headers, timeout=60)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # no invalid request can be made for it: nothing to check
                pass
            # Any failure (a check's, or the server not answering) is reported with the
            # other operations' at the end, so one run tells every mismatch.
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {_summary(exc)}")
    assert not failures, f"{len(failures)} operations answer beyond their schema:\n\n" + "\n\n".join(failures)


def _summary(exc: BaseException) -> str:
    """Each distinct failure's first lines and the curl line that reproduces it (the whole
    report of schemathesis runs to hundreds of lines per operation)."""
    text = str(exc).splitlines()
    kept = [line.strip() for line in text if line.strip().startswith(("- ST", "curl ", "[4", "[5", "`"))]
    return "\n    ".join(kept[:12]) or " ".join(text[:3])
