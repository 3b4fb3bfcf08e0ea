from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import TokenScope, User
from accounts.origin import Origin, origin_scope
from accounts.services import token_create
from core.errors import PortalError


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it, and nothing else. The token is shown only once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", help="Where the token will be used (default: 'command line <time>').")
        parser.add_argument("--expires-in-days", type=int, default=settings.API_TOKEN_DEFAULT_DAYS)
        parser.add_argument(
            "--scopes",
            default=",".join(TokenScope.values),
            help=f"Comma-separated, from: {', '.join(TokenScope.values)}.",
        )

    def handle(self, *args, username, name, expires_in_days, scopes, **options):
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named '{username}'.")
        if not user.is_active:
            raise CommandError(f"User '{username}' is deactivated.")
        name = name or f"command line {timezone.now():%Y-%m-%d %H:%M:%S.%f}"
        scope_list = [s.strip() for s in scopes.split(",") if s.strip()]
        try:
            # Whoever can run manage.py holds the machine's authority: actor=None.
            with origin_scope(Origin(source="cli")):
                _, raw = token_create(
                    actor=None, user=user, name=name, expires_in_days=expires_in_days, scopes=scope_list
                )
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
