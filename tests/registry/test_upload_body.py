"""Upload parts are read from gunicorn's socket directly; this pins that to the gunicorn in
requirements.txt: a gunicorn whose reader changed shape makes the portal fall back to the
WSGI stream (slower, still correct), and these tests say so."""

import os
import socket
import threading

from django.core.handlers.wsgi import WSGIRequest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import create

from registry.api.uploads import _GunicornBody, _read_body

CLIENT, SERVER = ("127.0.0.1", 40000), ("127.0.0.1", 8000)


def _serve(raw: bytes):
    """Parse `raw` (sent by a thread, as a client would) with gunicorn's own parser: the first
    request as Django sees it under gunicorn, and the parser for the ones after it."""
    ours, theirs = socket.socketpair()
    sender = threading.Thread(target=theirs.sendall, args=(raw,), daemon=True)
    sender.start()
    config = Config()
    parser = RequestParser(config, ours, CLIENT)
    message = next(parser)
    _, environ = create(message, ours, CLIENT, SERVER, config)
    return WSGIRequest(environ), parser, (ours, theirs, sender)


def test_a_part_is_read_from_gunicorns_socket_and_the_next_request_still_parses():
    body = os.urandom(3 * 1024 * 1024 + 17)
    raw = (
        f"PUT /api/v1/uploads/x HTTP/1.1\r\nHost: portal\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
        + b"GET /next HTTP/1.1\r\nHost: portal\r\n\r\n"  # pipelined behind the part
    )
    request, parser, (ours, theirs, sender) = _serve(raw)
    try:
        assert _GunicornBody.of(request, len(body)) is not None  # the direct path applies
        received = b"".join(bytes(piece) for piece in _read_body(request, len(body)))
        assert received == body
        ours.settimeout(5)  # were gunicorn to wait for body bytes already taken, fail instead of hanging
        following = next(parser, None)  # gunicorn drains what it thinks is left, then parses on
        assert following is not None, "gunicorn still waited for bytes of the part"
        assert following.method == "GET" and following.path == "/next"
    finally:
        sender.join(10)
        ours.close()
        theirs.close()


def test_a_body_cut_short_ends_the_pieces_early():
    body = os.urandom(1024 * 1024)
    raw = f"PUT /api/v1/uploads/x HTTP/1.1\r\nHost: portal\r\nContent-Length: {2 * len(body)}\r\n\r\n".encode() + body
    request, _, (ours, theirs, sender) = _serve(raw)
    try:
        sender.join(10)
        theirs.close()  # the client went away half-way
        received = b"".join(bytes(piece) for piece in _read_body(request, 2 * len(body)))
        assert received == body
    finally:
        ours.close()
