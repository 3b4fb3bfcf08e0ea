from django.apps import AppConfig


class CoreConfig(AppConfig):
    # An app only so that Django finds its template filters; it has no models.
    name = "core"
    verbose_name = "Core"
