"""Group commit for ingest: concurrent requests of one web process share one INSERT and one commit.

Why: on two cores the ingest path was bounded by per-statement work — a round
trip, PostgreSQL parsing and planning the INSERT, and a WAL flush per commit,
each paid by one request. Here a request hands its row to its process's writer
thread and waits. The writer inserts every row waiting at that moment in one
prepared statement (autocommit) and releases each request only after that
statement returned, so "acknowledged means committed" holds unchanged. Under
load one commit carries many events; idle, a batch is one row and the only
extra cost is a hand-off between two threads.

Under gunicorn with config/gunicorn.conf.py the rows go instead to the host's
writer process (``ingest_writer_process``), which commits them with
``commit_batch`` below; this thread is then only the stand-in for when that
process is not there.

A request that waits longer than ``INGEST_COMMIT_TIMEOUT_SECONDS`` answers 503.
Its row may still be committed afterwards; the provider's retry is then
counted as a duplicate of it, so nothing is lost or processed twice. (A
provider that sends no event id cannot be told apart from a new event: its
retry is then stored again, as it would be after any lost answer.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from django.conf import settings
from django.db import DatabaseError, DataError, InterfaceError, OperationalError, connection
from django.utils import timezone
from uuid6 import uuid7

from organizations.models import Organization
from webhooks.models import PurgedEventKey, SignatureNonce, Source, WebhookEvent

logger = logging.getLogger(__name__)

_TABLE = WebhookEvent._meta.db_table

_COLUMNS = """id, organization_id, source_id, provider_event_id, event_type, body, headers, remote_ip,
    status, rejection_code, rejection_detail, duplicate_count, received_at"""
# Duplicates of a stored event are counted on it, in the same statement.
_ON_CONFLICT = f"""ON CONFLICT (source_id, provider_event_id) WHERE provider_event_id IS NOT NULL
DO UPDATE SET duplicate_count = {_TABLE}.duplicate_count + 1,
    last_duplicate_at = GREATEST({_TABLE}.last_duplicate_at, excluded.received_at)
RETURNING id, source_id, provider_event_id"""

_KEYS = PurgedEventKey._meta.db_table
# A key the retention purge kept (PurgedEventKey) makes a duplicate of the purged event: the row is
# not inserted, and insert_event_batch answers with the purged event's id. The purge commits a key
# before it deletes the event (lifecycle._purge_organization): meanwhile the id is the stored event's,
# and the duplicate is not counted on it.
_NOT_PURGED = f"""WHERE NOT EXISTS (
    SELECT 1 FROM {_KEYS} AS purged WHERE purged.source_id = row.source_id AND purged.event_id_digest = row.digest
)"""

_SOURCES = Source._meta.db_table
# The tables ingest inserts into whose rows reference their source (see refusal_of_row).
_ROWS_WITH_A_SOURCE = {_TABLE, SignatureNonce._meta.db_table}
_ORGANIZATIONS = Organization._meta.db_table
# A row is stored only while its source takes webhooks: active, not being deleted, and of an active
# organization (as source_for_token finds it). One probe of each primary key, in the INSERT's own
# snapshot. A web process answers from its copy of the source for up to INGEST_SOURCE_CACHE_SECONDS
# (ingest.source_for_token); without this, another process's copy would have a source that was just
# turned off or is being deleted (or its organization suspended or being deleted) acknowledge
# webhooks for those seconds that are then stored against the tenant's wish, or deleted by the
# background deletion after their 200. Such a row is not inserted and not counted as a duplicate:
# the request is answered as for an unknown ingest URL (SourceClosed).
SOURCE_OPEN_SQL = f"""EXISTS (
    SELECT 1 FROM {_SOURCES} AS source JOIN {_ORGANIZATIONS} AS organization ON organization.id = source.organization_id
    WHERE source.id = row.source_id AND source.is_active AND source.deletion_requested_at IS NULL
        AND organization.is_active
)"""

# One statement text for any batch size (arrays, not a VALUES list), so each
# connection prepares it once.
_INSERT_BATCH_SQL = f"""
INSERT INTO {_TABLE} ({_COLUMNS})
SELECT row.id, row.organization_id, row.source_id, row.provider_event_id, row.event_type, row.body,
       row.headers::jsonb, row.remote_ip::inet, 'received', '', '', 0, row.received_at
FROM unnest(
    %b::uuid[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::bytea[], %b::text[], %b::text[],
    %b::timestamptz[], %b::text[]
) AS row(id, organization_id, source_id, provider_event_id, event_type, body, headers, remote_ip, received_at, digest)
{_NOT_PURGED} AND {SOURCE_OPEN_SQL}
{_ON_CONFLICT}
"""
# A batch of one (an idle process, or a sync worker) costs both sides less without arrays.
_INSERT_ONE_SQL = f"""
INSERT INTO {_TABLE} ({_COLUMNS})
SELECT row.id, row.organization_id, row.source_id, row.provider_event_id, row.event_type, row.body,
       row.headers::jsonb, row.remote_ip::inet, 'received', '', '', 0, row.received_at
FROM (VALUES (
    %b::uuid, %b::bigint, %b::bigint, %b::text, %b::text, %b::bytea, %b::text, %b::text, %b::timestamptz, %b::text
)) AS row(id, organization_id, source_id, provider_event_id, event_type, body, headers, remote_ip, received_at, digest)
{_NOT_PURGED} AND {SOURCE_OPEN_SQL}
{_ON_CONFLICT}
"""

# Rows of providers whose event id is not signed (Provider.dedupes_on_signed_content) also carry the
# digest of their signed content, which a second partial unique index keeps unique per source. An
# INSERT names one index to update on (ON CONFLICT (…) DO UPDATE), and a conflict on any other is an
# error: a replay under a fresh id would fail on the content index, a retry with the same id but a new
# body (a Linear retry must sign a new webhookTimestamp to pass its tolerance) on the id's. So these rows are inserted
# with DO NOTHING, which both indexes decide, and the rows left out are counted on the event they
# repeat by a second statement (DUPLICATES_OF_SIGNED_CONTENT_SQL): a round trip paid by duplicates of
# these providers only. The other rows keep the statements above unchanged.
_CONTENT_COLUMNS = f"{_COLUMNS}, signed_content_digest"
_INSERT_CONTENT_BATCH_SQL = f"""
INSERT INTO {_TABLE} ({_CONTENT_COLUMNS})
SELECT row.id, row.organization_id, row.source_id, row.provider_event_id, row.event_type, row.body,
       row.headers::jsonb, row.remote_ip::inet, 'received', '', '', 0, row.received_at, row.content_digest
FROM unnest(
    %b::uuid[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::bytea[], %b::text[], %b::text[],
    %b::timestamptz[], %b::text[], %b::text[]
) AS row(
    id, organization_id, source_id, provider_event_id, event_type, body, headers, remote_ip, received_at, digest,
    content_digest
)
{_NOT_PURGED} AND {SOURCE_OPEN_SQL}
ON CONFLICT DO NOTHING
RETURNING id, source_id, provider_event_id
"""
_INSERT_CONTENT_ONE_SQL = f"""
INSERT INTO {_TABLE} ({_CONTENT_COLUMNS})
SELECT row.id, row.organization_id, row.source_id, row.provider_event_id, row.event_type, row.body,
       row.headers::jsonb, row.remote_ip::inet, 'received', '', '', 0, row.received_at, row.content_digest
FROM (VALUES (
    %b::uuid, %b::bigint, %b::bigint, %b::text, %b::text, %b::bytea, %b::text, %b::text, %b::timestamptz, %b::text,
    %b::text
)) AS row(
    id, organization_id, source_id, provider_event_id, event_type, body, headers, remote_ip, received_at, digest,
    content_digest
)
{_NOT_PURGED} AND {SOURCE_OPEN_SQL}
ON CONFLICT DO NOTHING
RETURNING id, source_id, provider_event_id
"""
# For each row an INSERT above left out, in order: the stored event it repeats (by its provider id,
# else by its signed content), counted as a duplicate in the same statement; NULL when there is none
# or the source no longer takes webhooks (as the INSERT, which then stored nothing and counted
# nothing). With it, what the writer answers a row neither inserted nor counted (see _not_inserted):
# whether its source takes webhooks now, and the purged event its key names. One statement, so that
# the count and what is read with it are committed together or not at all: with a read of its own
# after the count, a failure in between had the writer write the rows again and count them twice.
# Run after the INSERT committed, so in a later snapshot: it sees the row a concurrent request
# committed while the INSERT waited for it.
DUPLICATES_OF_SIGNED_CONTENT_SQL = f"""
WITH row AS (
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::text[])
        WITH ORDINALITY AS row(source_id, provider_event_id, content_digest, received_at, digest, position)
), original AS (
    SELECT row.position, row.received_at, row.source_id, row.digest, live.open, CASE WHEN live.open THEN coalesce(
        (SELECT stored.id FROM {_TABLE} AS stored
         WHERE stored.source_id = row.source_id AND stored.provider_event_id = row.provider_event_id),
        (SELECT stored.id FROM {_TABLE} AS stored
         WHERE stored.source_id = row.source_id AND stored.signed_content_digest = row.content_digest)
    ) END AS id
    FROM row CROSS JOIN LATERAL (SELECT {SOURCE_OPEN_SQL} AS open) AS live
), counted AS (
    UPDATE {_TABLE} AS stored
    SET duplicate_count = stored.duplicate_count + hits.repeats, last_duplicate_at = GREATEST(stored.last_duplicate_at, hits.last_at)
    FROM (SELECT id, count(*) AS repeats, max(received_at) AS last_at FROM original WHERE id IS NOT NULL GROUP BY id)
        AS hits
    WHERE stored.id = hits.id
)
SELECT original.id, original.open, purged.original_id
FROM original
LEFT JOIN {_KEYS} AS purged ON purged.source_id = original.source_id AND purged.event_id_digest = original.digest
ORDER BY original.position
"""


@dataclass(slots=True)
class NewEvent:
    """A verified request about to be stored as a received WebhookEvent.

    Plain attributes rather than a model instance: building a Model costs the
    hot path more than everything else it does with the row.
    """

    organization_id: int
    source_id: int
    provider_event_id: str | None
    event_type: str
    body: bytes
    headers: dict[str, str]
    remote_ip: str | None
    # Set for providers whose event id is not signed (see Provider.signed_content_digest).
    signed_content_digest: str | None = None
    id: uuid.UUID = field(default_factory=uuid7)
    received_at: datetime = field(default_factory=timezone.now)
    # Columns with fixed values for a new event; named like the model's, for the inline INSERT.
    status: str = WebhookEvent.Status.RECEIVED.value
    rejection_code: str = ""
    rejection_detail: str = ""
    duplicate_count: int = 0


class WriterTimeout(OperationalError):
    """The writer did not confirm the commit in time; the caller answers 503."""


class SourceClosed(Exception):
    """The event's source no longer takes webhooks (turned off, being deleted, gone, or its
    organization suspended): nothing was stored, and the caller answers as for an unknown URL."""


class RowRefused(OperationalError):
    """The database refused a row for a reason that is neither its values (DataError: 400) nor a
    gone source (SourceClosed: 404), such as a constraint or a column changed by a deploy under
    way: nothing was stored, and the view answers 503 so that the provider retries, whichever
    writer ran the INSERT. The message names the error, never the row's values."""


class UnstorableRow(DataError):
    """A value of the row cannot be stored (answered 400), told by describe_database_error: how the
    writer process's refusal reaches the web process, and how a value psycopg cannot encode is
    answered. Its message is safe to log."""


def refusal_of_row(exc: DatabaseError, source_id: int) -> SourceClosed | RowRefused:
    """What a request answers when the database refused its row (or its signature nonce's) with
    ``exc``, which is neither a DataError nor a connection failure; logged here, once.

    A foreign key violation of a row Hookline inserts can only be its source's or its organization's
    (the one column each that references another table), deleted after the INSERT's own snapshot saw
    it open (a deletion committing while the INSERT ran): when the source is indeed not open now,
    that is an unknown source's 404, as when the INSERT finds it closed."""
    cause = exc.__cause__
    if isinstance(cause, psycopg.errors.ForeignKeyViolation) and cause.diag.table_name in _ROWS_WITH_A_SOURCE:
        try:
            still_open = _source_is_open(source_id)
        except DatabaseError:  # the caller's transaction is broken by the refusal: not known, so retry
            still_open = True
        if not still_open:
            return SourceClosed("the source was deleted while its row was inserted")
    description = describe_database_error(exc)
    logger.error("ingest: the database refused a row of source %s, answered 503: %s", source_id, description)
    return RowRefused(description)


def describe_database_error(exc: BaseException) -> str:
    """The error's kind and code, safe to log: never a webhook's content.

    PostgreSQL quotes the failing row's values (the body and headers) in a constraint violation's
    DETAIL, and a value it cannot take (a DataError) in that error's primary message ('invalid
    input syntax for type integer: "<value>"'), DETAIL and CONTEXT. So a constraint's refusal is
    told by its primary message (which names the constraint), a value's by its column only; a
    value psycopg cannot encode by the reason, not the character."""
    if isinstance(exc, (RowRefused, UnstorableRow)):
        return str(exc)  # made of a description already
    cause = exc.__cause__ if isinstance(exc.__cause__, psycopg.Error | UnicodeError) else exc
    if isinstance(cause, psycopg.DataError):
        column = f", column {cause.diag.column_name}" if cause.diag.column_name else ""
        return f"{type(cause).__name__} ({cause.diag.sqlstate}{column})"
    if isinstance(cause, psycopg.Error):
        return f"{type(cause).__name__} ({cause.diag.sqlstate}): {cause.diag.message_primary}"
    if isinstance(cause, UnicodeEncodeError | UnicodeDecodeError):
        return f"{type(cause).__name__}: {cause.reason}"
    return type(exc).__name__


def _source_is_open(source_id: int) -> bool:
    return Source.objects.filter(
        pk=source_id, is_active=True, deletion_requested_at__isnull=True, organization__is_active=True
    ).exists()


# What insert_event_batch gives for each event: (id of the stored event, whether this call inserted
# it), or the exception its request is to be answered with (SourceClosed, or an OperationalError to
# try again) when nothing was stored for it.
Outcome = tuple[uuid.UUID, bool] | Exception


def insert_event_batch(events: Sequence[NewEvent]) -> list[Outcome]:
    """Insert received events, or count each as a duplicate of its stored one; one commit per round.

    Returns, per event and in order, (id of the stored event, whether this call
    inserted it), or for an event whose source no longer takes webhooks a
    SourceClosed to answer its request with (see Outcome). Two events of one batch
    with the same provider id go in separate rounds: PostgreSQL refuses to update
    one row twice in a statement. So do rows with a signed content digest and rows
    without one, which take different statements (see _INSERT_CONTENT_BATCH_SQL):
    a batch holding both costs one more commit. Runs in autocommit on the calling
    thread's connection (PostgreSQL only).
    """
    results: list[Outcome | None] = [None] * len(events)
    pending = list(range(len(events)))
    one_row_rounds = False  # after a deadlock (see _is_deadlock)
    while pending:
        if one_row_rounds:
            this_round, next_round = pending[:1], pending[1:]
        else:
            this_round, next_round = _next_round(events, pending)
        try:
            outcomes = _insert_round([events[i] for i in this_round])
        except RoundCommitted as committed:
            # Its rows are in: written again, one without a provider id would be stored twice (or
            # refused as a second row of its id) and answered as an error although stored.
            read_back = _outcomes_of_a_committed_round(events, this_round, maybe_counted=committed.maybe_counted)
            for index, outcome in zip(this_round, read_back, strict=True):
                results[index] = outcome
            if any(result is not None for result in results):
                raise BatchPartlyCommitted(results, committed.cause) from committed.cause
            raise committed.cause from None  # it stored nothing: as if it had failed before
        except Exception as exc:
            if len(this_round) > 1 and _is_deadlock(exc):
                # Nothing of the round was stored (its statement was rolled back whole), and the other
                # statement of the deadlock goes on. Written again at once as one statement, it could
                # take a key before that one does and deadlock again (seen: three times in a row).
                # Alone in its statement a row waits holding no other row of its own: no deadlock.
                logger.warning("ingest writer: a batch's INSERT was a deadlock's victim; writing its rows one by one")
                one_row_rounds = True
                pending = this_round + next_round
                continue
            if any(result is not None for result in results):
                raise BatchPartlyCommitted(results, exc) from exc
            raise
        for index, outcome in zip(this_round, outcomes, strict=True):
            results[index] = outcome
        pending = next_round
    return results  # type: ignore[return-value]


def _next_round(events: Sequence[NewEvent], pending: list[int]) -> tuple[list[int], list[int]]:
    """The rows of ``pending`` that one statement can take (the rest wait for a later round), in lock order."""
    this_round: list[int] = []
    next_round: list[int] = []
    keys_seen = set()
    by_content = events[pending[0]].signed_content_digest is not None
    for index in pending:
        key = _conflict_key(events[index])
        other_kind = (events[index].signed_content_digest is not None) != by_content
        if other_kind or (key is not None and key in keys_seen):
            next_round.append(index)
            continue
        if key is not None:
            keys_seen.add(key)
        this_round.append(index)
    # In key order: each row waits for an uncommitted row of its key, so two writers holding
    # the same events in different orders (two hosts' writer processes; a provider's retry of
    # an event still waiting in a slow batch) would each hold a key the other waits for, and
    # PostgreSQL would fail one batch whole as a deadlock. Keyless rows conflict with nothing.
    # A row with a signed content digest has two unique keys, its provider id and its content,
    # and no one order serves both: two writers whose rounds repeat each other's contents under
    # fresh ids, in crossed order, can still deadlock (insert_event_batch writes the victim's
    # rows again one by one).
    this_round.sort(key=lambda index: _lock_order(events[index]))
    return this_round, next_round


def _is_deadlock(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and isinstance(exc.__cause__, psycopg.errors.DeadlockDetected)


class BatchPartlyCommitted(Exception):
    """A later round of a batch failed after earlier rounds were committed.

    ``results`` holds the committed rounds' outcomes (None for the rest): those rows are stored
    and must be answered as such, not written again as if nothing had happened.
    """

    def __init__(self, results: list[Outcome | None], cause: BaseException):
        super().__init__(f"a batch failed after part of it was committed: {cause}")
        self.results = results


class RoundCommitted(Exception):
    """A round's INSERT was committed (autocommit), then reading its outcomes failed (``cause``).

    ``maybe_counted``: the failure came with or after the statement that counts the round's
    duplicates of a signed content (DUPLICATES_OF_SIGNED_CONTENT_SQL), which may have been committed.
    """

    def __init__(self, cause: Exception, *, maybe_counted: bool = False):
        super().__init__(f"the INSERT was committed, then its outcomes could not be read: {cause}")
        self.cause = cause
        self.maybe_counted = maybe_counted


def _outcomes_of_a_committed_round(
    events: Sequence[NewEvent], indexes: list[int], *, maybe_counted: bool = False
) -> list[Outcome | None]:
    """The outcomes of a round whose INSERT was committed but whose outcomes were lost, read back:
    a row stored under its own id was inserted; one whose provider id names a stored event is its
    duplicate (counted by the INSERT, not counted again); None for the rest, which are not stored
    (refused: the caller writes them again, which answers why). When even that cannot be read,
    each is answered with an error to try again: stored or not is unknown, as when a commit's
    reply is lost (a provider's retry of one with an event id is then a counted duplicate)."""
    round_events = [events[index] for index in indexes]
    # A row with a signed content digest that was not inserted is counted by the second statement.
    # Before that statement ran it was not: None, so it is written again and counted then. Once
    # it may have run, written again it could be counted twice: answered as a commit whose reply
    # was lost, an error to try again (the provider's retry is then counted, as a request of its own).
    keyed = [
        event for event in round_events if event.provider_event_id is not None and event.signed_content_digest is None
    ]
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT id, source_id, provider_event_id FROM {_TABLE} WHERE id = ANY(%s)
                UNION ALL
                SELECT stored.id, stored.source_id, stored.provider_event_id
                FROM {_TABLE} AS stored JOIN unnest(%s::bigint[], %s::text[]) AS key(source_id, provider_event_id)
                ON stored.source_id = key.source_id AND stored.provider_event_id = key.provider_event_id""",
                [
                    [event.id for event in round_events],
                    [event.source_id for event in keyed],
                    [event.provider_event_id for event in keyed],
                ],
            )
            found = cursor.fetchall()
    except Exception:
        logger.exception("ingest writer: what a committed INSERT stored could not be read back")
        _discard_connection()
        return [OperationalError("the event may not have been stored; retry") for _ in indexes]
    stored_ids = {stored_id for stored_id, _, _ in found}
    stored_by_key = {(source_id, provider_event_id): stored_id for stored_id, source_id, provider_event_id in found}
    outcomes: list[Outcome | None] = []
    for event in round_events:
        if event.id in stored_ids:
            outcomes.append((event.id, True))
        elif event.signed_content_digest is None and (key := _conflict_key(event)) in stored_by_key:
            outcomes.append((stored_by_key[key], False))
        elif event.signed_content_digest is not None and maybe_counted:
            outcomes.append(OperationalError("the event may have been counted as a duplicate; retry"))
        else:
            outcomes.append(None)
    return outcomes


def _lock_order(event: NewEvent) -> tuple[bool, int, str, str]:
    return (
        event.provider_event_id is None,
        event.source_id,
        event.provider_event_id or "",
        event.signed_content_digest or "",
    )


def _conflict_key(event: NewEvent) -> tuple[int, str] | None:
    return (event.source_id, event.provider_event_id) if event.provider_event_id is not None else None


def _insert_round(events: Sequence[NewEvent]) -> list[Outcome]:
    params = [
        [event.id for event in events],
        [event.organization_id for event in events],
        [event.source_id for event in events],
        [event.provider_event_id for event in events],
        [event.event_type for event in events],
        [bytes(event.body) for event in events],
        [json.dumps(event.headers) for event in events],
        [event.remote_ip for event in events],
        [event.received_at for event in events],
        [event_id_digest(event.provider_event_id) for event in events],
    ]
    one_sql, batch_sql = _INSERT_ONE_SQL, _INSERT_BATCH_SQL
    if events[0].signed_content_digest is not None:  # a round holds one kind (insert_event_batch)
        params.append([event.signed_content_digest for event in events])
        one_sql, batch_sql = _INSERT_CONTENT_ONE_SQL, _INSERT_CONTENT_BATCH_SQL
    with connection.wrap_database_errors:
        # A server-side bound, prepared statement: no SQL text to build or parse per batch.
        if len(events) == 1:
            cursor = _execute_prepared(one_sql, [values[0] for values in params])
        else:
            cursor = _execute_prepared(batch_sql, params)
    # Committed (autocommit): from here a failure must not have the rows written again.
    try:
        return _outcomes_of_round(cursor, events)
    except RoundCommitted:
        raise
    except Exception as exc:
        raise RoundCommitted(exc) from exc


def _outcomes_of_round(cursor: psycopg.Cursor, events: Sequence[NewEvent]) -> list[Outcome]:
    with connection.wrap_database_errors:
        returned = cursor.fetchall()
    index_by_id = {event.id: index for index, event in enumerate(events)}
    index_by_key = {_conflict_key(event): index for index, event in enumerate(events)}
    outcomes: list[Outcome | None] = [None] * len(events)
    for stored_id, source_id, provider_event_id in returned:
        index = index_by_id.get(stored_id)
        if index is not None:
            outcomes[index] = (stored_id, True)
        else:
            outcomes[index_by_key[(source_id, provider_event_id)]] = (stored_id, False)
    missing = [index for index, outcome in enumerate(outcomes) if outcome is None]
    if missing and events[0].signed_content_digest is not None:
        # Counted and answered by one statement: nothing is read after the count that a failure could lose.
        try:
            with connection.wrap_database_errors:
                found = _duplicates_of_signed_content(cursor, [events[index] for index in missing])
            for index, (original_id, open_now, purged_id) in zip(missing, found, strict=True):
                if original_id is not None:
                    outcomes[index] = (WebhookEvent._meta.pk.to_python(original_id), False)
                else:
                    outcomes[index] = _why_not_inserted(open_now, purged_id)
        except Exception as exc:
            raise RoundCommitted(exc, maybe_counted=True) from exc
        return outcomes  # type: ignore[return-value]
    if missing:
        with connection.wrap_database_errors:
            refused = _not_inserted(cursor, [events[index] for index in missing])
        for index, outcome in zip(missing, refused, strict=True):
            outcomes[index] = outcome
    return outcomes  # type: ignore[return-value]


def count_duplicates_of_signed_content(cursor, events: Sequence[NewEvent]) -> list[uuid.UUID | None]:
    """For rows with a signed content digest that the INSERT left out: the id of the stored event each
    repeats, now counted as its duplicate, or None (see DUPLICATES_OF_SIGNED_CONTENT_SQL)."""
    return [
        WebhookEvent._meta.pk.to_python(original_id) if original_id is not None else None
        for original_id, _, _ in _duplicates_of_signed_content(cursor, events)
    ]


def _duplicates_of_signed_content(cursor, events: Sequence[NewEvent]) -> list[tuple]:
    """(stored event repeated, now counted, or None; whether the source takes webhooks now; the purged
    event its key names, or None) for each row, in order (see DUPLICATES_OF_SIGNED_CONTENT_SQL)."""
    cursor.execute(
        DUPLICATES_OF_SIGNED_CONTENT_SQL,
        [
            [event.source_id for event in events],
            [event.provider_event_id for event in events],
            [event.signed_content_digest for event in events],
            [event.received_at for event in events],
            [event_id_digest(event.provider_event_id) for event in events],
        ],
    )
    return cursor.fetchall()


def event_id_digest(provider_event_id: str | None) -> str | None:
    """How PurgedEventKey keeps a provider event id (None for an event without one)."""
    if provider_event_id is None:
        return None
    return hashlib.sha256(provider_event_id.encode("utf-8", "surrogatepass")).hexdigest()


# Why each of the rows the INSERT left out was left out, in their order: whether its source takes
# webhooks now, and the purged event its key names (see _NOT_PURGED).
_NOT_INSERTED_SQL = f"""
SELECT live.id IS NOT NULL, purged.original_id
FROM unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS row(source_id, digest, position)
LEFT JOIN LATERAL (SELECT row.source_id AS id WHERE {SOURCE_OPEN_SQL}) AS live ON true
LEFT JOIN {_KEYS} AS purged ON purged.source_id = row.source_id AND purged.event_id_digest = row.digest
ORDER BY row.position
"""


def _not_inserted(cursor, events: Sequence[NewEvent]) -> list[Outcome]:
    """The outcomes of events the INSERT neither inserted nor counted: their source no longer takes
    webhooks, or their key is a purged event's (a duplicate of that event).

    Read in a statement of its own, so in a later snapshot than the INSERT's: a source that is
    closed now is answered as closed, whichever the reason the row was left out (it is going, or
    the tenant turned it off). A source open now whose row has no purged key was closed when the
    INSERT ran and opened again since (or the key was forgotten in between): nothing was stored,
    and the provider is asked to try again.
    """
    cursor.execute(
        _NOT_INSERTED_SQL,
        [[event.source_id for event in events], [event_id_digest(event.provider_event_id) for event in events]],
    )
    return [_why_not_inserted(open_now, original_id) for open_now, original_id in cursor.fetchall()]


def _why_not_inserted(open_now: bool, purged_original_id) -> Outcome:
    if not open_now:
        return SourceClosed("the source no longer takes webhooks")
    if purged_original_id is not None:
        return (purged_original_id, False)
    return OperationalError("the event was neither stored nor counted; retry")


_thread_cursor = threading.local()
# Django turns psycopg's preparing off (prepare_threshold None, for transaction-mode poolers), and
# then prepare=True does nothing: each batch was parsed and planned again. The writer's connection
# prepares the statements that ask for it, and no other (none is run this many times).
_PREPARE_ONLY_WHEN_ASKED = 2**31


def _execute_prepared(sql: str, params) -> psycopg.Cursor:
    """Run one of the two INSERTs as this connection's prepared statement.

    A migration that changes the type of a column the INSERT returns, run from another session,
    makes PostgreSQL refuse the statement prepared before it on every later execution ("cached
    plan must not change result type"): the writer would fail every request until the process
    restarted. The refusal comes before the statement does anything, so it is run once more on a
    new connection, which prepares it again.
    """
    cursor = _batch_cursor()
    try:
        cursor.execute(sql, params, prepare=True)
    except psycopg.errors.FeatureNotSupported:
        logger.warning("ingest writer: a prepared INSERT was refused after a schema change; preparing it again")
        connection.close()
        connection.ensure_connection()
        cursor = _batch_cursor()
        cursor.execute(sql, params, prepare=True)
    return cursor


def _batch_cursor() -> psycopg.Cursor:
    """A server-side binding cursor on this thread's connection, kept while the connection lives
    (making one per batch costs more than the batch's own client-side work)."""
    if connection.connection is None:
        connection.ensure_connection()
    raw = connection.connection
    cached = getattr(_thread_cursor, "pair", None)
    if cached is None or cached[0] is not raw or cached[1].closed:
        raw.prepare_threshold = _PREPARE_ONLY_WHEN_ASKED
        # A generic plan, made once: PostgreSQL would otherwise plan the batch statement for each
        # execution, as it never takes its generic plan (estimated for ten rows of unnest) to be
        # cheaper than a plan for the actual arrays, which is the same nested loop of index probes.
        # Only prepared statements are affected, and only the two INSERTs are prepared here.
        raw.execute("SET plan_cache_mode = force_generic_plan")
        cached = (raw, psycopg.Cursor(raw))
        _thread_cursor.pair = cached
    return cached[1]


@dataclass(eq=False)
class _PendingWrite:
    event: NewEvent
    done: threading.Event = field(default_factory=threading.Event)
    outcome: tuple[uuid.UUID, bool] | None = None
    error: BaseException | None = None

    def settle(self, outcome: Outcome) -> None:
        """Give the waiting request its outcome: the stored event, or the error it answers with."""
        if isinstance(outcome, Exception):
            self.error = outcome
        else:
            self.outcome = outcome
        self.done.set()


class IngestWriter:
    """This process's writer thread and the queue of rows waiting for it."""

    def __init__(self, max_batch: int = 256, linger_seconds: float = 0.002):
        self.max_batch = max_batch
        self.linger_seconds = linger_seconds
        self._lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[_PendingWrite | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def write(self, event: NewEvent, timeout: float) -> tuple[uuid.UUID, bool]:
        """Block until ``event`` is committed (or counted as a duplicate); errors are raised here."""
        self._ensure_running()
        pending = _PendingWrite(event)
        self._queue.put(pending)
        if not pending.done.wait(timeout):
            raise WriterTimeout(f"the event was not committed within {timeout:g} s")
        if pending.error is not None:
            raise pending.error
        return pending.outcome  # type: ignore[return-value]

    @contextlib.contextmanager
    def request(self):
        """Mark an ingest request of this process as on its way, so a batch can wait for its row."""
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, close the writer's connection and end its thread (tests, shutdown)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
            self._queue.put(None)
        thread.join(timeout)

    def _running(self) -> bool:
        return self._thread is not None and self._pid == os.getpid() and self._thread.is_alive()

    def _ensure_running(self) -> None:
        if self._running():
            return
        with self._lock:
            if self._running():
                return
            # A forked child (gunicorn worker) inherits no thread: it starts its own with a new queue.
            # So does a process whose writer thread ended (it never should; requests must not hang on it).
            self._pid = os.getpid()
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="hookline-ingest-writer", daemon=True
            )
            self._thread.start()

    def _run(self, work: queue.SimpleQueue) -> None:
        try:
            while True:
                first = work.get()
                if first is None:
                    return
                commit_batch(self._collect(work, first))
        finally:
            connection.close()

    def _collect(self, work: queue.SimpleQueue, first: _PendingWrite) -> list[_PendingWrite]:
        """``first`` and what else is queued; while other requests of this process are still
        verifying, wait for their rows up to ``linger_seconds`` so that they share this commit."""
        batch = [first]
        deadline = None
        while len(batch) < self.max_batch:
            try:
                item = work.get_nowait()
            except queue.Empty:
                if self._in_flight <= len(batch):
                    break  # every request on its way is in this batch: nothing to wait for
                now = time.monotonic()
                deadline = deadline or now + self.linger_seconds
                if now >= deadline:
                    break
                try:
                    item = work.get(timeout=deadline - now)
                except queue.Empty:
                    break
            if item is None:
                work.put(None)  # stop once this batch is written
                break
            batch.append(item)
        return batch


def commit_batch(batch: list[_PendingWrite], *, schedule: bool = True) -> bool:
    """Insert the batch's rows in one commit and give each waiting request its outcome or error.

    Returns whether a new event was stored. With ``schedule`` its processing is scheduled here;
    the writer process passes False so that it answers its requests first and schedules after.
    """
    try:
        outcomes = insert_event_batch([pending.event for pending in batch])
    except BatchPartlyCommitted as partial:
        rest = []
        for pending, outcome in zip(batch, partial.results, strict=True):
            if outcome is None:
                rest.append(pending)
            else:
                pending.settle(outcome)
        inserted = commit_batch(rest, schedule=False)
        inserted = inserted or _any_inserted(outcome for outcome in partial.results if outcome is not None)
        schedule_processing_of_new_events(inserted and schedule)
        return inserted
    except (OperationalError, InterfaceError) as exc:
        # The database is unreachable: nothing of this batch is acknowledged (503, providers retry).
        _fail(batch, exc)
        _discard_connection()
        return False
    except (DatabaseError, UnicodeError) as exc:
        if len(batch) == 1:
            # The view answers a DataError with 400; a value psycopg cannot encode is one too. Any
            # other refusal is the same answer here as through the writer process or a direct
            # INSERT (refusal_of_row): its source's 404, or a 503.
            if isinstance(exc, DataError):
                _fail(batch, exc)
            elif isinstance(exc, DatabaseError):
                _fail(batch, refusal_of_row(exc, batch[0].event.source_id))
            else:
                _fail(batch, UnstorableRow(describe_database_error(exc)))
            return False
        # One unstorable row must not fail the requests that share its batch.
        return _commit_one_by_one(batch, schedule)
    except Exception as exc:  # a bug must fail these requests, never the thread
        if len(batch) > 1:
            # Perhaps one row's values: other tenants' requests in the batch must not fail with it.
            return _commit_one_by_one(batch, schedule)
        logger.exception("ingest writer failed a row")
        # Nothing was stored: answered 503 whichever writer ran it (the view knows no other exception).
        _fail(batch, OperationalError(f"the ingest writer could not store the event: {exc}"))
        return False
    for pending, outcome in zip(batch, outcomes, strict=True):
        pending.settle(outcome)
    inserted = _any_inserted(outcomes)
    schedule_processing_of_new_events(inserted and schedule)
    return inserted


def _commit_one_by_one(batch: list[_PendingWrite], schedule: bool) -> bool:
    inserted = any([commit_batch([pending], schedule=False) for pending in batch])
    schedule_processing_of_new_events(inserted and schedule)
    return inserted


def _any_inserted(outcomes) -> bool:
    return any(not isinstance(outcome, Exception) and outcome[1] for outcome in outcomes)


def schedule_processing_of_new_events(needed: bool) -> None:
    if needed:
        from .processing import schedule_event_processing

        schedule_event_processing(from_ingest=True)


def _fail(batch: list[_PendingWrite], exc: BaseException) -> None:
    for pending in batch:
        pending.error = exc
        pending.done.set()


def _discard_connection() -> None:
    with contextlib.suppress(Exception):  # already broken; the next batch connects again
        connection.close()


writer = IngestWriter()


def store_event(event: NewEvent) -> tuple[uuid.UUID, bool] | None:
    """Commit ``event`` through the group-commit writer; None when the caller must insert it itself.

    Raises SourceClosed when its source no longer takes webhooks (nothing was stored).

    The writer is used only where it can keep the promise: PostgreSQL, enabled,
    and no transaction open in the caller (a row committed on the writer's
    connection would escape the caller's rollback).
    """
    if not settings.INGEST_GROUP_COMMIT or connection.vendor != "postgresql" or connection.in_atomic_block:
        return None
    if settings.INGEST_WRITER_SOCKET:
        from .ingest_writer_process import writer_process_client

        stored = writer_process_client.write(
            event, settings.INGEST_WRITER_SOCKET, settings.INGEST_COMMIT_TIMEOUT_SECONDS
        )
        if stored is not None:
            return stored
    return writer.write(event, settings.INGEST_COMMIT_TIMEOUT_SECONDS)
