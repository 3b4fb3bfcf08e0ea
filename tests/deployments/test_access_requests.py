"""Access requests (ask, approve into a grant, reject, withdraw), grants with an expiry and limits,
and the sweep that removes expired grants."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services as accounts
from accounts.models import AuditAction, AuditEvent, Role
from deployments import services
from deployments.models import AccessRequest, Grant
from deployments.signals import access_request_created, access_request_decided
from deployments.tasks import expire_grants

pytestmark = pytest.mark.django_db

URL = "/api/v1/services/iris-api/access-requests"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def signals():
    """The access-request signals as receivers above deployments get them."""
    got = []

    def created(sender, access_request, **kwargs):
        got.append(("created", access_request.pk, access_request.status))

    def decided(sender, access_request, **kwargs):
        got.append(("decided", access_request.pk, access_request.status))

    access_request_created.connect(created)
    access_request_decided.connect(decided)
    yield got
    access_request_created.disconnect(created)
    access_request_decided.disconnect(decided)


@pytest.fixture
def asked(iris_service, api, outsider):
    answer = api(outsider).post(URL, {"reason": "Our shop app shows iris species"}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()


def test_ask_approve_and_the_grant_follows(iris_service, api, outsider, maintainer, signals):
    asked = api(outsider).post(URL, {"reason": "Our shop app shows iris species", "days": 30}, format="json")
    assert asked.status_code == 201, asked.content
    body = asked.json()
    assert body["status"] == "pending" and body["requester"] == "oscar-outsider" and body["service_account"] is None
    assert body["team"] == "vision" and body["grant"] is None
    wanted_end = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=29) < wanted_end - timezone.now() <= timedelta(days=30)

    queue = api(maintainer).get("/api/v1/access-requests", {"status": "pending"}).json()
    assert [r["id"] for r in queue["results"]] == [body["id"]]

    approved = api(maintainer).post(
        f"/api/v1/access-requests/{body['id']}/approve", {"comment": "Welcome"}, format="json"
    )
    assert approved.status_code == 200, approved.content
    decided = approved.json()
    assert decided["status"] == "approved" and decided["decided_by"] == "mark-maintainer"
    assert decided["comment"] == "Welcome" and decided["decided_at"]
    grant = Grant.objects.get(pk=decided["grant"])
    assert grant.user == outsider and grant.expires_at == wanted_end
    assert outsider.has_perm("deployments.invoke_service", iris_service)
    assert signals == [("created", body["id"], "pending"), ("decided", body["id"], "approved")]
    actions = list(AuditEvent.objects.filter(action__startswith="access_request").values_list("action", flat=True))
    assert sorted(actions) == sorted([AuditAction.ACCESS_REQUEST_CREATE, AuditAction.ACCESS_REQUEST_APPROVE])
    # Asking again for what one now has is refused.
    again = api(outsider).post(URL, {"reason": "once more"}, format="json")
    assert again.status_code == 409 and "may already call 'iris-api'" in again.json()["detail"]


def test_the_approver_may_set_another_end(asked, api, owner):
    answer = api(owner).post(
        f"/api/v1/access-requests/{asked['id']}/approve", {"expires_at": "2099-01-31"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert Grant.objects.get(pk=answer.json()["grant"]).expires_at == datetime(2099, 1, 31, tzinfo=UTC)


def test_a_duplicate_pending_request_is_a_409_that_says_what_to_do(asked, api, outsider):
    answer = api(outsider).post(URL, {"reason": "Did you see my first one?"}, format="json")
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert f"#{asked['id']} is pending" in detail and "withdraw it" in detail
    assert AccessRequest.objects.count() == 1


def test_the_team_already_may_call_so_asking_is_a_409(iris_service, api, member):
    answer = api(member).post(URL, {"reason": "I am in the team"}, format="json")
    assert answer.status_code == 409 and "may already call" in answer.json()["detail"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 1001}, "reason"),
        ({"reason": "ok", "expires_at": "2020-01-01"}, "expires_at"),
        ({"reason": "ok", "expires_at": "2027-02-30"}, "expires_at"),
        ({"reason": "ok", "days": 0}, "days"),
        ({"reason": "ok", "days": 5, "expires_at": "2099-01-01"}, "days"),
        ({"reason": "ok", "service_account": "no-such-account"}, "service_account"),
        ({"reason": "ok", "service_account": "mia-member"}, "service_account"),
        ({"reason": "ok", "surprise": 1}, "surprise"),
    ],
)
def test_bad_requests_are_400_naming_the_field(iris_service, api, outsider, member, body, field):
    answer = api(outsider).post(URL, body, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.content.decode()


def test_an_unknown_service_is_a_404(api, outsider, db):
    answer = api(outsider).post("/api/v1/services/nope/access-requests", {"reason": "x"}, format="json")
    assert answer.status_code == 404


def test_a_service_account_owner_asks_on_its_behalf(iris_service, api, outsider, service_account, owner):
    team = accounts.team_create(actor=outsider, name="shop")
    accounts.membership_add(actor=outsider, team=team, user=service_account, role=Role.VIEWER)
    answer = api(outsider).post(URL, {"reason": "The shop backend", "service_account": "svc-consumer"}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["service_account"] == "svc-consumer"
    # The same service account, asked for by someone else: one pending request per caller.
    accounts.membership_add(actor=outsider, team=team, user=owner, role=Role.MAINTAINER)
    again = api(owner).post(URL, {"reason": "Also", "service_account": "svc-consumer"}, format="json")
    assert again.status_code == 409 and "asked by oscar-outsider" in again.json()["detail"]
    approved = api(owner).post(f"/api/v1/access-requests/{answer.json()['id']}/approve", {}, format="json")
    assert approved.status_code == 200
    assert Grant.objects.get(pk=approved.json()["grant"]).user == service_account
    assert not Grant.objects.filter(service=iris_service, user=outsider).exists()


def test_only_who_looks_after_a_service_account_may_ask_for_it(iris_service, api, outsider, service_account):
    answer = api(outsider).post(URL, {"reason": "Not mine", "service_account": "svc-consumer"}, format="json")
    assert answer.status_code == 403 and "belongs to" in answer.json()["detail"]


def test_a_service_account_asks_for_itself_with_an_invoke_token(iris_service, api, service_account):
    answer = api(service_account, scopes=["invoke"]).post(URL, {"reason": "Nightly batch"}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["requester"] == "svc-consumer" and answer.json()["service_account"] is None


@pytest.mark.parametrize(
    "who, code", [("owner", 200), ("maintainer", 200), ("member", 404), ("viewer", 404), ("approver", 404)]
)
def test_only_owners_and_maintainers_decide(asked, api, cast, approver, who, code):
    user = approver if who == "approver" else cast[who]
    answer = api(user).post(f"/api/v1/access-requests/{asked['id']}/approve", {}, format="json")
    assert answer.status_code == code, answer.content


def test_reject_needs_a_comment_and_a_decided_request_is_a_409(asked, api, owner, outsider, signals):
    path = f"/api/v1/access-requests/{asked['id']}"
    assert api(owner).post(f"{path}/reject", {"comment": ""}, format="json").status_code == 400
    rejected = api(owner).post(f"{path}/reject", {"comment": "Use the public dataset"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    late = api(owner).post(f"{path}/approve", {}, format="json")
    assert late.status_code == 409 and "is rejected" in late.json()["detail"]
    assert api(outsider).post(f"{path}/withdraw").status_code == 409
    assert not Grant.objects.filter(user=outsider).exists()
    assert signals == [("decided", asked["id"], "rejected")]
    mine = api(outsider).get(f"{path}").json()
    assert mine["comment"] == "Use the public dataset" and mine["decided_by"] == "olivia-owner"


def test_the_requester_withdraws_and_may_ask_again(asked, api, outsider, owner, signals):
    path = f"/api/v1/access-requests/{asked['id']}"
    assert api(owner).post(f"{path}/withdraw").status_code == 403  # only who asked
    withdrawn = api(outsider).post(f"{path}/withdraw")
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert signals == [("decided", asked["id"], "withdrawn")]
    assert AuditEvent.objects.filter(action=AuditAction.ACCESS_REQUEST_WITHDRAW).count() == 1
    assert api(outsider).post(URL, {"reason": "Second try"}, format="json").status_code == 201


def test_strangers_do_not_see_requests(asked, api, service_account, member):
    for user in (service_account, member):
        assert api(user).get(f"/api/v1/access-requests/{asked['id']}").status_code == 404
        assert api(user).get("/api/v1/access-requests").json()["results"] == []


def test_the_list_filters(asked, api, owner, outsider):
    assert api(owner).get("/api/v1/access-requests", {"status": "approved"}).json()["results"] == []
    assert api(owner).get("/api/v1/access-requests", {"mine": "true"}).json()["results"] == []
    assert len(api(outsider).get("/api/v1/access-requests", {"mine": "true"}).json()["results"]) == 1
    assert len(api(owner).get("/api/v1/access-requests", {"service": "iris-api"}).json()["results"]) == 1
    bad = api(owner).get("/api/v1/access-requests", {"status": "maybe"})
    assert bad.status_code == 400 and "pending" in bad.json()["detail"]


def test_approving_when_a_grant_appeared_meanwhile_is_a_409(asked, api, owner, outsider, iris_service):
    services.grant_create(actor=owner, service=iris_service, user=outsider)
    answer = api(owner).post(f"/api/v1/access-requests/{asked['id']}/approve", {}, format="json")
    assert answer.status_code == 409 and "reject this request" in answer.json()["detail"]
    assert AccessRequest.objects.get().status == "pending"


# ---------------------------------------------------------------- grants: expiry and limits


def test_grants_take_limits_and_expiry(iris_service, api, owner, service_account):
    answer = api(owner).post(
        "/api/v1/services/iris-api/grants",
        {"user": "svc-consumer", "expires_at": "2099-06-01", "rate_per_second": 2.5, "burst": 5, "daily_quota": 1000},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    grant = answer.json()
    assert grant["rate_per_second"] == 2.5 and grant["burst"] == 5 and grant["daily_quota"] == 1000
    assert grant["expires_at"].startswith("2099-06-01T00:00:00")
    listed = api(owner).get("/api/v1/services/iris-api/grants").json()
    assert {g["user"]: g["daily_quota"] for g in listed}["svc-consumer"] == 1000


@pytest.mark.parametrize(
    "body, message",
    [
        ({"rate_per_second": 0}, "more than 0"),
        ({"rate_per_second": -1}, "more than 0"),
        ({"rate_per_second": 1, "burst": 0}, "at least 1"),
        ({"burst": 3}, "set rate_per_second too"),
        ({"daily_quota": 0}, "at least 1"),
        ({"expires_at": "2001-01-01"}, "in the future"),
        ({"expires_at": "soon"}, "YYYY-MM-DD"),
    ],
)
def test_bad_limits_are_400(iris_service, api, owner, service_account, body, message):
    answer = api(owner).post("/api/v1/services/iris-api/grants", {"user": "svc-consumer", **body}, format="json")
    assert answer.status_code == 400 and message in answer.content.decode(), answer.content
    assert not Grant.objects.filter(user=service_account).exists()


def test_patch_changes_limits_audited_and_null_removes_one(iris_service, api, owner, member, service_account):
    grant = services.grant_create(
        actor=owner, service=iris_service, user=service_account, limits=services.GrantLimits(daily_quota=10)
    )
    path = f"/api/v1/services/iris-api/grants/{grant.pk}"
    assert api(member).patch(path, {"daily_quota": 20}, format="json").status_code == 403
    answer = api(owner).patch(path, {"daily_quota": None, "rate_per_second": 3}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["daily_quota"] is None and answer.json()["rate_per_second"] == 3
    event = AuditEvent.objects.get(action=AuditAction.PERMISSION_CHANGE)
    assert event.data["changes"] == {"rate_per_second": [None, 3.0], "daily_quota": [10, None]}
    assert api(owner).patch(path, {"burst": 0}, format="json").status_code == 400
    assert api(owner).patch(path, {}, format="json").status_code == 400
    assert (
        api(owner).patch(f"/api/v1/services/iris-api/grants/{grant.pk + 99}", {"burst": 2}, format="json").status_code
        == 404
    )


def test_expired_grants_are_removed_and_audited(iris_service, owner, service_account, outsider):
    soon = services.grant_create(
        actor=owner,
        service=iris_service,
        user=service_account,
        limits=services.GrantLimits(expires_at=timezone.now() + timedelta(seconds=30)),
    )
    later = services.grant_create(
        actor=owner,
        service=iris_service,
        user=outsider,
        limits=services.GrantLimits(expires_at=timezone.now() + timedelta(days=3)),
    )
    assert services.grants_expire() == []
    assert services.grants_expire(now=timezone.now() + timedelta(minutes=1)) == [soon.pk]
    assert not Grant.objects.filter(pk=soon.pk).exists() and Grant.objects.filter(pk=later.pk).exists()
    assert not service_account.has_perm("deployments.invoke_service", iris_service)
    event = AuditEvent.objects.get(action=AuditAction.PERMISSION_EXPIRE)
    assert event.data["user"] == "svc-consumer" and event.actor is None
    # Running it again does nothing more (a retried or doubled task).
    assert services.grants_expire(now=timezone.now() + timedelta(minutes=1)) == []
    assert AuditEvent.objects.filter(action=AuditAction.PERMISSION_EXPIRE).count() == 1


def test_the_beat_task_is_scheduled_and_runs_the_sweep(settings, iris_service, owner, service_account):
    assert settings.CELERY_BEAT_SCHEDULE["grants-expire"]["task"] == expire_grants.name
    grant = services.grant_create(actor=owner, service=iris_service, user=service_account)
    Grant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_grants.run() == [grant.pk]


def test_an_approved_request_loses_its_grant_when_it_expires(asked, owner, outsider, iris_service):
    approved = services.access_request_approve(
        actor=owner,
        access_request=AccessRequest.objects.get(),
        expires_at=timezone.now() + timedelta(hours=1),
    )
    services.grants_expire(now=timezone.now() + timedelta(hours=2))
    approved.refresh_from_db()
    assert approved.status == "approved" and approved.grant is None
    assert not outsider.has_perm("deployments.invoke_service", iris_service)


# ---------------------------------------------------------------- pages


def test_ask_from_the_page_and_decide_in_the_queue(iris_service, outsider, maintainer):
    asker = signed_in(outsider)
    bad = asker.post("/services/iris-api/access-requests", {"reason": ""})
    assert bad.status_code == 302 and not AccessRequest.objects.exists()
    asker.post("/services/iris-api/access-requests", {"reason": "Shop app", "expires": "2099-01-01"})
    pending = AccessRequest.objects.get()
    assert pending.expires_at == datetime(2099, 1, 1, tzinfo=UTC)
    page = asker.get("/services/iris-api/").content.decode()
    assert f"request #{pending.pk}" in page and "Withdraw the request" in page

    decider = signed_in(maintainer)
    assert '>1<span class="visually-hidden"> waiting for you' in decider.get("/").content.decode()  # the nav count
    assert "waiting for you" not in asker.get("/").content.decode()
    queue = decider.get("/access-requests/").content.decode()
    assert "Shop app" in queue and "oscar-outsider" in queue
    decider.post(f"/access-requests/{pending.pk}/approve", {"comment": "ok", "expires": "2099-02-01"})
    pending.refresh_from_db()
    assert pending.status == "approved" and pending.grant.expires_at == datetime(2099, 2, 1, tzinfo=UTC)
    assert "Nothing waits for your decision." in decider.get("/access-requests/").content.decode()
    mine = asker.get("/access-requests/").content.decode()
    assert "Approved" in mine and "mark-maintainer" in mine


def test_the_grant_forms_take_limits_and_refuse_bad_ones(iris_service, owner, service_account):
    client = signed_in(owner)
    client.post("/services/iris-api/grants", {"user": "svc-consumer", "rate_per_second": "0"})
    assert not Grant.objects.filter(user=service_account).exists()
    client.post("/services/iris-api/grants", {"user": "svc-consumer", "rate_per_second": "4", "daily_quota": "100"})
    grant = Grant.objects.get(user=service_account)
    assert grant.rate_per_second == 4 and grant.daily_quota == 100
    page = client.get("/services/iris-api/").content.decode()
    assert "4.0/s" in page and "100/day" in page
    client.post(f"/services/iris-api/grants/{grant.pk}/limits", {"rate_per_second": "", "daily_quota": "50"})
    grant.refresh_from_db()
    assert grant.rate_per_second is None and grant.daily_quota == 50
    response = client.post(f"/services/iris-api/grants/{grant.pk}/limits", {"expires": "2001-01-01"}, follow=True)
    assert "in the future" in response.content.decode()


def test_the_limits_form_keeps_an_expiry_time_set_through_the_api(iris_service, owner, service_account):
    noon = datetime(2099, 6, 1, 12, 0, tzinfo=UTC)
    grant = services.grant_create(
        actor=owner, service=iris_service, user=service_account, limits=services.GrantLimits(expires_at=noon)
    )
    client = signed_in(owner)
    client.post(f"/services/iris-api/grants/{grant.pk}/limits", {"expires": "2099-06-01", "daily_quota": "7"})
    grant.refresh_from_db()
    assert grant.expires_at == noon and grant.daily_quota == 7
    client.post(f"/services/iris-api/grants/{grant.pk}/limits", {"expires": "", "daily_quota": "7"})
    grant.refresh_from_db()
    assert grant.expires_at is None


@pytest.mark.django_db(transaction=True)
def test_an_expired_grant_is_refused_at_a_real_gateway(iris_service, environments, member, owner, outsider, gateway):
    from portal.demo_models import iris_instances
    from tests.factories import bearer_client, deploy_now
    from tests.support import call, eventually

    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    services.grant_create(
        actor=owner,
        service=iris_service,
        user=outsider,
        limits=services.GrantLimits(expires_at=timezone.now() + timedelta(hours=1)),
    )
    token = bearer_client(outsider, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    assert eventually(lambda: call(url, token=token, body=body)[0] == 200)

    assert len(services.grants_expire(now=timezone.now() + timedelta(hours=2))) == 1
    code, answer, _ = eventually(lambda: (r := call(url, token=token, body=body))[0] == 403 and r, timeout=5)
    assert code == 403 and "oscar-outsider" in answer["detail"]


@pytest.mark.django_db(transaction=True)
def test_a_patched_quota_reaches_a_real_gateway(iris_service, environments, member, owner, outsider, gateway, api):
    from portal.demo_models import iris_instances
    from tests.factories import bearer_client, deploy_now
    from tests.support import call, eventually

    deploy_now(iris_service, member, environments["development"], iris_service.model.versions.get())
    grant = services.grant_create(actor=owner, service=iris_service, user=outsider)
    token = bearer_client(outsider, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    body = {"instances": iris_instances(count=1)}
    assert eventually(lambda: call(url, token=token, body=body)[0] == 200)

    patched = api(owner).patch(f"/api/v1/services/iris-api/grants/{grant.pk}", {"daily_quota": 1}, format="json")
    assert patched.status_code == 200, patched.content
    # Today's calls already reached the new quota: the next ones are refused once it is published.
    code, answer, _ = eventually(lambda: (r := call(url, token=token, body=body))[0] == 429 and r, timeout=5)
    assert code == 429, answer


def test_the_page_offers_the_service_accounts_one_looks_after(iris_service, outsider, service_account, approver):
    assert 'name="service_account"' not in signed_in(outsider).get("/services/iris-api/").content.decode()
    team = accounts.team_create(actor=outsider, name="shop")
    accounts.membership_add(actor=outsider, team=team, user=service_account, role=Role.VIEWER)
    client = signed_in(outsider)
    page = client.get("/services/iris-api/").content.decode()
    assert '<option value="svc-consumer">svc-consumer</option>' in page
    client.post("/services/iris-api/access-requests", {"reason": "Shop backend", "service_account": "svc-consumer"})
    assert AccessRequest.objects.get().service_account == service_account
    # Someone who does not look after it cannot pick it.
    signed_in(approver).post(
        "/services/iris-api/access-requests", {"reason": "Sneaky", "service_account": "svc-consumer"}
    )
    assert AccessRequest.objects.count() == 1
