"""python -m modelserver --artifact PATH --flavor F (--port P | --uds PATH)

Serves one model version on HTTP, on a TCP port or a unix socket: GET /health/live,
GET /health/ready, POST /predict with {"instances": [...]}. On SIGTERM it stops taking
new connections and finishes the requests in flight (up to --drain-seconds), then exits.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys

import uvicorn

from modelserver.flavors import FLAVORS
from modelserver.server import ModelServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelserver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", required=True, help="the model file")
    parser.add_argument("--flavor", required=True, choices=FLAVORS)
    listen = parser.add_mutually_exclusive_group(required=True)
    listen.add_argument("--port", type=int)
    listen.add_argument("--uds", help="answer on this unix socket instead of a TCP port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version", default="", help="the model version, echoed in every answer")
    parser.add_argument("--field-order", default="", help="comma-separated fields that make a feature row")
    parser.add_argument("--instance-name", default="", help="a label for supervisors; not used otherwise")
    parser.add_argument("--drain-seconds", type=int, default=30)
    parser.add_argument("--max-processes", type=int, default=0, help="RLIMIT_NPROC, set before the model loads")
    args = parser.parse_args(argv)
    limit_processes(args.max_processes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s modelserver: %(message)s")
    app = ModelServer(
        artifact=args.artifact,
        flavor=args.flavor,
        version=args.version,
        field_order=[f for f in args.field_order.split(",") if f] or None,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port or 0,
        uds=args.uds,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=args.drain_seconds,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def limit_processes(processes: int) -> None:
    """Bound the processes and threads this server (and the model's code) may start. Set
    here, inside the sandbox's own user namespace, the limit counts the sandbox's processes
    only, not every process of the user the portal runs as."""
    if processes > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


if __name__ == "__main__":
    sys.exit(main())
