import socket

from celery import shared_task


@shared_task(name="portal.ping")
def ping() -> dict[str, str]:
    """Answer from a worker; the health endpoint and the integration tests use it."""
    return {"pong": socket.gethostname()}


@shared_task(name="portal.artifact_staging_cleanup")
def artifact_staging_cleanup() -> int:
    """Remove staging files abandoned by killed web processes, and resumable uploads left
    idle past their deadline (idempotent)."""
    from portal.services import artifact_staging_cleanup as cleanup
    from portal.services import upload_cleanup

    return cleanup(older_than_seconds=24 * 3600) + upload_cleanup()
