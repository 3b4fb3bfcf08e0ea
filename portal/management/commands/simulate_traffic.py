"""python manage.py simulate_traffic iris [--env development] [--seconds 60] [--rate 20] [--drift]

Calls a live service through the gateway with iris flowers (from the dataset that ships with
scikit-learn, so each one's true species is known) as its demo consumer, and sends the true
species back as ground truth for a share of them, so the Performance page fills: the
prediction log, live accuracy beside the registered one, the drift heat map. With --drift,
petal length is shifted by 2 cm: the inputs no longer look like the version's reference data,
accuracy drops, and the demo's drift alert fires within a minute.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from accounts.models import User
from accounts.services import token_create
from deployments.models import Deployment, Status
from monitoring import services as monitoring
from portal.demo_models import IRIS_FIELDS
from registry import schemas


class Command(BaseCommand):
    help = __doc__.split("\n\n", 1)[1]

    def add_arguments(self, parser):
        parser.add_argument("service")
        parser.add_argument("--env", default="development", help="The environment to call (default: development).")
        parser.add_argument("--major", type=int, help="The major version to call (default: the newest live one).")
        parser.add_argument("--consumer", default="consumer-app", help="The account that calls (needs a grant).")
        parser.add_argument("--seconds", type=float, default=60, help="How long to send for (default: 60).")
        parser.add_argument("--rate", type=float, default=20, help="Predictions per second (default: 20).")
        parser.add_argument(
            "--labelled", type=float, default=0.5, help="The share sent back as ground truth (default: 0.5)."
        )
        parser.add_argument("--drift", action="store_true", help="Shift petal length by 2 cm.")

    def handle(self, *args, service: str, env: str, major: int | None, consumer: str, **options):
        if settings.PRODUCTION:
            raise CommandError("simulate_traffic sends made-up traffic and refuses to run in production.")
        live = Deployment.objects.filter(service__name=service, environment__name=env, status=Status.LIVE)
        deployment = (live.filter(major=major) if major is not None else live).order_by("-major").first()
        if deployment is None:
            raise CommandError(f"Nothing of '{service}' is live in {env}{f' as v{major}' if major else ''}.")
        account = User.objects.filter(username=consumer).first()
        if account is None:
            raise CommandError(f"No account '{consumer}'.")
        fields = schemas.field_order(deployment.version.input_schema) or IRIS_FIELDS
        if len(fields) != len(IRIS_FIELDS):
            raise CommandError(f"'{service}' v{deployment.major} does not take iris's four measurements.")
        _, token = token_create(
            actor=None, user=account, name=f"simulate_traffic {time.time():.0f}", scopes=["invoke"], expires_in_days=1
        )
        url = f"{settings.GATEWAY_URL}/serve/{env}/{service}/v{deployment.major}/predict"
        how = " with drift" if options["drift"] else ""
        self.stdout.write(f"Calling {url} as {consumer} for {options['seconds']:g} s{how}.")
        probe = json.dumps({"instances": [dict.fromkeys(fields, 1.0)]}).encode()
        deadline = time.monotonic() + 15  # the new token reaches the gateways with the next snapshot
        while _post(url, token, probe) is None:
            if time.monotonic() > deadline:
                raise CommandError(f"{url} does not answer {consumer}: is the gateway up, and is there a grant?")
            time.sleep(0.3)
        sent, outcomes, failed = self._run(deployment, url, token, fields, account, **options)
        self.stdout.write(f"Sent {sent} predictions ({failed} failed) and {outcomes} outcomes.")
        page = reverse("service_performance", args=[service])
        self.stdout.write(f"See {settings.PORTAL_URL}{page}?environment={env}")

    def _run(self, deployment, url, token, fields, account, *, seconds, rate, labelled, drift, **_options):
        from sklearn.datasets import load_iris

        flowers, species = load_iris(return_X_y=True)
        rng = random.Random()  # noqa: S311 - made-up traffic
        pending: list[dict] = []
        sent = outcomes = failed = 0
        deadline = time.monotonic() + seconds
        next_flush = time.monotonic() + 2
        while time.monotonic() < deadline:
            n = rng.randrange(len(flowers))
            values = [float(v) for v in flowers[n]]
            if drift:
                values[2] += 2.0
            body = json.dumps({"instances": [dict(zip(fields, values, strict=True))]}).encode()
            answer = _post(url, token, body)
            sent += 1
            if answer is None:
                failed += 1
            elif rng.random() < labelled:
                pending.append({"prediction_id": answer["prediction_id"], "actual": int(species[n])})
            if time.monotonic() >= next_flush and pending:
                outcomes += monitoring.feedback_record(
                    actor=account, service=deployment.service, items=pending
                ).accepted
                self.stdout.write(f"  {sent} predictions, {outcomes} outcomes sent")
                pending, next_flush = [], time.monotonic() + 2
            time.sleep(max(0.0, 1 / rate))
        if pending:
            outcomes += self._outcomes(account, deployment, pending)
        return sent, outcomes, failed

    def _outcomes(self, account, deployment, items: list[dict]) -> int:
        return monitoring.feedback_record(actor=account, service=deployment.service, items=items).accepted


def _post(url: str, token: str, body: bytes) -> dict | None:
    request = urllib.request.Request(  # noqa: S310 - the gateway's own URL
        url, data=body, method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())
    except (OSError, ValueError):
        return None
