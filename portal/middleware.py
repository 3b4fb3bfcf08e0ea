from django.http import HttpRequest, HttpResponse


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
