"""What the sandbox costs: the registration check and a local model server's start, each
sandboxed (bubblewrap) and unsandboxed, measured in the same run.

    .venv/bin/python bench/sandbox.py [--rounds 7]

The check: from starting the process to the predictions of the iris model's sample input
(the process imports the flavor libraries, loads the artifact, predicts). The server: from
`LocalBackend.start` to the instance answering ready on its unix socket. Rounds alternate
sandboxed and unsandboxed; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _portal import ScratchPortal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with ScratchPortal() as portal:
        from django.conf import settings

        from core import sandbox
        from core.net import http_request
        from deployments.runtime.base import InstanceSpec
        from deployments.runtime.local import LocalBackend
        from portal.demo_models import IRIS_FIELDS, iris_instances, train_iris
        from registry.model_check import ModelCheck

        reason = sandbox.unavailable_reason(settings.SANDBOX_BWRAP)
        if reason:
            raise SystemExit(f"No sandbox to measure: {reason}")
        artifact = portal.dir / "iris.joblib"
        train_iris(artifact)
        backend = LocalBackend(portal.dir / "runtime")
        bwrap = settings.SANDBOX_BWRAP
        settings.ALLOW_UNSANDBOXED_MODEL_CHECK = True
        times: dict[tuple[str, str], list[float]] = {}

        def check() -> float:
            started = time.perf_counter()
            predictions = ModelCheck().run(
                flavor="sklearn", path=artifact, instances=iris_instances(), field_order=list(IRIS_FIELDS)
            )
            assert predictions == [0, 1, 2], predictions
            return time.perf_counter() - started

        def serve(n: int, mode: str) -> float:
            spec = InstanceSpec(
                name=f"bench-{mode}-{n}",
                artifact=Path(artifact),
                flavor="sklearn",
                version="1.0.0",
                field_order=list(IRIS_FIELDS),
                allow_unsandboxed=True,
            )
            started = time.perf_counter()
            url = backend.start(spec).url
            while True:
                try:
                    if http_request(url, "/health/ready", timeout=1)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            backend.stop(spec.name, drain_seconds=1)
            return elapsed

        for n in range(args.rounds):
            for mode in ("sandboxed", "unsandboxed"):
                settings.SANDBOX_BWRAP = bwrap if mode == "sandboxed" else "/nonexistent/bwrap"
                times.setdefault(("check", mode), []).append(check())
                times.setdefault(("server start", mode), []).append(serve(n, mode))

    print(f"\nmedian of {args.rounds} rounds (iris, sklearn)")
    print(f"{'':>14} | {'sandboxed s':>11} | {'unsandboxed s':>13} | {'ratio':>5} | {'added ms':>8}")
    for what in ("check", "server start"):
        boxed = statistics.median(times[(what, "sandboxed")])
        bare = statistics.median(times[(what, "unsandboxed")])
        print(f"{what:>14} | {boxed:>11.3f} | {bare:>13.3f} | {boxed / bare:>5.2f} | {(boxed - bare) * 1000:>8.0f}")


if __name__ == "__main__":
    main()
