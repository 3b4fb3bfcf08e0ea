import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Role, Team, User
from accounts.origin import Origin, origin_scope
from accounts.services import membership_add, team_create, user_create
from core.errors import Unavailable
from deployments import services as deployments
from deployments.models import Deployment, Environment, Service
from monitoring import services as monitoring
from portal.demo_models import IRIS_FIELDS, iris_csv, iris_instances, train_iris
from registry import services as registry
from registry.models import ModelVersion, RegisteredModel
from registry.storage import artifact_store

DEMO_PASSWORD = "portal-demo"

# username, description, roles, team role
DEMO_PEOPLE = [
    ("admin", "platform admin", ["admin"], Role.OWNER),
    ("scientist", "data scientist", [], Role.MAINTAINER),
    ("approver", "IT approver", ["approver"], None),
]
DEMO_SERVICE_ACCOUNT = "consumer-app"
DEMO_TEAM = "data-science"
DEMO_MODEL = "iris-classifier"
DEMO_SERVICE = "iris"
MODEL_CARD = """Classifies iris flowers into *setosa* (0), *versicolor* (1) and *virginica* (2)
from four measurements of the flower.

- **Training data**: the iris dataset that ships with scikit-learn (150 flowers).
- **Model**: logistic regression.
"""


class Command(BaseCommand):
    help = "Create the demo team and logins. Safe to run again: existing objects are kept as they are."

    def add_arguments(self, parser):
        parser.add_argument(
            "--allow-unsandboxed",
            action="store_true",
            help="allow unsandboxed model code in every environment (a single-user machine without bubblewrap)",
        )

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("seed_demo creates accounts with a known password and refuses to run in production.")
        with origin_scope(Origin(source="cli")):
            with transaction.atomic():
                created = self._seed()
                if options["allow_unsandboxed"]:
                    Environment.objects.update(allow_unsandboxed=True)
            try:
                created += self._seed_models()
            except Unavailable as exc:  # no sandbox for the registration check, and none allowed
                self.stdout.write(f"Demo model versions not registered: {exc.message}")
                return
            created += self._seed_service()
        self.stdout.write("Demo data: " + (", ".join(created) if created else "already present") + ".")

    def _seed(self) -> list[str]:
        created: list[str] = []
        Environment.ensure_defaults()
        users: dict[str, User] = {}
        for username, _, roles, _ in DEMO_PEOPLE:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = user_create(actor=None, username=username, roles=roles)
                # set directly: the demo password is deliberately simple, and local only
                user.set_password(DEMO_PASSWORD)
                user.email = f"{username}@portal.localhost"  # alert emails land in var/mail
                user.save(update_fields=["password", "email"])
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

    def _seed_models(self) -> list[str]:
        """A real model trained now, registered as 1.0.0 and as 2.0.0 with a breaking input change."""
        scientist = User.objects.get(username="scientist")
        model = RegisteredModel.objects.filter(name=DEMO_MODEL).first()
        created = []
        if model is None:
            team = Team.objects.get(name=DEMO_TEAM)
            model = registry.registered_model_create(
                actor=scientist, name=DEMO_MODEL, team=team, description=MODEL_CARD
            )
            created.append(f"model {DEMO_MODEL}")
        renamed = [f"{field}_cm" for field in IRIS_FIELDS]
        releases = [
            ("1.0.0", IRIS_FIELDS, 0.1, "First release."),
            (
                "2.0.0",
                renamed,
                10.0,
                "Field names now carry their unit (`sepal_length_cm`, ...): a breaking change. "
                "Less regularisation (C=10) lifts accuracy.",
            ),
        ]
        for version, fields, c, note in releases:
            if ModelVersion.objects.filter(model=model, version=version).exists():
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "iris.joblib"
                metrics = train_iris(path, C=c)
                staged = artifact_store().stage()
                staged.write(path.read_bytes())
                try:
                    registry.model_version_register(
                        actor=scientist,
                        model=model,
                        staged=staged,
                        data=registry.VersionInput(
                            version=version,
                            flavor="sklearn",
                            sample_input={"instances": iris_instances(fields)},
                            metrics=metrics,
                            description=note,
                            git_commit="demo",
                            data_ref="sklearn.datasets.load_iris",
                            parameters={"C": c, "max_iter": 200},
                            artifact_filename="iris.joblib",
                        ),
                    )
                finally:
                    staged.discard()
            registry.version_reference_set(
                actor=scientist,
                version=model.versions.get(version=version),
                filename="iris.csv",
                data=iris_csv(fields),
            )
            created.append(f"{DEMO_MODEL} {version}")
        return created

    def _seed_service(self) -> list[str]:
        """A service for the demo model: both majors live in development (the worker rolls
        them out as soon as it starts), and a production request waiting for the approver."""
        if Service.objects.filter(name=DEMO_SERVICE).exists():
            return []
        scientist = User.objects.get(username="scientist")
        model = RegisteredModel.objects.get(name=DEMO_MODEL)
        service = deployments.service_create(
            actor=scientist,
            name=DEMO_SERVICE,
            team=model.team,
            model=model,
            description="Iris species from flower measurements.",
        )
        deployments.grant_create(
            actor=User.objects.get(username="admin"),
            service=service,
            user=User.objects.get(username=DEMO_SERVICE_ACCOUNT),
        )
        environments = {e.name: e for e in Environment.objects.all()}
        for version, environment in (("1.0.0", "development"), ("2.0.0", "development"), ("1.0.0", "production")):
            if not Deployment.objects.filter(
                service=service, version__version=version, environment__name=environment
            ).exists():
                deployments.deployment_request(
                    actor=scientist,
                    service=service,
                    version=model.versions.get(version=version),
                    environment=environments[environment],
                    reason="Demo",
                )
        # Alerts a newcomer sees fire with `simulate_traffic iris --drift`.
        for metric, threshold, window, samples in (("drift_psi", 0.25, 5, 50), ("accuracy", 0.8, 60, 30)):
            monitoring.alert_rule_create(
                actor=scientist,
                service=service,
                environment=environments["development"],
                metric=metric,
                threshold=threshold,
                window_minutes=window,
                min_samples=samples,
            )
        return [
            f"service {DEMO_SERVICE} (two majors deploying to development, one request waiting for approval, "
            "alerts on drift and accuracy)"
        ]
