"""The gateway's lean upstream client (gateway/upstream.py), against small asyncio servers
that answer in the ways a model server, or something in its place, might."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway import upstream
from gateway.upstream import Pool, UpstreamError, pool_for

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def run(coroutine) -> None:
    """asyncio.run in a thread of its own: the browser tests' Playwright may leave an event loop
    marked running in this worker's main thread, where asyncio.run would refuse to start."""
    failure: list[BaseException] = []

    def target():
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def _serve(handler) -> tuple[asyncio.Server, Pool]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, pool_for(f"http://127.0.0.1:{port}")


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return head + await reader.readexactly(length)


def answering_ok(seen: list[bytes], connections: list[int] | None = None):
    """A server handler that answers every request on its connection with OK, keeping them."""

    async def handler(reader, writer):
        if connections is not None:
            connections.append(1)
        while True:
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(OK)
            await writer.drain()
        writer.close()

    return handler


def test_plain_http_and_unix_socket_instances_get_a_pool():
    assert pool_for("http://127.0.0.1:8000") is not None
    assert pool_for("http://model-host/prefix") is not None
    assert pool_for("unix:/run/model.sock").socket_path == "/run/model.sock"
    for url in ("https://127.0.0.1:8000", "unix:relative.sock", "http://user:pw@host:1", "http://host:1/?q=1", "x"):
        assert pool_for(url) is None, url


def test_a_unix_socket_instance_is_asked_like_a_tcp_one(tmp_path):
    path = str(tmp_path / "model.sock")
    seen: list[bytes] = []

    async def main():
        server = await asyncio.start_unix_server(answering_ok(seen), path)
        async with server:
            pool = pool_for(f"unix:{path}")
            for _ in range(2):
                assert await pool.post(b'{"instances": [1]}') == (200, b"{}")
            pool.close()

    run(main())
    assert len(seen) == 2 and seen[0].startswith(b"POST /predict HTTP/1.1\r\nHost: localhost\r\n")


def test_the_health_checks_address_a_socket_by_a_host_name_that_encodes_its_path():
    base = upstream.request_base("unix:/var/run/portal/sockets/ab12/model.sock")
    host = base.removeprefix("http://")
    assert base.startswith("http://") and host.endswith(".unix") and all(len(label) <= 63 for label in host.split("."))
    assert upstream.socket_path(host) == "/var/run/portal/sockets/ab12/model.sock"
    assert upstream.request_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert upstream.socket_path("127.0.0.1") is None and upstream.socket_path("zz.unix") is None


def test_a_request_is_one_write_and_its_connection_is_kept():
    seen: list[bytes] = []
    connections: list[int] = []

    async def main():
        server, pool = await _serve(answering_ok(seen, connections))
        async with server:
            for _ in range(3):
                assert await pool.post(b'{"instances": [1]}') == (200, b"{}")
            pool.close()

    run(main())
    assert len(connections) == 1
    assert seen[0].startswith(b"POST /predict HTTP/1.1\r\n")
    assert b"\r\ncontent-length: 18\r\n" in seen[0].lower() and seen[0].endswith(b'\r\n\r\n{"instances": [1]}')


def test_a_kept_connection_the_instance_closed_is_replaced_transparently():
    connections = 0

    async def handler(reader, writer):
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(OK)  # keep-alive answer, then the instance closes anyway
        await writer.drain()
        writer.close()

    async def main():
        server, pool = await _serve(handler)
        async with server:
            assert await pool.post(b"{}") == (200, b"{}")
            await asyncio.sleep(0.1)
            assert await pool.post(b"{}") == (200, b"{}")

    run(main())
    assert connections == 2


@pytest.mark.parametrize(
    "answer",
    [b"", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", b"not http at all\r\n\r\n"],
    ids=["closed", "cut short", "not http"],
)
def test_an_answer_that_is_not_whole_is_an_upstream_error(answer):
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main():
        server, pool = await _serve(handler)
        async with server:
            with pytest.raises(UpstreamError):
                await pool.post(b"{}")

    run(main())


def test_an_answer_without_a_length_ends_with_its_connection():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b'{"a": 1}')
        await writer.drain()
        writer.close()

    async def main():
        server, pool = await _serve(handler)
        async with server:
            assert await pool.post(b"{}") == (200, b'{"a": 1}')

    run(main())


def test_a_chunked_answer_is_joined():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 422 Unprocessable\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b'3\r\n{"e\r\n5\r\n": 1}\r\n0\r\n\r\n')
        await writer.drain()

    async def main():
        server, pool = await _serve(handler)
        async with server:
            assert await pool.post(b"{}") == (422, b'{"e": 1}')
            pool.close()

    run(main())


def test_a_refused_connection_is_an_upstream_error():
    async def main():
        server, pool = await _serve(lambda r, w: None)
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError):
            await pool.post(b"{}")

    run(main())


def test_a_request_cut_short_by_its_time_limit_does_not_leave_its_answer_for_the_next():
    answers = iter([b'"late"', b'"next"'])

    async def handler(reader, writer):
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            body = next(answers)
            if body == b'"late"':
                await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def main():
        server, pool = await _serve(handler)
        async with server:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.post(b"{}")
            assert await pool.post(b"{}") == (200, b'"next"')
            pool.close()

    run(main())


def test_idle_connections_are_pruned(monkeypatch):
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def main():
        server, pool = await _serve(handler)
        async with server:
            assert await pool.post(b"{}") == (200, b"{}")
            (connection,) = pool._idle
            pool.prune(connection.idle_since + upstream.IDLE_SECONDS + 1)
            assert pool._idle == [] and connection.closed

    run(main())
