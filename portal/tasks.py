import socket

from celery import shared_task


@shared_task(name="portal.ping")
def ping() -> dict[str, str]:
    """Answer from a worker; the health endpoint and the integration tests use it."""
    return {"pong": socket.gethostname()}
