"""Does a hostile body stall other callers? A bystander's latency through the gateway, alone
and while another caller sends a 6 MB body of 1.2 million instances again and again.

    .venv/bin/python bench/hostile.py [--seconds 5]

The gateway parses and checks bodies over 256 KiB in a checker process (JSON parsing holds
Python's GIL, so a thread would stall the event loop). Prints the bystander's p50, p99 and
slowest call in each phase (target: the slowest within about 100 ms of the quiet phase's),
and what the attacker got back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.request

from _portal import ScratchPortal, live_iris_service, start_gateway
from _wrk import answers

from scripts.stack import stop, wait_until


def post(url: str, token: str, body: bytes, timeout: float = 30) -> int:
    request = urllib.request.Request(  # noqa: S310 - a local URL
        url, data=body, method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def bystander(url: str, token: str, body: bytes, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        assert post(url, token, body, timeout=10) == 200
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    with ScratchPortal() as portal:
        from portal.demo_models import iris_instances

        _deployment, token = live_iris_service()
        gateway, port = start_gateway(portal.env)
        try:
            url = f"http://127.0.0.1:{port}/serve/development/iris/v1/predict"
            small = json.dumps({"instances": iris_instances(count=1)}).encode()
            wait_until(lambda: answers(url, small.decode(), token), 30, "gateway")
            time.sleep(1)  # the checker process is up
            quiet = bystander(url, token, small, args.seconds)
            giant = json.dumps({"instances": [[1]] * 1_200_000}).encode()
            stop_attack = threading.Event()
            attacks: list[tuple[int, float]] = []

            def attack() -> None:
                while not stop_attack.is_set():
                    started = time.perf_counter()
                    attacks.append((post(url, token, giant, timeout=60), time.perf_counter() - started))

            attacker = threading.Thread(target=attack, daemon=True)
            attacker.start()
            time.sleep(0.2)
            loud = bystander(url, token, small, args.seconds)
            stop_attack.set()
            attacker.join(timeout=60)
        finally:
            stop(gateway)

    def row(name: str, latencies: list[float]) -> str:
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return f"{name:<28} {len(ms):>6} calls  p50 {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  max {ms[-1]:7.2f} ms"

    print(f"\nbystander calls to iris through one gateway, {args.seconds:g} s each phase")
    print(row("alone", quiet))
    print(row("beside 6 MB bodies", loud))
    statuses = sorted({status for status, _ in attacks})
    each = statistics.median(seconds for _, seconds in attacks) if attacks else 0
    print(f"attacker: {len(attacks)} bodies of {len(giant) / 1e6:.1f} MB, answered {statuses}, {each:.2f} s each")
    print(f"slowest bystander call added: {(max(loud) - max(quiet)) * 1000:.0f} ms (target: about 100 ms at most)")


if __name__ == "__main__":
    main()
