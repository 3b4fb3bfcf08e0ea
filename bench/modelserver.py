"""One model server against the bare uvicorn + joblib app, same model, same run.

    .venv/bin/python bench/modelserver.py [--seconds 10] [--reps 2] [--anchors ../shared/anchors]

Trains a logistic regression on iris, then calls, interleaved, `python -m modelserver` (given
the field order, as the portal starts it) and
the anchors' `direct_server.py` (the Python serving limit: about 30 lines, no checks), both one
process with uvloop and httptools, with one iris row per request at concurrency 8 and 32 (wrk).
Prints requests/s of each, the median over the repetitions, and the ratio (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _portal import ROOT
from _wrk import LUA, ensure_wrk, run_wrk

from scripts.stack import stop

ROW = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}


def train(path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=300).fit(x, y), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - a local server
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"not ready in 60 s: {url}")


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def start_modelserver(model: Path, port: int) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "modelserver", "--artifact", str(model), "--flavor", "sklearn", "--port", str(port),
        "--field-order", ",".join(ROW),
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_ready(f"http://127.0.0.1:{port}/health/ready", proc)
    return proc


def start_direct(anchors: Path, model: Path, port: int) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(anchors), "direct_server:app", "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**environment(), "MODEL_JOBLIB": str(model)}
    proc = subprocess.Popen(
        args, cwd=anchors, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc


def script(directory: Path, name: str, body: dict) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(LUA % (json.dumps(body), ""))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--anchors", type=Path, default=ROOT.parent / "shared" / "anchors")
    args = parser.parse_args()
    if not (args.anchors / "direct_server.py").is_file():
        raise SystemExit(f"No direct_server.py in {args.anchors}: pass --anchors DIR.")
    wrk = ensure_wrk()
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ms-") as tmp:
        directory = Path(tmp)
        model = directory / "iris.joblib"
        train(model)
        ours = script(directory, "modelserver", {"instances": [ROW]})
        bare = script(directory, "direct", {"dataframe_split": {"columns": list(ROW), "data": [list(ROW.values())]}})
        for _ in range(args.reps):
            for label in ("modelserver", "direct"):
                port = free_port()
                if label == "modelserver":
                    proc, url, lua = start_modelserver(model, port), f"http://127.0.0.1:{port}/predict", ours
                else:
                    proc, url, lua = (
                        start_direct(args.anchors, model, port),
                        f"http://127.0.0.1:{port}/invocations",
                        bare,
                    )
                try:
                    run_wrk(wrk, url, lua, 8, 2)  # warm up
                    for connections in (8, 32):
                        measured = run_wrk(wrk, url, lua, connections, args.seconds)
                        if measured["errors"]:
                            raise SystemExit(f"{label}: {measured['errors']} failed requests")
                        results.setdefault((label, connections), []).append(measured["rps"])
                finally:
                    stop(proc)
    print(
        f"\nmodel server vs the bare uvicorn + joblib app, one iris row, {args.seconds} s runs, median of {args.reps}"
    )
    for connections in (8, 32):
        mine = statistics.median(results[("modelserver", connections)])
        limit = statistics.median(results[("direct", connections)])
        print(
            f"  concurrency {connections:>2}: model server {mine:,.0f} req/s, bare app {limit:,.0f} req/s, "
            f"ratio {mine / limit:.2f} (target >= 0.9)"
        )


if __name__ == "__main__":
    main()
