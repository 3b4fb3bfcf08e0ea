import pytest
from django.core.management import call_command

from accounts.models import AuditEvent, Membership, Team, User

pytestmark = pytest.mark.django_db


def test_seed_demo_creates_the_cast_once(capsys):
    call_command("seed_demo")
    call_command("seed_demo")
    assert "already present" in capsys.readouterr().out
    assert Team.objects.get().name == "data-science"
    roles = dict(Membership.objects.values_list("user__username", "role"))
    assert roles == {"admin": "owner", "scientist": "maintainer"}
    assert User.objects.get(username="approver").is_approver
    assert User.objects.get(username="admin").is_superuser
    consumer = User.objects.get(username="consumer-app")
    assert consumer.is_service_account and not consumer.has_usable_password()
    assert User.objects.get(username="scientist").check_password("portal-demo")
    assert AuditEvent.objects.filter(action="team.create").count() == 1


def test_seed_demo_registers_a_real_model_with_a_breaking_second_major():
    from registry.models import ModelVersion

    call_command("seed_demo")
    v1, v2 = ModelVersion.objects.filter(model__name="iris-classifier").order_by("major")
    assert (v1.version, v2.version) == ("1.0.0", "2.0.0")
    assert v1.metrics["accuracy"] > 0.8 and v1.sample_output and v1.changes == []
    assert v2.previous == v1 and len(v2.breaking_changes) >= 4
    assert "sepal_length_cm" in v2.input_schema["properties"]


def test_seed_demo_creates_a_service_with_deployments_and_a_pending_approval():
    from deployments.models import Deployment, Grant

    call_command("seed_demo")
    call_command("seed_demo")
    statuses = sorted(Deployment.objects.values_list("environment__name", "version__version", "status"))
    assert statuses == [
        ("development", "1.0.0", "approved"),
        ("development", "2.0.0", "approved"),
        ("production", "1.0.0", "pending_approval"),
    ]
    assert Grant.objects.filter(user__username="consumer-app", service__name="iris").exists()
