"""The same model called directly and through the gateway, at concurrency 1, 8 and 32.

    .venv/bin/python bench/gateway.py [--seconds 10]

Starts a scratch portal, deploys the iris model (one sandboxed model-server process on a
unix socket), starts the same model server once more on a TCP port (wrk speaks TCP only)
and the gateway (uvicorn, uvloop, one process), and drives them with wrk (installed with
apt-get when missing and possible): directly, through the gateway to the unix socket, and
through the gateway over TCP. Prints requests per second, p50 and p99, ratios to direct, and
the gateway's CPU time per request (from its process's CPU counters).
Targets: at 8 and 32, gateway throughput >= 0.8 of direct; at 1, added p50 <= 0.5 ms;
gateway CPU <= 300 us per request at 8; zero errors.

    .venv/bin/python bench/gateway.py --rate-limits [--seconds 10]

Only the cost of rate limiting: through the gateway to the sandboxed instance at concurrency
8 and 32, the consumer's grant without limits, then with a rate, burst and daily quota too
high ever to refuse (every request takes a token and is counted against the quota, and the
gateway reconciles with Redis every 200 ms), alternating three times each. Prints the median
requests per second of each and their ratio. Target: limited / unlimited >= 0.95; 0 errors.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil
from _portal import ScratchPortal, live_iris_service, start_gateway
from _wrk import LUA, answers, ensure_wrk, run_wrk, start_tcp_model_server

from core.net import free_port
from scripts.stack import stop, wait_until


def route_to(deployment, url: str) -> None:
    """Point the deployment's route at `url` and publish it (the gateway picks it up)."""
    from deployments.publish import publish

    deployment.instances.update(url=url)
    publish()
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--rate-limits", action="store_true", help="only compare a grant with limits (never reached) to one without"
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    if args.rate_limits:
        rate_limits(wrk, args.seconds)
        return
    with ScratchPortal() as portal, tempfile.TemporaryDirectory() as tmp:
        from portal.demo_models import iris_instances

        deployment, token = live_iris_service()
        socket_url = deployment.instances.get().url
        tcp_port = free_port()
        tcp_server = start_tcp_model_server(deployment, tcp_port)
        direct_url = f"http://127.0.0.1:{tcp_port}"
        body = json.dumps({"instances": iris_instances(count=1)})
        direct_lua, gateway_lua = Path(tmp) / "direct.lua", Path(tmp) / "gateway.lua"
        direct_lua.write_text(LUA % (body, ""))
        gateway_lua.write_text(LUA % (body, f'wrk.headers["Authorization"] = "Bearer {token}"'))

        gateway, port = start_gateway(portal.env)
        try:
            gateway_url = f"http://127.0.0.1:{port}/serve/development/iris/v1/predict"

            wait_until(lambda: answers(f"{direct_url}/predict", body), 30, "model server on TCP")
            wait_until(lambda: answers(gateway_url, body, token), 30, "gateway")
            gateway_process = psutil.Process(gateway.pid)

            def through_gateway(connections: int) -> tuple[dict, float]:
                run_wrk(wrk, gateway_url, gateway_lua, connections, 2)  # warm up
                before = gateway_process.cpu_times()
                via = run_wrk(wrk, gateway_url, gateway_lua, connections, args.seconds)
                after = gateway_process.cpu_times()
                cpu = (after.user - before.user + after.system - before.system) / max(via["requests"], 1)
                return via, cpu

            rows = []
            for connections in (1, 8, 32):
                run_wrk(wrk, f"{direct_url}/predict", direct_lua, connections, 2)
                direct = run_wrk(wrk, f"{direct_url}/predict", direct_lua, connections, args.seconds)
                route_to(deployment, socket_url)
                via_socket, cpu_socket = through_gateway(connections)
                route_to(deployment, direct_url)
                via_tcp, cpu_tcp = through_gateway(connections)
                route_to(deployment, socket_url)
                rows.append((connections, direct, via_socket, cpu_socket, via_tcp, cpu_tcp))
                time.sleep(0.5)
        finally:
            stop(gateway)
            stop(tcp_server)

        # One gateway process against two worker processes on one port (GATEWAY_WORKERS).
        workers = {}
        for count in (1, 2):
            gateway, port = start_gateway({**portal.env, "GATEWAY_WORKERS": str(count)})
            try:
                url = f"http://127.0.0.1:{port}/serve/development/iris/v1/predict"
                wait_until(lambda url=url: answers(url, body, token), 30, "gateway")
                run_wrk(wrk, url, gateway_lua, 32, 2)
                workers[count] = run_wrk(wrk, url, gateway_lua, 32, args.seconds)
            finally:
                stop(gateway)

    print(
        f"\nmodel: iris (sklearn), one model-server process; gateway: one uvicorn process; {args.seconds} s each."
        "\ndirect: wrk to the model server on TCP. socket: gateway to the deployed, sandboxed instance on its unix"
        "\nsocket (what users get). tcp: gateway to the same server as direct, over TCP."
    )
    print(
        f"{'conc':>4} | {'direct rps':>10} {'p50 ms':>7} {'p99 ms':>7} | {'socket rps':>10} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'ratio':>5} {'+p50':>5} {'CPU us':>6} | {'tcp rps':>8} {'ratio':>5} {'CPU us':>6} | {'errors':>6}"
    )
    for connections, direct, sock, cpu_sock, tcp, cpu_tcp in rows:
        errors = direct["errors"] + sock["errors"] + tcp["errors"]
        print(
            f"{connections:>4} | {direct['rps']:>10.0f} {direct['p50']:>7.2f} {direct['p99']:>7.2f} | "
            f"{sock['rps']:>10.0f} {sock['p50']:>7.2f} {sock['p99']:>7.2f} {sock['rps'] / direct['rps']:>5.2f} "
            f"{sock['p50'] - direct['p50']:>5.2f} {cpu_sock * 1e6:>6.0f} | "
            f"{tcp['rps']:>8.0f} {tcp['rps'] / direct['rps']:>5.2f} {cpu_tcp * 1e6:>6.0f} | {errors:>6}"
        )
    print("targets: ratio >= 0.80 at 8 and 32; +p50 <= 0.5 ms at 1; gateway CPU <= 300 us/request at 8; 0 errors")
    one, two = workers[1], workers[2]
    print(
        f"\ngateway workers at concurrency 32, to the sandboxed instance: 1 process {one['rps']:.0f} req/s "
        f"(p99 {one['p99']:.1f} ms), 2 processes {two['rps']:.0f} req/s (p99 {two['p99']:.1f} ms), "
        f"x{two['rps'] / one['rps']:.2f}; errors {one['errors'] + two['errors']} "
        f"(on {psutil.cpu_count()} CPUs shared with wrk and the model server)"
    )


def set_limits(service, **limits) -> None:
    """Give every grant of the service these limits (None: none) and publish them."""
    from deployments.models import Grant
    from deployments.publish import KEY_GRANTS, publish

    Grant.objects.filter(service=service).update(**limits)
    publish(KEY_GRANTS)
    time.sleep(1)


def rate_limits(wrk: str, seconds: int) -> None:
    """Throughput through the gateway with the grant's limits configured (never reached) and without."""
    import statistics

    with ScratchPortal() as portal, tempfile.TemporaryDirectory() as tmp:
        from portal.demo_models import iris_instances

        deployment, token = live_iris_service()
        body = json.dumps({"instances": iris_instances(count=1)})
        lua = Path(tmp) / "gateway.lua"
        lua.write_text(LUA % (body, f'wrk.headers["Authorization"] = "Bearer {token}"'))
        gateway, port = start_gateway(portal.env)
        high = {"rate_per_second": 1e9, "burst": 1_000_000_000, "daily_quota": 2_000_000_000}
        none = dict.fromkeys(high)
        results: dict[tuple[int, str], list[dict]] = {}
        try:
            url = f"http://127.0.0.1:{port}/serve/development/iris/v1/predict"
            wait_until(lambda: answers(url, body, token), 30, "gateway")
            for connections in (8, 32):
                run_wrk(wrk, url, lua, connections, 2)  # warm up
                for _round in range(3):
                    for case, limits in (("none", none), ("limits", high)):
                        set_limits(deployment.service, **limits)
                        results.setdefault((connections, case), []).append(run_wrk(wrk, url, lua, connections, seconds))
        finally:
            stop(gateway)
    print(
        f"\nrate limiting's cost: gateway (one uvicorn process) to the sandboxed iris instance, {seconds} s per run, "
        "3 runs per case alternated; the grant without limits vs with a rate, burst and daily quota never reached"
    )
    print(f"{'conc':>4} | {'none rps':>9} | {'limits rps':>10} | {'ratio':>5} | {'errors':>6}")
    for connections in (8, 32):
        unlimited, limited = results[(connections, "none")], results[(connections, "limits")]
        a = statistics.median(r["rps"] for r in unlimited)
        b = statistics.median(r["rps"] for r in limited)
        errors = sum(r["errors"] for r in unlimited + limited)
        print(f"{connections:>4} | {a:>9.0f} | {b:>10.0f} | {b / a:>5.2f} | {errors:>6}")
    print("target: ratio >= 0.95; 0 errors")


if __name__ == "__main__":
    main()
