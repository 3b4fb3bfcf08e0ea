"""python -m gateway [--port P]: run the gateway under uvicorn (uvloop, httptools, one worker)."""

from __future__ import annotations

import argparse
import os

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8001)))
    args = parser.parse_args()
    uvicorn.run(
        "gateway.app:app",
        host=args.host,
        port=args.port,
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
