"""Pages for services, deployments and approvals, and the admin's approve/reject actions."""

import pytest
from django.test import Client

from deployments import services
from deployments.models import Deployment, Grant, Status

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def requested(service, user, environment):
    return services.deployment_request(
        actor=user, service=service, version=service.model.versions.get(), environment=environment
    )


def test_service_pages(iris_service, member, outsider, environments):
    content = signed_in(member).get("/services/").content.decode()
    assert 'href="/services/iris-api/"' in content
    page = signed_in(member).get("/services/iris-api/").content.decode()
    assert "Not live anywhere yet." in page and "Request deployment" in page and "team <strong>vision</strong>" in page
    # Outsiders find the service in the catalog (to ask for access), not its model or deployments.
    catalog_page = signed_in(outsider).get("/services/iris-api/").content.decode()
    assert "Request access" in catalog_page and "Request deployment" not in catalog_page
    assert 'href="/services/iris-api/"' in signed_in(outsider).get("/services/").content.decode()


def test_request_from_the_page_and_follow_it(iris_service, member, environments):
    client = signed_in(member)
    response = client.post(
        "/services/iris-api/deploy", {"version": "1.0.0", "environment": "production", "replicas": 1}
    )
    deployment = Deployment.objects.get()
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "Waiting for an IT approver" in page and 'data-final="0"' in page
    status = client.get(f"/deployments/{deployment.pk}/status?after=0").json()
    assert status["status"] == "pending_approval" and len(status["events"]) == 2
    last = status["events"][-1]["id"]
    assert client.get(f"/deployments/{deployment.pk}/status?after={last}").json()["events"] == []


def test_approval_queue_and_decisions(iris_service, member, approver, environments):
    deployment = requested(iris_service, member, environments["production"])
    assert signed_in(member).get("/approvals/").status_code == 403
    page = signed_in(approver).get("/approvals/").content.decode()
    assert "iris-api 1.0.0 → production" in page
    response = signed_in(approver).post(f"/deployments/{deployment.pk}/reject", {"comment": "", "next": "queue"})
    assert response["Location"] == "/approvals/"
    assert Deployment.objects.get().status == Status.PENDING_APPROVAL  # a rejection needs a reason
    signed_in(approver).post(f"/deployments/{deployment.pk}/approve", {"comment": "fine"})
    assert Deployment.objects.get().status == Status.APPROVED
    assert "Nothing waits for approval." in signed_in(approver).get("/approvals/").content.decode()


def test_cancel_from_the_page(iris_service, member, environments):
    deployment = requested(iris_service, member, environments["production"])
    signed_in(member).post(f"/deployments/{deployment.pk}/cancel")
    assert Deployment.objects.get().status == Status.CANCELLED


def test_grants_from_the_page(iris_service, owner, member, service_account):
    client = signed_in(owner)
    client.post("/services/iris-api/grants", {"user": service_account.username})
    grant = Grant.objects.get(user=service_account)
    assert b"Revoke access to iris-api?" in client.get(f"/services/iris-api/grants/{grant.pk}/revoke").content
    client.post(f"/services/iris-api/grants/{grant.pk}/revoke")
    assert not Grant.objects.filter(user=service_account).exists()
    # members may not grant
    signed_in(member).post("/services/iris-api/grants", {"user": service_account.username})
    assert not Grant.objects.filter(user=service_account).exists()


def test_admin_approves_with_a_comment_and_keeps_four_eyes(iris_service, member, admin, environments):
    from accounts import services as accounts

    accounts.user_update(actor=admin, user=admin, roles=["admin", "approver"])
    admin.refresh_from_db()
    deployment = requested(iris_service, member, environments["production"])
    client = signed_in(admin)
    url = "/admin/deployments/deployment/"
    form = client.post(url, {"action": "approve", "_selected_action": [deployment.pk]})
    assert b"Approve deployments" in form.content
    client.post(url, {"action": "approve", "_selected_action": [deployment.pk], "apply": "1", "comment": "via admin"})
    deployment.refresh_from_db()
    assert deployment.status == Status.APPROVED and deployment.decision_comment == "via admin"
    own = requested(iris_service, admin, environments["staging"])
    response = client.post(url, {"action": "approve", "_selected_action": [own.pk], "apply": "1"}, follow=True)
    assert "four eyes" in response.content.decode()
    assert Deployment.objects.get(pk=own.pk).status == Status.PENDING_APPROVAL


def test_environment_admin_shows_backend_availability(admin, environments):
    content = signed_in(admin).get("/admin/deployments/environment/").content.decode()
    assert "available" in content


def test_dashboard_shows_recent_deployments_and_the_approvers_queue(iris_service, member, approver, environments):
    deployment = requested(iris_service, member, environments["production"])
    content = signed_in(member).get("/").content.decode()
    assert f'href="/deployments/{deployment.pk}/"' in content and "waiting for your approval" not in content
    assert "1</strong> deployment waiting for your approval" in signed_in(approver).get("/").content.decode()
