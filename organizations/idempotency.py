"""Idempotency keys of the REST API: a POST sent again with the same ``Idempotency-Key`` gets the
first one's answer instead of running again.

The first request with a key inserts its row (committed at once, marked running) before it runs;
the unique constraint decides between two requests with the same key that arrive together, so the
second is refused while the first runs, whatever the timing. The request then runs in one
transaction with the storing of its answer: what it did is committed together with the answer a
retry gets, or not at all. So a key still marked running never hides a committed effect, and a
server error (5xx, the transaction rolled back) frees the key for a retry that has nothing to repeat.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import ApiKey, IdempotencyKey

MAX_KEY_LENGTH = IdempotencyKey._meta.get_field("key").max_length
# Visible ASCII, with spaces inside: what a header carries unchanged through every proxy and client
# library. Not at either end: HTTP takes the spaces around a field's value for no part of it (RFC
# 9110, 5.5), so a key sent with them arrives without them, and one of spaces alone arrives empty.
# The API's document states this very pattern (ECMA-262 reads it as Python does).
KEY_PATTERN = rf"[!-~](?:[ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?"
_KEY = re.compile(KEY_PATTERN)


class IdempotencyError(Exception):
    """A key the request cannot run with; the message says why and what to do."""


class IdempotencyKeyInvalid(IdempotencyError):
    pass


class IdempotencyKeyReused(IdempotencyError):
    """The key was sent before with another request (method, path or body: the body's JSON, read as
    the API reads it, not its bytes' order of keys and spacing)."""


class IdempotencyKeyInProgress(IdempotencyError):
    """A request with the key is running now."""


@dataclass(frozen=True)
class StoredResponse:
    """The answer the first request with the key got: what a retry gets back."""

    status: int
    body: str  # JSON as rendered, "" for none (204)
    location: str


def canonical_request_body(body: bytes, encoding: str = "utf-8") -> bytes:
    """A JSON body as the API reads it, written one way (keys sorted, no spaces), so that the same
    JSON sent again with its keys in another order or other spacing is the same request. Decoded in
    ``encoding``, the Content-Type's charset the API's parser decodes it in: the same bytes sent as
    UTF-8 and as Latin-1 are two requests (two names), and must not share one stored answer.
    Bytes that are not JSON (none, a form, a charset that is not a text encoding) are kept as they are."""
    try:
        parsed = json.loads(bytes(body).decode(encoding))
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; LookupError: no such text encoding
    except (ValueError, RecursionError, LookupError):
        return bytes(body)
    # surrogatepass: a \ud800 escape reads as a lone surrogate, which strict UTF-8 cannot write
    # (the request would be a 500 instead of the API's 400 for the value).
    canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return canonical.encode("utf-8", "surrogatepass")


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def idempotency_request_digest(*, method: str, path: str, body: bytes) -> str:
    """What makes two requests the same request: method, path with its query and the body's bytes
    (pass canonical_request_body's for a body read as JSON)."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))  # lengths first: no two splits hash alike
        digest.update(part)
    return digest.hexdigest()


def idempotency_key_claim(
    *, api_key: ApiKey, key: str, method: str, path: str, body: bytes, encoding: str = "utf-8", now=None
) -> IdempotencyKey | StoredResponse:
    """Take ``key`` for this request (the row to complete once it has run), or the answer stored for it.

    Raises IdempotencyKeyInvalid for a malformed key, IdempotencyKeyReused when the key came with
    another request, IdempotencyKeyInProgress while a request with it runs.
    """
    if not _KEY.fullmatch(key):
        raise IdempotencyKeyInvalid(
            f"the Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, spaces only "
            "between them (a UUID, say)" + ("" if key.strip() else ": this one is empty")
        )
    now = now or timezone.now()
    digest = idempotency_request_digest(method=method, path=path, body=canonical_request_body(body, encoding))
    # Keys stored by releases before the canonical form hold the digest of the raw bytes: a retry
    # of such a key with the very same bytes still gets its answer (they expire within a day).
    # Only for a body read as UTF-8: bytes already in canonical form would otherwise match a UTF-8
    # request's digest when sent again as Latin-1, which the API reads as other text.
    digests_taken = {digest}
    if _is_utf8(encoding):
        digests_taken.add(idempotency_request_digest(method=method, path=path, body=body))
    scope = {"organization_id": api_key.organization_id, "api_key": api_key, "key": key}
    # Twice at most: a key that expired or was freed by a failed request between our INSERT and our
    # read is inserted again once; losing that race too means another request has just taken it.
    for _ in range(2):
        try:
            with transaction.atomic():  # a savepoint inside a caller's transaction
                return IdempotencyKey.objects.create(
                    **scope,
                    request_digest=digest,
                    request_method=method.upper(),
                    # Without its query: no POST takes one, and what a careless client puts there
                    # (its API key, say) is not kept in plain text nor quoted back in a 422. The
                    # digest covers the query all the same.
                    request_path=path.partition("?")[0][:2048],
                    started_at=now,
                    expires_at=now + timedelta(hours=IdempotencyKey.KEPT_HOURS),
                )
        except IntegrityError:
            pass
        existing = IdempotencyKey.objects.filter(**scope).first()
        if existing is None:
            continue
        if existing.expires_at <= now:
            # Expired, not yet purged: as if never sent.
            IdempotencyKey.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
            continue
        if existing.request_digest not in digests_taken:
            raise IdempotencyKeyReused(
                f"this Idempotency-Key was sent with another request ({existing.request_method}"
                f" {existing.request_path}, or another body): send a new key for a new request"
            )
        if existing.response_status is not None:
            return StoredResponse(existing.response_status, existing.response_body, existing.response_location)
        abandoned_before = now - timedelta(seconds=IdempotencyKey.ABANDONED_AFTER_SECONDS)
        # Taken over by a conditional UPDATE: of two retries of a lost request, one runs.
        if existing.started_at <= abandoned_before and IdempotencyKey.objects.filter(
            pk=existing.pk, response_status=None, started_at=existing.started_at
        ).update(started_at=now):
            existing.started_at = now
            return existing
        break
    raise IdempotencyKeyInProgress(
        "a request with this Idempotency-Key is still running: send it again once that one has been answered"
    )


def idempotency_answer_kept(status: int) -> bool:
    """Whether an answer is kept for the key's retries: not a server error (5xx), nor a 429, which
    says to send the same request again later (the organization's lookups busy): kept, that retry
    would get the 429 again for the key's 24 hours. The request is then rolled back, its key freed."""
    return status < 500 and status != 429


def idempotency_key_complete(*, claim: IdempotencyKey, status: int, body: str, location: str = "") -> bool:
    """Store the answer the request got, for its retries: call it in the transaction that holds the
    request's effect, so that both are committed together or neither is. The body is stored
    encrypted (it may hold a secret shown once).

    False when the key is no longer this request's (a retry took it over, this one being thought
    lost): the caller must then roll its effect back, the retry's is the one kept. An answer not
    kept (idempotency_answer_kept: a server error, a 429) is never stored: roll the request back and
    release its key instead.
    """
    if not idempotency_answer_kept(status):
        raise ValueError("this answer is not kept: roll the request back and release its key")
    return bool(
        IdempotencyKey.objects.filter(pk=claim.pk, started_at=claim.started_at, response_status=None).update(
            response_status=status, response_body=body, response_location=location[:2048]
        )
    )


def idempotency_key_release(*, claim: IdempotencyKey) -> None:
    """Free the key of a request rolled back (a server error): nothing it did was committed, so a
    retry runs again. Never the key once an answer is stored, nor once a retry took it over."""
    IdempotencyKey.objects.filter(pk=claim.pk, started_at=claim.started_at, response_status=None).delete()


def idempotency_keys_expired(*, now=None):
    """The keys past their expiry, every organization's: the hourly retention run deletes them in
    batches within its time bound (webhooks.services.lifecycle)."""
    return IdempotencyKey.objects.filter(expires_at__lte=now or timezone.now())
