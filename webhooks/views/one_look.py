"""Answers for a request that needs a stored secret this process cannot decrypt (yet).

During a rolling deploy of FIELD_ENCRYPTION_KEYS=NEW,OLD, a process that already has NEW writes
secrets under it, and one that still has OLD alone cannot read them until it is restarted: the
page or API call works again on a reload, so it is a 503 that says so, never a 500. The same 503
comes from a process whose keys are simply wrong, which no reload fixes: the answer says both,
the log says which the token makes likelier (fields.Unreadable), and the health checks report it
(services.secret_health)."""

import logging

from django.http import HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers

from webhooks.fields import SECRET_NOT_READABLE_YET, SecretNotReadable, decrypting_for

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 60
PAGE_NOT_READABLE_YET = (
    "This page needs a stored secret that this server cannot decrypt with its encryption keys "
    "(FIELD_ENCRYPTION_KEYS). Nothing was changed. If a new encryption key is being deployed, this passes "
    "within minutes: reload this page then. If it lasts, this server's keys are wrong: its health check "
    "reports it to the operator."
)
REQUEST_NOT_READABLE_YET = (
    "This request needs a stored secret that this server cannot decrypt with its encryption keys "
    "(FIELD_ENCRYPTION_KEYS). Nothing was changed. If a new encryption key is being deployed, this passes "
    "within minutes: send it again then. If it lasts, this server's keys are wrong: its health check "
    "reports it to the operator."
)
# Not a key missing but a value no key can read: waiting does not help.
PAGE_SECRET_DAMAGED = (
    "This page needs a stored secret that is damaged and cannot be decrypted. Nothing was changed; "
    "this server's health check reports it to the operator."
)
REQUEST_SECRET_DAMAGED = PAGE_SECRET_DAMAGED.replace("page", "request")


def place_of(path: str) -> str:
    """Where a request decrypts secrets, for the health figures (services.secret_health)."""
    if path.startswith("/in/"):
        return "ingest"
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/admin/"):
        return "admin"
    return "dashboard"


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
        with decrypting_for(place_of(request.path)):
            return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, SecretNotReadable):
            return None
        # The path only: never the secret, nor which row (the request's user may not own it).
        logger.error("%s %s: %s", request.method, request.path, exception)
        damaged = exception.malformed
        if request.path.startswith("/api/"):
            detail = REQUEST_SECRET_DAMAGED if damaged else REQUEST_NOT_READABLE_YET
            return _unavailable(JsonResponse({"error": "secret_unreadable", "detail": detail}, status=503))
        text = PAGE_SECRET_DAMAGED if damaged else PAGE_NOT_READABLE_YET
        return _unavailable(HttpResponse(text, status=503, content_type="text/plain; charset=utf-8"))
