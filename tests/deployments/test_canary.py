"""Canary and shadow with real processes: a gateway, a Celery worker running the scheduler
(the candidates are looked at every second), model servers of pyfunc models written here,
and callers sending requests all along. Counted from what callers got back."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import pytest

from accounts.models import AuditAction, AuditEvent
from deployments import selectors, services
from deployments.models import Deployment, Status, Strategy
from monitoring import services as monitoring_services
from monitoring.models import Notification
from portal.demo_models import iris_instances
from scripts.stack import stop
from tests.factories import bearer_client, deploy_now, make_version
from tests.support import call, eventually, running_instances, start_worker, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.end_to_end]

# Each passes its smoke test (the version's 3-instance sample) and differs on live traffic
# (the callers here send one instance per request).
BAD = (
    "def predict(instances):\n"
    "    if len(instances) < 3:\n"
    "        raise RuntimeError('fails on live traffic')\n"
    "    return [0 for _ in instances]\n"
)
SLOW = (
    "import time\n"
    "def predict(instances):\n"
    "    if len(instances) < 3:\n"
    "        time.sleep(0.3)\n"
    "    return [0 for _ in instances]\n"
)
GOOD = "def predict(instances):\n    return [0 for _ in instances]\n"
DIFFERENT = "def predict(instances):\n    return [99 for _ in instances]\n"


@dataclass
class Answer:
    at: float
    code: int
    version: str
    predictions: list | None
    prediction_id: str = ""


class Callers:
    """Callers sending one-instance predictions continuously (threads), every answer kept."""

    def __init__(self, url: str, token: str, threads: int = 1):
        self.url, self.token = url, token
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        body = {"instances": iris_instances(count=1)}
        while not self._stop.is_set():
            code, payload, _ = call(self.url, token=self.token, body=body, timeout=10)
            self.answers.append(
                Answer(
                    time.time(),
                    code,
                    payload.get("model_version", ""),
                    payload.get("predictions"),
                    payload.get("prediction_id", ""),
                )
            )

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.at <= end]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture
def worker(transactional_db, redis_url, tmp_path):
    """A real Celery worker with the scheduler: candidates judged every second."""
    proc = start_worker(
        redis_url,
        tmp_path / "worker.log",
        beat=True,
        name="canary",
        env={"CANARY_TICK_SECONDS": "1", "RUNTIME_DRAIN_SECONDS": "1"},
    )
    yield proc
    stop(proc)


@pytest.fixture
def route(iris_service, member, owner, service_account, environments, gateway, worker):
    """iris-api 1.0.0 live in development (judged after 30 requests), a caller's token and URL."""
    development = environments["development"]
    development.canary_min_requests = 30
    development.save()
    stable = deploy_now(iris_service, member, development, iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    assert eventually(lambda: call(url, token=token, body={"instances": iris_instances(count=1)})[0] == 200)
    return stable, url, token


def _candidate(iris_service, member, environments, tmp_path, code: str, version: str, **rollout) -> Deployment:
    path = tmp_path / f"model-{version}.py"
    path.write_text(code)
    candidate = make_version(iris_service.model, path, version=version, flavor="pyfunc")
    return services.deployment_request(
        actor=member,
        service=iris_service,
        version=candidate,
        environment=environments["development"],
        rollout=services.Rollout(**rollout),
    )


def _at(deployment: Deployment, step: str) -> float:
    return deployment.events.get(step=step).created_at.timestamp()


def test_a_candidate_failing_every_call_is_rolled_back_and_callers_saw_at_most_its_share(
    route, iris_service, member, environments, tmp_path
):
    stable, url, token = route
    with Callers(url, token) as callers:
        deployment = _candidate(
            iris_service, member, environments, tmp_path, BAD, "1.1.0", strategy=Strategy.CANARY, steps=(20, 50)
        )
        deployment = wait_for_status(deployment.pk, {Status.ROLLED_BACK, Status.LIVE, Status.FAILED}, timeout=90)
        assert deployment.status == Status.ROLLED_BACK
        assert eventually(lambda: deployment.events.filter(step="withdrawn").exists(), timeout=30)
        time.sleep(1)
    # The canary's first step, from its start until every gateway had the route without it.
    window = callers.between(_at(deployment, "status:canary"), _at(deployment, "withdrawn"))
    failed = [a for a in window if a.code != 200]
    assert failed, "the candidate never got a request"
    assert len(failed) / len(window) <= 0.20 + 0.10, (len(failed), len(window))
    assert deployment.step_index == 0  # never reached 50 %
    assert deployment.failure_reason.startswith("Rolled back automatically: error rate 100 % vs 0 % on stable")
    assert "(limit +2 points) over" in deployment.failure_reason
    after = callers.between(_at(deployment, "withdrawn"), time.time())
    assert after and all(a.code == 200 and a.version == "1.0.0" for a in after)
    assert not running_instances(f"d{deployment.pk}-r")
    stable.refresh_from_db()
    assert stable.status == Status.LIVE
    # Told, and audited, like any failure.
    assert AuditEvent.objects.filter(action=AuditAction.DEPLOYMENT_AUTO_ROLLBACK, target_id=str(deployment.pk)).exists()
    notification = Notification.objects.get(key=f"deployment:{deployment.pk}:rolled_back")
    assert "The canary of iris-api 1.1.0 in development was rolled back" in notification.subject
    assert "error rate 100 %" in notification.body


def test_a_candidate_with_a_slower_p95_is_rolled_back(route, iris_service, member, environments, tmp_path):
    _stable, url, token = route
    with Callers(url, token, threads=2):
        deployment = _candidate(
            iris_service, member, environments, tmp_path, SLOW, "1.1.0", strategy=Strategy.CANARY, steps=(50,)
        )
        deployment = wait_for_status(deployment.pk, {Status.ROLLED_BACK, Status.LIVE, Status.FAILED}, timeout=90)
    assert deployment.status == Status.ROLLED_BACK, deployment.failure_reason
    # 300 ms a call (more when both callers wait on the one instance) against a few ms.
    found = re.search(
        r"p95 latency (\d+) ms vs (\d+) ms on stable \(limit x1.5 and \+25 ms\) over (\d+) requests",
        deployment.failure_reason,
    )
    assert found, deployment.failure_reason
    candidate_p95, stable_p95, requests = map(int, found.groups())
    assert candidate_p95 >= 500 and stable_p95 < 300 and requests >= 30


def test_a_good_candidate_goes_through_every_step_without_a_failed_request(
    route, iris_service, member, environments, tmp_path
):
    stable, url, token = route
    with Callers(url, token) as callers:
        deployment = _candidate(
            iris_service,
            member,
            environments,
            tmp_path,
            GOOD,
            "1.1.0",
            strategy=Strategy.CANARY,
            steps=(20, 50),
            bake_seconds=3,
        )
        deployment = wait_for_status(deployment.pk, {Status.ROLLED_BACK, Status.LIVE, Status.FAILED}, timeout=120)
        assert eventually(lambda: not running_instances(f"d{stable.pk}-r"), timeout=30)
        time.sleep(0.5)
    assert deployment.status == Status.LIVE, deployment.failure_reason
    failed = [a for a in callers.answers if a.code != 200]
    assert not failed, failed[:5]
    messages = list(deployment.events.values_list("message", flat=True))
    assert any(m.startswith("20 % → 50 %: step 1 passed") for m in messages), messages
    assert any(m.startswith("50 % → 100 %: step 2 passed") for m in messages), messages
    # Each step's callers got both versions, the candidate more at 50 % than at 20 %.
    first = callers.between(_at(deployment, "share:canary:0"), _at(deployment, "step:1"))
    second = callers.between(_at(deployment, "share:canary:1"), _at(deployment, "step:2"))
    share = [sum(a.version == "1.1.0" for a in answers) / len(answers) for answers in (first, second)]
    assert 0 < share[0] < share[1] < 1, share
    assert callers.answers[-1].version == "1.1.0"
    stable.refresh_from_db()
    assert stable.status == Status.SUPERSEDED


def test_a_candidate_whose_predictions_ground_truth_proves_wrong_is_rolled_back(
    route, iris_service, member, owner, environments, tmp_path
):
    """Same errors (none) and latency as stable, but its answers are wrong: the outcomes sent
    for the logged predictions of both versions roll it back."""
    stable, url, token = route
    development = environments["development"]
    development.canary_min_outcomes = 20
    # Its latency is not what this is about (a pyfunc's first calls against a warm sklearn
    # model can be slower on a busy machine): only a much slower p95 would count.
    development.canary_min_p95_increase_ms = 10_000
    development.save()
    _code, before, _ = call(url, token=token, body={"instances": iris_instances(count=1)})
    right = before["predictions"][0]  # the truth, here: what stable answers
    wrong = f"def predict(instances):\n    return [{(right + 1) % 3} for _ in instances]\n"
    sent: set[str] = set()
    with Callers(url, token) as callers:
        # A long bake: no step passes meanwhile, only the outcomes can end it.
        deployment = _candidate(
            iris_service,
            member,
            environments,
            tmp_path,
            wrong,
            "1.1.0",
            strategy=Strategy.CANARY,
            steps=(20, 50),
            bake_seconds=600,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            deployment.refresh_from_db()
            if deployment.status in {Status.ROLLED_BACK, Status.LIVE, Status.FAILED}:
                break
            # The caller sends the actual outcome of each prediction it got, as it learns them.
            fresh = [a.prediction_id for a in list(callers.answers) if a.code == 200 and a.prediction_id not in sent]
            if fresh:
                result = monitoring_services.feedback_record(
                    actor=owner,
                    service=iris_service,
                    items=[{"prediction_id": p, "actual": right} for p in fresh[:1000]],
                )
                assert not result.unknown, result.unknown[:3]
                sent.update(fresh[:1000])
            time.sleep(0.5)
        assert deployment.status == Status.ROLLED_BACK, (deployment.status, deployment.analysis)
        assert eventually(lambda: deployment.events.filter(step="withdrawn").exists(), timeout=30)
        time.sleep(0.5)
    found = re.search(
        r"live accuracy 0 % vs 100 % on stable from ground truth \(limit x0.95 of stable's\) over (\d+) and (\d+) "
        r"predictions with outcomes",
        deployment.failure_reason,
    )
    assert found, deployment.failure_reason
    assert int(found.group(1)) >= 20 and int(found.group(2)) >= 20
    assert deployment.step_index == 0
    assert deployment.analysis["quality_metric"] == "accuracy"
    assert deployment.analysis["verdict"] == f"Regression: {found.group(0)}."
    assert deployment.analysis["candidate"]["quality"] == 0 and deployment.analysis["stable"]["quality"] == 1
    # Nothing failed for callers: the candidate answered every request it had, wrongly.
    assert callers.answers and all(a.code == 200 for a in callers.answers)
    assert {tuple(a.predictions) for a in callers.answers if a.version == "1.1.0"} == {((right + 1) % 3,)}
    after = callers.between(_at(deployment, "withdrawn"), time.time())
    assert after and all(a.version == "1.0.0" for a in after)
    stable.refresh_from_db()
    assert stable.status == Status.LIVE
    assert AuditEvent.objects.filter(action=AuditAction.DEPLOYMENT_AUTO_ROLLBACK, target_id=str(deployment.pk)).exists()


def test_shadow_never_changes_a_callers_answer_and_disagreement_rolls_it_back(
    route, iris_service, member, environments, tmp_path
):
    stable, url, token = route
    _code, before, _ = call(url, token=token, body={"instances": iris_instances(count=1)})
    with Callers(url, token) as callers:
        deployment = _candidate(
            iris_service,
            member,
            environments,
            tmp_path,
            DIFFERENT,
            "1.1.0",
            strategy=Strategy.SHADOW,
            shadow_percent=100,
        )
        deployment = wait_for_status(deployment.pk, {Status.ROLLED_BACK, Status.LIVE, Status.FAILED}, timeout=90)
        time.sleep(0.5)
    assert deployment.status == Status.ROLLED_BACK, deployment.failure_reason
    assert "predictions agree with stable on 0 % of copies (at least 95 %)" in deployment.failure_reason
    # Every caller got the live version's answer, while the candidate answered 99 to copies.
    assert callers.answers
    assert all(
        a.code == 200 and a.version == "1.0.0" and a.predictions == before["predictions"] for a in callers.answers
    )
    examples = selectors.shadow_examples(deployment=deployment)
    assert examples and examples[0].candidate == [99] and examples[0].stable == before["predictions"]
    assert deployment.analysis["candidate"]["disagree"] >= 30
    stable.refresh_from_db()
    assert stable.status == Status.LIVE


def test_consecutive_canaries_never_leak_traffic_to_a_candidate_no_longer_in_the_rollout(
    route, iris_service, member, environments, tmp_path
):
    _stable, url, token = route
    with Callers(url, token) as callers:
        first = _candidate(
            iris_service, member, environments, tmp_path, GOOD, "1.1.0", strategy=Strategy.CANARY, steps=(50,)
        )
        first = wait_for_status(first.pk, {Status.CANARY}, timeout=60)
        assert eventually(lambda: first.events.filter(step="share:canary:0").exists(), timeout=20)
        assert eventually(lambda: any(a.version == "1.1.0" for a in callers.answers), timeout=10)
        services.deployment_abort(actor=member, deployment=first)
        assert eventually(lambda: first.events.filter(step="withdrawn").exists(), timeout=30)
        second = _candidate(
            iris_service, member, environments, tmp_path, GOOD, "1.2.0", strategy=Strategy.CANARY, steps=(50,)
        )
        second = wait_for_status(second.pk, {Status.CANARY}, timeout=60)
        assert eventually(lambda: second.events.filter(step="share:canary:0").exists(), timeout=20)
        assert eventually(lambda: any(a.version == "1.2.0" for a in callers.answers), timeout=10)
        time.sleep(1)
        services.deployment_abort(actor=member, deployment=second)
        assert eventually(lambda: second.events.filter(step="withdrawn").exists(), timeout=30)
        time.sleep(0.5)
    assert not [a for a in callers.answers if a.code != 200]
    after_first = callers.between(_at(first, "withdrawn"), time.time())
    assert after_first and not [a for a in after_first if a.version == "1.1.0"]
    assert {a.version for a in callers.between(_at(second, "withdrawn"), time.time())} == {"1.0.0"}
