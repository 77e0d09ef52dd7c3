"""The answer of a page that shows secrets once, when this process cannot read them yet."""

from django.http import HttpResponse
from django.utils.cache import add_never_cache_headers

from webhooks.fields import SECRET_NOT_READABLE_YET


def secret_not_readable_yet() -> HttpResponse:
    """503 with the reason: the secrets stay kept, and a reload (on a process with the new key) shows them."""
    response = HttpResponse(SECRET_NOT_READABLE_YET, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = "60"
    add_never_cache_headers(response)
    return response
