"""A request body the client did not send whole: a 4xx saying so, never a 500.

Django raises UnreadablePostError when reading the body fails: the client reset the connection
mid-body, or the body did not arrive within REQUEST_READ_TIMEOUT_SECONDS (config/gunicorn.conf.py
gives up on the read with a TimeoutError). Left to Django, a view that reads the body (an API
call's JSON) answered 500 and logged a traceback for what is the client's doing. The ingest view
answers these itself, before this middleware could see them.
"""

from __future__ import annotations

from django.http import JsonResponse, UnreadablePostError


def read_timed_out(exc: BaseException | None) -> bool:
    """Whether reading the body gave up on time (a TimeoutError, which Django wraps once or twice)."""
    while exc is not None:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__
    return False


class UnreadableBodyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, UnreadablePostError):
            return None
        if read_timed_out(exception):
            return JsonResponse(
                {"error": "request_timeout", "detail": "the request body did not arrive in time"}, status=408
            )
        return JsonResponse(
            {"error": "unreadable_body", "detail": "the request body could not be read whole"}, status=400
        )
