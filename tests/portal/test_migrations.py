"""A database from before the registry left the project package keeps all of its data.

The registry's tables began in the `portal` app (portal 0001-0002). Migrations portal 0003,
registry 0001, deployments 0006 and portal 0004 move them to the `registry` app. Here the
test database is taken back to where those migrations begin, checked to be the old schema,
given more data through the old models (a version and an object permission, as the old code
wrote them), and migrated forward again: everything must still be there and still work.
"""

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from accounts import services as accounts
from accounts.models import ApiToken
from deployments import services as deployments
from deployments.models import Deployment, Service, Status
from registry import selectors, services
from registry.models import ModelVersion, RegisteredModel, Upload
from registry.storage import artifact_store
from tests.factories import deploy_now, make_version

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_THE_MOVE = [("portal", "0002_upload"), ("accounts", "0007_deprecation"), ("deployments", "0005_deprecation")]
REGISTRY_TABLES = [
    "artifact",
    "registeredmodel",
    "modelversion",
    "upload",
    "registeredmodeluserobjectpermission",
    "registeredmodelgroupobjectpermission",
]


def migrate(targets=None) -> MigrationExecutor:
    """Migrate to `targets` (the latest migrations when None), as `manage.py migrate` does."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())
    return MigrationExecutor(connection)  # a fresh loader sees what is applied now


def tables() -> set[str]:
    return set(connection.introspection.table_names())


def test_models_versions_permissions_deployments_tokens_and_uploads_survive_the_move(
    team, owner, member, outsider, service_account, environments, iris_file
):
    model = services.registered_model_create(actor=owner, name="iris", team=team, description="Kept.")
    version = make_version(model, iris_file, actor=owner)
    service = deployments.service_create(actor=owner, name="iris-api", team=team, model=model)
    live = deploy_now(service, member, environments["development"], version)
    deployments.grant_create(actor=owner, service=service, user=service_account)
    token, raw = accounts.token_create(actor=None, user=service_account, name="consumer", scopes=["invoke"])
    upload = services.upload_create(actor=member, size=10, filename="next.joblib")

    # Back to the schema the old code made and used.
    old = migrate(BEFORE_THE_MOVE).loader.project_state(BEFORE_THE_MOVE).apps
    assert {f"portal_{t}" for t in REGISTRY_TABLES} <= tables()
    assert not {f"registry_{t}" for t in REGISTRY_TABLES} & tables()
    assert ContentType.objects.get(model="registeredmodel").app_label == "portal"
    assert not ContentType.objects.filter(app_label="registry").exists()

    # More data, written the old way: a version, and an object permission for someone outside the team.
    OldModel = old.get_model("portal", "RegisteredModel")
    OldVersion = old.get_model("portal", "ModelVersion")
    OldUserPermission = old.get_model("portal", "RegisteredModelUserObjectPermission")
    old_model = OldModel.objects.get(name="iris")
    OldVersion.objects.create(
        model=old_model,
        version="1.1.0",
        major=1,
        minor=1,
        patch=0,
        flavor="sklearn",
        artifact=OldVersion.objects.get(version="1.0.0").artifact,
        sample_input=[[1, 2, 3, 4]],
    )
    view = old.get_model("auth", "Permission").objects.get(
        content_type__app_label="portal", codename="view_registeredmodel"
    )
    OldUserPermission.objects.create(user_id=outsider.pk, permission_id=view.pk, content_object=old_model)

    # Forward again, as `make run` does after pulling the change.
    migrate()
    assert {f"registry_{t}" for t in REGISTRY_TABLES} <= tables()
    assert not {t for t in tables() if t.startswith("portal_")}
    assert not ContentType.objects.filter(app_label="portal").exists()

    model = RegisteredModel.objects.get(name="iris")
    assert model.description == "Kept." and model.team == team
    versions = {v.version: v for v in ModelVersion.objects.filter(model=model)}
    assert set(versions) == {"1.0.0", "1.1.0"}
    assert versions["1.1.0"].artifact == versions["1.0.0"].artifact
    assert artifact_store().exists(versions["1.0.0"].artifact.sha256)
    # Permissions kept their rows: the team's role groups, and the user permission written the old way.
    for person, seen in ((owner, True), (member, True), (outsider, True), (service_account, False)):
        assert selectors.model_list(user=type(person).objects.get(pk=person.pk)).filter(pk=model.pk).exists() is seen
    member = type(member).objects.get(pk=member.pk)
    assert member.has_perm("registry.register_version", model)
    assert Permission.objects.get(codename="register_version").content_type.app_label == "registry"
    # The deployment is still live, on its version, and its service still refuses a model that does not exist.
    live = Deployment.objects.get(pk=live.pk)
    assert live.status == Status.LIVE and live.version == versions["1.0.0"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Service.objects.create(name="dangling", team=team, model_id=model.pk + 1000)
    # Tokens and uploads.
    assert accounts.token_authenticate(raw=raw).pk == token.pk == ApiToken.objects.get(name="consumer").pk
    assert selectors.upload_get(user=member, upload_id=str(upload.pk)).status == Upload.Status.RECEIVING
