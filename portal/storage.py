"""Content-addressed artifact storage.

Callers see one small interface, `ArtifactStore`: stream bytes into a staged write that
hashes them as they arrive, commit it under its sha256 (stored once however many versions
use it), open it for streaming reads, and find a local path for processes that need a file.
The filesystem store is the default; an S3-compatible store can implement the same
interface without touching callers.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
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


class ArtifactStore(Protocol):
    def stage(self, *, max_size: int | None = None) -> StagedWrite: ...

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
        sha256 = self.sha256
        final = self._store.path_for(sha256)
        if final.exists():
            # Identical content is stored once: drop the new copy.
            self.path.unlink(missing_ok=True)
            return StoredArtifact(sha256=sha256, size=self.size, created=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        # rename() is atomic: readers see either no file or the whole file, never a part.
        os.replace(self.path, final)
        return StoredArtifact(sha256=sha256, size=self.size, created=True)

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)


class FileSystemArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging_dir = self.root / ".staging"
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not valid_sha256(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def stage(self, *, max_size: int | None = None) -> FileSystemStagedWrite:
        return FileSystemStagedWrite(self, max_size)

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
