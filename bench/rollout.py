"""Constant load through the gateway during consecutive version switches.

    .venv/bin/python bench/rollout.py [--switches 10] [--clients 4]

Deploys the iris model, starts the gateway, keeps --clients keep-alive clients sending
predictions without pause, and rolls out --switches new versions one after another
(blue/green: start beside, ready, smoke test, switch the route, drain the old). Prints the
requests sent and failed (target: 0 failed) and how long each switch took.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time

from _portal import ScratchPortal, live_iris_service, start_gateway

from scripts.stack import stop, wait_until


class Client(threading.Thread):
    def __init__(self, port: int, path: str, token: str, body: bytes):
        super().__init__(daemon=True)
        self.port, self.path, self.body = port, path, body
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.sent = self.failed = 0
        self.versions: dict[str, int] = {}
        self.failures: list[str] = []
        self.answered: list[tuple[str, str]] = []  # (prediction id, version) of each 200
        self.running = threading.Event()
        self.running.set()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while self.running.is_set():
            try:
                conn.request("POST", self.path, self.body, self.headers)
                response = conn.getresponse()
                payload = response.read()
                self.sent += 1
                if response.status == 200:
                    answer = json.loads(payload)
                    version = answer["model_version"]
                    self.versions[version] = self.versions.get(version, 0) + 1
                    self.answered.append((answer.get("prediction_id", ""), version))
                else:
                    self.failed += 1
                    self.failures.append(f"{response.status} {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.sent += 1
                self.failed += 1
                self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with ScratchPortal() as portal:
        from deployments import rollout
        from deployments import services as deployments
        from portal.demo_models import iris_instances
        from registry.models import ModelVersion

        first, token = live_iris_service()
        service, environment = first.service, first.environment
        base = ModelVersion.objects.get(pk=first.version_id)
        gateway, port = start_gateway(portal.env)
        try:
            path = "/serve/development/iris/v1/predict"
            body = json.dumps({"instances": iris_instances(count=1)}).encode()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

            def answers() -> bool:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                try:
                    conn.request("POST", path, body, headers)
                    return conn.getresponse().status == 200
                except OSError:
                    return False

            wait_until(answers, 30, "gateway")
            clients = [Client(port, path, token, body) for _ in range(args.clients)]
            for client in clients:
                client.start()
            time.sleep(1)
            durations = []
            for n in range(1, args.switches + 1):
                # A new version row of the same artifact (registration itself is benchmarked
                # elsewhere); the rollout is the real one.
                version = ModelVersion.objects.create(
                    model=base.model,
                    version=f"1.0.{n}",
                    major=1,
                    minor=0,
                    patch=n,
                    flavor=base.flavor,
                    artifact=base.artifact,
                    input_schema=base.input_schema,
                    output_schema=base.output_schema,
                    sample_input=base.sample_input,
                    sample_output=base.sample_output,
                )
                started = time.monotonic()
                deployment = deployments.deployment_request(
                    actor=first.requested_by, service=service, version=version, environment=environment
                )
                rollout.rollout(deployment.pk, owner="bench")
                deployment.refresh_from_db()
                durations.append(time.monotonic() - started)
                if deployment.status != "live":
                    print(f"switch {n} ended {deployment.status}: {deployment.failure_reason}")
            time.sleep(1)
            for client in clients:
                client.running.clear()
            for client in clients:
                client.join(timeout=15)
        finally:
            stop(gateway)

    sent = sum(c.sent for c in clients)
    failed = sum(c.failed for c in clients)
    versions: dict[str, int] = {}
    for client in clients:
        for version, count in client.versions.items():
            versions[version] = versions.get(version, 0) + count
    print(f"\n{args.switches} consecutive version switches under load from {args.clients} keep-alive clients")
    print(f"requests sent: {sent}, failed: {failed}   (target: 0 failed)")
    print(
        f"versions that answered: {len(versions)} ({', '.join(sorted(versions, key=lambda v: int(v.split('.')[2])))})"
    )
    print(
        f"seconds per switch (start, ready, smoke test, switch, drain): "
        f"min {min(durations):.2f}, median {sorted(durations)[len(durations) // 2]:.2f}, max {max(durations):.2f}"
    )
    for failure in [f for c in clients for f in c.failures][:5]:
        print("  failure:", failure)


if __name__ == "__main__":
    main()
