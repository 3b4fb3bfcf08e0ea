"""The deployment page: one way of writing times, an Actions card that never stands empty,
and the approval message that links to the deployment it names."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from deployments import services, states
from deployments.models import Deployment, Status

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def pending(iris_service, member, environments) -> Deployment:
    return services.deployment_request(
        actor=member,
        service=iris_service,
        version=iris_service.model.versions.get(),
        environment=environments["production"],
    )


def test_rendered_and_polled_event_times_are_written_alike(pending, member):
    client = signed_in(member)
    page = client.get(reverse("deployment_detail", kwargs={"deployment_id": pending.pk})).content.decode()
    rendered = re.findall(r'<li data-id="(\d+)"[^>]*><time datetime="[^"]+">([^<]+)</time>', page)
    assert rendered and all(re.fullmatch(r"\d\d:\d\d:\d\d", text) for _, text in rendered)
    states.event(pending, "Something happened.")  # what the page's script appends
    polled = client.get(reverse("deployment_status", kwargs={"deployment_id": pending.pk}) + "?after=0").json()
    times = {str(e["id"]): e["time"] for e in polled["events"]}
    assert all(times[i] == text for i, text in rendered)
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in times.values()) and len(times) == len(rendered) + 1


def test_an_approver_sees_why_there_is_nothing_to_do(pending, approver, owner):
    url = reverse("deployment_detail", kwargs={"deployment_id": pending.pk})
    waiting = signed_in(approver).get(url).content.decode()
    assert "Approve" in waiting and 'id="no-actions"' not in waiting

    Deployment.objects.filter(pk=pending.pk).update(status=Status.PROVISIONING)
    page = signed_in(approver).get(url).content.decode()
    assert "Only members of team vision can steer this deployment" in page
    # Someone who may steer it is told it is only for now.
    assert "the actions come back once it is live" in signed_in(owner).get(url).content.decode()

    Deployment.objects.filter(pk=pending.pk).update(status=Status.FAILED)
    assert "Nothing to do: this deployment has ended (failed)." in signed_in(approver).get(url).content.decode()


def test_the_approved_message_links_to_the_deployment(pending, approver):
    client = signed_in(approver)
    action = reverse("deployment_action", kwargs={"deployment_id": pending.pk, "action": "approve"})
    queue = client.post(action, {"comment": "<b>ok</b>", "next": "queue"}, follow=True)
    assert queue.status_code == 200
    detail = reverse("deployment_detail", kwargs={"deployment_id": pending.pk})
    shown = [str(m) for m in queue.context["messages"]]
    assert shown == [
        f'Deployment <a href="{detail}">#{pending.pk}</a> (iris-api 1.0.0 to production) approved; '
        "a worker is rolling it out."
    ]
    assert f'<a href="{detail}">#{pending.pk}</a>' in queue.content.decode()  # a link, not escaped text
