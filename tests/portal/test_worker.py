"""A real Celery worker process takes tasks from the real Redis."""

import pytest

from portal.tasks import ping

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_runs_a_task(celery_worker):
    result = ping.delay()
    assert "pong" in result.get(timeout=30)
    assert celery_worker.poll() is None
