"""python -m gateway [--port P] [--workers N]: run the gateway under uvicorn (uvloop, httptools),
in N worker processes sharing the port (GATEWAY_WORKERS, 1 by default)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8001)))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("GATEWAY_WORKERS", 1)),
        help="worker processes sharing the port (each one event loop; about one per CPU)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    metrics_dir = None
    if args.workers > 1:
        # The workers' Prometheus counts go to shared files, so any worker can answer a scrape
        # with all of them (prometheus-client's multiprocess mode). A fresh directory each start.
        metrics_dir = tempfile.mkdtemp(prefix="portal-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        serve(args)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def serve(args: argparse.Namespace) -> None:
    uvicorn.run(
        "gateway.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        # Nothing here reads the client's address, so X-Forwarded-* need not be parsed for
        # every request; and callers need not be told which server software answers.
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
