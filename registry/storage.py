"""Content-addressed artifact storage.

Callers see one small interface, `ArtifactStore`: stream bytes into a staged write that
hashes them as they arrive, commit it under its sha256 (stored once however many versions
use it), open it for streaming reads, and find a local path for processes that need a file.
The filesystem store is the default; an S3-compatible store can implement the same
interface without touching callers.

Resumable uploads (`ResumableUpload`) receive one artifact in parts, like S3 multipart
uploads: each request brings one whole part, in any order and several at once, and a
finished upload becomes a staged write that a registration commits like any other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings

SHA256_HEX_LENGTH = 64
# The files of one resumable upload: its bytes, the parts received, the hash lock, the digest.
UPLOAD_SUFFIXES = (".part", ".parts", ".hash", ".sha256")
# The most parts one upload may have (S3's limit, kept for every store).
MAX_PARTS = 10_000


class ArtifactTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"The artifact is larger than the limit of {limit} bytes.")
        self.limit = limit


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int
    created: bool  # False when identical content was already stored


class StagedWrite(Protocol):
    size: int
    path: Path  # a local file the load check can read

    def flush(self) -> None: ...

    def write(self, chunk: bytes) -> None: ...

    @property
    def sha256(self) -> str: ...

    def commit(self) -> StoredArtifact: ...

    def discard(self) -> None: ...


class UploadBusy(Exception):
    """Another request is writing the same part right now."""


class UploadMissing(Exception):
    """The upload's bytes are gone (expired and swept, or aborted)."""


class PartCutShort(Exception):
    """The connection ended before the whole part arrived; it was not kept."""


class UploadIncomplete(Exception):
    """Parts are missing: the upload cannot be finished yet."""

    def __init__(self, missing: list[tuple[int, int]]):
        super().__init__("Parts of this upload have not arrived.")
        self.missing = missing


@dataclass(frozen=True)
class PartsState:
    """Which parts of an upload have arrived."""

    size: int
    part_size: int
    received: tuple[bool, ...]

    @property
    def count(self) -> int:
        return len(self.received)

    def bounds(self, number: int) -> tuple[int, int]:
        """Byte range of part `number`, END exclusive."""
        start = number * self.part_size
        return start, min(start + self.part_size, self.size)

    @property
    def received_bytes(self) -> int:
        return sum(end - start for start, end in map(self.bounds, self.numbers_received()))

    def numbers_received(self) -> list[int]:
        return [n for n, arrived in enumerate(self.received) if arrived]

    @property
    def offset(self) -> int:
        """The first byte not received: where a client sending in order resumes."""
        for number, arrived in enumerate(self.received):
            if not arrived:
                return self.bounds(number)[0]
        return self.size

    @property
    def missing(self) -> list[tuple[int, int]]:
        """Byte ranges not received (END inclusive, like Content-Range), adjacent parts merged."""
        ranges: list[tuple[int, int]] = []
        for number, arrived in enumerate(self.received):
            if arrived:
                continue
            start, end = self.bounds(number)
            if ranges and ranges[-1][1] == start - 1:
                ranges[-1] = (ranges[-1][0], end - 1)
            else:
                ranges.append((start, end - 1))
        return ranges

    @property
    def complete(self) -> bool:
        return all(self.received)


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


class ResumableUpload(Protocol):
    """One artifact received in parts (S3 multipart style): each part arrives whole or not at
    all, in any order and in parallel; a part that arrived is never written again."""

    def create(self) -> None: ...

    def parts(self) -> PartsState: ...

    def put_part(self, *, number: int, chunks: Iterable[bytes]) -> bool: ...

    def verify(self) -> StagedWrite: ...

    def finished(self, *, sha256: str, size: int) -> StagedWrite: ...

    def discard(self) -> None: ...


class ArtifactStore(Protocol):
    min_part_size: int  # the smallest part (but the last) an upload may be sent in

    def stage(self, *, max_size: int | None = None) -> StagedWrite: ...

    def resumable(self, key: str, *, size: int = 0, part_size: int = 0) -> ResumableUpload: ...

    def uploads_present(self) -> set[str]: ...

    def upload_mtime(self, key: str) -> float: ...

    def stored(self, sha256: str, size: int) -> StagedWrite: ...

    def exists(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def local_path(self, sha256: str) -> Path: ...

    def delete(self, sha256: str) -> None: ...

    def cleanup_staging(self, *, older_than_seconds: float) -> int: ...


def valid_sha256(value: str) -> bool:
    return len(value) == SHA256_HEX_LENGTH and all(c in "0123456789abcdef" for c in value)


class FileSystemStagedWrite:
    """Bytes written to a staging file beside the store (same filesystem, so commit is a rename)."""

    def __init__(self, store: FileSystemArtifactStore, max_size: int | None):
        self._store = store
        self._max_size = max_size
        self._hash = hashlib.sha256()
        self.size = 0
        self.path = store.staging_dir / f"{uuid.uuid4().hex}.part"
        self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 - closed in commit/discard
        self._done = False
        self._flushed = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._max_size is not None and self.size > self._max_size:
            self.discard()
            raise ArtifactTooLarge(self._max_size)
        self._hash.update(chunk)
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def flush(self) -> None:
        """Make the staged bytes durable (fsync); commit() does it too if it was not done."""
        if not self._flushed and not self._done:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._flushed = True

    def commit(self) -> StoredArtifact:
        if self._done:
            raise RuntimeError("This staged write is already finished.")
        self.flush()
        self._file.close()
        self._done = True
        return self._store.move_in(self.path, sha256=self.sha256, size=self.size)

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)


class FinishedFile:
    """Bytes that are complete and verified, as a staged write a registration commits.

    Either a finished resumable upload's file (committing moves it into the store) or
    content the store holds already (committing stores nothing new). Discarding leaves the
    bytes in place: a registration that was refused (a wrong version number, a breaking
    change) can be retried with the same upload.
    """

    def __init__(
        self,
        store: FileSystemArtifactStore,
        path: Path,
        size: int,
        sha256: str,
        *,
        stored: bool = False,
        leftovers: tuple[Path, ...] = (),
    ):
        self._store = store
        self.path = path
        self.size = size
        self._sha256 = sha256
        self._stored = stored
        self._leftovers = leftovers  # the upload's bookkeeping, gone with its bytes

    @property
    def sha256(self) -> str:
        return self._sha256

    def write(self, chunk: bytes) -> None:
        raise RuntimeError("Finished bytes take no more.")

    def flush(self) -> None:
        pass  # made durable when the upload was finished, or when it was stored

    def commit(self) -> StoredArtifact:
        if self._stored:
            return StoredArtifact(sha256=self._sha256, size=self.size, created=False)
        stored = self._store.move_in(self.path, sha256=self._sha256, size=self.size)
        for path in self._leftovers:
            path.unlink(missing_ok=True)
        return stored

    def discard(self) -> None:
        pass


def _lock_range(fd: int, start: int, length: int) -> None:
    """An exclusive lock on bytes [start, start+length) of an open file, held until `fd` is
    closed (an open-file-description lock: it works between threads of one process as between
    processes, and the kernel drops it if the process dies). UploadBusy if someone holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise UploadBusy from None
        raise


class _Hasher(threading.Thread):
    """Hashes an upload's parts in order as they arrive, beside the requests that bring them.

    One hasher per upload across every web process: whoever takes the upload's `.hash` lock
    first runs it; the others only wake it (in this process) or leave it to find their parts
    by looking (in another). It reads parts back from the file (the page cache holds them) and
    only parts marked received, which are never written again, so the digest is that of the
    bytes on disk. It also starts their write-back early, so that the final fsync is short.
    When every part is hashed it writes the digest beside the upload and stops; finishing
    the upload reads it from there. A hasher that lost its process is simply redone.
    """

    IDLE_SECONDS = 600.0
    POLL_SECONDS = 0.05
    BLOCK = 4 * 1024 * 1024

    def __init__(self, upload: FileSystemResumableUpload, lock_fd: int):
        super().__init__(name=f"upload-hasher-{upload.key}", daemon=True)
        self.upload = upload
        self.lock_fd = lock_fd
        self.wake = threading.Event()

    def run(self) -> None:
        try:
            self._hash()
        except (OSError, UploadMissing):
            pass  # discarded meanwhile, or unreadable: finishing the upload hashes it again
        finally:
            with _hashers_lock:
                _hashers.pop(self.upload.key, None)
            os.close(self.lock_fd)

    def _hash(self) -> None:
        upload = self.upload
        digest = hashlib.sha256()
        view = memoryview(bytearray(self.BLOCK))  # one buffer for every block: no heap churn
        number = 0
        idle_since = time.monotonic()
        with open(upload.path, "rb", buffering=0) as data:
            while True:
                state = upload.parts()
                hashed = number
                while number < state.count and state.received[number]:
                    start, end = state.bounds(number)
                    position = start
                    while position < end:
                        n = os.preadv(data.fileno(), [view[: min(self.BLOCK, end - position)]], position)
                        if not n:
                            raise UploadMissing
                        digest.update(view[:n])
                        position += n
                    number += 1
                if number == state.count:
                    upload.write_digest(digest.hexdigest())
                    return
                if number > hashed:
                    os.fdatasync(data.fileno())
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.IDLE_SECONDS:
                    return
                self.wake.wait(self.POLL_SECONDS)
                self.wake.clear()


_hashers: dict[str, _Hasher] = {}
_hashers_lock = threading.Lock()


def _hash_lock(path: Path, *, blocking: bool = False) -> int | None:
    """The fd holding an upload's hash lock, or None if another hasher holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class FileSystemResumableUpload:
    """One upload's bytes in a file under `.uploads/`, created at its full size, each part
    written at its offset; a byte per part in `<key>.parts` says which have arrived.

    A part is written under a lock on its byte range and marked received only once all of it
    is on the file; a received part is never written again (a resent one is read and
    dropped). A part cut short by a dropped connection is not marked, and is sent again whole.
    """

    def __init__(self, store: FileSystemArtifactStore, key: str, *, size: int = 0, part_size: int = 0):
        if not key.isalnum():
            raise ValueError(f"{key!r} is not an upload key")
        self._store = store
        self.key = key
        self.size = size
        self.part_size = part_size
        self.path = store.uploads_dir / f"{key}.part"
        self._marks = store.uploads_dir / f"{key}.parts"
        self._lock_path = store.uploads_dir / f"{key}.hash"
        self._digest_path = store.uploads_dir / f"{key}.sha256"

    def create(self) -> None:
        with open(self.path, "xb") as handle:
            handle.truncate(self.size)  # sparse: blocks are taken as parts arrive
        with open(self._marks, "xb") as marks:
            marks.write(bytes(part_count(self.size, self.part_size)))

    def parts(self) -> PartsState:
        try:
            marks = self._marks.read_bytes()
        except FileNotFoundError:
            raise UploadMissing from None
        if len(marks) != part_count(self.size, self.part_size):
            raise UploadMissing  # not this upload's layout (left by an older version of the portal)
        return PartsState(self.size, self.part_size, tuple(b != 0 for b in marks))

    def put_part(self, *, number: int, chunks: Iterable[bytes]) -> bool:
        """Write part `number` from `chunks`; True once it is all there and marked received,
        False if it had arrived before (the chunks are read and dropped). UploadBusy if the
        same part is being written right now; PartCutShort if the chunks ended early (the part
        is not marked, and is sent again whole)."""
        state = self.parts()
        start, end = state.bounds(number)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UploadMissing from None
        try:
            _lock_range(fd, start, end - start)
            if self.parts().received[number]:
                for _ in chunks:
                    pass
                return False
            position = start
            for chunk in chunks:
                if position + len(chunk) > end:
                    raise ArtifactTooLarge(end - start)
                os.pwrite(fd, chunk, position)
                position += len(chunk)
            if position != end:
                raise PartCutShort
            self._mark(number)
        finally:
            os.close(fd)  # drops the range lock
        self._nudge_hasher()
        return True

    def _mark(self, number: int) -> None:
        fd = os.open(self._marks, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, b"\x01", number)
        finally:
            os.close(fd)

    def _nudge_hasher(self) -> None:
        with _hashers_lock:
            hasher = _hashers.get(self.key)
            if hasher is None:
                lock_fd = _hash_lock(self._lock_path)
                if lock_fd is None:
                    return  # another process hashes this upload; it will find the part
                hasher = _hashers[self.key] = _Hasher(self, lock_fd)
                hasher.start()
        hasher.wake.set()

    def write_digest(self, sha256: str) -> None:
        tmp = self._digest_path.with_suffix(".tmp")
        tmp.write_text(f"{sha256} {self.size}")
        os.replace(tmp, self._digest_path)

    def _read_digest(self) -> str | None:
        try:
            sha256, size = self._digest_path.read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        return sha256 if valid_sha256(sha256) and size == str(self.size) else None

    def verify(self, *, timeout: float | None = None) -> FinishedFile:
        """Make the bytes durable and give their digest: the staged write of a finished upload.

        The digest usually waits beside the upload already (the hasher kept up with the parts);
        if a hasher is still at it, it is waited for; if none is (its process went away), the
        file is hashed here.
        """
        state = self.parts()
        if not state.complete:
            raise UploadIncomplete(state.missing)
        try:
            with open(self.path, "rb") as handle:
                os.fsync(handle.fileno())
        except FileNotFoundError:
            raise UploadMissing from None
        deadline = time.monotonic() + (timeout if timeout is not None else 60 + self.size / 50e6)
        while (sha256 := self._read_digest()) is None:
            with _hashers_lock:
                hasher = _hashers.get(self.key)
            if hasher is not None:
                hasher.wake.set()
            elif (lock_fd := _hash_lock(self._lock_path)) is not None:
                try:
                    if (sha256 := self._read_digest()) is None:
                        sha256 = self._hash_whole()
                        self.write_digest(sha256)
                finally:
                    os.close(lock_fd)
                break
            if time.monotonic() > deadline:
                raise UploadBusy
            time.sleep(0.02)
        return FinishedFile(self._store, self.path, self.size, sha256, leftovers=self._bookkeeping)

    @property
    def _bookkeeping(self) -> tuple[Path, ...]:
        return (self._marks, self._digest_path, self._lock_path)

    def _hash_whole(self) -> str:
        digest = hashlib.sha256()
        try:
            with open(self.path, "rb") as handle:
                while block := handle.read(_Hasher.BLOCK):
                    digest.update(block)
        except FileNotFoundError:
            raise UploadMissing from None
        return digest.hexdigest()

    def finished(self, *, sha256: str, size: int) -> FinishedFile:
        """The staged write of an upload verified earlier (its bytes no longer change)."""
        if not self.path.is_file():
            raise UploadMissing
        return FinishedFile(self._store, self.path, size, sha256, leftovers=self._bookkeeping)

    def discard(self) -> None:
        for path in (self.path, *self._bookkeeping):
            path.unlink(missing_ok=True)


class FileSystemArtifactStore:
    min_part_size = 1

    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging_dir = self.root / ".staging"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir = self.root / ".uploads"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not valid_sha256(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def stage(self, *, max_size: int | None = None) -> FileSystemStagedWrite:
        return FileSystemStagedWrite(self, max_size)

    def move_in(self, path: Path, *, sha256: str, size: int) -> StoredArtifact:
        """Put a finished file (on this filesystem) into the store under its sha256."""
        final = self.path_for(sha256)
        if final.exists():
            # Identical content is stored once: drop the new copy.
            path.unlink(missing_ok=True)
            return StoredArtifact(sha256=sha256, size=size, created=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        # rename() is atomic: readers see either no file or the whole file, never a part.
        os.replace(path, final)
        return StoredArtifact(sha256=sha256, size=size, created=True)

    def resumable(self, key: str, *, size: int = 0, part_size: int = 0) -> FileSystemResumableUpload:
        return FileSystemResumableUpload(self, key, size=size, part_size=part_size)

    def uploads_present(self) -> set[str]:
        """Keys of every resumable upload with bytes in the store (to sweep the orphaned)."""
        return {path.name.split(".")[0] for path in self.uploads_dir.iterdir() if path.suffix in UPLOAD_SUFFIXES}

    def upload_mtime(self, key: str) -> float:
        """When any of the upload's files last changed (now, if none is left)."""
        times = []
        for suffix in UPLOAD_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                times.append((self.uploads_dir / f"{key}{suffix}").stat().st_mtime)
        return max(times, default=time.time())

    def stored(self, sha256: str, size: int) -> FinishedFile:
        return FinishedFile(self, self.path_for(sha256), size, sha256, stored=True)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path_for(sha256), "rb")

    def local_path(self, sha256: str) -> Path:
        return self.path_for(sha256)

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def cleanup_staging(self, *, older_than_seconds: float) -> int:
        """Remove staged writes abandoned by crashed or killed uploads."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self.staging_dir.glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def iter_file(handle: BinaryIO, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    try:
        while chunk := handle.read(chunk_size):
            yield chunk
    finally:
        handle.close()


@cache
def artifact_store() -> ArtifactStore:
    """The store ARTIFACT_STORE names: `filesystem` (under ARTIFACT_ROOT) or `s3` (registry.s3)."""
    if settings.ARTIFACT_STORE == "s3":
        # Imported here, not above: registry.s3 builds on this module's types, and only a
        # portal that uses S3 pays for importing boto3.
        from registry.s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings()
    return FileSystemArtifactStore(settings.ARTIFACT_ROOT)
