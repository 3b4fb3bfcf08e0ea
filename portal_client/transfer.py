"""Moving artifacts: resumable uploads in parallel parts and checked downloads, with progress.

An upload is remembered (portal and file → upload id, and once hashed, portal and content →
upload id) in the user's cache directory until it is registered, so running the same
command again after a crash, a Ctrl-C or a dropped network sends only the parts the portal
lacks instead of starting over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
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


def _identity_key(client: Client, path: Path) -> str:
    """The file as it is now: the same path, inode, size and modification time."""
    st = path.stat()
    return f"{client.url}|file|{st.st_dev}:{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"


def _content_key(client: Client, sha256: str, size: int) -> str:
    return f"{client.url}|{sha256}|{size}"


def _remember(key: str, upload_id: str) -> None:
    ledger = _ledger()
    ledger[key] = upload_id
    _ledger_write(ledger)


def forget(client: Client, upload: dict) -> None:
    data = _ledger()
    kept = {k: v for k, v in data.items() if v != upload["id"]}
    if kept != data:
        _ledger_write(kept)


# ---------------------------------------------------------------- upload

DEFAULT_PARALLEL = 4
# Files up to this size are hashed before anything is sent (a blink), so content the portal
# holds already costs no bytes; larger ones are hashed while their parts travel.
HASH_FIRST_BYTES = 64 * 1024 * 1024


def _known(client: Client, key: str) -> dict | None:
    """The upload the ledger remembers under `key`, if the portal still has it unregistered."""
    known = _ledger().get(key)
    if not known:
        return None
    try:
        upload = client.request("GET", f"/api/v1/uploads/{known}", what="resume the upload")
    except PortalClientError as exc:
        if exc.status not in (404, 410):
            raise
        return None  # expired, swept or aborted: start again
    return upload if upload["status"] in ("receiving", "complete") else None


def upload(
    client: Client,
    path: Path,
    *,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    parallel: int | None = None,
) -> dict:
    """Send `path` in parts, several at once, hashing it meanwhile; answers the finished upload.

    Interrupted uploads resume: the same file (path, inode, size, modification time) goes on
    with the upload it started, sending only the parts the portal lacks; and the same bytes
    from anywhere (a model serialised again after a refused registration) reuse a finished
    upload of them. A large file's digest, computed while the parts travel, is told to the
    portal as soon as it is known: if the portal holds that content for you already, sending
    stops there (a small file is hashed first, and then sends nothing in that case).
    """
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
    identity = _identity_key(client, path)
    sha256 = file_sha256(path, progress) if size <= HASH_FIRST_BYTES else None
    current = _known(client, identity)
    if sha256 and (current is None or current["status"] != "complete"):
        current = _known(client, _content_key(client, sha256, size)) or current
    if current is None or current["size"] != size:
        body = {"size": size, "filename": path.name, "sha256": sha256 or ""}
        if chunk_size:
            body["chunk_size"] = chunk_size
        current = client.request("POST", "/api/v1/uploads", what="start an upload", json_body=body)
        _remember(identity, current["id"])  # before the first byte goes: a later run resumes it
    return _Transfer(client, path, current, parallel or DEFAULT_PARALLEL, progress, sha256).run()


class _Transfer:
    """One run of an upload: parts sent by a few threads, the file hashed by another."""

    def __init__(self, client: Client, path: Path, upload: dict, parallel: int, progress: Progress, sha256: str | None):
        self.client = client
        self.path = path
        self.upload = upload
        self.size = upload["size"]
        self.part_size = upload["chunk_size"]
        self.parallel = max(1, parallel)
        self.progress = progress
        self.stop = threading.Event()  # the portal needs no more parts (or we gave up)
        self.lock = threading.Lock()
        self.sent = upload.get("received", 0) if upload["status"] == "receiving" else self.size
        self.sha256 = sha256  # known already, or computed by run()'s hashing thread
        self.found_midway = False  # the digest, known while parts travelled, named stored content
        self.replacement: dict | None = None  # a finished upload of the same bytes, found by the digest

    def run(self) -> dict:
        hasher = _Thread(self._hash if self.sha256 is None else lambda: None)
        hasher.start()
        if self.upload["status"] == "receiving":
            self.progress.start(f"Uploading {self.path.name}", self.size, self.sent)
            try:
                self._send_missing()
            except BaseException:
                self.stop.set()
                raise
            finally:
                self.progress.stop()  # also on an error or Ctrl-C: a bar left running keeps redrawing
        if hasher.is_alive():
            self.progress.status(f"Finishing the checksum of {self.path.name}…")
        hasher.join_or_raise()
        if self.replacement is not None:
            return self.replacement
        if self.upload["status"] == "complete":
            if self.upload.get("sha256") == self.sha256:
                if not self.upload.get("deduplicated"):
                    self.progress.status("Resumed: every byte had arrived.")
                elif self.found_midway:
                    self.progress.status("The portal holds this content already; the rest was not sent.")
                else:
                    self.progress.status("The portal holds this content already; nothing to send.")
                return self.upload
            # The ledger's upload was of other bytes with the same name, size and time: send these.
            forget(self.client, self.upload)
            return upload(self.client, self.path, chunk_size=self.part_size, progress=self.progress)
        self.progress.status("Checking the digest…")
        try:
            finished = self.client.request(
                "POST",
                f"{self.upload['url']}/complete",
                what="finish the upload",
                json_body={"sha256": self.sha256},
                timeout=max(self.client.timeout, 600),
            )
        except Refused as exc:
            if exc.status == 400:  # the bytes were not these: the portal dropped them
                forget(self.client, self.upload)
            raise
        _remember(_content_key(self.client, finished["sha256"], self.size), finished["id"])
        return finished

    # ------------------------------------------------------------ hashing

    def _hash(self) -> None:
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
        self.sha256 = digest.hexdigest()
        if self.upload["status"] != "receiving":
            return
        earlier = _known(self.client, _content_key(self.client, self.sha256, self.size))
        if earlier is not None and earlier["id"] != self.upload["id"] and earlier["status"] == "complete":
            # These bytes were uploaded before and not registered: use that upload, drop this one.
            self.stop.set()
            self.replacement = earlier
            with contextlib.suppress(PortalClientError):
                self.client.request("DELETE", self.upload["url"], what="drop the duplicate upload")
            forget(self.client, self.upload)
            return
        told = self.client.request(
            "PATCH", self.upload["url"], what="give the upload's sha256", json_body={"sha256": self.sha256}
        )
        if told["status"] == "complete":  # the portal holds this content for us already
            self.stop.set()
            self.found_midway = True
            self.upload = told

    # ------------------------------------------------------------ sending

    def _send_missing(self) -> None:
        """Send every missing part, a few at once; ask again what is missing until nothing is."""
        with open(self.path, "rb") as handle:
            for _ in range(self.client.retries + 1):
                parts = self._missing_parts()
                if not parts or self.stop.is_set():
                    return
                with ThreadPoolExecutor(self.parallel, thread_name_prefix="upload-part") as pool:
                    futures = [pool.submit(self._send_part, handle.fileno(), number) for number in parts]
                    try:
                        for future in as_completed(futures):
                            future.result()
                    except BaseException:
                        self.stop.set()
                        for future in futures:
                            future.cancel()
                        raise
                self.upload = self._state()
        raise Refused(f"The portal keeps missing parts of {self.path.name}.")

    def _missing_parts(self) -> list[int]:
        if self.upload["status"] != "receiving":
            return []
        numbers: list[int] = []
        for start, end in self.upload.get("missing", [[self.upload["offset"], self.size - 1]]):
            numbers.extend(range(start // self.part_size, end // self.part_size + 1))
        return numbers

    def _state(self) -> dict:
        return self.client.request("GET", self.upload["url"], what="ask which parts are missing")

    def _send_part(self, fd: int, number: int) -> None:
        start = number * self.part_size
        length = min(self.part_size, self.size - start)
        failures = 0
        while not self.stop.is_set():
            data = os.pread(fd, length, start)
            if len(data) != length:
                raise InvalidUsage(
                    f"{self.path} changed while it was being uploaded (it is shorter now). Upload it again."
                )
            try:
                self.client.request(
                    "PUT",
                    self.upload["url"],
                    what="send a part",
                    headers={
                        "Content-Range": f"bytes {start}-{start + length - 1}/{self.size}",
                        "Content-Type": "application/octet-stream",
                    },
                    data=data,
                )
                with self.lock:
                    self.sent += length
                    self.progress.update(self.sent)
                return
            except Refused as exc:
                if exc.status == 409 and exc.body.get("status") == "complete":
                    self.stop.set()  # finished meanwhile (the digest named content the portal holds)
                    return
                retry = exc.status == 400 and "cut short" in exc.message  # resend it whole
                busy = exc.status == 409 and "arriving right now" in exc.message  # our own dropped attempt
                if not (retry or busy):
                    raise
                error: PortalClientError = exc
            except Unreachable as exc:
                error = exc
            failures += 1
            if failures > self.client.retries:
                raise Unreachable(
                    f"The upload stopped: part {number + 1} (bytes {start}-{start + length - 1}) kept failing: "
                    f"{error.message} Run the same command again to resume; parts that arrived are kept."
                ) from None
            self.stop.wait(min(0.5 * 2 ** (failures - 1), 15.0))


class _Thread(threading.Thread):
    """A daemon thread whose exception is raised again by join_or_raise()."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self._work = target
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._error = exc

    def join_or_raise(self) -> None:
        self.join()
        if self._error is not None:
            raise self._error


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
