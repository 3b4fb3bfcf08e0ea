"""Canary and shadow requests through the API: what is refused and why (400, 409), the one
rollout per route while a candidate is tried, and the people in charge (pause, resume,
promote, abort) with real model servers, the rollout engine run in this process."""

import pytest

from accounts.models import AuditAction, AuditEvent
from deployments import rollout, services, strategies
from deployments.models import Deployment, Status, Strategy
from tests.factories import deploy_now, make_version
from tests.support import running_instances

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = "def predict(instances):\n    return [0 for _ in instances]\n"


@pytest.fixture
def live(iris_service, member, environments):
    """iris-api 1.0.0 live in development."""
    return deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())


@pytest.fixture
def v2(iris_service, tmp_path):
    path = tmp_path / "good.py"
    path.write_text(GOOD)
    return make_version(iris_service.model, path, version="1.1.0", flavor="pyfunc")


def _request(api, user, **body):
    return api(user).post(
        "/api/v1/services/iris-api/deployments",
        {"version": "1.1.0", "environment": "development", **body},
        format="json",
    )


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"strategy": "linear"}, "strategy", "is not a valid choice"),
        ({"strategy": "canary", "steps": [50, 25]}, "steps", "must increase"),
        ({"strategy": "canary", "steps": [0, 50]}, "steps", "above 0 and at most 100"),
        ({"strategy": "canary", "steps": [100]}, "steps", "needs a step below 100"),
        ({"strategy": "canary", "bake_seconds": 0}, "bake_seconds", "between 1 and 3600"),
        ({"strategy": "shadow", "shadow_percent": 0}, "shadow_percent", "between 1 and 100"),
        ({"strategy": "shadow", "steps": [5, 50]}, "steps", "a setting of strategy 'canary'"),
        ({"strategy": "canary", "shadow_percent": 5}, "shadow_percent", "a setting of strategy 'shadow'"),
        ({"sticky": True}, "sticky", "a setting of strategy 'canary'"),
    ],
)
def test_bad_canary_and_shadow_settings_are_refused_with_a_message(api, member, live, v2, body, field, says):
    response = _request(api, member, **body)
    assert response.status_code == 400, response.content
    assert says in str(response.json()), response.json()
    assert field in str(response.json())
    assert not Deployment.objects.filter(version=v2).exists()


def test_a_canary_needs_a_live_version_to_compare_with(api, member, iris_service, environments, v2):
    response = _request(api, member, strategy="canary")
    assert response.status_code == 400
    assert "No version of iris-api v1 is live in development" in response.json()["detail"]


def test_steps_default_and_end_at_100(api, member, live, v2):
    response = _request(api, member, strategy="canary", steps=[10, 30], bake_seconds=120, sticky=True)
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["strategy"] == "canary" and data["steps"] == [10, 30, 100]
    assert data["bake_seconds"] == 120 and data["sticky"] is True
    Deployment.objects.filter(pk=data["id"]).update(status=Status.CANCELLED)
    response = _request(api, member, strategy="canary")
    assert response.json()["steps"] == [5, 25, 50, 100] and response.json()["bake_seconds"] == 300


def test_people_in_charge_of_a_canary(api, member, viewer, outsider, live, v2, environments, iris_service):
    deployment = services.deployment_request(
        actor=member,
        service=iris_service,
        version=v2,
        environment=environments["development"],
        rollout=services.Rollout(strategy=Strategy.CANARY, steps=(20, 50), bake_seconds=60),
    )
    rollout.rollout(deployment.pk, owner="test")
    deployment.refresh_from_db()
    assert deployment.status == Status.CANARY and deployment.percent == 20
    url = f"/api/v1/deployments/{deployment.pk}"

    # A second rollout of the route is refused while the candidate is tried.
    response = _request(api, member, version="1.0.0")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"iris-api 1.1.0 is in a canary at 20 %: promote or abort it first (deployment #{deployment.pk})."
    )

    # Who may not deploy the service may not steer it either; who cannot see it gets 404.
    assert api(viewer).post(f"{url}/pause").status_code == 403
    assert api(outsider).post(f"{url}/pause").status_code == 404

    assert api(member).post(f"{url}/resume").status_code == 409  # not paused
    response = api(member).post(f"{url}/pause")
    assert response.status_code == 200 and response.json()["paused"] is True
    assert api(member).post(f"{url}/pause").json()["detail"].endswith("already paused; resume, promote or abort it.")
    assert strategies.advance(deployment.pk, owner="test") == "paused"
    response = api(member).post(f"{url}/resume")
    assert response.status_code == 200 and response.json()["paused"] is False

    response = api(member).post(f"{url}/promote")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "live"
    rollout.rollout(deployment.pk, owner="test")  # what the queued task does: drain the old version
    live.refresh_from_db()
    assert live.status == Status.SUPERSEDED
    assert not running_instances(f"d{live.pk}-r")
    assert api(member).post(f"{url}/abort").status_code == 409
    assert "only a canary or a shadow test can be aborted" in api(member).post(f"{url}/abort").json()["detail"]
    actions = set(AuditEvent.objects.filter(target_id=str(deployment.pk)).values_list("action", flat=True))
    assert {AuditAction.DEPLOYMENT_PAUSE, AuditAction.DEPLOYMENT_RESUME, AuditAction.DEPLOYMENT_PROMOTE} <= actions


def test_abort_sends_a_shadow_back_and_stops_it(api, member, live, v2, environments, iris_service):
    deployment = services.deployment_request(
        actor=member,
        service=iris_service,
        version=v2,
        environment=environments["development"],
        rollout=services.Rollout(strategy=Strategy.SHADOW, shadow_percent=30),
    )
    rollout.rollout(deployment.pk, owner="test")
    deployment.refresh_from_db()
    assert deployment.status == Status.SHADOW and deployment.percent == 30
    assert running_instances(f"d{deployment.pk}-r")
    response = api(member).post(f"/api/v1/deployments/{deployment.pk}/abort")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "rolled_back"
    strategies.advance(deployment.pk, owner="test")  # what the queued task does
    assert not running_instances(f"d{deployment.pk}-r")
    assert deployment.events.filter(step="withdrawn").exists()
    event = deployment.events.get(step="status:rolled_back")
    assert event.message.startswith(f"Aborted by {member.username}: stopped at 30 %.")
    assert event.actor == member
    assert AuditEvent.objects.filter(action=AuditAction.DEPLOYMENT_ABORT, target_id=str(deployment.pk)).exists()
    live.refresh_from_db()
    assert live.status == Status.LIVE
    # A new rollout of the route may start now.
    assert _request(api, member, strategy="canary").status_code == 201


def test_the_deployment_page_of_a_canary(member, viewer, live, v2, environments, iris_service):
    from django.test import Client

    def signed_in(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    # Requested from the service page's form.
    response = signed_in(member).post(
        "/services/iris-api/deploy",
        {
            "version": "1.1.0",
            "environment": "development",
            "replicas": 1,
            "strategy": "canary",
            "steps": "20, 50",
            "bake_seconds": 60,
            "shadow_percent": "",
        },
    )
    deployment = Deployment.objects.get(version=v2)
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    assert deployment.steps == [20, 50, 100] and deployment.bake_seconds == 60
    rollout.rollout(deployment.pk, owner="test")
    numbers = {"errors": 0, "error_rate": 0.0, "p50_ms": 5.0, "agreement": None, "agree": 0, "disagree": 0}
    Deployment.objects.filter(pk=deployment.pk).update(
        analysis={
            "at": 0,
            "step": 0,
            "judged": False,
            "regression": "",
            "min_requests": 50,
            "quality_metric": "accuracy",
            "min_outcomes": 50,
            "candidate": {
                **numbers,
                "version": "1.1.0",
                "requests": 12,
                "p95_ms": 10.0,
                "dropped": 0,
                "labelled": 9,
                "quality": 0.875,
            },
            "stable": {**numbers, "version": "1.0.0", "requests": 48, "p95_ms": 20.0, "dropped": 0, "labelled": 40},
        }
    )
    page = signed_in(member).get(f"/deployments/{deployment.pk}/").content.decode()
    assert "Stable 1.0.0: 80 % of requests · Candidate 1.1.0: 20 %" in page
    assert 'data-final="0"' in page
    assert '<li class="step-current" aria-current="step">' in page and "to come" in page
    assert '<th scope="col">Stable 1.0.0</th><th scope="col">Candidate 1.1.0</th>' in page
    assert "Waiting for 50 requests to 1.1.0 before judging, 12 so far." in page
    assert 'data-side="stable" data-measure="p95_ms" data-format="ms">20 ms' in page
    # Ground truth: the candidate's live accuracy so far; none for stable's outcomes yet.
    assert 'Live <span id="quality-metric">accuracy</span> from ground truth' in page
    assert 'data-side="candidate" data-measure="quality" data-format="quality">87.5 %' in page
    assert 'data-side="stable" data-measure="quality" data-format="quality">\u2013' in page
    assert 'data-side="stable" data-measure="labelled">40' in page
    assert "once each has 50 predictions with outcomes sent for them, its live accuracy is more than 5 %" in page
    assert "Pause" in page and 'data-confirm="Promote 1.1.0 now?' in page and 'data-confirm="Abort and send' in page
    # Who may only look sees the numbers, not the buttons.
    assert "Promote now" not in signed_in(viewer).get(f"/deployments/{deployment.pk}/").content.decode()

    status = signed_in(member).get(f"/deployments/{deployment.pk}/status").json()
    assert status["status"] == "canary" and status["label"] == "Canary" and status["trial_key"] == "0:0"
    assert status["analysis"]["candidate"]["requests"] == 12

    response = signed_in(member).post(f"/deployments/{deployment.pk}/pause")
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    assert Deployment.objects.get(pk=deployment.pk).paused
    assert signed_in(member).get(f"/deployments/{deployment.pk}/status").json()["trial_key"] == "0:1"
    page = signed_in(member).get(f"/deployments/{deployment.pk}/").content.decode()
    assert "Resume" in page and "Paused" in page
    signed_in(viewer).post(f"/deployments/{deployment.pk}/abort")
    assert Deployment.objects.get(pk=deployment.pk).status == Status.CANARY  # not allowed: nothing changed
    signed_in(member).post(f"/deployments/{deployment.pk}/abort")
    deployment.refresh_from_db()
    assert deployment.status == Status.ROLLED_BACK
    strategies.advance(deployment.pk, owner="test")
    page = signed_in(member).get(f"/deployments/{deployment.pk}/").content.decode()
    assert '<li class="step-stopped">' in page and "rolled back here" in page
    # The rule it was tried under is not restated once it ended (the environment's may have changed since).
    assert "Judged after" not in page


def test_the_autoscaler_keeps_the_stable_version_awake_while_a_candidate_is_tried(
    iris_service, member, environments, v2
):
    from deployments.autoscale import targets

    development = environments["development"]
    common = {"service": iris_service, "environment": development, "major": 1, "requested_by": member}
    stable = Deployment.objects.create(
        **common,
        version=iris_service.model.versions.get(version="1.0.0"),
        status=Status.LIVE,
        replicas=1,
        min_replicas=0,
        max_replicas=3,
        target_in_flight=2,
    )
    assert [t.min_replicas for t in targets() if t.deployment == stable.pk] == [0]
    Deployment.objects.create(**common, version=v2, status=Status.CANARY, strategy=Strategy.CANARY, steps=[10, 100])
    assert [t.min_replicas for t in targets() if t.deployment == stable.pk] == [1]


def test_thresholds_per_environment_and_one_approval_for_a_production_canary(
    api, admin, member, approver, iris_service, environments, v2
):
    listed = {e["name"]: e for e in api(member).get("/api/v1/environments").json()}
    assert listed["production"]["canary_max_error_rate_increase"] == 0.02
    assert listed["production"]["canary_max_p95_ratio"] == 1.5
    assert listed["production"]["canary_min_p95_increase_ms"] == 25
    assert listed["production"]["canary_min_requests"] == 50
    assert listed["production"]["shadow_min_agreement"] == 0.95
    assert listed["production"]["canary_max_quality_drop"] == 0.05
    assert listed["production"]["canary_min_outcomes"] == 50
    one = api(member).get("/api/v1/environments/production")  # anyone signed in reads one environment
    assert one.status_code == 200 and one.json() == listed["production"]
    assert api(member).get("/api/v1/environments/nowhere").status_code == 404
    changed = api(admin).patch(
        "/api/v1/environments/production",
        {"canary_min_requests": 200, "shadow_min_agreement": 0.99, "canary_max_quality_drop": 0.1},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["canary_min_requests"] == 200 and changed.json()["shadow_min_agreement"] == 0.99
    assert changed.json()["canary_max_quality_drop"] == 0.1
    refused = api(admin).patch("/api/v1/environments/production", {"canary_max_p95_ratio": 0.5}, format="json")
    assert refused.status_code == 400 and "canary_max_p95_ratio" in str(refused.json())
    refused = api(admin).patch("/api/v1/environments/production", {"canary_min_outcomes": 0}, format="json")
    assert refused.status_code == 400 and "canary_min_outcomes" in str(refused.json())
    assert (
        api(member).patch("/api/v1/environments/production", {"canary_min_requests": 1}, format="json").status_code
        == 403
    )
    assert AuditEvent.objects.filter(action=AuditAction.ENVIRONMENT_CHANGE).exists()

    # A production canary waits for its one approval; nothing it does later needs another.
    production = environments["production"]
    Deployment.objects.create(
        service=iris_service,
        environment=production,
        major=1,
        requested_by=member,
        version=iris_service.model.versions.get(version="1.0.0"),
        status=Status.LIVE,
    )
    deployment = services.deployment_request(
        actor=member,
        service=iris_service,
        version=v2,
        environment=production,
        rollout=services.Rollout(strategy=Strategy.CANARY),
    )
    assert deployment.status == Status.PENDING_APPROVAL
    services.deployment_approve(actor=approver, deployment=deployment)
    assert Deployment.objects.get(pk=deployment.pk).status == Status.APPROVED
