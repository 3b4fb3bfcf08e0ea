from django.contrib.auth.backends import ModelBackend

from accounts.services import sign_in_settings_get


class HumanModelBackend(ModelBackend):
    """Password sign-in for people only: service accounts authenticate with API tokens.

    When an admin has switched local password sign-in off (SignInSettings), only superusers
    get in with a local password (the admin's sign-in page), so nobody is locked out. The
    check is in authenticate() only: sessions started by single sign-on go on through this
    backend's get_user().
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None and not user.is_superuser and not sign_in_settings_get().password_sign_in:
            return None
        return user

    def user_can_authenticate(self, user) -> bool:
        return super().user_can_authenticate(user) and not getattr(user, "is_service_account", False)
