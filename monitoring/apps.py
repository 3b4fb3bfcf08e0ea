from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        from deployments import signals, strategies
        from monitoring import receivers  # also counts Celery task outcomes (connected on import)
        from monitoring.selectors import versions_quality

        # Canary steps are also judged on ground truth, which this app keeps.
        strategies.quality_reader_register(versions_quality)

        signals.deployment_transitioned.connect(receivers.deployment_changed, dispatch_uid="monitoring.deployment")
        signals.access_request_created.connect(
            receivers.access_request_created, dispatch_uid="monitoring.access_request_created"
        )
        signals.access_request_decided.connect(
            receivers.access_request_decided, dispatch_uid="monitoring.access_request_decided"
        )
