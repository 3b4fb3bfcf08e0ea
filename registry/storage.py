"""Content-addressed artifact storage.

Callers see one small interface, `ArtifactStore`: stream bytes into a staged write that
hashes them as they arrive, commit it under its sha256 (stored once however many versions
use it), open it for streaming reads, and find a local path for processes that need a file.
The filesystem store is the default; an S3-compatible store can implement the same
interface without touching callers.

Resumable uploads (`ResumableUpload`) receive one artifact over many requests: each request
appends bytes at the offset the store already holds, and a finished upload becomes a staged
write that a registration commits like any other.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
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


class UploadOffsetMismatch(Exception):
    """A chunk did not start where the bytes received so far end."""

    def __init__(self, offset: int):
        super().__init__(f"The upload holds {offset} bytes; the next chunk must start there.")
        self.offset = offset


class UploadBusy(Exception):
    """Another request is appending to the same upload right now."""


class UploadMissing(Exception):
    """The upload's bytes are gone (expired and swept, or aborted)."""


class ResumableUpload(Protocol):
    def create(self) -> None: ...

    def offset(self) -> int: ...

    def append(self, *, offset: int, chunks: Iterable[bytes], limit: int) -> int: ...

    def verify(self) -> StagedWrite: ...

    def finished(self, *, sha256: str, size: int) -> StagedWrite: ...

    def discard(self) -> None: ...


class ArtifactStore(Protocol):
    def stage(self, *, max_size: int | None = None) -> StagedWrite: ...

    def resumable(self, key: str) -> ResumableUpload: ...

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

    def __init__(self, store: FileSystemArtifactStore, path: Path, size: int, sha256: str, *, stored: bool = False):
        self._store = store
        self.path = path
        self.size = size
        self._sha256 = sha256
        self._stored = stored

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
        return self._store.move_in(self.path, sha256=self._sha256, size=self.size)

    def discard(self) -> None:
        pass


class _RunningDigests:
    """The sha256 of each upload's bytes so far, kept by the process that received them.

    A client sends its chunks one after another over one keep-alive connection, so the
    same web process usually receives them all and can hash them as they arrive; finishing
    the upload then needs no second pass over gigabytes. A digest is used only if the file
    still ends where it did (appends are the only change), otherwise the file is re-read:
    another process took a chunk, or this one restarted.
    """

    def __init__(self, limit: int = 64):
        self._limit = limit
        self._states: dict[str, tuple[int, object]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, offset: int):
        with self._lock:
            state = self._states.pop(key, None)
        if state is not None and state[0] == offset:
            return state[1]
        return hashlib.sha256() if offset == 0 else None

    def keep(self, key: str, offset: int, digest) -> None:
        with self._lock:
            self._states[key] = (offset, digest)
            while len(self._states) > self._limit:
                self._states.pop(next(iter(self._states)))


_running = _RunningDigests()


class FileSystemResumableUpload:
    """One upload's bytes in a file under `.uploads/`; the file's length is the offset.

    Appends take an exclusive lock on the file, so two requests for the same upload (a
    client retrying while its first attempt is still arriving) cannot interleave bytes.
    Bytes of a chunk cut short by a dropped connection are kept: what arrived is correct
    (TCP), and the client resumes from the new offset. The digest check at the end catches
    anything else.
    """

    def __init__(self, store: FileSystemArtifactStore, key: str):
        if not key.isalnum():
            raise ValueError(f"{key!r} is not an upload key")
        self._store = store
        self.key = key
        self.path = store.uploads_dir / f"{key}.part"

    def create(self) -> None:
        open(self.path, "xb").close()

    def offset(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            raise UploadMissing from None

    def append(self, *, offset: int, chunks: Iterable[bytes], limit: int) -> int:
        """Append the chunks if `offset` is where the file ends; returns the new offset.

        Never grows the file past `limit`: a chunk that would is refused (ArtifactTooLarge)
        after the bytes before it were kept.
        """
        try:
            handle = open(self.path, "r+b")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise UploadMissing from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadBusy from None
            size = os.fstat(handle.fileno()).st_size
            if size != offset:
                raise UploadOffsetMismatch(size)
            handle.seek(size)
            digest = _running.take(self.key, size)
            try:
                for chunk in chunks:
                    if size + len(chunk) > limit:
                        raise ArtifactTooLarge(limit)
                    try:
                        handle.write(chunk)
                    except BaseException:
                        digest = None  # some of the chunk may be in the file, unhashed
                        raise
                    size += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
            finally:
                # Also when the body was cut short: what was written is hashed, and the
                # client resumes from here.
                if digest is not None:
                    handle.flush()
                    _running.keep(self.key, size, digest)
            return size

    def verify(self) -> FinishedFile:
        """Make the bytes durable and hash them: the staged write of a finished upload."""
        try:
            handle = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise UploadMissing from None
        with handle:
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
            digest = _running.take(self.key, size)
            if digest is None:
                digest = hashlib.sha256()
                while block := handle.read(4 * 1024 * 1024):
                    digest.update(block)
        return FinishedFile(self._store, self.path, size, digest.hexdigest())

    def finished(self, *, sha256: str, size: int) -> FinishedFile:
        """The staged write of an upload verified earlier (its bytes no longer change)."""
        if not self.path.is_file():
            raise UploadMissing
        return FinishedFile(self._store, self.path, size, sha256)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class FileSystemArtifactStore:
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

    def resumable(self, key: str) -> FileSystemResumableUpload:
        return FileSystemResumableUpload(self, key)

    def uploads_present(self) -> set[str]:
        """Keys of every resumable upload with bytes in the store (to sweep the orphaned)."""
        return {path.stem for path in self.uploads_dir.glob("*.part")}

    def upload_mtime(self, key: str) -> float:
        try:
            return self.resumable(key).path.stat().st_mtime
        except FileNotFoundError:
            return time.time()

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
    return FileSystemArtifactStore(settings.ARTIFACT_ROOT)
