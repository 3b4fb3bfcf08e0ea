"""Moving artifacts: resumable chunked uploads and checked downloads, with progress.

An upload is remembered (portal, sha256, size → upload id) in the user's cache directory
until it is registered, so running the same command again after a crash, a Ctrl-C or a
dropped network resumes from the last byte the portal holds instead of starting over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

import requests

from portal_client import config
from portal_client.errors import InvalidUsage, PortalClientError, Refused, Unreachable

if TYPE_CHECKING:
    from portal_client.client import Client

HASH_BLOCK = 4 * 1024 * 1024


def segment(value: str) -> str:
    """One path segment of an API URL (a model, version or service name), quoted."""
    return quote(str(value), safe="")


class Progress(Protocol):
    """What a progress display needs; the CLI draws a bar, a notebook can print or ignore."""

    def start(self, description: str, total: int, completed: int = 0) -> None: ...

    def update(self, completed: int) -> None: ...

    def status(self, message: str) -> None: ...

    def stop(self) -> None: ...


class _NoProgress:
    def start(self, description: str, total: int, completed: int = 0) -> None:
        pass

    def update(self, completed: int) -> None:
        pass

    def status(self, message: str) -> None:
        pass

    def stop(self) -> None:
        pass


def file_sha256(path: Path, progress: Progress) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    progress.start(f"Hashing {path.name}", size)
    done = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
                done += len(block)
                progress.update(done)
    finally:
        progress.stop()  # also on Ctrl-C: a bar left running keeps redrawing in a notebook
    return digest.hexdigest()


# ---------------------------------------------------------------- the resume ledger


def _ledger_path() -> Path:
    return config.cache_dir() / "uploads.json"


def _ledger() -> dict[str, str]:
    try:
        data = json.loads(_ledger_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ledger_write(data: dict[str, str]) -> None:
    path = _ledger_path()
    with contextlib.suppress(OSError):  # resuming is a convenience; never fail an upload over it
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".uploads.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def _ledger_key(client: Client, sha256: str, size: int) -> str:
    return f"{client.url}|{sha256}|{size}"


def forget(client: Client, upload: dict) -> None:
    data = _ledger()
    kept = {k: v for k, v in data.items() if v != upload["id"]}
    if kept != data:
        _ledger_write(kept)


# ---------------------------------------------------------------- upload


class _ChunkBody:
    """A chunk's bytes as a file-like body with a length (so it is sent with Content-Length,
    not chunked encoding), reporting progress as the HTTP library reads it."""

    def __init__(self, data: bytes, on_read):
        self._view = memoryview(data)
        self._pos = 0
        self._on_read = on_read

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        piece = self._view[self._pos : end]
        self._pos = end
        self._on_read(end)
        return bytes(piece)


def _start_or_resume(client: Client, path: Path, size: int, sha256: str) -> dict:
    key = _ledger_key(client, sha256, size)
    known = _ledger().get(key)
    if known:
        try:
            upload = client.request("GET", f"/api/v1/uploads/{known}", what="resume the upload")
        except PortalClientError as exc:
            if exc.status not in (404, 410):
                raise
            upload = None  # expired, swept or aborted: start again
        if upload and upload["status"] in ("receiving", "complete"):
            return upload
    upload = client.request(
        "POST",
        "/api/v1/uploads",
        what="start an upload",
        json_body={"size": size, "sha256": sha256, "filename": path.name},
    )
    ledger = _ledger()
    ledger[key] = upload["id"]
    _ledger_write(ledger)
    return upload


def upload(client: Client, path: Path, *, chunk_size: int | None = None, progress: Progress | None = None) -> dict:
    """Send `path` in chunks, resuming after interruptions; answers the finished upload."""
    progress = progress or _NoProgress()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidUsage(f"No such file: {path}") from None
    except OSError as exc:
        raise InvalidUsage(f"Cannot read {path}: {exc.strerror}") from None
    if not path.is_file():
        raise InvalidUsage(f"{path} is not a file.")
    if size == 0:
        raise InvalidUsage(f"{path} is empty.")
    sha256 = file_sha256(path, progress)
    upload = _start_or_resume(client, path, size, sha256)
    if upload["status"] == "complete":
        progress.status(
            "The portal holds this content already; nothing to send."
            if upload.get("deduplicated")
            else "Resumed: every byte had arrived."
        )
        return upload
    chunk = chunk_size or upload.get("chunk_size") or 16 * 1024 * 1024
    offset = upload["offset"]
    progress.start(f"Uploading {path.name}", size, offset)
    try:
        offset = _send_chunks(client, upload, path, size, offset, chunk, progress)
    finally:
        progress.stop()  # also on an error or Ctrl-C: a bar left running keeps redrawing
    progress.status("Checking the digest…")
    return client.request(
        "POST",
        f"{upload['url']}/complete",
        what="finish the upload",
        json_body={"sha256": sha256},
        timeout=max(client.timeout, 600),
    )


def _send_chunks(client: Client, upload: dict, path: Path, size: int, offset: int, chunk: int, progress) -> int:
    """Send the file from `offset` in chunks, resuming from the portal's offset after errors."""
    failures = stuck = 0
    with open(path, "rb") as handle:
        while offset < size:
            handle.seek(offset)
            data = handle.read(min(chunk, size - offset))
            if len(data) != min(chunk, size - offset):
                raise InvalidUsage(f"{path} changed while it was being uploaded (it is shorter now). Upload it again.")
            base = offset
            try:
                answer = _put(client, upload, data, base, size, lambda n, base=base: progress.update(base + n))
                offset, failures = answer["offset"], 0
            except _RangeMoved as moved:  # the portal holds a different offset: go on from there
                stuck = stuck + 1 if moved.offset == offset else 0
                if stuck > client.retries:
                    raise Refused(f"The portal keeps refusing the chunk at byte {offset}.") from None
                if stuck:
                    time.sleep(min(0.5 * stuck, 5.0))  # no progress: do not hammer the portal
                offset = moved.offset
            except (Unreachable, _Busy) as exc:
                failures += 1
                if failures > client.retries:
                    raise Unreachable(
                        f"The upload stopped at byte {offset} of {size}: {exc} "
                        "Run the same command again to resume from there."
                    ) from None
                time.sleep(min(0.5 * 2 ** (failures - 1), 15.0))
                offset = _offset(client, upload, fallback=offset)
            progress.update(offset)
    return offset


class _RangeMoved(Exception):
    def __init__(self, offset: int):
        self.offset = offset


class _Busy(Exception):
    """The portal is still receiving an earlier attempt at this chunk (its connection was
    dropped on our side but not yet on the portal's)."""

    def __str__(self) -> str:
        return "the portal is still receiving an earlier attempt."


def _put(client: Client, upload: dict, data: bytes, offset: int, size: int, on_read) -> dict:
    end = offset + len(data) - 1
    try:
        return client.request(
            "PUT",
            upload["url"],
            what="send a chunk",
            headers={"Content-Range": f"bytes {offset}-{end}/{size}", "Content-Type": "application/octet-stream"},
            data=_ChunkBody(data, on_read),
        )
    except Refused as exc:
        if exc.status == 416 and isinstance(exc.body.get("offset"), int):
            raise _RangeMoved(exc.body["offset"]) from None
        if exc.status == 409 and "arriving right now" in exc.message:
            raise _Busy from None
        if exc.status == 400 and isinstance(exc.body.get("offset"), int):  # cut short: resume
            raise _RangeMoved(exc.body["offset"]) from None
        raise


def _offset(client: Client, upload: dict, *, fallback: int) -> int:
    try:
        return client.request("GET", upload["url"], what="ask where the upload stands")["offset"]
    except Unreachable:
        return fallback  # the next PUT will tell (416) if this is wrong


# ---------------------------------------------------------------- download


def download(
    client: Client, name: str, version: str, dest: Path, *, progress: Progress | None = None, overwrite: bool = False
) -> Path:
    """Stream an artifact to `dest`, verify its sha256 against the ETag, then move it in place.

    Into a directory, the file is named `<model>-<version><suffix>`: the uploader chose the
    original name, and it must not decide where bytes land (a dotfile, a path). An existing
    file is replaced only with `overwrite`.
    """
    progress = progress or _NoProgress()
    response = client.request(
        "GET",
        f"/api/v1/models/{segment(name)}/versions/{segment(version)}/artifact",
        what=f"download {name} {version}",
        expect_json=False,
        stream=True,
    )
    with response:
        if dest.is_dir():
            dest = dest / f"{name}-{version}{_suffix(_filename(response))}"
        if dest.name.startswith("."):
            raise InvalidUsage(f"Refusing to write {dest.name}: a hidden file. Name the output file otherwise.")
        if dest.exists() and not overwrite:
            raise InvalidUsage(f"{dest} exists. Pass --force (overwrite=True) to replace it, or choose another name.")
        expected = response.headers.get("ETag", "").strip('"')
        total = int(response.headers.get("Content-Length") or 0)
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        done = 0
        progress.start(f"Downloading {dest.name}", total)
        try:
            with open(tmp, "wb") as out:
                for block in response.iter_content(1024 * 1024):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    progress.update(done)
        except requests.exceptions.RequestException:
            tmp.unlink(missing_ok=True)
            raise Unreachable(f"The download stopped after {done} bytes; run the command again.") from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InvalidUsage(f"Cannot write {dest}: {exc.strerror}.") from None
        finally:
            progress.stop()
    if expected and digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise PortalClientError(f"The download's sha256 is {digest.hexdigest()}, not {expected}. Try again.")
    os.replace(tmp, dest)
    return dest


def _suffix(filename: str | None) -> str:
    """The uploaded file's suffix (".joblib", ".onnx", ".py") if it is a plain one, else ".bin"."""
    suffix = Path(filename or "").suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix) else ".bin"


def _filename(response: requests.Response) -> str | None:
    disposition = response.headers.get("Content-Disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename":
            return value.strip('"')
    return None
