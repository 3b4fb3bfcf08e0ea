from __future__ import annotations

import pytest

from deployments import services
from deployments.models import Environment
from registry import services as registry
from tests.portal.conftest import make_version


@pytest.fixture
def environments(db) -> dict[str, Environment]:
    # Transactional tests empty the tables afterwards, migration data included.
    Environment.ensure_defaults()
    return {e.name: e for e in Environment.objects.all()}


@pytest.fixture
def iris_service(team, owner, iris_file, environments):
    model = registry.registered_model_create(actor=owner, name="iris", team=team)
    make_version(model, iris_file, actor=owner)
    return services.service_create(actor=owner, name="iris-api", team=team, model=model)


@pytest.fixture(autouse=True)
def no_model_servers_left(runtime_dir):
    """Every test starts with no local model server running and leaves none behind."""
    from deployments.runtime.local import LocalBackend

    yield
    LocalBackend(runtime_dir).stop_all()
