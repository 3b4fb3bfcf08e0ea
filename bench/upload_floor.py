"""The fastest any verified upload can go on this machine, beside `cp` + `sync`, in one run.

    .venv/bin/python bench/upload_floor.py [--size-mib 1024] [--rounds 3]

An upload that the portal can trust does at least this: the sender reads the file and sends
it over a socket, the receiver writes it to disk and makes it durable, and the content is
hashed with SHA-256 (the portal addresses artifacts by it). With the digest check, the sender
hashes the file too, and the two digests are compared. This script does only that, with
nothing else in the way: no HTTP, no database, no parts, zero-copy on both sides
(`sendfile` on the sender, `splice` from the socket into the file on the receiver), the
hashes in their own threads while the bytes travel, and the receiver hashing from the page
cache as the bytes land (as the portal's hasher does).

Its figures are a ceiling for `bench/upload.py`: whatever the portal adds (HTTP, parts,
resumability, the database) can only make the upload slower. Printed as seconds, MB/s and
the ratio to `cp` + `sync` of the same file on the same disk.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
BLOCK = 4 * MIB
F_SETPIPE_SZ = 1031


def cp_sync(source: Path, scratch: Path) -> float:
    target = scratch / "cp.bin"
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def _receive(listener: socket.socket, target: Path, size: int, result: dict) -> None:
    conn, _ = listener.accept()
    with conn:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        back = os.open(target, os.O_RDONLY)
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, F_SETPIPE_SZ, MIB)
        digest = hashlib.sha256()
        view = memoryview(bytearray(BLOCK))
        landed = hashed = 0
        try:
            while landed < size:
                n = os.splice(conn.fileno(), write_end, min(MIB, size - landed))
                if not n:
                    raise ConnectionError("the sender stopped early")
                while n:
                    moved = os.splice(read_end, out, n, offset_dst=landed)
                    landed += moved
                    n -= moved
                while hashed < landed and (landed - hashed >= BLOCK or landed == size):
                    k = os.preadv(back, [view[: min(BLOCK, landed - hashed)]], hashed)
                    digest.update(view[:k])
                    hashed += k
            os.fsync(out)
        finally:
            for fd in (out, back, read_end, write_end):
                os.close(fd)
        result["received"] = digest.hexdigest()
        conn.sendall(b"ok")


def _hash_file(path: Path, result: dict) -> None:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    result["sent"] = digest.hexdigest()


def floor(source: Path, scratch: Path, *, sender_hashes: bool) -> float:
    target = scratch / "received.bin"
    size = source.stat().st_size
    result: dict[str, str] = {}
    subprocess.run(["sync"], check=True)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        started = time.perf_counter()
        receiver = threading.Thread(target=_receive, args=(listener, target, size, result))
        receiver.start()
        hasher = threading.Thread(target=_hash_file, args=(source, result)) if sender_hashes else None
        if hasher:
            hasher.start()
        with socket.create_connection(listener.getsockname()) as conn, open(source, "rb") as handle:
            conn.sendfile(handle)
            conn.recv(2)
        receiver.join()
        if hasher:
            hasher.join()
        elapsed = time.perf_counter() - started
    target.unlink()
    if sender_hashes and result.get("sent") != result.get("received"):
        raise SystemExit("the digests differ: the floor measurement is broken")
    if "received" not in result:
        raise SystemExit("the receiver failed")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent / "var" / "bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch_name:
        scratch = Path(scratch_name)
        source = scratch / "source.bin"
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MIB))
        size = source.stat().st_size
        _hash_file(source, {})  # warm the page cache, as the real benchmark's file is
        cases = {
            "cp + sync (durable)": lambda: cp_sync(source, scratch),
            "floor: digest on both sides (sender hashes too)": lambda: floor(source, scratch, sender_hashes=True),
            "floor: receiver's digest only (no check)": lambda: floor(source, scratch, sender_hashes=False),
        }
        best = {name: min(run() for _ in range(args.rounds)) for name, run in cases.items()}
    baseline = best["cp + sync (durable)"]
    print(f"file: {args.size_mib} MiB, {os.cpu_count()} CPUs, best of {args.rounds}")
    print(f"{'':52} {'MB/s':>7} {'seconds':>8} {'/ cp+sync':>10}")
    for name, seconds in best.items():
        print(f"{name:52} {size / seconds / 1e6:7.1f} {seconds:8.2f} {baseline / seconds:10.2f}")
    single = hashlib.sha256()
    block = os.urandom(64 * MIB)
    started = time.perf_counter()
    for _ in range(4):
        single.update(block)
    rate = 256 * MIB / (time.perf_counter() - started)
    print(f"SHA-256 on one core: {rate / 1e6:.0f} MB/s, so {size / rate:.2f} s per pass over the file")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
