"""The deployment state machine and its rules: approvals, four eyes, cancel, rollback."""

import pytest

from accounts.models import AuditEvent
from core.errors import Conflict, InvalidInput, NotAllowed
from deployments import services, states
from deployments.models import Deployment, DeploymentEvent, Status
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def request(service, user, environment, **kwargs):
    version = service.model.versions.get()
    return services.deployment_request(actor=user, service=service, version=version, environment=environment, **kwargs)


def test_production_waits_for_an_approver(iris_service, member, environments, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        deployment = request(iris_service, member, environments["production"])
    assert deployment.status == Status.PENDING_APPROVAL
    assert not [c for c in callbacks if "rollout" in repr(c)]  # nothing queued before approval
    messages = list(deployment.events.values_list("message", flat=True))
    assert messages[0].startswith("mia-member requested 1.0.0 in production")
    assert AuditEvent.objects.filter(action="deployment.request", target_id=str(deployment.pk)).exists()


def test_development_needs_no_approval(iris_service, member, environments):
    deployment = request(iris_service, member, environments["development"])
    assert deployment.status == Status.APPROVED


def test_only_approvers_approve_and_never_their_own(iris_service, member, approver, environments):
    deployment = request(iris_service, member, environments["production"])
    with pytest.raises(NotAllowed, match="Only IT approvers"):
        services.deployment_approve(actor=member, deployment=deployment)
    services.deployment_approve(actor=approver, deployment=deployment, comment="ok")
    deployment.refresh_from_db()
    assert deployment.status == Status.APPROVED and deployment.decided_by == approver
    assert AuditEvent.objects.filter(action="deployment.approve", actor=approver).exists()


def test_four_eyes(iris_service, owner, maintainer, environments, team):
    from accounts import services as accounts

    accounts.user_update(actor=_admin(), user=maintainer, roles=["approver"])
    maintainer.refresh_from_db()
    deployment = request(iris_service, maintainer, environments["production"])
    with pytest.raises(NotAllowed, match="four eyes"):
        services.deployment_approve(actor=maintainer, deployment=deployment)
    assert Deployment.objects.get(pk=deployment.pk).status == Status.PENDING_APPROVAL


def _admin():
    return make_user("root", roles=["admin"])


def test_reject_needs_a_comment_and_ends_the_request(iris_service, member, approver, environments):
    deployment = request(iris_service, member, environments["production"])
    with pytest.raises(InvalidInput, match="Say why"):
        services.deployment_reject(actor=approver, deployment=deployment, comment=" ")
    services.deployment_reject(actor=approver, deployment=deployment, comment="No model card")
    deployment.refresh_from_db()
    assert deployment.status == Status.REJECTED and deployment.decision_comment == "No model card"
    with pytest.raises(Conflict, match="only a waiting one can be approved"):
        services.deployment_approve(actor=approver, deployment=deployment)


def test_cancel_while_pending(iris_service, member, viewer, environments):
    deployment = request(iris_service, member, environments["production"])
    with pytest.raises(NotAllowed):
        services.deployment_cancel(actor=viewer, deployment=deployment)
    services.deployment_cancel(actor=member, deployment=deployment)
    assert Deployment.objects.get(pk=deployment.pk).status == Status.CANCELLED


def test_one_deployment_in_flight_per_route(iris_service, member, environments):
    request(iris_service, member, environments["production"])
    with pytest.raises(Conflict, match="still waiting for approval"):
        request(iris_service, member, environments["production"])


def test_replicas_within_the_environment_limit(iris_service, member, environments):
    with pytest.raises(InvalidInput, match="between 1 and 4"):
        request(iris_service, member, environments["production"], replicas=9)


def test_viewers_cannot_deploy(iris_service, viewer, environments):
    with pytest.raises(NotAllowed):
        request(iris_service, viewer, environments["development"])


def test_transitions_are_conditional_and_write_one_event(iris_service, member, environments):
    deployment = request(iris_service, member, environments["development"])
    assert states.transition(deployment, Status.PROVISIONING, message="go")
    assert not states.transition(deployment, Status.PROVISIONING, message="again")  # already there
    assert not states.transition(deployment, Status.PENDING_APPROVAL, message="backwards")
    assert DeploymentEvent.objects.filter(deployment=deployment, step="status:provisioning").count() == 1


def test_every_status_has_a_way_in_except_requested():
    reachable = set(states.TRANSITIONS)
    assert reachable == set(Status.values) - {Status.REQUESTED}


def test_rollback_needs_an_earlier_live_version(iris_service, member, environments):
    deployment = request(iris_service, member, environments["development"])
    states.transition(deployment, Status.PROVISIONING, message="x")
    states.transition(deployment, Status.LIVE, message="x")
    with pytest.raises(Conflict, match="no earlier version"):
        services.deployment_rollback(actor=member, deployment=deployment)


def test_one_deployment_in_flight_per_route_even_when_requests_race(iris_service, owner, environments, monkeypatch):
    """The service refuses a second in-flight deployment of a route with a clear message; when
    two requests race past that check together, the database's constraint refuses one."""
    from django.db import IntegrityError, transaction

    version = iris_service.model.versions.get()
    production = environments["production"]
    first = services.deployment_request(actor=owner, service=iris_service, version=version, environment=production)
    with pytest.raises(Conflict, match=f"#{first.pk} .* is still waiting for approval"):
        services.deployment_request(actor=owner, service=iris_service, version=version, environment=production)

    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(
            service=iris_service, version=version, environment=production, major=1, requested_by=owner
        )

    monkeypatch.setattr(states, "ACTIVE", frozenset())  # as if the check ran before the first request committed
    with pytest.raises(Conflict, match="started just now"):
        services.deployment_request(actor=owner, service=iris_service, version=version, environment=production)
    assert Deployment.objects.filter(environment=production).count() == 1
    # Other routes, and finished deployments of this one, are not in the way.
    services.deployment_request(actor=owner, service=iris_service, version=version, environment=environments["staging"])
