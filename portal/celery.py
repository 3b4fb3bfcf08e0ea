import logging
import os

from celery import Celery
from celery.signals import after_setup_logger
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# What Celery logs at INFO for every task it receives, runs and schedules.
ROUTINE_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


@after_setup_logger.connect
def quiet_routine_tasks(logger, **kwargs) -> None:
    """Without WORKER_TASK_LOGS, a task's "received" and "succeeded" lines are left out (the
    periodic ones come several a second, and `make run` shares its terminal with them); a task
    that fails is still logged, at ERROR."""
    if not settings.WORKER_TASK_LOGS:
        for name in ROUTINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
