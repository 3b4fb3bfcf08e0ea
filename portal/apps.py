from django.apps import AppConfig


class PortalConfig(AppConfig):
    # The project package is an app for its management command (seed_demo) and for the
    # migrations that record where the registry's tables began (see migrations/0003).
    name = "portal"
    verbose_name = "Portal"
