"""The ingest hot path: verify, store once, acknowledge, and leave the rest to workers.

A request does at most three things over the network: read the source,
insert the event (both PostgreSQL) and, now and then, nudge the processor
(Redis). Everything else waits for a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from organizations.models import MIN_RETENTION_DAYS, Organization
from webhooks.fields import (
    SecretNotReadable,
    current_place,
    take_readable_secrets,
    unreadable_secrets,
    with_stored_tokens,
)
from webhooks.models import PurgedEventKey, SignatureNonce, Source, WebhookEvent
from webhooks.providers.base import HandshakeResponse, InboundRequest, MalformedPayload, VerificationError, counted
from webhooks.providers.registry import UnknownProvider, documented_header_name, get_provider

from . import secret_health
from .ingest_writer import (
    NewEvent,
    SourceClosed,
    count_duplicates_of_signed_content,
    describe_database_error,
    event_id_digest,
    refusal_of_row,
    store_event,
    writer,
)
from .processing import schedule_event_processing
from .rejected_records import forget_local_counts, may_keep_rejection
from .secret_use import record_secret_match
from .secrets import previous_secret_valid_until
from .sender_marks import is_hookline_test_event
from .source_networks import address_allowed
from .text import loggable_text, storable_text

logger = logging.getLogger(__name__)

MASKED = "[masked]"


# Where the answer's body is the provider's own (see Provider.acknowledgement), these headers say
# what Hookline's JSON says otherwise; the test sender reads them.
EVENT_ID_HEADER = "Hookline-Event-Id"
DUPLICATE_HEADER = "Hookline-Duplicate"


@dataclass(frozen=True)
class IngestOutcome:
    """What the view answers: a JSON payload, or a provider handshake reply."""

    status_code: int
    payload: dict[str, Any] = field(default_factory=dict)
    handshake: HandshakeResponse | None = None
    # Bookkeeping for the view to run once the answer has been sent; it never raises.
    after_answer: Callable[[], None] | None = None
    # A 503's Retry-After: when the provider may try again.
    retry_after_seconds: int | None = None


# The Retry-After of a 503 for a secret this process cannot decrypt (the view's other 503s say the same).
SECRET_UNREADABLE_RETRY_SECONDS = 30
# A VerificationError's code for a signature that no secret tried matches (the others say the
# request is malformed, unsigned or out of time whatever the secret).
NO_MATCHING_SECRET = "no_matching_secret"


def _error(status_code: int, error: str, detail: str) -> IngestOutcome:
    return IngestOutcome(status_code, {"error": error, "detail": detail})


# token -> (expires at, Source or None). Each web process keeps the sources it has
# seen for a few seconds: the lookup is the largest cost of a request otherwise.
# Saving a source or organization clears this process's copy at once (see
# apps.py); other processes see a change within INGEST_SOURCE_CACHE_SECONDS.
_source_cache: dict[str, tuple[float, Source | None]] = {}
_SOURCE_CACHE_MAX_ENTRIES = 10_000
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def source_for_token(token: str) -> Source | None:
    """The active source behind an ingest token (unknown tokens are remembered too)."""
    if not _TOKEN_SHAPE.fullmatch(token):
        # Never one of ours (URL-safe base64, at most 64 characters), and a NUL byte would
        # make the database refuse the query: no lookup at all.
        return None
    now = time.monotonic()
    cached = _source_cache.get(token)
    if cached is not None and cached[0] > now:
        return cached[1]
    found = Source.objects.select_related("organization").filter(
        ingest_token=token, is_active=True, organization__is_active=True
    )
    try:
        source = found.first()
    except SecretNotReadable as exc:
        if exc.field_name != "previous_secret":
            # The current secret: nothing can be verified. The view answers 503 (the provider
            # retries), and nothing is kept: each request reads it again, and counts as a failure.
            raise
        source = _source_without_its_previous_secret(found)
    if len(_source_cache) >= _SOURCE_CACHE_MAX_ENTRIES:
        _source_cache.clear()
    _source_cache[token] = (now + settings.INGEST_SOURCE_CACHE_SECONDS, source)
    return source


def _source_without_its_previous_secret(found) -> Source | None:
    """The source of ``found`` with the secrets this process can decrypt, the previous one, which it
    cannot, left unread (fields.take_readable_secrets): requests signed with the current secret are
    accepted as usual. Only for such a source: a second query, and a second try of the previous secret
    (each failure counted in the health figures), which no other source pays for."""
    source = with_stored_tokens(found).first()
    if source is None:
        return None
    unreadable = take_readable_secrets(source)
    if "secret" in unreadable:  # replaced by one no key decrypts since the first read: as above
        raise SecretNotReadable(
            f"the source's signing secret cannot be decrypted: "
            f"{unreadable['secret'].explanation(secret_health.PROCESS_STARTED_AT)}",
            unreadable["secret"],
            current_place(),
        )
    return source


def previous_secret_unreadable_in_window(source: Source) -> bool:
    """Whether ``source`` (read with fields.take_readable_secrets) has a previous secret that this
    process cannot decrypt and that would still verify requests: a request that matches no secret
    it can read may be signed with that one, and cannot be judged here."""
    return "previous_secret" in unreadable_secrets(source) and previous_secret_valid_until(source) is not None


def forget_cached_sources(**_) -> None:
    _source_cache.clear()


def ingest_request(
    *,
    token: str,
    body: bytes,
    headers: Mapping[str, str],
    method: str = "POST",
    url: str = "",
    query: Mapping[str, Sequence[str]] | None = None,
    remote_ip: str | None = None,
) -> IngestOutcome:
    """Verify and store one webhook request; ``headers`` keep the names they arrived with."""
    with writer.request():
        try:
            return _ingest(token, body, headers, method, url, query, remote_ip)
        except SourceClosed:
            # This process's copy of the source was out of date (turned off or deleted in another
            # process): an INSERT refused the row, and the copy is dropped at once.
            _source_cache.pop(token, None)
            return _error(404, "unknown_source", "no active source has this ingest URL")


def _ingest(token, body, headers, method, url, query, remote_ip) -> IngestOutcome:
    source = source_for_token(token)
    if source is None:
        return _error(404, "unknown_source", "no active source has this ingest URL")
    if len(body) > settings.INGEST_MAX_BODY_BYTES:
        return _error(413, "body_too_large", f"the body exceeds {settings.INGEST_MAX_BODY_BYTES} bytes")

    request = InboundRequest(
        body=body,
        headers={name.lower(): value for name, value in headers.items()},
        method=method,
        url=url,
        query=query or {},
    )
    # Before the signature: a request from elsewhere costs no verification and binds no nonce, and
    # the answer tells a sender outside the list nothing about its signature or the secret.
    # An empty list (most sources) costs this one truth test.
    if source.allowed_networks and not address_allowed(source.allowed_ip_networks, remote_ip):
        return _reject(
            source, request, headers, remote_ip, "address_not_allowed", _address_refusal(remote_ip), status_code=403
        )
    try:
        provider = get_provider(source.provider)
    except UnknownProvider:
        # Misconfiguration must never turn into an unverified accept.
        return _reject(
            source, request, headers, remote_ip, "unknown_provider", "the source's provider is not supported"
        )

    # Read once: each call builds the list again, and the hot path needs it up to four times.
    secrets = source.active_secrets()
    if provider.uses_secret and not any(secrets):
        return _reject(
            source,
            request,
            headers,
            remote_ip,
            "secret_not_set",
            f"this source has no signing secret yet: copy the one {provider.label} shows for this endpoint into "
            "Hookline (the source's page, 'Set the signing secret'); until then every request is refused",
        )

    challenge = provider.unsigned_handshake(request, secrets, source.options)
    if challenge is not None:
        return IngestOutcome(challenge.status, handshake=challenge)
    if method != "POST":
        return _error(405, "method_not_allowed", "webhooks are accepted with POST; GET only answers handshakes")

    try:
        matched = provider.verify_matching_secret(request, secrets, source.options, time.time())
    except VerificationError as exc:
        if exc.code == NO_MATCHING_SECRET and provider.uses_secret and previous_secret_unreadable_in_window(source):
            return _previous_secret_unreadable(source)
        return _reject(source, request, headers, remote_ip, exc.code, exc.detail)
    record_match = _secret_match_recorder(source, secrets, matched, headers, body)

    refusal = _signed_before_retention(provider, request, source) or _replay_refusal(provider, request, source, body)
    if refusal is not None:
        return _reject(source, request, headers, remote_ip, *refusal)

    handshake = provider.handshake(request, secrets, source.options)
    if handshake is not None:
        return IngestOutcome(handshake.status, handshake=handshake, after_answer=record_match)

    try:
        info = provider.describe(request, source.options)
    except MalformedPayload as exc:
        return _reject(source, request, headers, remote_ip, "malformed_payload", exc.detail, status_code=400)

    event = NewEvent(
        organization_id=source.organization_id,
        source_id=source.pk,
        provider_event_id=_storable_event_id(info.event_id) if info.event_id else None,
        event_type=storable_text(info.event_type)[:255],
        body=body,
        headers=_headers_to_store(provider.secret_header_names(source.options), headers, secrets),
        remote_ip=remote_ip,
        signed_content_digest=provider.signed_content_digest(request, source.options),
    )
    try:
        stored = store_event(event)
        if stored is None:
            stored = insert_event(event)
            if stored[1]:
                transaction.on_commit(lambda: schedule_event_processing(from_ingest=True))
    except (DataError, UnicodeError) as exc:
        # A value the database refuses must be a clear 4xx, never a 500 (nothing was stored).
        # By its kind, not its message: PostgreSQL's message for a refused value quotes the value.
        logger.warning(
            "ingest: source %s sent a request that cannot be stored: %s", source.pk, describe_database_error(exc)
        )
        return _error(400, "unstorable_request", "the request holds a value that cannot be stored")
    event_id, inserted = stored
    # The line an operator finds a webhook by (its event id, or the provider's), where the
    # processing and each delivery attempt continue its story (see README, "Tracing a webhook").
    logger.info(
        "event %s %s: organization %s source %s provider event %s type %s",
        event_id,
        "received" if inserted else "received again: a duplicate, counted and not delivered again",
        source.organization_id,
        source.pk,
        loggable_text(event.provider_event_id),
        loggable_text(event.event_type),
    )
    stored_as = {"id": str(event_id), "duplicate": not inserted}
    acknowledgement = provider.acknowledgement(request)
    if acknowledgement is not None:
        return IngestOutcome(acknowledgement.status, stored_as, handshake=acknowledgement, after_answer=record_match)
    return IngestOutcome(200, stored_as, after_answer=record_match)


def _previous_secret_unreadable(source: Source) -> IngestOutcome:
    """503 for a request that matches no secret this process can read, while the source's previous
    secret, which no key here decrypts, still verifies: it may well be signed with that one. Neither
    stored nor recorded as refused (it is not known to be forged); the provider retries a 503, and
    a process that reads the secret (a key being deployed, or the keys mended) judges it."""
    why = unreadable_secrets(source)["previous_secret"]
    # Counted as the failure it is, as a request needing an unreadable secret always was: the source
    # is kept for a few seconds, and its read counted only when made.
    secret_health.note_unreadable(current_place(), why)
    logger.error(
        "ingest for source %s not verified: the request matches no secret this process can read, and the "
        "previous secret, still valid during the rotation's overlap, cannot be decrypted: %s",
        source.pk,
        why.explanation(secret_health.PROCESS_STARTED_AT),
    )
    outcome = _error(
        503,
        "unavailable",
        "the signature does not match the current signing secret, and the previous one, which still verifies "
        "during the secret's rotation, cannot be read by this server at the moment: nothing was stored; retry later",
    )
    return IngestOutcome(outcome.status_code, outcome.payload, retry_after_seconds=SECRET_UNREADABLE_RETRY_SECONDS)


def _address_refusal(remote_ip: str | None) -> str:
    if remote_ip is None:
        return "this source takes requests only from its allowed networks, and this request's address could not be read"
    return f"this source takes requests only from its allowed networks, and this request came from {remote_ip}"


def _secret_match_recorder(
    source: Source, secrets: Sequence[str], matched: int | None, headers: Mapping[str, str], body: bytes
) -> Callable[[], None] | None:
    """What notes which secret verified an accepted request (see services.secret_use).

    Only during a rotation's overlap, when the pages show it: with a single secret there is
    nothing to tell apart, and the usual request pays for this one comparison only. Not for
    Hookline's own test events: the test sender signs with the current secret whatever the
    provider uses, so one would say "switched" too early."""
    if len(secrets) < 2 or matched is None:
        return None
    if is_hookline_test_event(headers, body, source_id=source.pk, received_at=time.time()):
        return None
    return partial(
        record_secret_match,
        source_id=source.pk,
        source_version=source.updated_at,
        previous=matched > 0,
        matched_at=timezone.now(),
    )


_INSERTED_FIELDS = [
    WebhookEvent._meta.get_field(name)
    for name in (
        "id",
        "organization",
        "source",
        "provider_event_id",
        "event_type",
        "body",
        "headers",
        "remote_ip",
        "status",
        "rejection_code",
        "rejection_detail",
        "duplicate_count",
        "received_at",
    )
]
_SIGNED_CONTENT_FIELD = WebhookEvent._meta.get_field("signed_content_digest")


def _source_open_condition() -> str:
    """SQL that holds while the source whose id is its one parameter takes webhooks: active, not
    being deleted, of an active organization (as source_for_token finds it; the writer's statement
    says the same, ingest_writer.SOURCE_OPEN_SQL). Looked at in an INSERT's own snapshot: this
    process's copy of the source may be seconds old."""
    return (
        f"EXISTS (SELECT 1 FROM {Source._meta.db_table} AS source JOIN {Organization._meta.db_table} AS organization "
        "ON organization.id = source.organization_id WHERE source.id = %s AND source.is_active "
        "AND source.deletion_requested_at IS NULL AND organization.is_active)"
    )


def _later_of_last_duplicate_and(received_at: str, table: str) -> str:
    """SQL for the later of the stored last_duplicate_at and a repeat's received_at: hosts' clocks
    differ by a little, and a repeat taken by a host behind the one that took the last must not move
    it back. PostgreSQL's GREATEST skips a NULL; SQLite's MAX() of several values is NULL with one."""
    if connection.vendor == "postgresql":
        return f"GREATEST({table}.last_duplicate_at, {received_at})"
    return f"MAX(COALESCE({table}.last_duplicate_at, {received_at}), {received_at})"


def insert_event(event: NewEvent) -> tuple:
    """Insert an event, or count it as a duplicate of the stored one, in one statement.

    The unique constraint on (source, provider event id) decides inside the
    database, so two concurrent redeliveries can never both be inserted, and
    no exception breaks an enclosing transaction. A redelivery of an event the
    retention purge deleted is counted as a duplicate of it (PurgedEventKey).
    Returns (id of the stored event, whether this call inserted it); raises
    SourceClosed, storing nothing, when the source no longer takes webhooks
    (the writer's statement does the same: ingest_writer.SOURCE_OPEN_SQL).
    """
    table = WebhookEvent._meta.db_table
    keys = PurgedEventKey._meta.db_table
    by_content = event.signed_content_digest is not None
    fields = [*_INSERTED_FIELDS, _SIGNED_CONTENT_FIELD] if by_content else _INSERTED_FIELDS
    columns = ", ".join(field.column for field in fields)
    values = [field.get_db_prep_save(getattr(event, field.attname), connection) for field in fields]
    if connection.vendor == "postgresql":  # parameters in a select list have no type of their own there
        placeholders = ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in fields)
    else:
        placeholders = ", ".join(["%s"] * len(values))
    digest = event_id_digest(event.provider_event_id)
    last_duplicate = _later_of_last_duplicate_and("excluded.received_at", table)
    # Where the provider's id is not signed, either unique index may find the stored event: nothing is
    # done by the INSERT, and the event repeated is counted next (see ingest_writer._INSERT_CONTENT_BATCH_SQL).
    on_conflict = (
        "ON CONFLICT DO NOTHING "
        if by_content
        else "ON CONFLICT (source_id, provider_event_id) WHERE provider_event_id IS NOT NULL "
        f"DO UPDATE SET duplicate_count = {table}.duplicate_count + 1, last_duplicate_at = {last_duplicate} "
    )
    # The key is looked for in the INSERT's own snapshot, as the writer's statement does
    # (ingest_writer._NOT_PURGED): the retention purge deletes an event only once every statement
    # that started before its key was committed has ended, which a look in a statement of its
    # own, before the INSERT, would escape. So is the source's state: this process's copy of it
    # may be seconds old.
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT {placeholders} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {keys} WHERE source_id = %s AND event_id_digest = %s) "
        f"AND {_source_open_condition()} "
        f"{on_conflict}"
        "RETURNING id"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, [*values, event.source_id, digest, event.source_id])
            row = cursor.fetchone()
            if row is None and by_content:
                if connection.vendor == "postgresql":
                    original_id = count_duplicates_of_signed_content(cursor, [event])[0]
                else:
                    original_id = _count_duplicate_of_signed_content_portably(event)
                if original_id is not None:
                    return original_id, False
    except (DataError, OperationalError, InterfaceError):
        raise  # a value (400) or the database being away (503): the caller tells them apart
    except DatabaseError as exc:
        # The same answer as the writers give (ingest_writer.commit_batch): its source's 404, or a 503.
        raise refusal_of_row(exc, event.source_id) from exc
    if row is not None:
        stored_id = WebhookEvent._meta.pk.to_python(row[0])
        return stored_id, stored_id == event.id
    # Not inserted: the source no longer takes webhooks, or a redelivery of the purged (or being
    # purged) event. Read again, so as the source is now (see ingest_writer._not_inserted).
    if not Source.objects.filter(
        pk=event.source_id, is_active=True, deletion_requested_at__isnull=True, organization__is_active=True
    ).exists():
        raise SourceClosed("the source no longer takes webhooks")
    purged = PurgedEventKey.objects.filter(source_id=event.source_id, event_id_digest=digest)
    original_id = purged.values_list("original_id", flat=True).first()
    if original_id is None:  # the source was closed when the INSERT ran, and opened again since
        raise OperationalError("the event was neither stored nor counted; retry")
    return original_id, False


def _count_duplicate_of_signed_content_portably(event: NewEvent):
    """What count_duplicates_of_signed_content does for one event, in SQL every database takes: the
    embedded mode's SQLite has no unnest() or arrays, and a duplicate there was answered 503 for ever.
    No concurrent writer to race with there (SQLite writes one at a time)."""
    if not Source.objects.filter(
        pk=event.source_id, is_active=True, deletion_requested_at__isnull=True, organization__is_active=True
    ).exists():
        return None
    stored = WebhookEvent.objects.filter(source_id=event.source_id)
    original_id = None
    if event.provider_event_id is not None:
        original_id = stored.filter(provider_event_id=event.provider_event_id).values_list("id", flat=True).first()
    if original_id is None:
        original_id = (
            stored.filter(signed_content_digest=event.signed_content_digest).values_list("id", flat=True).first()
        )
    if original_id is not None:
        stored.filter(pk=original_id).update(
            duplicate_count=F("duplicate_count") + 1,
            last_duplicate_at=Greatest(
                Coalesce("last_duplicate_at", Value(event.received_at)), Value(event.received_at)
            ),
        )
    return original_id


# A stored event is purged no sooner than its organization's retention after it was received (later
# when a delivery ended within the retention), and its key is kept PurgedEventKey.KEPT_DAYS after that; a signed time is accepted only while the key of its event,
# received no earlier than this much before the signed time (a provider's clock ahead of ours), must
# still be there.
RETENTION_CLOCK_MARGIN_SECONDS = SignatureNonce.CLOCK_SKEW_SECONDS


def _signed_before_retention(provider, request: InboundRequest, source: Source) -> tuple[str, str] | None:
    """(code, detail) when the request's signed time is older than the organization's retention plus
    the days a purged event's key is kept.

    De-duplication finds a redelivery by its stored event or, once the retention purge deleted that,
    by the key the purge kept (PurgedEventKey) for KEPT_DAYS; past both, a captured genuine request
    sent again would be stored and delivered as a new event. The provider's own ``tolerance`` option,
    where set, is checked by verify() and is usually far stricter; this bound holds also where the
    scheme checks none by default (Apple, SendGrid, Discord, Mailgun, PayPal) or the tenant turned it
    off. KEPT_DAYS is longer than any provider's retry span, so a genuine retry passes whatever the
    retention, and is counted as a duplicate if its event was stored and purged."""
    signed_at = provider.signed_time(request, source.options)
    if signed_at is None:
        return None
    retention_days = max(source.organization.retention_days, MIN_RETENTION_DAYS)
    age = time.time() - signed_at
    if age <= (retention_days + PurgedEventKey.KEPT_DAYS) * 86400 - RETENTION_CLOCK_MARGIN_SECONDS:
        return None
    return (
        "signed_before_retention",
        f"signed {age / 86400:.1f} days ago; events older than this organization's retention of "
        f"{retention_days} day{'s' if retention_days != 1 else ''}, plus the {PurgedEventKey.KEPT_DAYS} days "
        "their ids are kept after it, can no longer be told apart from a replay",
    )


def _replay_refusal(provider, request: InboundRequest, source: Source, body: bytes) -> tuple[str, str] | None:
    """(code, detail) when a signature that does not cover the whole body is being reused."""
    nonce = provider.replay_nonce(request, source.options)
    if nonce is None:
        return None
    signed_at = provider.nonce_signed_at(request, source.options)
    age = time.time() - signed_at if signed_at is not None else None
    # Not from the future either (beyond clock skew): a binding is kept KEPT_SECONDS from its
    # first use, which must cover the whole time the signature is accepted.
    if age is None or age > SignatureNonce.KEPT_SECONDS or age < -SignatureNonce.CLOCK_SKEW_SECONDS:
        return (
            "timestamp_out_of_tolerance",
            f"the signed time is missing, more than {SignatureNonce.KEPT_SECONDS // 86400} days old or in the "
            "future; this provider's signature does not cover the whole body, so Hookline accepts it only while "
            "it can check that it is used once",
        )
    if not _nonce_fits_body(source, nonce, body):
        return (
            "replayed_signature",
            "this signature was already used with a different body; a signature is valid only for the body it "
            "was made for",
        )
    return None


def _nonce_fits_body(source: Source, nonce: str, body: bytes) -> bool:
    """Bind ``nonce`` to ``body`` on first use; later uses must carry the same body (see SignatureNonce).

    A signature is good wherever its key is, and one key often serves several sources (Mailgun has one
    signing key per account, for all its domains): a nonce bound to another body at another source of
    the organization with the same provider is refused too. The same bytes there are the genuine event,
    as with any shared secret, and pass.

    A database error propagates: the view answers 503 and the provider retries, as when the
    event itself cannot be stored. A source deleted meanwhile (this process's copy of it is
    cached) is SourceClosed, answered as an unknown source.
    """
    digest = hashlib.sha256(body).hexdigest()
    # surrogatepass: a nonce read from JSON may hold a lone surrogate, which verify() signed as such.
    nonce_digest = hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()
    # The sibling sources first (usually none), so that the nonce is looked up by its unique
    # (source, nonce) index rather than by nonce alone.
    siblings = list(
        Source.objects.filter(organization_id=source.organization_id, provider=source.provider)
        .exclude(pk=source.pk)
        .values_list("pk", flat=True)
    )
    if (
        siblings
        and SignatureNonce.objects.filter(source_id__in=siblings, nonce_digest=nonce_digest)
        .exclude(body_digest=digest)
        .exists()
    ):
        return False
    try:
        binding, created = SignatureNonce.objects.get_or_create(
            source_id=source.pk,
            nonce_digest=nonce_digest,
            defaults={"body_digest": digest},
        )
    except IntegrityError as exc:
        # A source whose deletion finished after this process cached it: the nonce's foreign key
        # refuses it (get_or_create handles the other refusal, a concurrent first use).
        raise refusal_of_row(exc, source.pk) from exc
    return created or hmac.compare_digest(binding.body_digest, digest)


def _storable_event_id(event_id: str) -> str:
    """The provider's id as stored (255 characters at most) and compared for duplicates.

    A longer id keeps its start and ends with a digest of the whole, so that two long ids
    sharing their first 255 characters are not taken for one another.
    """
    event_id = storable_text(event_id)
    if len(event_id) <= 255:
        return event_id
    return event_id[:190] + "~" + hashlib.sha256(event_id.encode()).hexdigest()


# A secret this short could occur in an ordinary header value by chance: only a whole value equal to it is masked.
MIN_SECRET_LENGTH_MASKED_WITHIN = 8


def _headers_to_store(
    secret_headers: set[str], headers: Mapping[str, str], secrets: Sequence[str] = ()
) -> dict[str, str]:
    """Headers as received, except values that are themselves secrets: those of the headers the
    provider names, and any value holding one of the source's secrets (a sender moved to another
    header name, or sending its token twice, puts it where the provider does not look; kept as it
    came it would be shown to members, who never see a secret, and forwarded to destinations)."""
    secret_headers = {name.lower() for name in secret_headers} | {"authorization", "cookie"}
    secrets = [secret for secret in secrets if secret]
    # A WSGI server decodes header bytes as latin-1 (PEP 3333): a non-ASCII secret, sent as UTF-8,
    # arrives as this other text (see providers.base.header_carries_secret).
    secrets += [
        as_received
        for secret in secrets
        if (as_received := secret.encode("utf-8", "surrogatepass").decode("latin-1")) != secret
    ]

    def holds_secret(value: str) -> bool:
        return any(
            secret == value.strip() or (len(secret) >= MIN_SECRET_LENGTH_MASKED_WITHIN and secret in value)
            for secret in secrets
        )

    return {
        storable_text(documented_header_name(name)): (
            MASKED if name.lower() in secret_headers or holds_secret(str(value)) else storable_text(value)
        )
        for name, value in headers.items()
    }


def _reject(
    source: Source,
    request: InboundRequest,
    headers: Mapping[str, str],
    remote_ip: str | None,
    code: str,
    detail: str,
    *,
    status_code: int = 401,
) -> IngestOutcome:
    """Answer 401 (or ``status_code``) and keep a bounded record, so the tenant can see why the
    request was refused.

    A source closed meanwhile in another process (this one's copy of it is cached) records
    nothing and answers 404, as for an unknown ingest URL, as an accepted event's INSERT does."""
    claimed_event_id = None
    if _may_record_rejection(source.pk):
        claimed_event_id = _claimed_event_id(source, request)
        provider_secret_headers: set[str] = set()
        try:
            provider_secret_headers = get_provider(source.provider).secret_header_names(source.options)
        except UnknownProvider:
            pass
        record = WebhookEvent(
            organization_id=source.organization_id,
            source=source,
            status=WebhookEvent.Status.REJECTED,
            claimed_event_id=claimed_event_id,
            rejection_code=code,
            rejection_detail=storable_text(detail)[:500],
            body=request.body[: settings.REJECTED_BODY_MAX_BYTES],
            headers=_bounded_headers(
                _headers_to_store(provider_secret_headers, headers, source.active_secrets()),
                settings.REJECTED_HEADERS_MAX_BYTES,
            ),
            remote_ip=remote_ip,
        )
        try:
            source_open = _insert_while_the_source_is_open(record)
        except (DataError, UnicodeError) as exc:
            # The request is refused all the same; only its record is lost (logged by its kind:
            # PostgreSQL's message for a refused value quotes the value).
            logger.warning(
                "ingest: the record of a request refused for source %s cannot be stored: %s",
                source.pk,
                describe_database_error(exc),
            )
            source_open = True  # as far as this request knows
        if not source_open:
            _source_cache.pop(source.ingest_token, None)
            return _error(404, "unknown_source", "no active source has this ingest URL")
    # INFO: the sender's or the tenant's trouble (the tenant sees it on the source's page), not the
    # operator's. The claimed id is unverified, and read only for a request whose record is kept.
    logger.info(
        "request refused (%s %s): organization %s source %s claimed provider event %s",
        status_code,
        code,
        source.organization_id,
        source.pk,
        loggable_text(claimed_event_id),
    )
    return _error(status_code, code, detail)


# Where a rejected request's headers say how many were not kept. Parentheses cannot be in a header
# name (RFC 9110 tokens), so no header the request carried can be taken for it.
HEADERS_NOT_KEPT = "(headers not kept)"
# A header cut shorter than this would show nothing useful: it is left out whole instead.
_MIN_CUT_HEADER_BYTES = 64


def _bounded_headers(headers: dict[str, str], max_bytes: int) -> dict[str, str]:
    """``headers`` within ``max_bytes`` (names and values, UTF-8), for a rejected request's record.

    Smallest first, so that every ordinary header (the signature, the event id, the user agent the
    tenant debugs with) is kept whole and only the few huge ones a forger added are cut or left out;
    how many were is kept under HEADERS_NOT_KEPT."""
    sized = sorted(headers.items(), key=lambda item: len(item[0].encode()) + len(item[1].encode()))
    kept: dict[str, str] = {}
    budget = max_bytes
    cut = left_out = 0
    for name, value in sized:
        size = len(name.encode()) + len(value.encode())
        if size <= budget:
            kept[name] = value
            budget -= size
        elif budget >= _MIN_CUT_HEADER_BYTES + len(name.encode()):
            room = budget - len(name.encode()) - 40  # the note added to the value
            shortened = value.encode()[:room].decode(errors="ignore")
            kept[name] = f"{shortened}… [cut from {len(value.encode())} bytes]"
            budget = 0
            cut += 1
        else:
            left_out += 1
    if cut or left_out:
        kept[HEADERS_NOT_KEPT] = (
            f"{counted(cut, 'header')} cut and {left_out} left out: a rejected request keeps {max_bytes} bytes "
            "of headers"
        )
    return kept


def _insert_while_the_source_is_open(record: WebhookEvent) -> bool:
    """Insert ``record`` in one statement that stores it only while its source takes webhooks;
    whether it was stored."""
    fields = WebhookEvent._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    values = [field.get_db_prep_save(field.pre_save(record, add=True), connection) for field in fields]
    if connection.vendor == "postgresql":  # parameters in a select list have no type of their own there
        placeholders = ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in fields)
    else:
        placeholders = ", ".join(["%s"] * len(values))
    sql = (
        f"INSERT INTO {WebhookEvent._meta.db_table} ({columns}) SELECT {placeholders} WHERE {_source_open_condition()}"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, [*values, record.source_id])
            return cursor.rowcount == 1
    except (DataError, OperationalError, InterfaceError):
        raise
    except DatabaseError as exc:
        # A source deleted while the record was inserted is not stored, as a closed one (404).
        refusal = refusal_of_row(exc, record.source_id)
        if isinstance(refusal, SourceClosed):
            return False
        raise refusal from exc


def _claimed_event_id(source: Source, request: InboundRequest) -> str | None:
    """The event id a rejected request claims, read as for a verified one but trusted by nobody
    (only shown and searched); None when it names none or cannot be read."""
    try:
        event_id = get_provider(source.provider).describe(request, source.options).event_id
    except Exception:  # unverified bytes: whatever they make a provider module do, the record stays
        return None
    if not event_id or event_id.startswith("sha256:"):  # a digest of the body says nothing to a person
        return None
    return _storable_event_id(event_id)


# The clock of the minutes and hours rejected requests are counted in, read through this name so
# that tests can hold time still.
rejection_clock = time.time


def _may_record_rejection(source_id: int) -> bool:
    """Keep at most INGEST_REJECTED_RECORDS_PER_MINUTE rejected requests per source and minute, and
    INGEST_REJECTED_RECORDS_PER_HOUR per hour; the others are counted on the source (see
    services.rejected_records). Recording every one would let a sender that knows an ingest URL
    fill the database at line rate."""
    return may_keep_rejection(source_id, rejection_clock())


def forget_rejection_counts() -> None:
    """Forget this process's fallback counts of rejected requests (for tests)."""
    forget_local_counts()
