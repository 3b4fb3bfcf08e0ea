from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts import receivers, schema  # noqa: F401  (login audit receivers, OpenAPI auth scheme)
