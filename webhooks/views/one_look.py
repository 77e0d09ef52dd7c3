"""Answers for a request that needs a stored secret this process cannot decrypt (yet).

During a rolling deploy of FIELD_ENCRYPTION_KEYS=NEW,OLD, a process that already has NEW writes
secrets under it, and one that still has OLD alone cannot read them until it is restarted: the
page or API call works again on a reload, so it is a 503 that says so, never a 500."""

import logging

from django.http import HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers

from webhooks.fields import SECRET_NOT_READABLE_YET, SecretNotReadable

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 60
PAGE_NOT_READABLE_YET = (
    "This page needs a stored secret that this server cannot decrypt at the moment: a new encryption key "
    "(FIELD_ENCRYPTION_KEYS) is being deployed. Nothing was changed; reload this page in a minute."
)


def _unavailable(response: HttpResponse) -> HttpResponse:
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    add_never_cache_headers(response)
    return response


def secret_not_readable_yet() -> HttpResponse:
    """503 with the reason: the secrets stay kept, and a reload (on a process with the new key) shows them."""
    return _unavailable(HttpResponse(SECRET_NOT_READABLE_YET, status=503, content_type="text/plain; charset=utf-8"))


class SecretNotReadableMiddleware:
    """Any page or API call that trips on a secret it cannot decrypt: a 503 saying why (JSON for the API)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, SecretNotReadable):
            return None
        # The path only: never the secret, nor which row (the request's user may not own it).
        logger.error(
            "%s %s: %s; is FIELD_ENCRYPTION_KEYS the same on every process?", request.method, request.path, exception
        )
        if request.path.startswith("/api/"):
            detail = PAGE_NOT_READABLE_YET.replace("page", "request").replace("reload this request", "send it again")
            return _unavailable(JsonResponse({"error": "secret_unreadable", "detail": detail}, status=503))
        return _unavailable(HttpResponse(PAGE_NOT_READABLE_YET, status=503, content_type="text/plain; charset=utf-8"))
