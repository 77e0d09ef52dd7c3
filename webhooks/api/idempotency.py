"""``Idempotency-Key`` on every POST of the API (organizations.idempotency holds the logic)."""

from __future__ import annotations

import json

from django.conf import settings
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from organizations.idempotency import (
    IdempotencyKeyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    StoredResponse,
    idempotency_key_claim,
    idempotency_key_complete,
    idempotency_key_release,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotencyKeyReusedError(exceptions.APIException):
    status_code = 422
    default_code = "idempotency_key_reused"


class IdempotencyKeyInProgressError(exceptions.APIException):
    status_code = 409
    default_code = "idempotency_key_in_progress"
    wait = 1  # Retry-After, in seconds (DRF's exception handler sends it)


class _Replay(Exception):
    """Not an error: the answer stored for the key, sent instead of running the request."""

    def __init__(self, stored: StoredResponse) -> None:
        self.stored = stored


class IdempotencyKeyMixin:
    """A POST with ``Idempotency-Key`` runs once; a retry with the same key and request gets the first
    answer again (``Idempotent-Replayed: true``). Checked after the key's authentication, access and
    rate limit, so a refused request takes no key."""

    _idempotency_claim = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if request.method != "POST" or key is None:
            return
        try:
            outcome = idempotency_key_claim(
                api_key=request.auth,
                key=key,
                method=request.method,
                path=request.get_full_path(),
                body=request.body,
                # The charset DRF's parser decodes the body in (the Content-Type's, else UTF-8).
                encoding=request.parser_context["encoding"],
            )
        except IdempotencyKeyInvalid as exc:
            raise exceptions.ParseError(str(exc), code="invalid_idempotency_key") from None
        except IdempotencyKeyReused as exc:
            raise IdempotencyKeyReusedError(str(exc)) from None
        except IdempotencyKeyInProgress as exc:
            raise IdempotencyKeyInProgressError(str(exc)) from None
        if isinstance(outcome, StoredResponse):
            raise _Replay(outcome)
        self._idempotency_claim = outcome

    def handle_exception(self, exc):
        if isinstance(exc, _Replay):
            response = Response(json.loads(exc.stored.body) if exc.stored.body else None, status=exc.stored.status)
            if location := exc.stored.location:
                # Kept before Locations were absolute (a path): made absolute as views.absolute_url
                # does now, so a retry across the upgrade gets what a client of this release follows.
                response["Location"] = settings.PUBLIC_BASE_URL + location if location.startswith("/") else location
            response[REPLAYED_HEADER] = "true"
            return response
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        claim, self._idempotency_claim = self._idempotency_claim, None
        if claim is not None:
            data = getattr(response, "data", None)
            idempotency_key_complete(
                claim=claim,
                status=response.status_code,
                body=JSONRenderer().render(data).decode() if data is not None else "",
                location=response.get("Location", ""),
            )
        return response

    def dispatch(self, request, *args, **kwargs):
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            # Still claimed: the request ended in an exception nothing answered (a 500), before
            # finalize_response. Its key is freed, so that a retry runs again.
            claim, self._idempotency_claim = self._idempotency_claim, None
            if claim is not None:
                idempotency_key_release(claim=claim)
