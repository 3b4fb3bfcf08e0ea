from accounts.origin import origin_from_request, origin_scope


class RequestOriginMiddleware:
    """Record the request's origin for the audit events written while it is handled."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with origin_scope(origin_from_request(request)):
            return self.get_response(request)
