"""Canary and shadow under constant load, in one run.

    .venv/bin/python bench/canary.py [--seconds 10] [--clients 4]

Starts a scratch portal, deploys the iris model (a sandboxed model-server process on a unix
socket) and the gateway (uvicorn, uvloop, one process), then:

1. Shadow's cost: a shadow deployment of the same model (its own sandboxed instance) is
   provisioned by the rollout engine; wrk drives the gateway at concurrency 8 with the route
   published without the candidate and with it at 10 % shadow, alternated three times each
   (the route rewritten through gateway/contract.py, as the control plane publishes it).
   Prints requests per second, p50/p99 and the gateway process's CPU time per request for
   each, and the copies the gateway sent, compared and dropped. The shadow is then aborted.
2. A bad candidate (a pyfunc model that passes its smoke test and fails every live call) as a
   canary of 10 % then 50 %, under --clients keep-alive clients sending predictions without
   pause; the canary engine (deployments/strategies.py, called here every 0.5 s as the Celery
   beat task would) judges it. Prints the failed requests over the total while it was tried,
   and the seconds from its first share to the automatic rollback and to every gateway
   routing without it.
3. A good candidate (the same model as a new version) through the same steps to 100 %.
   Prints failed requests (target 0) and the seconds from the first share to live.
4. A wrong candidate: no errors, the same latency, but another label than the live version's
   for every caller, as a canary of 10 % then 50 % with a bake longer than the run, so that
   only ground truth can end it. The callers' outcomes (the live version's label, here the
   truth) are sent for every answer as the prediction log is drained (every 0.5 s, as the
   beat task does every 2 s). Prints the wrong answers callers got over the total while it
   was tried, the outcomes sent, and the seconds from its first share to the rollback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from _portal import ScratchPortal, live_iris_service, start_gateway
from _wrk import LUA, answers, ensure_wrk, run_wrk
from rollout import Client

from scripts.stack import stop, wait_until

# Passes the smoke test (the version's sample has 3 instances); every caller's request (one
# instance) fails.
BAD_MODEL = (
    "def predict(instances):\n"
    "    if len(instances) < 3:\n"
    "        raise RuntimeError('fails on live traffic')\n"
    "    return [0 for _ in instances]\n"
)
ROUTE_KEY = "development/iris/v1"
# Answers a fixed label (filled in: one the live version never gives these callers).
WRONG_MODEL = "def predict(instances):\n    return [%d for _ in instances]\n"


def new_version(base, version: str, *, artifact=None, flavor: str | None = None):
    """A version row of `base`'s model (its artifact unless another is given)."""
    from registry.models import ModelVersion

    major, minor, patch = (int(p) for p in version.split("."))
    return ModelVersion.objects.create(
        model=base.model,
        version=version,
        major=major,
        minor=minor,
        patch=patch,
        flavor=flavor or base.flavor,
        artifact=artifact or base.artifact,
        input_schema=base.input_schema,
        output_schema=base.output_schema,
        sample_input=base.sample_input,
        sample_output=base.sample_output,
        task=base.task,
    )


def pyfunc_artifact(source: str):
    from registry.models import Artifact
    from registry.storage import artifact_store

    staged = artifact_store().stage()
    staged.write(source.encode())
    stored = staged.commit()
    artifact, _ = Artifact.objects.get_or_create(sha256=stored.sha256, defaults={"size": stored.size})
    return artifact


def request_candidate(first, version, **rollout):
    from deployments import rollout as engine
    from deployments import services

    deployment = services.deployment_request(
        actor=first.requested_by,
        service=first.service,
        version=version,
        environment=first.environment,
        rollout=services.Rollout(**rollout),
    )
    engine.rollout(deployment.pk, owner="bench")  # provisions, smoke-tests, publishes the first share
    deployment.refresh_from_db()
    return deployment


def drive(deployment, until: set[str], done_step: str, timeout: float = 300, each=None):
    """Call the canary engine every 0.5 s (as the beat task does) until the deployment reaches
    one of `until` and has the event `done_step` (calling `each` first, every time)."""
    from deployments import strategies
    from deployments.models import Deployment

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if each is not None:
            each()
        strategies.advance(deployment.pk, owner="bench")
        deployment = Deployment.objects.get(pk=deployment.pk)
        if deployment.status in until and deployment.events.filter(step=done_step).exists():
            return deployment
        time.sleep(0.5)
    raise SystemExit(f"deployment {deployment.pk} did not reach {until} within {timeout} s: {deployment.status}")


def event_at(deployment, step: str) -> float:
    return deployment.events.filter(step=step).earliest("created_at").created_at.timestamp()


def published_route():
    """The route as the control plane published it (gateway/contract.py's Route)."""
    import redis
    from django.conf import settings

    from gateway import contract

    return contract.Route.decode(redis.Redis.from_url(settings.REDIS_URL).hget(contract.KEY_ROUTES, ROUTE_KEY))


def set_candidate(candidate) -> None:
    """Rewrite the route with this candidate (or none) and bump the generation, through the
    contract as the control plane publishes, then give the gateway a moment to load it."""
    import redis
    from django.conf import settings

    from gateway import contract

    route = dataclasses.replace(published_route(), candidate=candidate)
    with redis.Redis.from_url(settings.REDIS_URL).pipeline(transaction=True) as pipe:
        pipe.hset(contract.KEY_ROUTES, ROUTE_KEY, route.encode())
        pipe.incr(contract.KEY_GENERATION)
        pipe.execute()
    time.sleep(1)


def shadow_counts() -> dict[str, int]:
    import redis
    from django.conf import settings

    from gateway import contract

    r = redis.Redis.from_url(settings.REDIS_URL)
    counts: dict[str, int] = {}
    for key in r.scan_iter(f"{contract.METRICS_KEY_PREFIX}*"):
        for name, value in r.hgetall(key).items():
            _series, kind = contract.parse_metric_field(name)
            if kind in contract.SHADOW_KINDS:
                counts[kind] = counts.get(kind, 0) + int(value)
    return counts


def predicted_label(url: str, body: str, token: str) -> int:
    request = urllib.request.Request(  # noqa: S310 - the gateway's own http URL
        url, data=body.encode(), method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return int(json.loads(response.read())["predictions"][0])


def totals(clients) -> tuple[int, int]:
    return sum(c.sent for c in clients), sum(c.failed for c in clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run of part 1")
    parser.add_argument("--clients", type=int, default=4, help="keep-alive clients in parts 2 and 3")
    args = parser.parse_args()
    wrk = ensure_wrk()
    with ScratchPortal() as portal, tempfile.TemporaryDirectory() as tmp:
        from deployments import strategies
        from deployments.models import Deployment, Environment
        from gateway import contract
        from monitoring.services import feedback_record
        from monitoring.tasks import drain_predictions
        from portal.demo_models import iris_instances
        from registry.models import ModelVersion

        first, token = live_iris_service()
        base = ModelVersion.objects.get(pk=first.version_id)
        development = Environment.objects.get(name="development")
        gateway, port = start_gateway(portal.env)
        try:
            url = f"http://127.0.0.1:{port}/serve/{ROUTE_KEY}/predict"
            body = json.dumps({"instances": iris_instances(count=1)})
            lua = Path(tmp) / "gateway.lua"
            lua.write_text(LUA % (body, f'wrk.headers["Authorization"] = "Bearer {token}"'))
            wait_until(lambda: answers(url, body, token), 30, "gateway")
            process = psutil.Process(gateway.pid)

            # ------------------------------------------------ 1. shadow's cost
            shadow = request_candidate(first, new_version(base, "1.0.1"), strategy="shadow", shadow_percent=10)
            assert shadow.status == "shadow", list(shadow.events.values_list("message", flat=True))
            copied = published_route().candidate
            assert copied is not None and copied.mode == contract.SHADOW, copied
            runs: dict[str, list[tuple[dict, float]]] = {"none": [], "shadow 10 %": []}
            run_wrk(wrk, url, lua, 8, 2)  # warm up
            copies_before = shadow_counts()
            for _round in range(3):
                for case, candidate in (("none", None), ("shadow 10 %", copied)):
                    set_candidate(candidate)
                    before = process.cpu_times()
                    result = run_wrk(wrk, url, lua, 8, args.seconds)
                    after = process.cpu_times()
                    cpu = (after.user - before.user + after.system - before.system) / max(result["requests"], 1)
                    runs[case].append((result, cpu))
            time.sleep(1.5)  # the last counts flushed
            copies = {k: v - copies_before.get(k, 0) for k, v in shadow_counts().items()}
            set_candidate(copied)
            strategies.rollback(shadow, reason="the benchmark's shadow part is over.")
            drive(shadow, {"rolled_back"}, "withdrawn")

            # ------------------------------------------------ 2 and 3. canaries under load
            clients = [Client(port, f"/serve/{ROUTE_KEY}/predict", token, body.encode()) for _ in range(args.clients)]
            for client in clients:
                client.start()
            time.sleep(1)
            steps = {"strategy": "canary", "steps": (10, 50), "bake_seconds": 5}

            sent0, failed0 = totals(clients)
            bad = request_candidate(
                first, new_version(base, "1.1.0", artifact=pyfunc_artifact(BAD_MODEL), flavor="pyfunc"), **steps
            )
            bad = drive(bad, {"rolled_back", "live"}, "withdrawn")
            sent1, failed1 = totals(clients)
            bad_started = event_at(bad, "status:canary")
            bad_reason = bad.failure_reason
            bad_seconds = (event_at(bad, "status:rolled_back") - bad_started, event_at(bad, "withdrawn") - bad_started)

            good = request_candidate(first, new_version(base, "1.2.0"), **steps)
            good = drive(good, {"live"}, "switch")
            time.sleep(1)
            sent2, failed2 = totals(clients)
            good_seconds = event_at(good, "status:live") - event_at(good, "status:canary")
            versions: dict[str, int] = {}  # who answered, up to here
            for client in clients:
                for version, count in client.versions.items():
                    versions[version] = versions.get(version, 0) + count

            # ------------------------------------------------ 4. a wrong candidate, judged by ground truth
            truth = predicted_label(url, body, token)  # the live version's answer is taken as the truth
            sent_outcomes = 0
            wrong_version = new_version(
                base, "1.3.0", artifact=pyfunc_artifact(WRONG_MODEL % ((truth + 1) % 3)), flavor="pyfunc"
            )
            seen = [len(c.answered) for c in clients]

            def send_outcomes() -> None:
                nonlocal sent_outcomes
                drain_predictions(max_seconds=2)
                ids = []
                for n, client in enumerate(clients):
                    end = len(client.answered)
                    ids += [pid for pid, _ in client.answered[seen[n] : end]]
                    seen[n] = end
                for start in range(0, len(ids), 1000):
                    feedback_record(
                        actor=first.requested_by,
                        service=first.service,
                        items=[{"prediction_id": p, "actual": truth} for p in ids[start : start + 1000]],
                    )
                sent_outcomes += len(ids)

            # Only ground truth is to end it: its p95 may be up to 1 s slower (a pyfunc model's
            # first calls beside a warm sklearn one, on two busy CPUs, can trip the latency check).
            Environment.objects.filter(pk=development.pk).update(canary_min_p95_increase_ms=1000)
            answered3 = [len(c.answered) for c in clients]
            sent3, failed3 = totals(clients)
            wrong = request_candidate(first, wrong_version, strategy="canary", steps=(10, 50), bake_seconds=3600)
            wrong = drive(wrong, {"rolled_back", "live"}, "withdrawn", each=send_outcomes)
            sent4, failed4 = totals(clients)
            tried = [a for n, c in enumerate(clients) for a in c.answered[answered3[n] :]]
            wrong_answers = sum(version == "1.3.0" for _, version in tried)
            wrong_started = event_at(wrong, "status:canary")
            wrong_seconds = event_at(wrong, "status:rolled_back") - wrong_started
            wrong_reason = wrong.failure_reason
            wrong_read_ms = (wrong.analysis or {}).get("quality_took", 0) * 1000
            for client in clients:
                client.running.clear()
            for client in clients:
                client.join(timeout=15)
            failures = [f for c in clients for f in c.failures]
            stable_live = Deployment.objects.filter(service=first.service, status="live").get().version.version
        finally:
            stop(gateway)

    print(
        f"\nmodel: iris (sklearn), sandboxed model-server processes; gateway: one uvicorn process; {psutil.cpu_count()} CPUs"
    )
    print(
        f"1. gateway at concurrency 8 (wrk, {args.seconds} s per run, 3 runs each, alternated), the shadow a second instance"
    )
    print(f"{'case':>12} | {'rps':>6} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} | {'errors':>6}")
    medians = {}
    for case, results in runs.items():
        rps = statistics.median(r["rps"] for r, _ in results)
        cpu = statistics.median(c for _, c in results)
        medians[case] = (rps, cpu)
        print(
            f"{case:>12} | {rps:>6.0f} {statistics.median(r['p50'] for r, _ in results):>7.2f} "
            f"{statistics.median(r['p99'] for r, _ in results):>7.2f} {cpu * 1e6:>10.0f} | "
            f"{sum(r['errors'] for r, _ in results):>6}"
        )
    (rps_none, cpu_none), (rps_shadow, cpu_shadow) = medians["none"], medians["shadow 10 %"]
    print(
        f"shadow/none: throughput x{rps_shadow / rps_none:.2f}, gateway CPU per request x{cpu_shadow / cpu_none:.2f}; "
        f"copies sent {copies.get(contract.SHADOW_REQUESTS, 0)}, agreeing {copies.get(contract.SHADOW_AGREE, 0)}, "
        f"disagreeing {copies.get(contract.SHADOW_DISAGREE, 0)}, failed {copies.get(contract.SHADOW_ERRORS, 0)}, "
        f"dropped (over {8} in flight) {copies.get(contract.SHADOW_DROPPED, 0)}"
    )
    print(f"\n2. bad candidate, canary 10 % then 50 %, bake 5 s, {args.clients} keep-alive clients without pause")
    print(
        f"   failed requests: {failed1 - failed0} of {sent1 - sent0} ({(failed1 - failed0) / max(sent1 - sent0, 1):.1%}) from its request to its withdrawal"
    )
    print(
        f"   seconds from its first share to the automatic rollback: {bad_seconds[0]:.1f}; to every gateway without it: {bad_seconds[1]:.1f}"
    )
    print(f"   reason: {bad_reason}")
    print("\n3. good candidate, the same steps")
    print(f"   failed requests: {failed2 - failed1} of {sent2 - sent1}   (target: 0)")
    print(
        f"   seconds from its first share to live: {good_seconds:.1f}; live now: {stable_live}; answered by: {versions}"
    )
    print(
        f"\n4. wrong candidate (another label, no errors), canary 10 % then 50 %, a bake longer than the run, p95 may be 1 s slower, {args.clients} clients"
    )
    print(
        f"   wrong answers callers got: {wrong_answers} of {sent4 - sent3} ({wrong_answers / max(sent4 - sent3, 1):.1%}) from its request to its withdrawal; "
        f"failed requests: {failed4 - failed3}"
    )
    print(
        f"   outcomes sent: {sent_outcomes}; seconds from its first share to the automatic rollback: {wrong_seconds:.1f} "
        f"(min outcomes per version: {development.canary_min_outcomes}); the last ground-truth read took {wrong_read_ms:.0f} ms"
    )
    print(f"   reason: {wrong_reason}")
    for failure in failures[:3]:
        print("   a failure:", failure)
    print(f"min requests before judging: {development.canary_min_requests}")


if __name__ == "__main__":
    main()
