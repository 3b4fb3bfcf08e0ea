"""Several gateways at once, as production runs them: two gateway processes behind a real HAProxy
sharing one Redis, and one gateway with several worker processes on one port
(GATEWAY_WORKERS). Revocation, routing switches and the counts stay right across all of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from accounts import services as accounts
from accounts.models import ApiToken
from deployments import selectors, services
from gateway import contract
from portal.demo_models import iris_instances
from scripts.stack import stop, wait_until
from tests.factories import bearer_client, deploy_now, make_version
from tests.ports import port as free_port
from tests.support import call, eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.end_to_end]

BODY = {"instances": iris_instances(count=1)}


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)
    if found is None:
        reason = "HAProxy is not installed (apt-get install haproxy; make test does it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must run the load-balancer tests.")
        pytest.skip(reason)
    return found


@pytest.fixture
def load_balancer(tmp_path):
    """`load_balancer(*gateways)`: a real HAProxy, round robin over the gateways' ports."""
    binary = haproxy_binary()
    started = []

    def start(*gateways) -> str:
        listen = free_port()
        ports = [g.url.rsplit(":", 1)[1] for g in gateways]
        servers = "\n".join(f"    server g{n} 127.0.0.1:{p} check inter 500ms fall 2" for n, p in enumerate(ports))
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "global\n    maxconn 256\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n"
            # A connection refused by a gateway that just stopped is tried on the other one.
            "    retries 2\n    option redispatch\n"
            f"frontend portal\n    bind 127.0.0.1:{listen}\n    default_backend gateways\n"
            "backend gateways\n    balance roundrobin\n    option httpchk GET /health\n"
            "    http-reuse never\n"
            f"{servers}\n"
        )
        log = (tmp_path / "haproxy.log").open("wb")
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(proc)
        url = f"http://127.0.0.1:{listen}"
        wait_until(lambda: proc.poll() is not None or call(f"{url}/health", timeout=1)[0] == 200, 15, "HAProxy")
        assert proc.poll() is None, Path(tmp_path / "haproxy.log").read_text()
        return url

    yield start
    for proc in started:
        stop(proc)


@pytest.fixture
def live(iris_service, owner, service_account, environments):
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    return iris_service


def answered_by_both(url: str, token: str) -> list[tuple[int, dict]]:
    """Answers to a few calls through the balancer: round robin sends them to every gateway."""
    return [call(url, token=token, body=BODY)[:2] for _ in range(6)]


def test_two_gateways_behind_haproxy_agree_on_revocations_switches_and_counts(
    live, owner, service_account, environments, gateway_factory, load_balancer, redis_url, iris_file
):
    first, second = gateway_factory(), gateway_factory()
    balancer = load_balancer(first, second)
    url = f"{balancer}/serve/development/iris-api/v1/predict"
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    eventually(lambda: all(code == 200 for code, _ in answered_by_both(url, token)), timeout=15)
    heartbeats = redis.Redis.from_url(redis_url).hgetall(contract.KEY_GATEWAYS)
    assert len(heartbeats) >= 2  # both report the generation they serve

    # A routing switch: every answer, from either gateway, comes from the new version once live.
    version = make_version(live.model, iris_file, version="1.1.0", actor=owner)
    deploy_now(live, owner, environments["development"], version)
    eventually(lambda: {b["model_version"] for _, b in answered_by_both(url, token)} == {"1.1.0"}, timeout=10)

    # Counts: what both gateways counted adds up in the usage the portal charts.
    before = sum(m.requests for m in selectors.service_usage(service=live, minutes=5))
    for _ in range(40):
        assert call(url, token=token, body=BODY)[0] == 200
    eventually(
        lambda: sum(m.requests for m in selectors.service_usage(service=live, minutes=5)) - before == 40,
        timeout=10,
        interval=0.3,
    )

    # Revocation reaches both: no call through the balancer gets in afterwards.
    accounts.token_revoke(actor=service_account, token=ApiToken.objects.get(user=service_account))
    eventually(lambda: all(code == 401 for code, _ in answered_by_both(url, token)), timeout=5)
    assert all(code == 401 for code, _ in answered_by_both(url, token))

    # One gateway going away: the balancer's health check takes it out, callers do not notice.
    fresh = bearer_client(service_account, scopes=["invoke"]).raw_token
    eventually(lambda: all(code == 200 for code, _ in answered_by_both(url, fresh)), timeout=10)
    stop(first)
    assert all(code == 200 for code, _ in answered_by_both(url, fresh))  # refused: sent to the other
    time.sleep(1.5)  # two failed health checks: taken out
    assert all(code == 200 for code, _ in answered_by_both(url, fresh))


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    import urllib.request

    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a local URL
        return samples(response.read().decode())


def test_one_gateway_in_several_worker_processes_counts_every_request_in_one_scrape(
    live, service_account, gateway_factory, redis_url
):
    gateway = gateway_factory(GATEWAY_WORKERS="2", GATEWAY_METRICS_TOKEN="scrape-me")
    workers = _workers(gateway.pid)
    assert len(workers) == 2

    # Each worker polls the routes and reports itself: a rollout waits for both.
    def reporting() -> set[str]:
        heartbeats = redis.Redis.from_url(redis_url).hgetall(contract.KEY_GATEWAYS)
        return {key.decode().rsplit(":", 1)[1] for key in heartbeats}

    eventually(lambda: {str(w.pid) for w in workers} <= reporting(), timeout=10)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    eventually(lambda: all(call(url, token=token, body=BODY)[0] == 200 for _ in range(6)), timeout=15)
    labels = (("code", "200"), ("environment", "development"), ("major", "1"), ("service", "iris-api"))
    served = ("portal_gateway_requests_total", tuple(sorted((*labels, ("version", "1.0.0")))))
    # A worker counts a request just after answering it: let the last ones settle before reading.
    time.sleep(0.5)
    before = scrape(gateway.url)[served]
    for _ in range(60):  # new connections each: the kernel spreads them over both workers
        assert call(url, token=token, body=BODY)[0] == 200
    eventually(lambda: scrape(gateway.url)[served] == before + 60, timeout=5)
    for _ in range(6):  # whichever worker answers the scrape, it reports both workers' counts
        seen = scrape(gateway.url)
        assert seen[served] == before + 60
        assert seen[("portal_gateway_snapshot_generation", ())] > 0
    # In flight: the scrape itself, once the worker that answered the one before has let it go
    # (it does so just after answering): nothing stays counted.
    in_flight = ("portal_gateway_requests_in_flight", ())
    eventually(lambda: scrape(gateway.url)[in_flight] == 1, timeout=5, interval=0.3)


def _workers(pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(pid).children() if "spawn_main" in " ".join(p.cmdline())]
