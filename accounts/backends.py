from django.contrib.auth.backends import ModelBackend


class HumanModelBackend(ModelBackend):
    """Password sign-in for people only: service accounts authenticate with API tokens."""

    def user_can_authenticate(self, user) -> bool:
        return super().user_can_authenticate(user) and not getattr(user, "is_service_account", False)
