"""Upload a large model every way the portal takes one, beside MLflow and `cp`, in one run.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--parallel 4] [--chunk-mib 8] [--no-mlflow]

Generates a real scikit-learn model file of the given size (a fitted estimator carrying a
large random array) and starts the portal's web server as `make run` does (gunicorn, 2
workers x 8 threads) on a scratch database and artifact store. Then, in rounds, measures on
the same disk:

- `cp` + `sync` of the file (the portal fsyncs every artifact before it answers);
- the resumable upload as `portal versions register` and `Client.upload` send it: parts of
  --chunk-mib sent --parallel at once, out of order, the file hashed meanwhile, the portal
  hashing the parts in order as they land and checking the digest (then registered, which
  adds the model's load check, printed apart);
- the same with one part at a time (a single stream);
- one multipart request (`POST /api/v1/models/{name}/versions`, the form's fallback);
- MLflow's `log_artifact` through its tracking server (`mlflow server` with proxied artifacts,
  ../shared/anchors/upload_bench.py), in a venv of its own under var/bench/ (made on first use).

Prints MB/s, seconds, and ratios to `cp` + `sync` (target >= 0.5) and to MLflow (target
>= 2), and the web server's peak memory growth (RSS sampled every 20 ms; target <= 64 MiB while
uploading; registering, which imports what a worker has not used yet, is printed apart).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.net import free_port  # noqa: E402
from portal.demo_models import large_sklearn_model  # noqa: E402
from scripts.multipart import encode  # noqa: E402
from scripts.stack import redis_start, stop, wait_until  # noqa: E402

MIB = 1024 * 1024


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def start_server(kind: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    if kind == "uvicorn":
        args = [
            str(bin_dir / "uvicorn"),
            "portal.asgi:application",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--no-access-log",
            "--lifespan", "off",
        ]  # fmt: skip
    else:
        args = [
            str(bin_dir / "gunicorn"),
            "portal.wsgi:application",
            "--bind", f"127.0.0.1:{port}",
            "--workers", "2",
            "--threads", "8",
            "--worker-class", "gthread",
            "--timeout", "600",
            "--no-control-socket",
        ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    wait_until(lambda: _answers(port) or proc.poll() is not None, 60, "web server")
    if proc.poll() is not None:
        raise SystemExit(proc.stderr.read().decode())
    return proc


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/health")
        conn.getresponse().read()
        return True
    except OSError:
        return False


def server_pids(proc: subprocess.Popen, kind: str) -> list[int]:
    """The processes that handle requests (gunicorn's workers, not its arbiter)."""
    if kind == "gunicorn":
        wait_until(lambda: len(psutil.Process(proc.pid).children()) >= 2, 30, "gunicorn workers")
        return [child.pid for child in psutil.Process(proc.pid).children()]
    return [proc.pid]


class PeakRss:
    """The largest growth of any one of the processes' RSS while the block runs."""

    def __init__(self, pids: list[int]):
        self.processes = [psutil.Process(pid) for pid in pids]
        self.baseline = [p.memory_info().rss for p in self.processes]
        self.peak = list(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def growth(self) -> int:
        return max(peak - base for peak, base in zip(self.peak, self.baseline, strict=True))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for i, process in enumerate(self.processes):
                    self.peak[i] = max(self.peak[i], process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def upload(port: int, token: str, path: Path, version: str) -> tuple[float, dict]:
    fields = {"version": version, "flavor": "sklearn", "sample_input": json.dumps({"instances": [[1, 2, 3, 4]]})}
    content_type, length, body = encode(fields, "artifact", path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.putrequest("POST", "/api/v1/models/bench/versions")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    for chunk in body:
        conn.send(chunk)
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    elapsed = time.perf_counter() - started
    if response.status != 201:
        raise SystemExit(f"upload failed: {response.status} {payload}")
    return elapsed, payload


def resumable(url: str, token: str, path: Path, chunk: int, parallel: int) -> tuple[dict, float]:
    """(the finished upload, seconds to hash + send + finish it)."""
    from portal_client import Client

    client = Client(url=url, token=token, timeout=600)
    started = time.perf_counter()
    upload = client.upload(path, chunk_size=chunk, parallel=parallel)
    return upload, time.perf_counter() - started


def register(url: str, token: str, upload: dict, version: str) -> float:
    """Seconds to register a finished upload as a version (the model's load check included)."""
    from portal_client import Client

    client = Client(url=url, token=token, timeout=600)
    started = time.perf_counter()
    client.request(
        "POST",
        "/api/v1/models/bench/versions",
        what="register",
        json_body={"upload": upload["id"], "version": version, "flavor": "sklearn", "sample_input": [[1, 2, 3, 4]]},
    )
    return time.perf_counter() - started


def timed_cp(source: Path, target: Path, *, durable: bool = False) -> float:
    """`cp` alone (the page cache takes it), or `cp` then `sync` of the copy: the portal
    fsyncs every artifact before it answers, so the durable copy is the like-for-like one."""
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    if durable:
        subprocess.run(["sync", str(target)], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


ANCHORS = ROOT.parent / "shared" / "anchors"


def mlflow_python() -> Path:
    """A Python with MLflow: $ANCHORS_DIR's venv if it has one, else var/bench/mlflow-venv (made once)."""
    anchors = os.environ.get("ANCHORS_DIR", "/tmp/anchors")  # noqa: S108 - the anchors' documented default
    anchors_venv = Path(anchors) / "venv" / "bin" / "python"
    if (
        anchors_venv.exists()
        and subprocess.run([anchors_venv, "-c", "import mlflow"], capture_output=True).returncode == 0
    ):
        return anchors_venv
    venv = ROOT / "var" / "bench" / "mlflow-venv"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "mlflow").exists():
        print("installing MLflow into var/bench/mlflow-venv (once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "mlflow"], check=True)
    return python


class MlflowServer:
    """`mlflow server` with proxied artifacts (the client sends the bytes through it), as the
    anchors run it."""

    def __init__(self, python: Path, work: Path):
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (work / "mlflow").mkdir()
        self.proc = subprocess.Popen(
            [
                python.parent / "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination",
                str(work / "mlflow" / "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: _answers(self.port) or self.proc.poll() is not None, 180, "mlflow server")
        if self.proc.poll() is not None:
            raise SystemExit("mlflow server did not start")

    def upload(self, path: Path) -> float:
        """Seconds `mlflow.log_artifact` took for a file of `path`'s size (its import and run
        set-up not counted). The anchor script sends a random file of whole MiB of its own
        (it rewrites any other file it is given), scaled here to `path`'s size."""
        mib = path.stat().st_size // MIB
        own = path.with_name(f"mlflow-{mib}MiB.bin")
        result = subprocess.run(
            [
                self.python,
                ANCHORS / "upload_bench.py",
                "mlflow",
                "--file",
                str(own),
                "--mib",
                str(mib),
            ],
            cwd=ANCHORS,
            env=dict(os.environ, MLFLOW_TRACKING_URI=self.url),
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
        return seconds * path.stat().st_size / (mib * MIB)

    def stop(self) -> None:
        stop(self.proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--server", choices=["gunicorn", "uvicorn"], default="gunicorn")
    parser.add_argument("--repeat", type=int, default=2, help="rounds to run; the best of each is reported")
    parser.add_argument("--chunk-mib", type=int, default=8, help="part size of the resumable upload")
    parser.add_argument("--parallel", type=int, default=4, help="parts in flight at once")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow (it needs a venv of its own)")
    args = parser.parse_args()
    size = args.size_mib * MIB

    with tempfile.TemporaryDirectory(
        prefix="portal-bench-", dir=ROOT / "var" if (ROOT / "var").exists() else None
    ) as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
        # A Redis of its own: seeding the demo queues its deployments.
        redis_port = free_port()
        redis = redis_start(redis_port, work / "redis", stdout=subprocess.DEVNULL)
        env.update(
            PORTAL_VAR_DIR=str(work),
            ARTIFACT_ROOT=str(work / "artifacts"),
            LOG_LEVEL="WARNING",
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        )
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the client's resume ledger
        proc = mlflow = None
        try:
            if not args.no_mlflow:
                mlflow = MlflowServer(mlflow_python(), work)
            manage(env, "migrate", "--no-input", "-v", "0")
            manage(env, "seed_demo")
            token = manage(env, "create_token", "scientist", "--name", "bench")
            model_path = work / "model.joblib"
            print(f"generating a {args.size_mib} MiB scikit-learn model…", flush=True)
            large_sklearn_model(model_path, size)
            size = model_path.stat().st_size

            port = free_port()
            proc = start_server(args.server, port, env)
            url = f"http://127.0.0.1:{port}"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = json.dumps({"name": "bench", "team": "data-science"})
            conn.request(
                "POST", "/api/v1/models", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )
            assert conn.getresponse().status == 201
            pids = server_pids(proc, args.server)
            times: dict[str, list[float]] = {}
            growth: dict[str, int] = {}
            n = 0

            def stored(sha256: str) -> Path:
                return work / "artifacts" / "sha256" / sha256[:2] / sha256

            digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
            for _ in range(args.repeat):
                # Every way once per round; the stored copy is removed after each, so every
                # upload really stores the bytes.
                times.setdefault("cp", []).append(timed_cp(model_path, work / "artifacts" / "cp-target"))
                times.setdefault("cp+sync", []).append(
                    timed_cp(model_path, work / "artifacts" / "cp-target", durable=True)
                )
                for label, parallel in (("parallel", args.parallel), ("single", 1)):
                    n += 1
                    try:
                        with PeakRss(pids) as rss:
                            finished, send = resumable(url, token, model_path, args.chunk_mib * MIB, parallel)
                        growth[label] = max(growth.get(label, 0), rss.growth)
                        with PeakRss(pids) as rss:
                            registered = register(url, token, finished, f"1.{n}.0")
                        growth["register"] = max(growth.get("register", 0), rss.growth)
                    except Exception as exc:  # noqa: BLE001 - said with which upload failed
                        raise SystemExit(f"{label} upload, round {len(times['cp'])}: {exc}") from None
                    times.setdefault(label, []).append(send)
                    times.setdefault(f"{label}+register", []).append(send + registered)
                    stored(digest).unlink()
                n += 1
                with PeakRss(pids) as rss:
                    elapsed, _ = upload(port, token, model_path, f"1.{n}.0")
                growth["multipart"] = max(growth.get("multipart", 0), rss.growth)
                times.setdefault("multipart", []).append(elapsed)
                stored(digest).unlink()
                if mlflow is not None:
                    times.setdefault("mlflow", []).append(mlflow.upload(model_path))
        finally:
            for process in (proc, mlflow):
                if process is not None:
                    process.stop() if isinstance(process, MlflowServer) else stop(process)
            stop(redis)

    best = {label: min(values) for label, values in times.items()}
    mb = size / 1e6
    print(f"file: {size / MIB:.0f} MiB, server: {args.server}, best of {args.repeat}")
    print(f"{'':52} {'MB/s':>8} {'seconds':>8} {'/ cp+sync':>9} {'x MLflow':>9}")
    rows = [
        ("cp on the same disk (page cache)", "cp"),
        ("cp + sync (durable, like the portal)", "cp+sync"),
        (f"parts: {args.parallel} at once, {args.chunk_mib} MiB (hash, send, check)", "parallel"),
        ("  … and registered (the model's load check)", "parallel+register"),
        (f"parts: one at a time, {args.chunk_mib} MiB (hash, send, check)", "single"),
        ("one multipart request, registered", "multipart"),
        ("MLflow log_artifact via its tracking server", "mlflow"),
    ]
    for text, label in rows:
        if label not in best:
            continue
        seconds = best[label]
        vs_mlflow = f"{best['mlflow'] / seconds:9.2f}" if "mlflow" in best else f"{'-':>9}"
        print(f"{text:52} {mb / seconds:8.1f} {seconds:8.2f} {best['cp+sync'] / seconds:9.2f} {vs_mlflow}")
    print("targets: parallel parts >= 0.50 x cp+sync and >= 2 x MLflow")
    print(
        "web server peak memory growth while uploading: "
        + ", ".join(f"{label} {value / MIB:.1f} MiB" for label, value in growth.items() if label != "register")
        + "   (target <= 64 MiB)"
    )
    print(
        f"  … while registering (a worker's first use of the registration code included): {growth['register'] / MIB:.1f} MiB"
    )


if __name__ == "__main__":
    main()
