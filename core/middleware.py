from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class ApiTrailingSlashMiddleware:
    """Let every API path work with and without a trailing slash.

    The API's canonical paths have no trailing slash. Redirecting (APPEND_SLASH-style)
    would drop the body of a POST, so the slash is removed before URL resolution instead.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if path.startswith("/api/") and len(path) > len("/api/") and path.endswith("/"):
            request.path_info = path.rstrip("/")
        return self.get_response(request)


class ApiBodyLimitMiddleware:
    """Refuse an oversized JSON (or form) body on the API before anything reads it.

    DRF reads a JSON or form body whole into memory whatever its length, so the limit is
    checked from Content-Length here. Artifacts travel as multipart or raw chunks, which
    stream to the store and are limited there; other types are refused unread (415).
    """

    READ_WHOLE = ("application/json", "application/x-www-form-urlencoded")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith("/api/") and request.content_type.startswith(self.READ_WHOLE):
            length = request.META.get("CONTENT_LENGTH") or "0"
            if length.isdigit() and int(length) > settings.API_JSON_MAX_BYTES:
                return JsonResponse(
                    {
                        "detail": f"The request body is {int(length)} bytes; JSON requests may be at most "
                        f"{settings.API_JSON_MAX_BYTES} bytes. Send large files as uploads."
                    },
                    status=413,
                )
        return self.get_response(request)
