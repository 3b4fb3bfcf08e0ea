from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Role, Team, User
from accounts.origin import Origin, origin_scope
from accounts.services import membership_add, team_create, user_create

DEMO_PASSWORD = "portal-demo"

# username, description, roles, team role
DEMO_PEOPLE = [
    ("admin", "platform admin", ["admin"], Role.OWNER),
    ("scientist", "data scientist", [], Role.MAINTAINER),
    ("approver", "IT approver", ["approver"], None),
]
DEMO_SERVICE_ACCOUNT = "consumer-app"
DEMO_TEAM = "data-science"


class Command(BaseCommand):
    help = "Create the demo team and logins. Safe to run again: existing objects are kept as they are."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("seed_demo creates accounts with a known password and refuses to run in production.")
        with origin_scope(Origin(source="cli")), transaction.atomic():
            created = self._seed()
        self.stdout.write("Demo data: " + (", ".join(created) if created else "already present") + ".")

    def _seed(self) -> list[str]:
        created: list[str] = []
        users: dict[str, User] = {}
        for username, _, roles, _ in DEMO_PEOPLE:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = user_create(actor=None, username=username, roles=roles)
                # set directly: the demo password is deliberately simple, and local only
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
                created.append(f"user {username}")
            users[username] = user
        if not User.objects.filter(username=DEMO_SERVICE_ACCOUNT).exists():
            user_create(actor=None, username=DEMO_SERVICE_ACCOUNT, is_service_account=True)
            created.append(f"service account {DEMO_SERVICE_ACCOUNT}")

        team = Team.objects.filter(name=DEMO_TEAM).first()
        if team is None:
            team = team_create(
                actor=users["admin"], name=DEMO_TEAM, description="Models of the data science team (demo)."
            )
            created.append(f"team {DEMO_TEAM}")
        for username, _, _, role in DEMO_PEOPLE:
            if role and not team.memberships.filter(user=users[username]).exists():
                membership_add(actor=users["admin"], team=team, user=users[username], role=role)
        return created
