"""Autoscaling under a step load: 1 client, then 32, then 1 again; then cold starts from zero.

    .venv/bin/python bench/autoscale.py [--low 1] [--high 32] [--high-seconds 30] [--model-ms 0]

A scratch portal with every part real: the gateway, the autoscaler process (`manage.py
autoscale`) and model servers on the `local` runtime. The iris model (or, with --model-ms, a
model that takes that long per request) is deployed autoscaled between 1 and 4 replicas,
aiming at 4 requests in flight per replica, scaling down after 10 s of lower demand. Keep-alive
clients send predictions without pause. Prints the replicas over time, the seconds from the
step up to the first added replica and to all four, the requests sent and failed (target: 0),
then scales a second deployment (min 0) to zero and times the first request after each idle
spell: the cold start a caller sees.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time

from _portal import ROOT, ScratchPortal, live_iris_service, start_gateway

from scripts.stack import stop, wait_until


class Client(threading.Thread):
    def __init__(self, port: int, path: str, token: str, body: bytes):
        super().__init__(daemon=True)
        self.port, self.path, self.body = port, path, body
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.sent = self.failed = 0
        self.failures: list[str] = []
        self.running = threading.Event()
        self.running.set()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while self.running.is_set():
            try:
                conn.request("POST", self.path, self.body, self.headers)
                response = conn.getresponse()
                payload = response.read()
                self.sent += 1
                if response.status != 200:
                    self.failed += 1
                    self.failures.append(f"{response.status} {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.sent += 1
                self.failed += 1
                self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--low", type=int, default=1)
    parser.add_argument("--high", type=int, default=32)
    parser.add_argument("--low-seconds", type=float, default=8)
    parser.add_argument("--high-seconds", type=float, default=30)
    parser.add_argument("--after-seconds", type=float, default=30, help="at --low again (the cool-down is 10 s)")
    parser.add_argument("--model-ms", type=int, default=0, help="a model taking this long per request (0: iris)")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--events", action="store_true", help="print the scale-to-zero deployment's events")
    args = parser.parse_args()
    with ScratchPortal() as portal:
        from deployments import rollout
        from deployments import services as deployments
        from deployments.models import Deployment, Instance, InstanceState
        from portal.demo_models import iris_instances
        from registry.models import ModelVersion

        scaling = deployments.Autoscaling(
            min_replicas=1, max_replicas=4, target_in_flight=4, scale_down_after_seconds=10
        )
        first, token = live_iris_service(autoscaling=scaling)
        if args.model_ms:
            first = redeploy_slow(first, args.model_ms, scaling)
        env = dict(portal.env, RUNTIME_DRAIN_SECONDS="3")
        gateway, port = start_gateway(env)
        autoscaler = subprocess.Popen(
            [sys.executable, "manage.py", "autoscale"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        path = "/serve/development/iris/v1/predict"
        body = json.dumps({"instances": iris_instances(count=1)}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def answer(timeout: float = 1) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.request("POST", path, body, headers)
                return conn.getresponse().status
            except OSError:
                return 0
            finally:
                conn.close()

        def ready(deployment_id: int) -> int:
            return Instance.objects.filter(deployment_id=deployment_id, state=InstanceState.READY).count()

        clients: list[Client] = []
        timeline: list[tuple[float, int, int, int]] = []  # (t, clients, ready replicas, requests so far)
        try:
            wait_until(lambda: answer() == 200, 30, "gateway")
            started = time.monotonic()

            def run_phase(count: int, seconds: float) -> None:
                while len(clients) < count:
                    clients.append(Client(port, path, token, body))
                    clients[-1].start()
                while len(clients) > count:
                    client = clients.pop()
                    client.running.clear()
                    retired.append(client)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    sent = sum(c.sent for c in clients + retired)
                    timeline.append((time.monotonic() - started, len(clients), ready(first.pk), sent))
                    time.sleep(0.5)

            retired: list[Client] = []
            run_phase(args.low, args.low_seconds)
            step_up = time.monotonic() - started
            run_phase(args.high, args.high_seconds)
            step_down = time.monotonic() - started
            run_phase(args.low, args.after_seconds)
            for client in clients:
                client.running.clear()
            for client in clients + retired:
                client.join(timeout=60)
            everyone = clients + retired

            # Scale to zero: a deployment allowed to stop every instance when idle.
            cold = scale_to_zero(first, scaling, rollout, deployments, ModelVersion)
            cold_starts = []
            for _ in range(args.cold_starts):
                wait_until(lambda: ready(cold.pk) == 0, 120, "scaled to zero")
                time.sleep(1)  # the gateways have the instance-less route
                t0 = time.monotonic()
                status = answer(timeout=90)
                cold_starts.append((time.monotonic() - t0, status))
            recorded = Deployment.objects.get(pk=cold.pk).last_cold_start_seconds
            if args.events:
                for event in Deployment.objects.get(pk=cold.pk).events.all():
                    print(f"{event.created_at:%H:%M:%S.%f} {event.message}")
        finally:
            for client in clients:
                client.running.clear()
            stop(autoscaler)
            stop(gateway)

    print_report(args, timeline, step_up, step_down, everyone, cold_starts, recorded)


def redeploy_slow(first, model_ms: int, scaling):
    """The same service, now a pyfunc model that takes `model_ms` per request."""
    import os
    from pathlib import Path

    from deployments import rollout
    from deployments import services as deployments
    from registry import services as registry
    from registry.storage import artifact_store

    path = Path(os.environ["PORTAL_VAR_DIR"]) / "slow.py"
    path.write_text(
        f"import time\ndef predict(instances):\n    time.sleep({model_ms / 1000})\n    return [0 for _ in instances]\n"
    )
    staged = artifact_store().stage()
    staged.write(path.read_bytes())
    sample = first.version.sample_input
    version = registry.model_version_register(
        actor=first.requested_by,
        model=first.service.model,
        staged=staged,
        data=registry.VersionInput(version="1.0.1", flavor="pyfunc", sample_input={"instances": sample}),
    )
    deployment = deployments.deployment_request(
        actor=first.requested_by,
        service=first.service,
        version=version,
        environment=first.environment,
        autoscaling=scaling,
    )
    rollout.rollout(deployment.pk, owner="bench")
    deployment.refresh_from_db()
    return deployment


def scale_to_zero(live, scaling, rollout, deployments, ModelVersion):
    """A new version of the live deployment (same artifact), autoscaled with min 0."""
    from dataclasses import replace

    base = ModelVersion.objects.get(pk=live.version_id)
    version = ModelVersion.objects.create(
        model=base.model,
        version="1.0.9",
        major=1,
        minor=0,
        patch=9,
        flavor=base.flavor,
        artifact=base.artifact,
        input_schema=base.input_schema,
        output_schema=base.output_schema,
        sample_input=base.sample_input,
        sample_output=base.sample_output,
    )
    deployment = deployments.deployment_request(
        actor=live.requested_by,
        service=live.service,
        version=version,
        environment=live.environment,
        autoscaling=replace(scaling, min_replicas=0, scale_down_after_seconds=5),
    )
    rollout.rollout(deployment.pk, owner="bench")
    deployment.refresh_from_db()
    assert deployment.status == "live", deployment.failure_reason
    return deployment


def print_report(args, timeline, step_up, step_down, clients, cold_starts, recorded) -> None:
    sent = sum(c.sent for c in clients)
    failed = sum(c.failed for c in clients)
    print(f"\nStep load {args.low} → {args.high} → {args.low} keep-alive clients; autoscaled 1 to 4 replicas,")
    print("target 4 requests in flight per replica, scale down after 10 s of lower demand")
    print("\n   t (s)  clients  replicas  requests/s")
    last_t, last_sent, last_print = 0.0, 0, -10.0
    for t, count, replicas, so_far in timeline:
        if t - last_print >= 2:
            rate = (so_far - last_sent) / (t - last_t) if t > last_t else 0
            print(f"  {t:6.1f}  {count:7d}  {replicas:8d}  {rate:10.0f}")
            last_t, last_sent, last_print = t, so_far, t
    first_up = next((t for t, _, replicas, _ in timeline if t >= step_up and replicas > 1), None)
    all_up = next((t for t, _, replicas, _ in timeline if t >= step_up and replicas >= 4), None)
    back = next((t for t, _, replicas, _ in timeline if t >= step_down and replicas == 1), None)

    def since(at, start):
        return f"{at - start:.1f} s" if at is not None else "never"

    print(f"\nscale up after the step to {args.high} clients: first added replica {since(first_up, step_up)}, ")
    print(f"  all 4 ready {since(all_up, step_up)} (sampled every 0.5 s)")
    print(f"back to 1 replica after the step down: {since(back, step_down)} (cool-down 10 s, drain included)")
    print(f"requests sent: {sent}, failed: {failed}   (target: 0 failed)")
    for failure in [f for c in clients for f in c.failures][:5]:
        print("  failure:", failure)
    if cold_starts:
        times = ", ".join(f"{s:.2f} s (HTTP {status})" for s, status in cold_starts)
        print(f"\ncold start from zero, first request's answer time: {times}")
        print(f"  the last one as the portal recorded it: {recorded} s   (MLflow models serve: 10.4 s to first answer)")


if __name__ == "__main__":
    main()
