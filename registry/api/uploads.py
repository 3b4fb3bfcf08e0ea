"""REST API of resumable uploads: open, send chunks by Content-Range, ask the offset, finish, abort.

The protocol is described in the README ("Registering a model version"); the portal_client
speaks it.
"""

from __future__ import annotations

import io
import re
import threading

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidInput, PortalError
from core.openapi import SHA256_OR_BLANK_PATTERN, SHA256_PATTERN, documented
from core.rest import Pagination, StrictSerializer
from registry import selectors, services
from registry.models import Upload
from registry.multipart import body_idle_timeout


class UploadOutput(serializers.ModelSerializer):
    offset = serializers.SerializerMethodField(
        help_text="The first byte not received: a client sending its parts in order resumes here."
    )
    url = serializers.SerializerMethodField()
    chunk_size = serializers.IntegerField(
        source="part_size",
        help_text="The part size: each chunk sent is one whole part, starting at a multiple of it "
        "(only the last part is shorter).",
    )
    received = serializers.SerializerMethodField(help_text="Bytes of the parts received.")
    missing = serializers.SerializerMethodField(
        help_text="Byte ranges [START, END] (END inclusive) not received yet, adjacent parts merged."
    )
    version = serializers.CharField(source="version.version", allow_null=True, default=None)
    expires_at = serializers.DateTimeField(
        read_only=True,
        help_text="How long the upload is kept unless it is registered: UPLOAD_IDLE_HOURS after its last part "
        "(24 h), or UPLOAD_REFUSED_HOURS after a refused registration (2 h); then it is swept with its bytes.",
    )

    class Meta:
        model = Upload
        fields = [
            "id",
            "url",
            "filename",
            "size",
            "sha256",
            "offset",
            "received",
            "missing",
            "status",
            "deduplicated",
            "chunk_size",
            "version",
            "created_at",
            "updated_at",
            "expires_at",
        ]

    def _parts(self, upload: Upload):
        cache = self.context.setdefault("parts", {})
        if upload.pk not in cache:
            cache[upload.pk] = selectors.upload_parts(upload=upload)
        return cache[upload.pk]

    def get_offset(self, upload: Upload) -> int:
        return self._parts(upload).offset

    def get_received(self, upload: Upload) -> int:
        return self._parts(upload).received_bytes

    @extend_schema_field(serializers.ListField(child=serializers.ListField(child=serializers.IntegerField())))
    def get_missing(self, upload: Upload) -> list[list[int]]:
        return [list(r) for r in self._parts(upload).missing]

    def get_url(self, upload: Upload) -> str:
        return reverse("api_upload_detail", args=[upload.id])


def _upload_response(upload: Upload, *, status_code: int = 200) -> Response:
    body = UploadOutput(upload, context={}).data
    response = Response(body, status=status_code)
    response["Upload-Offset"] = str(body["offset"])
    response["Cache-Control"] = "no-store"
    if status_code == status.HTTP_201_CREATED:
        response["Location"] = body["url"]
    return response


_DRAIN_LIMIT = 64 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")


def _read_body(request, length: int, piece: int = 1024 * 1024):
    """The request body as it arrives, in pieces (never held whole).

    A silent connection would otherwise hold the part's lock, and every retry would hear
    "the part is arriving right now": past the idle limit the body ends early, and the part
    is sent again.
    """
    with body_idle_timeout(request):
        direct = _GunicornBody.of(request, length)
        if direct is not None:
            yield from direct.pieces(piece)
            return
        left = length
        while left > 0:
            try:
                data = request.read(min(piece, left))
            except OSError:  # reset, or silent past the limit
                return
            if not data:
                return
            left -= len(data)
            yield data


_buffers = threading.local()


def _receive_buffer(size: int) -> bytearray:
    """This thread's receive buffer, made once: a new MiB per request would leave the
    allocator's per-thread arenas holding freed MiBs (the process's memory grows)."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = _buffers.buffer = bytearray(size)
    return buffer


class _GunicornBody:
    """A request body read straight from gunicorn's socket into one reused buffer.

    gunicorn's own reader copies every byte several times on the way (into and out of
    read-ahead buffers) and costs more CPU than writing and hashing the part together; reading
    with recv_into() copies once. Whatever gunicorn read ahead with the headers comes first,
    and its reader is told how much is left, so the connection's next request starts where it
    should. Used only when gunicorn's reader is the one this was written for (gunicorn is
    pinned); anything else reads through the WSGI stream. Each piece is a view of the buffer,
    valid until the next one is asked for.
    """

    def __init__(self, sock, reader, length: int):
        self.sock = sock
        self.reader = reader
        self.left = length

    @classmethod
    def of(cls, request, length: int) -> _GunicornBody | None:
        sock = request.META.get("gunicorn.socket")
        body = request.META.get("wsgi.input")
        reader = getattr(body, "reader", None)
        unreader = getattr(reader, "unreader", None)
        fresh = isinstance(getattr(body, "buf", None), io.BytesIO) and body.buf.tell() == 0
        if (
            sock is None
            or not fresh
            or not hasattr(unreader, "take_buffered")
            or getattr(reader, "length", None) != length
        ):
            return None
        if getattr(request, "_stream", None) is not None and getattr(request._stream, "_pos", 0):
            return None  # someone read through the WSGI stream already
        return cls(sock, reader, length)

    def pieces(self, size: int):
        ahead = self.reader.unreader.take_buffered()
        if len(ahead) > self.left:  # a pipelined next request: give it back
            self.reader.unreader.unread(ahead[self.left :])
            ahead = ahead[: self.left]
        if ahead:
            self._took(len(ahead))
            yield ahead
        buffer = _receive_buffer(size)
        view = memoryview(buffer)
        while self.left > 0:
            try:
                n = self.sock.recv_into(buffer, min(len(buffer), self.left))
            except OSError:  # reset, or silent past the limit
                return
            if not n:
                return
            self._took(n)
            yield view[:n]

    def _took(self, n: int) -> None:
        self.left -= n
        self.reader.length = self.left  # what gunicorn would still read of this body


class UploadListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class UploadCreateInput(StrictSerializer):
        size = serializers.IntegerField(min_value=1, help_text="The whole file's length in bytes.")
        sha256 = documented(
            serializers.CharField(
                required=False,
                allow_blank=True,
                default="",
                max_length=64,
                help_text="Hex digest of the whole file. Required here or when finishing.",
            ),
            pattern=SHA256_OR_BLANK_PATTERN,
        )
        filename = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)
        chunk_size = serializers.IntegerField(
            required=False,
            min_value=1,
            help_text="The part size to send in (default UPLOAD_CHUNK_BYTES; an upload has at most 10,000 parts).",
        )

    @extend_schema(responses=UploadOutput(many=True), summary="Your unfinished and unregistered uploads")
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.upload_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(UploadOutput(page, many=True).data)

    @extend_schema(
        request=UploadCreateInput,
        responses={201: UploadOutput},
        summary="Start a resumable upload",
        description=(
            "Then send the bytes in parts with `PUT /uploads/{id}` and `Content-Range: bytes START-END/SIZE`: "
            "each part `chunk_size` bytes (the last one shorter), starting at a multiple of it, in any order and "
            "several at once; `missing` lists what has not arrived. Finish with `POST /uploads/{id}/complete`. "
            "If content with this sha256 is stored already and you can read it, the upload is complete at once "
            "(the sha256 can also be given later, while parts are sent, with `PATCH /uploads/{id}`)."
        ),
    )
    def post(self, request):
        serializer = self.UploadCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = services.upload_create(actor=request.user, **serializer.validated_data)
        return _upload_response(upload, status_code=status.HTTP_201_CREATED)


class UploadDetailApi(APIView):
    @extend_schema(responses=UploadOutput, summary="An upload and its offset (where to resume)")
    def get(self, request, upload_id: str):
        return _upload_response(selectors.upload_get(user=request.user, upload_id=upload_id))

    @extend_schema(
        request={"application/octet-stream": bytes},
        parameters=[
            OpenApiParameter(
                "Content-Range",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="bytes START-END/SIZE: one whole part (START a multiple of chunk_size).",
            )
        ],
        responses={200: UploadOutput, 416: None},
        summary="Send one part, in any order",
    )
    def put(self, request, upload_id: str):
        try:
            return self._put(request, upload_id)
        except PortalError:
            # Read what is left of a refused chunk before answering: closing a connection
            # with unread bytes makes the client see a reset instead of the answer (416 and
            # the offset to resume from, or 409). Beyond a bound it is cheaper to let it reset.
            for _ in _read_body(request._request, _DRAIN_LIMIT):
                pass
            raise

    def _put(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        match = _CONTENT_RANGE.fullmatch(request.headers.get("Content-Range", "").strip())
        if match is None:
            raise InvalidInput(
                "Say where the chunk goes with a header 'Content-Range: bytes START-END/SIZE' "
                f"(END inclusive; SIZE is {upload.size}).",
                field="Content-Range",
            )
        start, end, total = (int(g) for g in match.groups())
        if total != upload.size:
            raise InvalidInput(
                f"Content-Range says the file is {total} bytes; this upload is for {upload.size}.",
                field="Content-Range",
            )
        if end < start or end >= total:
            raise services.UploadRangeError(
                f"Content-Range bytes {start}-{end} is not a range inside 0-{total - 1}.",
                state=selectors.upload_parts(upload=upload),
            )
        length = request.META.get("CONTENT_LENGTH") or ""
        if not length.isdigit():
            return Response({"detail": "Send a Content-Length with each chunk."}, status=411)
        if int(length) != end - start + 1:
            raise InvalidInput(
                f"The body is {length} bytes, but Content-Range bytes {start}-{end} is {end - start + 1}.",
                field="Content-Range",
            )
        upload = services.upload_put_part(
            actor=request.user,
            upload=upload,
            start=start,
            end=end,
            chunks=_read_body(request._request, int(length)),
        )
        return _upload_response(upload)

    class UploadDigestInput(StrictSerializer):
        sha256 = documented(
            serializers.CharField(max_length=64, help_text="Hex digest of the whole file."), pattern=SHA256_PATTERN
        )

    @extend_schema(
        request=UploadDigestInput,
        responses={200: UploadOutput},
        summary="Give the file's sha256 while its parts are sent",
        description="If you can read stored content with this digest, the upload is complete at once "
        "(`status` complete, `deduplicated` true): stop sending parts.",
    )
    def patch(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        serializer = self.UploadDigestInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _upload_response(
            services.upload_set_digest(actor=request.user, upload=upload, sha256=serializer.validated_data["sha256"])
        )

    @extend_schema(responses={204: None}, summary="Abort an upload and drop its bytes")
    def delete(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        services.upload_abort(actor=request.user, upload=upload)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UploadCompleteApi(APIView):
    class UploadCompleteInput(StrictSerializer):
        sha256 = documented(
            serializers.CharField(required=False, allow_blank=True, default="", max_length=64),
            pattern=SHA256_OR_BLANK_PATTERN,
        )

    @extend_schema(
        request=UploadCompleteInput,
        responses={200: UploadOutput},
        summary="Finish an upload: every byte arrived and the digest matches",
    )
    def post(self, request, upload_id: str):
        upload = selectors.upload_get(user=request.user, upload_id=upload_id)
        serializer = self.UploadCompleteInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = services.upload_complete(actor=request.user, upload=upload, sha256=serializer.validated_data["sha256"])
        return _upload_response(upload)
