"""Stream a registration's artifact straight into the artifact store while hashing it.

The upload handler replaces Django's default ones for the registration endpoint: the
artifact part goes to a staged write in the store (one pass over the bytes: write and
hash, never held whole in memory, never copied through a temporary file); the other
file parts (sample input, schemas, metrics as .json files) are small and kept in memory
up to a limit.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import InMemoryUploadedFile, UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from core.errors import InvalidInput, PayloadTooLarge, PortalError
from registry.model_check import ModelCheck
from registry.services import VersionInput
from registry.storage import ArtifactTooLarge, StagedWrite, artifact_store

ARTIFACT_FIELD = "artifact"


_TEXT_FIELDS = {
    "version": 40,
    "flavor": 16,
    "description": 100_000,
    "git_commit": 64,
    "data_ref": 500,
    "sha256": 64,
    "upload": 64,
    "task": 20,
}
_JSON_FIELDS = ("sample_input", "input_schema", "output_schema", "metrics", "parameters")


class StagedArtifactFile(UploadedFile):
    """An uploaded artifact that is staged in the store but not yet committed, with the
    load-check process that was started while it arrived."""

    def __init__(self, staged: StagedWrite, check: ModelCheck, name: str, content_type: str):
        super().__init__(file=None, name=name, content_type=content_type, size=staged.size)
        self.staged = staged
        self.check = check

    def close(self) -> None:  # Django closes uploaded files after the request; nothing to do
        pass


def too_large_message(limit: int) -> str:
    return (
        f"The artifact is larger than the limit of {limit / 1024**3:.1f} GiB ({limit} bytes). "
        "Ask an admin to raise ARTIFACT_MAX_BYTES if this model really needs it."
    )


class UploadStalled(PortalError):
    status_code = 408


@contextlib.contextmanager
def body_idle_timeout(request) -> Iterator[None]:
    """While the body is read, give up once its bytes stop arriving for
    UPLOAD_CHUNK_IDLE_SECONDS, with UploadStalled (408) saying so.

    A connection that goes silent (a laptop's network dropped without a word, so no FIN or
    RST ever comes) would otherwise hold a web thread for as long as the server lets a socket
    idle, which under gunicorn's threads is forever. Behind a proxy that buffers request
    bodies, the proxy's own body timeout applies first.
    """
    sock = request.META.get("gunicorn.socket")
    if sock is None:
        yield
        return
    sock.settimeout(settings.UPLOAD_CHUNK_IDLE_SECONDS)
    try:
        yield
    except OSError as exc:
        # Django wraps the socket's timeout in UnreadablePostError.
        if not (isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)):
            raise
        raise UploadStalled(
            f"The upload stopped arriving for {settings.UPLOAD_CHUNK_IDLE_SECONDS} s and was given up; nothing "
            "was registered. Send it again; `portal versions register` resumes large uploads where they stopped."
        ) from None
    finally:
        sock.settimeout(None)  # gunicorn's own blocking mode for the rest of the connection


class ArtifactUploadHandler(FileUploadHandler):
    """Streams the artifact part into a staged write. `authorize` is called before the first
    byte of the artifact is staged (and before its check process starts): it raises if the
    person may not register it, whichever path reads the body first (a view, or a CSRF check)."""

    # Large reads keep the per-chunk Python work small next to the copy itself.
    chunk_size = 4 * 1024 * 1024

    def __init__(self, request=None, authorize: Callable[[], None] | None = None):
        super().__init__(request)
        self.authorize = authorize
        self.staged: list[StagedWrite] = []
        self.checks: list[ModelCheck] = []
        self._current: StagedWrite | None = None
        self._buffer: io.BytesIO | None = None

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        if field_name == ARTIFACT_FIELD:
            if self.authorize is not None:
                self.authorize()
            if self.staged:
                raise InvalidInput("Send one artifact per registration.", field=ARTIFACT_FIELD)
            self._current = artifact_store().stage(max_size=settings.ARTIFACT_MAX_BYTES)
            self.staged.append(self._current)
            # The check process imports the flavor libraries while the bytes arrive.
            self.checks.append(ModelCheck())
            self._buffer = None
        else:
            self._current = None
            self._buffer = io.BytesIO()

    def receive_data_chunk(self, raw_data: bytes, start: int):
        if self._current is not None:
            try:
                self._current.write(raw_data)
            except ArtifactTooLarge as exc:
                raise PayloadTooLarge(too_large_message(exc.limit)) from None
        else:
            if start + len(raw_data) > settings.REGISTRY_JSON_PART_MAX_BYTES:
                raise PayloadTooLarge(
                    f"The part '{self.field_name}' is larger than {settings.REGISTRY_JSON_PART_MAX_BYTES} bytes; "
                    "only the artifact may be large."
                )
            self._buffer.write(raw_data)
        return None

    def file_complete(self, file_size: int):
        if self._current is not None:
            return StagedArtifactFile(self._current, self.checks[-1], self.file_name or "artifact", self.content_type)
        self._buffer.seek(0)
        return InMemoryUploadedFile(
            self._buffer, self.field_name, self.file_name, self.content_type, file_size, self.charset
        )

    def upload_interrupted(self):
        self.discard()

    def discard(self) -> None:
        """Remove every staged write that was not committed and stop unused check processes
        (safe to call more than once)."""
        for staged in self.staged:
            staged.discard()
        for check in self.checks:
            check.cancel()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (NaN and Infinity cannot be stored or served)")


def parse_json(raw: str | bytes, *, field: str) -> Any:
    """Strict JSON: no NaN or Infinity, and deep nesting or huge numbers are input errors."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput(f"{field} is nested too deeply.", field=field) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN
        raise InvalidInput(f"{field} is not valid JSON: {exc}.", field=field) from None


def _json_part(data, files, name: str, *, parsed: bool) -> Any:
    upload = files.get(name)
    raw = upload.read() if upload is not None else data.get(name)
    if raw in (None, ""):
        return None
    return raw if parsed else parse_json(raw, field=name)


def version_input_from(data, files, *, parsed: bool = False) -> VersionInput:
    """The registration's fields from a multipart form (API or web page) or, with `parsed`,
    from a JSON object (whose JSON fields are values already), checked and parsed."""
    allowed = {ARTIFACT_FIELD, *_TEXT_FIELDS, *_JSON_FIELDS}
    ignored = {"csrfmiddlewaretoken"}  # the web form's CSRF field
    unknown = sorted((set(data) | set(files)) - allowed - ignored)
    if unknown:
        raise InvalidInput(
            f"Unknown field(s): {', '.join(unknown)}. Allowed fields: {', '.join(sorted(allowed))}.", field=unknown[0]
        )
    text: dict[str, str] = {}
    for name, limit in _TEXT_FIELDS.items():
        value = data.get(name, "")
        if value is None and parsed:
            value = ""
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be text.", field=name)
        if len(value) > limit:
            raise InvalidInput(f"{name} may be at most {limit} characters.", field=name)
        text[name] = value.strip() if name != "description" else value
    for name in ("version", "flavor"):
        if not text[name]:
            raise InvalidInput(f"{name}: This field is required.", field=name)
    values = {name: _json_part(data, files, name, parsed=parsed) for name in _JSON_FIELDS}
    for name in ("metrics", "parameters"):
        if values[name] is not None and not isinstance(values[name], dict):
            raise InvalidInput(f"{name} must be a JSON object.", field=name)
    return VersionInput(
        version=text["version"],
        flavor=text["flavor"],
        description=text["description"],
        git_commit=text["git_commit"],
        data_ref=text["data_ref"],
        sha256=text["sha256"],
        upload=text["upload"],
        task=text["task"],
        sample_input=values["sample_input"],
        input_schema=values["input_schema"],
        output_schema=values["output_schema"],
        metrics=values["metrics"] or {},
        parameters=values["parameters"] or {},
    )
