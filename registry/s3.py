"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph, ...), for portals
whose web servers, workers and model hosts are more than one machine.

The same interface as the filesystem store (registry.storage), laid out in one bucket:

    {prefix}sha256/{ab}/{sha256}   content, stored once under its digest
    {prefix}uploads/{key}          a resumable upload: an S3 multipart upload while parts arrive,
                                   one object once it is finished, until a registration adopts it

Objects are never read or written through this machine's disk on the way in or out, except
where a local file is the point: the load check and `local` model servers need a file, so
`local_path` keeps a content-addressed cache of what this machine has read (downloaded once,
hashed on the way, renamed into place whole), and a single-request registration is staged
here while the check reads it, as with the filesystem store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from django.conf import settings

from registry.storage import (
    ArtifactTooLarge,
    FileSystemStagedWrite,
    PartCutShort,
    PartsState,
    StoredArtifact,
    UploadIncomplete,
    UploadMissing,
    part_count,
    valid_sha256,
)

MIB = 1024 * 1024
# Reads and hashes go in blocks of this size: memory stays flat whatever the artifact's size.
BLOCK = MIB
# S3 refuses parts (but the last) under 5 MiB, and copies of more than 5 GB in one request;
# boto3's managed transfers split uploads and copies above the threshold into parts.
S3_MIN_PART_SIZE = 5 * MIB
TRANSFER = TransferConfig(multipart_threshold=64 * MIB, multipart_chunksize=64 * MIB, max_concurrency=4)
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _timestamp(value: datetime) -> float:
    return value.timestamp()


class S3StagedWrite(FileSystemStagedWrite):
    """Bytes of a single-request registration, staged in a local file (hashed as they arrive,
    as on the filesystem store) that the load check reads; committing uploads them under their
    digest unless that content is stored already."""

    def flush(self) -> None:
        # The bytes only need to reach the page cache for the load check; their durable copy
        # is the object commit() uploads, so no fsync here.
        if not self._done:
            self._file.flush()

    def commit(self) -> StoredArtifact:
        if self._done:
            raise RuntimeError("This staged write is already finished.")
        self._file.close()
        self._done = True
        try:
            created = False
            if not self._store.exists(self.sha256):
                self._store.client.upload_file(
                    str(self.path), self._store.bucket, self._store.content_key(self.sha256), Config=TRANSFER
                )
                created = True
            # This machine just read the bytes: they become its cached copy for local_path().
            self._store.cache_in(self.path, self.sha256)
        finally:
            self.path.unlink(missing_ok=True)
        return StoredArtifact(sha256=self.sha256, size=self.size, created=created)


class S3FinishedUpload:
    """Bytes that are complete and verified, as a staged write a registration commits: a
    finished upload's object (committing copies it to its content address, once, and drops
    the upload's object), or content stored already (committing stores nothing new).

    `path` is a local copy for the load check, fetched on first use and hashed on the way
    (the check must see exactly the bytes that will be served). Discarding drops that copy
    but keeps the upload's object: a refused registration can be retried with the same upload.
    """

    def __init__(self, store: S3ArtifactStore, size: int, sha256: str, *, key: str | None, etag: str = ""):
        self._store = store
        self.size = size
        self._sha256 = sha256
        self._key = key  # the upload's object; None when the content is stored already
        self._etag = etag  # the upload object's version that was hashed
        self._path: Path | None = None

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def path(self) -> Path:
        if self._path is None:
            if self._key is None:
                self._path = self._store.local_path(self._sha256)
            else:
                target = self._store.staging_dir / f"{uuid.uuid4().hex}.part"
                self._store.download(self._key, target, sha256=self._sha256, etag=self._etag)
                self._path = target
        return self._path

    def write(self, chunk: bytes) -> None:
        raise RuntimeError("Finished bytes take no more.")

    def flush(self) -> None:
        pass  # the object is durable since its upload was completed

    def commit(self) -> StoredArtifact:
        if self._key is None:
            return StoredArtifact(sha256=self._sha256, size=self.size, created=False)
        created = self._store.adopt(self._key, sha256=self._sha256, etag=self._etag)
        if self._path is not None:
            self._store.cache_in(self._path, self._sha256)
            self._path.unlink(missing_ok=True)
            self._path = None
        return StoredArtifact(sha256=self._sha256, size=self.size, created=created)

    def discard(self) -> None:
        if self._key is not None and self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


class S3ResumableUpload:
    """One artifact received in parts as an S3 multipart upload on `{prefix}uploads/{key}`.

    The multipart upload's id is not kept anywhere of ours: S3 lists the uploads in progress
    under a key, and there is one per upload key (created once, with its row). Nothing can
    then disagree with the bucket, and an upload whose row is gone is still found to sweep.
    Part `n` of ours (0-based) is S3 part `n + 1`; a part counts as arrived when S3 holds it
    at its full length. A part is spooled to a local temporary file first (S3 needs its
    length and a body it can re-read on a retry) and only sent once all of it arrived.

    Two requests carrying the same part at once both upload it and the later one wins: the
    filesystem store refuses the second (UploadBusy), but here no lock spans the machines that
    may receive them, and none is needed for correctness, since the digest is computed by
    reading back the object S3 assembled, never from what any request claimed.
    """

    def __init__(self, store: S3ArtifactStore, key: str, *, size: int = 0, part_size: int = 0):
        if not key.isalnum():
            raise ValueError(f"{key!r} is not an upload key")
        self._store = store
        self.key = key
        self.size = size
        self.part_size = part_size
        self.object_key = store.upload_key(key)
        self._listed: dict[int, dict[str, Any]] = {}

    @property
    def _client(self):
        return self._store.client

    def _upload_ids(self) -> list[dict[str, Any]]:
        """The multipart uploads in progress on this upload's key, oldest first."""
        found = []
        for page in self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self._store.bucket, Prefix=self.object_key
        ):
            found += [u for u in page.get("Uploads", []) if u["Key"] == self.object_key]
        return found

    def create(self) -> None:
        # No object-level checksum algorithm: the check that counts is the sha256 of what S3
        # assembled (verify). boto3 still sends each part with a CRC32 that S3 checks on arrival.
        self._client.create_multipart_upload(
            Bucket=self._store.bucket,
            Key=self.object_key,
            ContentType="application/octet-stream",
        )

    def _expected(self, number: int) -> int:
        start = number * self.part_size
        return min(start + self.part_size, self.size) - start

    def _state(self) -> tuple[PartsState, str | None]:
        count = part_count(self.size, self.part_size)
        uploads = self._upload_ids()
        if not uploads:
            if self._store.head(self.object_key) is not None:  # finished: every part is in the object
                return PartsState(self.size, self.part_size, (True,) * count), None
            raise UploadMissing
        upload_id = uploads[0]["UploadId"]
        listed: dict[int, dict[str, Any]] = {}
        try:
            for page in self._client.get_paginator("list_parts").paginate(
                Bucket=self._store.bucket, Key=self.object_key, UploadId=upload_id
            ):
                listed.update((p["PartNumber"], p) for p in page.get("Parts", []))
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                raise UploadMissing from None
            raise
        self._listed = listed
        received = tuple(listed.get(n + 1, {}).get("Size") == self._expected(n) for n in range(count))
        return PartsState(self.size, self.part_size, received), upload_id

    def parts(self) -> PartsState:
        return self._state()[0]

    def put_part(self, *, number: int, chunks: Iterable[bytes]) -> bool:
        """Send part `number` from `chunks`: True once S3 holds it, False if it had arrived
        before (the chunks are read and dropped). PartCutShort if the chunks ended early
        (nothing is sent to S3; the part is sent again whole)."""
        state, upload_id = self._state()
        if state.received[number] or upload_id is None:
            for _ in chunks:
                pass
            return False
        start, end = state.bounds(number)
        length = end - start
        # An unnamed file on local disk: memory stays at one chunk whatever the part's size,
        # and the file is gone with the request however it ends.
        with tempfile.TemporaryFile(dir=self._store.spool_dir) as spool:
            received = 0
            for chunk in chunks:
                received += len(chunk)
                if received > length:
                    raise ArtifactTooLarge(length)
                spool.write(chunk)
            if received != length:
                raise PartCutShort
            spool.seek(0)
            try:
                self._client.upload_part(
                    Bucket=self._store.bucket,
                    Key=self.object_key,
                    UploadId=upload_id,
                    PartNumber=number + 1,
                    Body=spool,
                    ContentLength=length,
                )
            except ClientError as exc:
                if _code(exc) == "NoSuchUpload":  # aborted meanwhile
                    raise UploadMissing from None
                raise
        return True

    def verify(self) -> S3FinishedUpload:
        """Assemble the parts into one object and hash it as S3 stores it: the staged write of
        a finished upload. Finishing again (a retried request) hashes the object again."""
        state, upload_id = self._state()
        if not state.complete:
            raise UploadIncomplete(state.missing)
        if upload_id is not None:
            parts = []
            for number in range(state.count):
                listed = self._listed[number + 1]
                part = {"PartNumber": number + 1, "ETag": listed["ETag"]}
                if listed.get("ChecksumCRC32"):
                    part["ChecksumCRC32"] = listed["ChecksumCRC32"]
                parts.append(part)
            try:
                self._client.complete_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self.object_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except ClientError as exc:
                # Completed by a concurrent request: its object is hashed below. Aborted: missing.
                if _code(exc) != "NoSuchUpload":
                    raise
        sha256, size, etag = self._store.hash_object(self.object_key)
        return S3FinishedUpload(self._store, size, sha256, key=self.object_key, etag=etag)

    def finished(self, *, sha256: str, size: int) -> S3FinishedUpload:
        """The staged write of an upload verified earlier (its object no longer changes)."""
        head = self._store.head(self.object_key)
        if head is None:
            raise UploadMissing
        return S3FinishedUpload(self._store, size, sha256, key=self.object_key, etag=head["ETag"])

    def discard(self) -> None:
        for upload in self._upload_ids():
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self.object_key, UploadId=upload["UploadId"]
                )
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":
                    raise
        self._client.delete_object(Bucket=self._store.bucket, Key=self.object_key)

    def mtime(self) -> float | None:
        """When the upload last changed: its start, its latest part, or its finished object."""
        times = []
        for upload in self._upload_ids():
            times.append(_timestamp(upload["Initiated"]))
            try:
                for page in self._client.get_paginator("list_parts").paginate(
                    Bucket=self._store.bucket, Key=self.object_key, UploadId=upload["UploadId"]
                ):
                    times += [_timestamp(p["LastModified"]) for p in page.get("Parts", [])]
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":
                    raise
        if (head := self._store.head(self.object_key)) is not None:
            times.append(_timestamp(head["LastModified"]))
        return max(times, default=None)


class S3ArtifactStore:
    """Content-addressed artifacts in an S3 bucket, with a local cache for files that must be
    local (see the module's docstring)."""

    min_part_size = S3_MIN_PART_SIZE

    def __init__(
        self,
        *,
        bucket: str,
        local_root: Path,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        presigned_downloads: bool = False,
        presigned_seconds: int = 300,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presigned_downloads = presigned_downloads
        self.presigned_seconds = presigned_seconds
        # Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
        # AWS_PROFILE, an instance role, ...). A custom endpoint (MinIO and most S3-compatible
        # servers) takes path-style addresses: bucket names in host names need DNS set up.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=32,
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )
        self.local_root = Path(local_root)
        self.staging_dir = self.local_root / ".staging"
        self.spool_dir = self.local_root / ".spool"
        for directory in (self.staging_dir, self.spool_dir):
            directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls) -> S3ArtifactStore:
        return cls(
            bucket=settings.ARTIFACT_S3_BUCKET,
            prefix=settings.ARTIFACT_S3_PREFIX,
            endpoint_url=settings.ARTIFACT_S3_ENDPOINT_URL,
            region=settings.ARTIFACT_S3_REGION,
            local_root=settings.ARTIFACT_CACHE_DIR,
            presigned_downloads=settings.ARTIFACT_S3_PRESIGNED_DOWNLOADS,
            presigned_seconds=settings.ARTIFACT_S3_PRESIGNED_SECONDS,
        )

    # ------------------------------------------------------------ keys and plain object calls

    def content_key(self, sha256: str) -> str:
        if not valid_sha256(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return f"{self.prefix}sha256/{sha256[:2]}/{sha256}"

    def upload_key(self, key: str) -> str:
        return f"{self.prefix}uploads/{key}"

    def cache_path(self, sha256: str) -> Path:
        if not valid_sha256(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.local_root / "sha256" / sha256[:2] / sha256

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise

    def _get(self, key: str, **conditions) -> dict[str, Any]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, **conditions)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES or _code(exc) == "PreconditionFailed":
                raise UploadMissing from None
            raise

    def hash_object(self, key: str) -> tuple[str, int, str]:
        """(sha256, size, ETag) of an object, read back from S3 in blocks."""
        answer = self._get(key)
        digest, size = hashlib.sha256(), 0
        body = answer["Body"]
        try:
            for block in body.iter_chunks(BLOCK):
                digest.update(block)
                size += len(block)
        finally:
            body.close()
        return digest.hexdigest(), size, answer["ETag"]

    def download(self, key: str, target: Path, *, sha256: str, etag: str = "") -> None:
        """Copy an object to a local file, checking on the way that it hashes to `sha256`
        (and is the version `etag` names, if given). UploadMissing if it is not that."""
        answer = self._get(key, **({"IfMatch": etag} if etag else {}))
        digest = hashlib.sha256()
        body = answer["Body"]
        try:
            with open(target, "xb") as out:
                for block in body.iter_chunks(BLOCK):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != sha256:
                raise UploadMissing
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        finally:
            body.close()

    def cache_in(self, path: Path, sha256: str) -> None:
        """Keep a local file of verified content as this machine's cached copy (a hard link:
        the caller may remove its own name)."""
        final = self.cache_path(sha256)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{sha256}.{uuid.uuid4().hex}.tmp")
        try:
            os.link(path, tmp)
            os.replace(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache, not the store: local_path() fetches it later

    def adopt(self, key: str, *, sha256: str, etag: str = "") -> bool:
        """Make a finished upload's object the stored content for `sha256`, and drop the
        upload's object. True if the content was not stored before."""
        created = False
        if not self.exists(sha256):
            # The managed copy splits objects over 5 GB into part copies; the condition makes
            # sure the copy is of the version that was hashed.
            extra = {"CopySourceIfMatch": etag} if etag else None
            self.client.copy(
                {"Bucket": self.bucket, "Key": key},
                self.bucket,
                self.content_key(sha256),
                ExtraArgs=extra,
                Config=TRANSFER,
            )
            created = True
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return created

    # ------------------------------------------------------------ the ArtifactStore interface

    def stage(self, *, max_size: int | None = None) -> S3StagedWrite:
        return S3StagedWrite(self, max_size)

    def resumable(self, key: str, *, size: int = 0, part_size: int = 0) -> S3ResumableUpload:
        return S3ResumableUpload(self, key, size=size, part_size=part_size)

    def uploads_present(self) -> set[str]:
        """Keys of every resumable upload with bytes in the bucket (to sweep the orphaned):
        multipart uploads in progress, and finished uploads' objects."""
        prefix = self.upload_key("")
        keys: set[str] = set()
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.update(u["Key"][len(prefix) :] for u in page.get("Uploads", []))
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
        return {key for key in keys if key.isalnum()}

    def upload_mtime(self, key: str) -> float:
        """When the upload last changed (now, if nothing of it is left)."""
        mtime = self.resumable(key).mtime()
        return time.time() if mtime is None else mtime

    def stored(self, sha256: str, size: int) -> S3FinishedUpload:
        return S3FinishedUpload(self, size, sha256, key=None)

    def exists(self, sha256: str) -> bool:
        return self.head(self.content_key(sha256)) is not None

    def open(self, sha256: str) -> BinaryIO:
        """A streaming read of the content straight from S3 (nothing touches local disk)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.content_key(sha256))["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise FileNotFoundError(self.content_key(sha256)) from None
            raise

    def download_url(self, sha256: str, *, filename: str) -> str | None:
        """A presigned GET of the content, for clients to fetch it from S3 directly; None
        unless ARTIFACT_S3_PRESIGNED_DOWNLOADS is on (then downloads stream through the portal)."""
        if not self.presigned_downloads:
            return None
        quoted = filename.replace("\\", "_").replace('"', "_")
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.content_key(sha256),
                "ResponseContentDisposition": f'attachment; filename="{quoted}"',
                "ResponseContentType": "application/octet-stream",
            },
            ExpiresIn=self.presigned_seconds,
        )

    def local_path(self, sha256: str) -> Path:
        """A local file of the content, fetched on first use and kept (content never changes
        under its digest). Fetched to a temporary name and renamed whole, so processes that
        ask at once each see no file or a complete one."""
        final = self.cache_path(sha256)
        if final.is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{sha256}.{uuid.uuid4().hex}.tmp")
        try:
            self.download(self.content_key(sha256), tmp, sha256=sha256)
        except UploadMissing:
            raise FileNotFoundError(self.content_key(sha256)) from None
        os.replace(tmp, final)
        return final

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.content_key(sha256))
        self.cache_path(sha256).unlink(missing_ok=True)

    def cleanup_staging(self, *, older_than_seconds: float) -> int:
        """Remove local staged writes and half-fetched cache files left by killed processes."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self._leftovers():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _leftovers(self) -> Iterator[Path]:
        yield from self.staging_dir.glob("*.part")
        yield from (self.local_root / "sha256").glob("*/.*.tmp")
