"""`make run`: migrate, seed the demo, start Redis, a Celery worker, the autoscaler and the web server.

Every child runs in its own process group and is told to die with this process, so
Ctrl-C (or any way this process ends) stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from core import sandbox
from scripts.quiet import StepFailed, step, var_dir
from scripts.stack import ROOT, RedisCredentials, port_open, redis_start, spawn, stop, wait_until

VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"\033[1m[portal]\033[0m {message}", flush=True)


def pump(name: str, stream) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = spawn(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=pump, args=(name, proc.stdout), daemon=True).start()
    return proc


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _where_emails_go(env: dict[str, str]) -> str:
    """What the banner says about emails: the settings' default under make run is the file backend."""
    backend = env.get("EMAIL_BACKEND") or ("smtp" if env.get("EMAIL_HOST") else "file")
    if backend == "file":
        folder = env.get("EMAIL_FILE_PATH") or Path(env.get("PORTAL_VAR_DIR", ROOT / "var")) / "mail"
        return f"written as files into {folder}"
    if backend == "console":
        return "printed in the worker's output"
    if backend == "smtp":
        return f"sent through {env.get('EMAIL_HOST', 'localhost')}:{env.get('EMAIL_PORT', '25')}"
    return f"EMAIL_BACKEND={backend}"


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")  # on one's own laptop; every other start of the portal has it off
    port = int(env.get("PORT", "8000"))
    for taken in (port, int(env.get("GATEWAY_PORT", port + 1))):
        if port_open(taken):
            log(f"Port {taken} is already in use. Stop what runs there, or choose others: PORT=8100 make run")
            return 1
    children: list[tuple[str, subprocess.Popen]] = []

    def shutdown(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        gateway_redis_url = env.get("REDIS_URL")
        if "REDIS_URL" not in env:
            var = Path(env.get("PORTAL_VAR_DIR", ROOT / "var"))
            redis_port = int(env.get("PORTAL_REDIS_PORT", "6379"))
            if port_open(redis_port):
                # Whatever answers there is not ours (ours dies with make run): using it would
                # hand the portal's routes and grants to whoever runs it.
                log(
                    f"Port {redis_port} is taken (by a Redis make run did not start, or something else). Stop it, "
                    "start on another port (PORTAL_REDIS_PORT=6390 make run), or use that Redis on purpose "
                    "(REDIS_URL=redis://… make run)."
                )
                return 1
            credentials = RedisCredentials.load_or_create(var / "redis-credentials.json")
            children.append(
                ("redis", redis_start(redis_port, var / "redis", credentials=credentials, stdout=subprocess.DEVNULL))
            )
            log(f"Redis started on 127.0.0.1:{redis_port} (password in {var / 'redis-credentials.json'}).")
            env["REDIS_URL"] = credentials.url(redis_port)
            gateway_redis_url = credentials.gateway_url(redis_port)  # read-only on the routes, tokens, grants
            # Management commands run beside make run find this Redis here, whatever its port.
            write_private(var / "redis-url", env["REDIS_URL"])

        seed = ["seed_demo", *sandbox_choice(env)]
        step(
            "Migrating the database…",
            [[PYTHON, "manage.py", "migrate", "--no-input"]],
            log=var_dir(env) / "run.log",
            env=env,
        )
        manage(*seed, env=env)
        env.setdefault("GATEWAY_URL", f"http://127.0.0.1:{int(env.get('GATEWAY_PORT', port + 1))}")

        children.append(
            (
                "worker",
                start(
                    "worker",
                    [
                        str(VENV_BIN / "celery"),
                        "-A",
                        "portal",
                        "--quiet",  # the banner below says what matters
                        "worker",
                        "--loglevel=INFO",
                        "--concurrency=2",
                        "--hostname=portal@%h",
                        "--beat",
                        "--schedule",
                        str(Path(env.get("PORTAL_VAR_DIR", ROOT / "var")) / "celerybeat-schedule"),
                    ],
                    worker_env(env, as_root=as_root()),
                ),
            )
        )
        # Autoscaled deployments follow the gateways' load (deployments/autoscale.py says why
        # this is a process of its own rather than a periodic task).
        children.append(("autoscaler", start("autoscaler", [PYTHON, "manage.py", "autoscale"], env)))
        # gunicorn streams request bodies to the view (large uploads go straight to the
        # artifact store); an ASGI server would first spool each body to a temporary file.
        web = [
            str(VENV_BIN / "gunicorn"),
            "portal.wsgi:application",
            "--bind", f"127.0.0.1:{port}",
            "--worker-class", "gthread",
            "--workers", "2",
            "--threads", "8",
            "--timeout", "120",
            "--graceful-timeout", "10",
            "--no-control-socket",
        ]  # fmt: skip
        children.append(("web", start("web", web, env)))
        gateway_port = int(env.get("GATEWAY_PORT", port + 1))
        env["GATEWAY_PORT"] = str(gateway_port)
        gateway_env = dict(env, REDIS_URL=gateway_redis_url)
        children.append(
            ("gateway", start("gateway", [PYTHON, "-m", "gateway", "--port", str(gateway_port)], gateway_env))
        )

        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url) or any(p.poll() is not None for _, p in children), 60, "The portal")
        if not _healthy(url):
            raise RuntimeError("a process exited during start-up; see its output above")
        sandboxed = not sandbox.unavailable_reason(env.get("SANDBOX_BWRAP", "bwrap"))
        print(banner(url, env, as_root=as_root(), sandboxed=sandboxed), flush=True)
        while True:
            for name, proc in children:
                if proc.poll() is not None:
                    log(f"{name} exited with code {proc.returncode}; stopping the rest.")
                    return 1
            threading.Event().wait(0.5)
    except KeyboardInterrupt:
        log("Stopping…")
        return 0
    except (RuntimeError, subprocess.CalledProcessError, StepFailed) as exc:
        log(f"Could not start: {exc}")
        return 1
    finally:
        # A second Ctrl-C or SIGTERM (make passes one on too) must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, proc in reversed(children):
            stop(proc)
        if children:
            # Model servers run in sessions of their own (they outlive worker restarts);
            # stopping the portal stops them too. Live deployments come back at next start.
            subprocess.run(
                [PYTHON, "manage.py", "runtime_stop_all"], cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL
            )
            log("Stopped.")


def as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# Celery warns at every start when its worker runs as root; under make run started as root that
# is known and explained in the banner (see banner()), so the warning is filtered out.
ROOT_WARNING_FILTER = "ignore:You're running the worker with superuser privileges"


def worker_env(env: dict[str, str], *, as_root: bool) -> dict[str, str]:
    """The Celery worker's environment. As root it stays root (it manages the model servers'
    sandboxes and their pids cgroups, and owns var/, which make run created as root); model
    code never runs in it."""
    # One terminal for every process: the periodic tasks' "received"/"succeeded" lines (several
    # a second) stay out of it unless asked for; failures are still printed.
    env = dict(env, WORKER_TASK_LOGS=env.get("WORKER_TASK_LOGS", "0"))
    if not as_root:
        return env
    filters = [f for f in (env.get("PYTHONWARNINGS") or "").split(",") if f]
    return dict(env, PYTHONWARNINGS=",".join([*filters, ROOT_WARNING_FILTER]))


def banner(url: str, env: dict[str, str], *, as_root: bool, sandboxed: bool) -> str:
    """What make run prints once everything answers."""
    root = ""
    if as_root and sandboxed:
        root = (
            "  The worker runs as root because you started make run as root; model code never runs in it:\n"
            "    it runs sandboxed (bubblewrap, as nobody, without network).\n"
        )
    elif as_root:
        root = (
            "  The worker runs as root because you started make run as root, and there is no sandbox for\n"
            "    model code here: start make run as yourself, or install bubblewrap.\n"
        )
    return f"""
  Portal is running at {url}

  Demo logins (password: portal-demo)
    admin       platform admin, owner of team data-science
    scientist   data scientist, maintainer of team data-science
    approver    IT approver
  Service account 'consumer-app' signs in with tokens only:
    .venv/bin/python manage.py create_token consumer-app

  Gateway (model services): {env["GATEWAY_URL"]}/serve/...
  API docs: {url}/api/docs      Admin: {url}/admin/
  Emails (approvals, deployments, alerts): {_where_emails_go(env)}
  Command line: .venv/bin/portal login --url {url} --username scientist
    To type just `portal` (and run the curl lines it prints), put it on your PATH:
    source .venv/bin/activate   or   export PATH="$PWD/.venv/bin:$PATH"
{root}  Press Ctrl-C to stop everything.
"""


def sandbox_choice(env: dict[str, str]) -> list[str]:
    """Model code runs in a bubblewrap sandbox. Without one, say so loudly: it is refused,
    unless PORTAL_ALLOW_UNSANDBOXED=1 says this is a single-user machine; then the checks and
    every environment run it unsandboxed (the portal shows that on every page). Returns the
    seed's arguments."""
    reason = sandbox.unavailable_reason(env.get("SANDBOX_BWRAP", "bwrap"))
    if not reason:
        return []
    if env.get("PORTAL_ALLOW_UNSANDBOXED") == "1":
        env["ALLOW_UNSANDBOXED_MODEL_CHECK"] = "1"
        log(
            f"\033[1;31mWARNING\033[0m: no sandbox for model code ({reason}). PORTAL_ALLOW_UNSANDBOXED=1: model "
            "code runs as your own user, unsandboxed, in every environment. Only on a single-user machine."
        )
        return ["--allow-unsandboxed"]
    log(
        f"\033[1;31mNo sandbox for model code\033[0m ({reason}): registering and deploying models is refused. "
        "Install bubblewrap, or on a single-user machine accept the risk: PORTAL_ALLOW_UNSANDBOXED=1 make run"
    )
    return []


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310 (our http URL)
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
