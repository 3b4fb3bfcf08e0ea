"""Stream a multipart/form-data body from a file without holding it in memory.

Used by the upload benchmark and the large-upload tests; the CLI's client does the same.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def encode(
    fields: dict[str, str], file_field: str, path: Path, *, chunk_size: int = 1024 * 1024
) -> tuple[str, int, Iterator[bytes]]:
    """Return (content type, content length, body chunks)."""
    boundary = "portal-" + secrets.token_hex(12)
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + os.path.getsize(path) + len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                yield chunk
        yield tail

    return f"multipart/form-data; boundary={boundary}", length, chunks()
