"""The gateway as users meet it: the whole `make run` stack up (web, worker with beat, Redis,
gateway, the demo's sandboxed model servers), calling the demo service through the gateway
against the same model called directly.

    .venv/bin/python bench/fullstack.py [--seconds 10] [--rounds 3]

Starts `python -m scripts.run` (what `make run` runs) in a scratch var directory on free
ports, waits for the demo's iris v1 to be live in development, starts the same model version
once more on a TCP port (the deployed instance answers on a unix socket; wrk speaks TCP
only), then alternates wrk runs (directly, then through the gateway) at concurrency 8 and 32.
Prints the median requests per second, their ratio (target >= 0.8 at 8) and the gateway's
CPU time per request. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from _portal import ROOT
from _wrk import LUA, answers, ensure_wrk, run_wrk, start_tcp_model_server

from core.net import free_port
from scripts.stack import stop, wait_until


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own http URL
            return response.status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="portal-fullstack-") as tmp:
        var = Path(tmp) / "var"
        port, gateway_port, redis_port = free_port(), free_port(), free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}},
            "PORTAL_VAR_DIR": str(var),
            "PORT": str(port),
            "GATEWAY_PORT": str(gateway_port),
            "PORTAL_REDIS_PORT": str(redis_port),
        }
        log = open(Path(tmp) / "stack.log", "wb")  # noqa: SIM115 - open for the stack's whole life
        stack = subprocess.Popen(
            [sys.executable, "-m", "scripts.run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        tcp_server = None
        try:
            wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health") or stack.poll() is not None, 180, "stack")
            if stack.poll() is not None:
                raise SystemExit(f"make run's stack exited: {(Path(tmp) / 'stack.log').read_text()[-3000:]}")
            os.environ.update(
                PORTAL_VAR_DIR=str(var),
                REDIS_URL=(var / "redis-url").read_text().strip(),
                DJANGO_SETTINGS_MODULE="portal.settings",
                LOG_LEVEL="WARNING",
            )
            import django

            django.setup()
            from accounts import services as accounts
            from accounts.models import User
            from deployments.models import Deployment

            def live():
                return Deployment.objects.filter(
                    service__name="iris", environment__name="development", major=1, status="live"
                ).first()

            wait_until(lambda: live() is not None, 180, "the demo's iris v1 to be live")
            deployment = live()
            consumer = User.objects.get(username="consumer-app")
            _, token = accounts.token_create(actor=None, user=consumer, name=f"bench {time.time()}", scopes=["invoke"])
            tcp_port = free_port()
            tcp_server = start_tcp_model_server(deployment, tcp_port)
            direct_url = f"http://127.0.0.1:{tcp_port}/predict"
            gateway_url = f"http://127.0.0.1:{gateway_port}/serve/development/iris/v1/predict"
            body = json.dumps({"instances": deployment.version.sample_input[:1]})
            direct_lua, gateway_lua = Path(tmp) / "direct.lua", Path(tmp) / "gateway.lua"
            direct_lua.write_text(LUA % (body, ""))
            gateway_lua.write_text(LUA % (body, f'wrk.headers["Authorization"] = "Bearer {token}"'))

            wait_until(lambda: answers(direct_url, body), 30, "model server on TCP")
            wait_until(lambda: answers(gateway_url, body, token), 30, "gateway")
            gateway = next(
                p
                for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and "gateway" in p.info["cmdline"] and str(gateway_port) in p.info["cmdline"]
            )
            results: dict[int, dict[str, list]] = {}
            for connections in (8, 32):
                run_wrk(wrk, direct_url, direct_lua, connections, 2)
                run_wrk(wrk, gateway_url, gateway_lua, connections, 2)
                for _ in range(args.rounds):
                    direct = run_wrk(wrk, direct_url, direct_lua, connections, args.seconds)
                    before = gateway.cpu_times()
                    via = run_wrk(wrk, gateway_url, gateway_lua, connections, args.seconds)
                    after = gateway.cpu_times()
                    cpu = (after.user - before.user + after.system - before.system) / max(via["requests"], 1)
                    entry = results.setdefault(connections, {"direct": [], "via": [], "cpu": [], "errors": []})
                    entry["direct"].append(direct["rps"])
                    entry["via"].append(via["rps"])
                    entry["cpu"].append(cpu)
                    entry["errors"].append(direct["errors"] + via["errors"])
        finally:
            if tcp_server is not None:
                stop(tcp_server)
            if stack.poll() is None:
                os.kill(stack.pid, signal.SIGINT)  # as Ctrl-C: make run stops all it started
                try:
                    stack.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    stop(stack)
            log.close()

    print(
        f"\nthe make run stack on {os.cpu_count()} CPUs (web, worker with beat, Redis, gateway, demo model servers);"
        f"\ndirect: wrk to iris v1 on TCP; gateway: wrk through the gateway to the deployed, sandboxed instance on"
        f"\nits unix socket. {args.rounds} alternating rounds of {args.seconds} s; medians."
    )
    print(
        f"{'conc':>4} | {'direct rps':>10} | {'gateway rps':>11} | {'ratio':>5} | {'gw CPU us/req':>13} | {'errors':>6}"
    )
    for connections, entry in results.items():
        direct, via = statistics.median(entry["direct"]), statistics.median(entry["via"])
        print(
            f"{connections:>4} | {direct:>10.0f} | {via:>11.0f} | {via / direct:>5.2f} | "
            f"{statistics.median(entry['cpu']) * 1e6:>13.0f} | {sum(entry['errors']):>6}"
        )
    print("target: ratio >= 0.80 at 8")


if __name__ == "__main__":
    main()
