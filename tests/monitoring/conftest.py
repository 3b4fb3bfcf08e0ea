import shutil

import pytest
import redis
from django.conf import settings

from gateway import contract
from tests.factories import bearer_client

# The `portal` command's fixtures, for the command's part in monitoring.
from tests.portal_client.conftest import cli, cli_home  # noqa: F401


@pytest.fixture(autouse=True)
def empty_log(redis_url):
    """Each test starts with no logged predictions or outcomes, in Redis or on disk."""
    client = redis.Redis.from_url(redis_url)
    client.delete(contract.KEY_PREDICTIONS, contract.KEY_PREDICTIONS_DROPPED)
    client.close()
    shutil.rmtree(settings.PREDICTION_LOG_ROOT, ignore_errors=True)
    settings.PREDICTION_LOG_ROOT.mkdir(parents=True)


@pytest.fixture
def consumer(service_account) -> str:
    """A caller's token: the invoke scope only."""
    return bearer_client(service_account, scopes=["invoke"]).raw_token
