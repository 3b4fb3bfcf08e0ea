"""The prediction log's cost and speed, in one run.

    .venv/bin/python bench/prediction_log.py [--seconds 10] [--records 1000000]

1. Gateway throughput with every prediction logged (payloads kept) against logging off, at
   concurrency 8 with wrk (target: ratio >= 0.9), and how many records were dropped.
2. Drain throughput: `--records` iris-sized records (in batches of 2,000, as gateways send
   them) put on the Redis stream, then drained into Parquet by the worker's task (target:
   >= 50,000 records/s).
3. The Performance page with one week of those records (spread over 7 days, 10% of them with
   ground truth; charts, quality, the drift heat map): the time to render it, in process
   (target: < 1 s).
4. Drift: the scheduled scoring of the current hour (what the worker does every minute), and
   scoring one feature set over the whole week, in instances per second.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from _portal import ScratchPortal, live_iris_service, start_gateway
from _wrk import LUA, answers, ensure_wrk, run_wrk

from scripts.stack import stop, wait_until


def gateway_with_and_without_logging(portal, deployment, token: str, seconds: int, wrk: str) -> dict:
    import redis
    from django.conf import settings

    from accounts.models import User
    from deployments import services
    from gateway import contract
    from portal.demo_models import iris_instances

    body = json.dumps({"instances": iris_instances(count=1)})
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "gateway.lua"
        lua.write_text(LUA % (body, f'wrk.headers["Authorization"] = "Bearer {token}"'))
        gateway, port = start_gateway(portal.env)
        url = f"http://127.0.0.1:{port}/serve/development/iris/v1/predict"
        owner = User.objects.get(username="bench-owner")
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            wait_until(lambda: answers(url, body, token), 30, "gateway")
            process = psutil.Process(gateway.pid)
            runs: dict[str, list[dict]] = {"on": [], "off": []}
            for _round in range(2):
                for mode in ("on", "off"):
                    services.prediction_logging_set(
                        actor=owner,
                        service=deployment.service,
                        environment=deployment.environment,
                        enabled=mode == "on",
                    )
                    time.sleep(1.5)  # the next snapshot reaches the gateway
                    run_wrk(wrk, url, lua, 8, 2)
                    before = process.cpu_times()
                    result = run_wrk(wrk, url, lua, 8, seconds)
                    after = process.cpu_times()
                    result["cpu_us"] = (
                        1e6 * (after.user - before.user + after.system - before.system) / result["requests"]
                    )
                    runs[mode].append(result)
            dropped = sum(int(v) for v in client.hvals(contract.KEY_PREDICTIONS_DROPPED))
            logged = sum(
                len(contract.PredictionBatch.decode(fields[b"records"]).records)
                for _, fields in client.xrange(contract.KEY_PREDICTIONS)
            )
        finally:
            stop(gateway)
    client.delete(contract.KEY_PREDICTIONS, contract.KEY_PREDICTIONS_DROPPED)
    return {
        "on": statistics.median(r["rps"] for r in runs["on"]),
        "off": statistics.median(r["rps"] for r in runs["off"]),
        "cpu_on": statistics.median(r["cpu_us"] for r in runs["on"]),
        "cpu_off": statistics.median(r["cpu_us"] for r in runs["off"]),
        "errors": sum(r["errors"] for mode in runs.values() for r in mode),
        "logged": logged,
        "dropped": dropped,
    }


def drain_throughput(records: int) -> tuple[float, list[str]]:
    """Put `records` on the stream (spread over the last 7 days), drain them; (records/s, ids)."""
    import redis
    from django.conf import settings

    from gateway import contract
    from monitoring import tasks

    client = redis.Redis.from_url(settings.REDIS_URL)
    now = time.time()
    inputs = json.dumps(
        {"instances": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}
    )
    rng = random.Random(7)  # noqa: S311 - made-up data
    ids = []
    pipe = client.pipeline(transaction=False)
    for start in range(0, records, 2000):
        batch = []
        for n in range(start, min(start + 2000, records)):
            made = now - rng.random() * 7 * 86400
            prediction_id = f"{int(made * 1000):011x}{n:010x}"
            ids.append(prediction_id)
            label = rng.randrange(3)
            outputs = f'{{"predictions":[{label}],"model_version":"1.0.0","prediction_id":"{prediction_id}"}}'
            batch.append([prediction_id, made, "iris", "development", 1, "1.0.0", 1, 200, 1.2, 1, inputs, outputs])
        pipe.xadd(contract.KEY_PREDICTIONS, {"records": contract.PredictionBatch(records=batch).encode()})
        if len(pipe) >= 50:
            pipe.execute()
    pipe.execute()
    started = time.perf_counter()
    moved = 0
    while True:
        step = tasks.drain_predictions(max_seconds=60, count=50)
        moved += step
        if not step:
            break
    elapsed = time.perf_counter() - started
    assert moved == records, (moved, records)
    return records / elapsed, ids


def page_render(ids: list[str]) -> tuple[float, float]:
    """Send ground truth for 10% of `ids`, then render the Performance page: (first, median of 5) s."""
    from django.test import Client

    from accounts.models import User
    from deployments.models import Service
    from monitoring import services

    owner = User.objects.get(username="bench-owner")
    service = Service.objects.get(name="iris")
    rng = random.Random(11)  # noqa: S311 - made-up data
    labelled = rng.sample(ids, len(ids) // 10)
    for start in range(0, len(labelled), 10_000):
        items = [{"prediction_id": i, "actual": rng.randrange(3)} for i in labelled[start : start + 10_000]]
        services.feedback_record(actor=owner, service=service, items=items)
    client = Client()
    client.force_login(owner)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        response = client.get("/services/iris/performance/?environment=development", HTTP_HOST="127.0.0.1")
        times.append(time.perf_counter() - started)
        assert response.status_code == 200 and b"labelled prediction" in response.content
    return times[0], statistics.median(times[1:])


def drift_speed() -> tuple[float, int, float]:
    """(seconds for the scheduled scoring, instances in the week, instances/s over the week)."""
    import datetime as dt

    from deployments.models import Service
    from monitoring import drift, tasks
    from portal.demo_models import iris_csv
    from registry import selectors as registry_selectors
    from registry import services as registry_services

    service = Service.objects.get(name="iris")
    version = service.model.versions.get(version="1.0.0")
    registry_services.version_reference_set(
        actor=service.team.memberships.first().user, version=version, filename="iris.csv", data=iris_csv()
    )
    started = time.perf_counter()
    tasks.score_drift()
    scheduled = time.perf_counter() - started
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    scores = drift.score(
        tasks.store(),
        service="iris",
        environment="development",
        profiles={"1.0.0": registry_selectors.version_reference(version=version)},
        since=now - dt.timedelta(days=8),
        until=now,
    )
    week = time.perf_counter() - started
    instances = scores["1.0.0"][0].count
    return scheduled, instances, instances / week


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    wrk = ensure_wrk()
    with ScratchPortal() as portal:
        deployment, token = live_iris_service()
        serving = gateway_with_and_without_logging(portal, deployment, token, args.seconds, wrk)
        rate, ids = drain_throughput(args.records)
        scheduled, instances, drift_rate = drift_speed()
        first, warm = page_render(ids)

    print(f"\n1. gateway, iris, concurrency 8, {args.seconds} s runs (median of 2 each)")
    print(
        f"   logging 100% with payloads: {serving['on']:.0f} req/s ({serving['cpu_on']:.0f} us CPU/req); "
        f"off: {serving['off']:.0f} req/s ({serving['cpu_off']:.0f} us CPU/req); "
        f"ratio {serving['on'] / serving['off']:.2f} (target >= 0.9)"
    )
    print(f"   records logged {serving['logged']}, dropped {serving['dropped']}, request errors {serving['errors']}")
    print(f"2. drain into Parquet: {args.records:,} records at {rate:,.0f} records/s (target >= 50,000)")
    print(
        f"3. Performance page over one week of {args.records:,} predictions ({len(ids) // 10:,} labelled): "
        f"first render {first:.2f} s, then {warm:.2f} s (target < 1 s)"
    )
    print(
        f"4. drift: the scheduled scoring of the current hour {scheduled:.2f} s; "
        f"the whole week, {instances:,} instances x 4 features, at {drift_rate:,.0f} instances/s"
    )


if __name__ == "__main__":
    main()
