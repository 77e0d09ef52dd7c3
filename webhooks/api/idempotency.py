"""``Idempotency-Key`` on every POST of the API (organizations.idempotency holds the logic)."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, transaction
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from organizations.idempotency import (
    IdempotencyKeyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    StoredResponse,
    idempotency_answer_kept,
    idempotency_key_claim,
    idempotency_key_complete,
    idempotency_key_release,
)
from webhooks.fields import decrypting_for

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

logger = logging.getLogger(__name__)


class IdempotencyKeyReusedError(exceptions.APIException):
    status_code = 422
    default_code = "idempotency_key_reused"


class IdempotencyKeyInProgressError(exceptions.APIException):
    status_code = 409
    default_code = "idempotency_key_in_progress"
    wait = 1  # Retry-After, in seconds (DRF's exception handler sends it)


class StoredAnswerUnreadableError(exceptions.APIException):
    """The answer kept for this key is encrypted with a key this process lacks (a rolling deploy of a
    new FIELD_ENCRYPTION_KEYS, where the process that stored it had the new key; or this process's
    keys are wrong): the request is not run again, and a retry once the keys are right gets the answer."""

    status_code = 503
    default_code = "stored_answer_unreadable"
    default_detail = (
        "the answer stored for this Idempotency-Key cannot be decrypted by this server with its encryption "
        "keys: it is kept, and the request is not run again. If a new encryption key is being deployed, a retry "
        "in a minute gets it; if it lasts, this server's keys are wrong and its health check reports it"
    )
    wait = 60


class _Replay(Exception):
    """Not an error: the answer stored for the key, sent instead of running the request."""

    def __init__(self, stored: StoredResponse) -> None:
        self.stored = stored


class IdempotencyKeyMixin:
    """A POST with ``Idempotency-Key`` runs once; a retry with the same key and request gets the first
    answer again (``Idempotent-Replayed: true``). Checked after the key's authentication, access and
    rate limit, so a refused request takes no key.

    Once the key is taken, the request runs in one transaction with the storing of its answer
    (ATOMIC): its effect is committed together with the answer its retries get, or not at all. A
    request that ends in a server error (an exception, a 5xx, a commit that fails, the connection
    lost) is rolled back whole and its key freed, so the retry runs with nothing done before it; a
    process killed mid-request leaves its transaction to PostgreSQL's rollback and its key to be
    taken over (organizations.idempotency). What a request has Celery do is sent on commit only."""

    _idempotency_claim = None
    _idempotency_transaction: ExitStack | None = None
    _idempotency_answer_stored = False

    def dispatch(self, request, *args, **kwargs):
        self._idempotency_claim, self._idempotency_answer_stored = None, False
        committed = False
        try:
            # initial() opens the request's transaction in this stack once it has taken the key;
            # leaving the block commits it (or rolls it back, on an exception or set_rollback).
            with ExitStack() as self._idempotency_transaction:
                response = super().dispatch(request, *args, **kwargs)
            committed = self._idempotency_answer_stored
        finally:
            claim, self._idempotency_claim, self._idempotency_transaction = self._idempotency_claim, None, None
            # Also after a failure once committed (an on_commit hook): the answer is stored then,
            # and the release, conditional on none being stored, leaves it for the retry.
            if claim is not None and not committed:
                _release(claim)
        return response

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if request.method != "POST" or key is None:
            return
        # The spaces and tabs around a header's value are no part of it (RFC 9110, 5.5): gunicorn
        # cuts them, and so does this for servers that pass them on, so that a key is the same key
        # whichever server reads it. One of spaces alone is then empty, and refused.
        key = key.strip(" \t")
        try:
            with decrypting_for("idempotency"):
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
        except ImproperlyConfigured as exc:
            # Said in the log with its reason, as a page's 503 is (views.one_look): a process whose
            # keys stay wrong, rather than one a deploy has not reached yet, answers this for ever.
            logger.error("%s %s: the answer stored for its Idempotency-Key: %s", request.method, request.path, exc)
            raise StoredAnswerUnreadableError from None
        if isinstance(outcome, StoredResponse):
            raise _Replay(outcome)
        self._idempotency_claim = outcome
        self._idempotency_transaction.enter_context(transaction.atomic())

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
        claim = self._idempotency_claim
        if claim is not None and not self._idempotency_answer_stored:
            if not idempotency_answer_kept(response.status_code):
                # A server error, or a 429 to send again: not kept, and nothing it did either; the key
                # is freed (dispatch) and a retry runs.
                transaction.set_rollback(True)
            elif self._store_answer(claim, response):
                self._idempotency_answer_stored = True
            else:
                transaction.set_rollback(True)
                response = self.handle_exception(
                    IdempotencyKeyInProgressError(
                        "this request took too long and a retry with its Idempotency-Key took over: nothing was"
                        " done by this one; send it again to get the retry's answer"
                    )
                )
        return super().finalize_response(request, response, *args, **kwargs)

    def _store_answer(self, claim, response) -> bool:
        data = getattr(response, "data", None)
        return idempotency_key_complete(
            claim=claim,
            status=response.status_code,
            body=JSONRenderer().render(data).decode() if data is not None else "",
            location=response.get("Location", ""),
        )


def _release(claim) -> None:
    """Free the key of a request rolled back. Its connection may be the one that failed (Django has
    closed it then, and this query opens another); should the database still be out of reach, the
    key stays marked running and a retry takes it over later: nothing it did was committed."""
    try:
        idempotency_key_release(claim=claim)
    except DatabaseError:
        logger.warning("Idempotency-Key %s not freed: a retry takes it over in a few minutes", claim.pk, exc_info=True)
