"""Periodic housekeeping of the artifact store."""

from celery import shared_task

from registry import services


@shared_task(name="registry.artifact_staging_cleanup")
def artifact_staging_cleanup() -> int:
    """Remove staging files abandoned by killed web processes, and resumable uploads left
    idle past their deadline (idempotent)."""
    return services.artifact_staging_cleanup(older_than_seconds=24 * 3600) + services.upload_cleanup()
