"""`make test`: lint, then the whole suite on SQLite, then again on PostgreSQL.

Installs what the tests need where it can (Chromium for the browser tests, as root with
apt-get), starts PostgreSQL for the production-like run and stops it afterwards. Redis is
started by the suite's own fixtures. Exits non-zero if any step fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.stack import ROOT, docker_start, free_port, postgres_available, postgres_start

BIN = Path(sys.executable).parent
IN_CI = bool(os.environ.get("CI"))


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(args: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(args, cwd=ROOT, env=env).returncode


def ensure_chromium() -> None:
    if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("Chromium is missing and cannot be installed here (needs root and apt-get); browser tests will skip.")
        return
    step("Installing Chromium for the browser tests")
    quiet = {"stdout": subprocess.DEVNULL}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, **quiet)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env, **quiet)


def pytest_args(extra: list[str]) -> list[str]:
    return [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", *extra]


def main() -> int:
    started = time.monotonic()
    failures: list[str] = []

    step("ruff check")
    if run([str(BIN / "ruff"), "check", "."]) != 0:
        failures.append("ruff check")
    step("ruff format --check")
    if run([str(BIN / "ruff"), "format", "--check", "."]) != 0:
        failures.append("ruff format")

    ensure_chromium()
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

    step("pytest on SQLite (the embedded default)")
    if run(pytest_args(sys.argv[1:]), env=env) != 0:
        failures.append("pytest (SQLite)")

    step("pytest on PostgreSQL (as production runs)")
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
                if run(pytest_args(sys.argv[1:]), env=pg_env) != 0:
                    failures.append("pytest (PostgreSQL)")
            finally:
                pg.stop()

    if engine is not None:
        engine.stop()

    minutes = (time.monotonic() - started) / 60
    step(f"Done in {minutes:.1f} min")
    if failures:
        print("Failed: " + ", ".join(failures))
        return 1
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
