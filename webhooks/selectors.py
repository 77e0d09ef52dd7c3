"""Tenant-scoped reads: every query here takes the organization."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError, connection, transaction
from django.db.models import (
    BinaryField,
    BooleanField,
    Case,
    Count,
    DateTimeField,
    Exists,
    F,
    Func,
    JSONField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import JSONObject, Now
from django.utils import timezone

from organizations.models import AuditLog, Organization
from webhooks.fields import encrypted_field_names, take_readable_secrets, with_stored_tokens

from .models import BulkRetry, Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from .models.delivery import HELD_BY_PLATFORM, RETRYING
from .models.subscription import TYPE_LEVEL_SEPARATORS, WILDCARDS, event_type_matches
from .providers.registry import PROVIDERS, documented_header_name
from .services.body_search_slots import body_search_slot
from .services.delivery_waits import DESTINATION_FIELDS_READ
from .services.sender_marks import hookline_test_events

logger = logging.getLogger(__name__)


def sources_for_organization(*, organization: Organization, with_being_deleted: bool = False) -> QuerySet[Source]:
    """The organization's sources; those being deleted only ``with_being_deleted`` (the source
    list shows them, nothing else offers them)."""
    sources = Source.objects.filter(organization=organization)
    return sources if with_being_deleted else sources.filter(deletion_requested_at__isnull=True)


def destinations_for_organization(
    *, organization: Organization, with_being_deleted: bool = False
) -> QuerySet[Destination]:
    """The organization's destinations; those being deleted only ``with_being_deleted`` (the
    destination list shows them, nothing else offers them)."""
    destinations = Destination.objects.filter(organization=organization)
    return destinations if with_being_deleted else destinations.filter(deletion_requested_at__isnull=True)


def events_for_organization(
    *,
    organization: Organization,
    status: str | None = None,
    source_id: int | None = None,
    before_id=None,
    limit: int = 50,
    with_deliveries: bool = False,
) -> list[WebhookEvent]:
    """Newest first; page with ``before_id`` (keyset on the time-ordered id, no OFFSET)."""
    events = WebhookEvent.objects.filter(organization=organization).defer("body")
    if status:
        events = events.filter(status=status)
    if source_id:
        events = events.filter(source_id=source_id)
    if before_id:
        events = events.filter(id__lt=before_id)
    if with_deliveries:
        events = events.prefetch_related(
            Prefetch(
                "deliveries",
                queryset=Delivery.objects.select_related("destination").defer(*_DESTINATION_SECRETS).order_by("id"),
            )
        )
    return list(events.order_by("-id")[:limit])


def event_rows_for_organization(*, organization: Organization) -> QuerySet[WebhookEvent]:
    """The organization's events, to narrow further; their bodies are left unread."""
    return WebhookEvent.objects.filter(organization=organization).defer("body")


def event_for_organization(*, organization: Organization, event_id) -> WebhookEvent:
    """One event of this organization; raises WebhookEvent.DoesNotExist for anyone else's."""
    return WebhookEvent.objects.get(organization=organization, pk=event_id)


# --- Dashboard reads ------------------------------------------------------------

EVENT_PAGE_SIZE = 50
# Event statuses plus three derived from deliveries: at least one of them is dead (out of
# retries), failed and waits for its next attempt, or is held by the platform (put back unsent
# for the platform's own reason: not retrying, since its receiver did not fail it).
EVENT_STATUS_FAILED = "failed"
EVENT_STATUS_RETRYING = "retrying"
EVENT_STATUS_HELD_BY_PLATFORM = "held_by_platform"
EVENT_STATUSES_FROM_DELIVERIES = (EVENT_STATUS_FAILED, EVENT_STATUS_RETRYING, EVENT_STATUS_HELD_BY_PLATFORM)
# Accepted events and rejected requests together. Without a status, lists show accepted events only
# (received and processed, whatever their deliveries): rejected requests come in floods, up to
# INGEST_REJECTED_RECORDS_PER_MINUTE per source, and would push the events a tenant looks for out of
# the list and out of a body search's window. They are listed with the status "rejected" (or this
# one), found by an id search whatever the status (a tenant chasing "evt_123" is likeliest to find a
# wrong secret), and counted beside the list (rejected_count_beside_list).
EVENT_STATUS_ALL = "all"


def shows_rejected(filters: EventFilters) -> bool | None:
    """Which kind of request a list with these filters shows: True rejected ones only, False
    accepted ones only, None both."""
    if filters.status == WebhookEvent.Status.REJECTED:
        return True
    if filters.status == EVENT_STATUS_ALL or (not filters.status and (filters.search or filters.provider_event_id)):
        return None
    return False


def _of_kind(events: QuerySet[WebhookEvent], filters: EventFilters) -> QuerySet[WebhookEvent]:
    rejected = shows_rejected(filters)
    if rejected is None:
        return events
    if rejected:
        return events.filter(status=WebhookEvent.Status.REJECTED)
    return events.exclude(status=WebhookEvent.Status.REJECTED)


def retrying_deliveries(deliveries: QuerySet[Delivery]) -> QuerySet[Delivery]:
    """Deliveries whose last attempt failed and that wait for the next one (models.delivery.RETRYING):
    not those the platform holds (held_by_platform_deliveries)."""
    return deliveries.filter(RETRYING)


def held_by_platform_deliveries(deliveries: QuerySet[Delivery]) -> QuerySet[Delivery]:
    """Deliveries the platform itself put back unsent (Delivery.put_back_cause) and that wait for it."""
    return deliveries.filter(HELD_BY_PLATFORM)


def uuid7_floor(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of ``moment``'s millisecond.

    Event, delivery and attempt ids start with their creation time, so a time
    range becomes an id range and uses the same (organization, -id) index as the
    list itself instead of a second index on a timestamp.
    """
    # Clamped to what 48 bits of milliseconds hold, so a date before 1970 or after 10889 is a bound, not an error.
    milliseconds = min(max(int(moment.timestamp() * 1000), 0), (1 << 48) - 1)
    return uuid.UUID(int=(milliseconds << 80) | (0x7 << 76) | (0b10 << 62))


def uuid7_time(value: uuid.UUID) -> datetime:
    """The millisecond a UUIDv7 was made in: for an event id, when its request was received."""
    return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)


def parse_event_id(text: str) -> uuid.UUID | None:
    """The UUID ``text`` spells in ASCII, or None. Python's int() reads any script's digits, and
    uuid.UUID with it: "٣" or a fullwidth "３" would name the event with a 3 there. No page shows
    an id so, so such a text is not an id here (as not in the API's filters, see api/serializers.py)."""
    text = text.strip() if isinstance(text, str) else text
    if isinstance(text, str) and not text.isascii():
        return None
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class EventFilters:
    status: str = ""
    source_id: int | None = None
    event_type: str = ""
    destination_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str = ""
    provider_event_id: str = ""
    # Bytes of the body, as UTF-8; searched a window at a time (event_page, body_search_page).
    body_contains: str = ""


# Lists show names only: loading the encrypted secret columns would decrypt them row by row.
_SOURCE_SECRETS = ("source__secret", "source__previous_secret")
# Every encrypted column of a delivery's destination (its secrets and its custom headers' values): a list or
# an event's page names the destination, and reading them would decrypt them, a 503 for the whole page on
# a process without the key they were saved under.
_DESTINATION_SECRETS = tuple(f"destination__{name}" for name in encrypted_field_names(Destination))


def _deliveries_for_list() -> QuerySet[Delivery]:
    return Delivery.objects.select_related("destination").defer(*_DESTINATION_SECRETS).order_by("id")


@dataclass
class EventPage:
    events: list[WebhookEvent]
    # Cursor of the next (older) page, or None on the last page.
    next_before: uuid.UUID | None
    # A body search only: it looked at the events received from this moment to the page's start
    # (None when there was none to look at); next_before continues from there.
    searched_back_to: datetime | None = None


# A compound provider id is found by its first part (a Twilio message SID finds "SM…:<hash>")
# from this length on: shorter texts are not an id anyone holds.
ID_PREFIX_SEARCH_MIN_LENGTH = 6


# What people paste around an id they copied: a header line from a receiver's log ("webhook-id:
# 01…", "X-GitHub-Delivery: …"), a JSON member ("id": "evt_…",), quotes, or the event's own page.
_PASTED_NAME = re.compile(r'^["\']?[A-Za-z][A-Za-z0-9_.-]*["\']?\s*:\s+(?P<value>\S.*)$')
_QUOTES = "\"'`"
_UUID_IN_PATH = re.compile(
    r"/(?P<id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})/?$"
)


def pasted_id(text: str) -> str:
    """The id in what a user pasted: the value of a header line or JSON member, without quotes or a
    trailing comma, or the last id in the path of a Hookline URL (an event's dashboard or API
    page); the text itself, stripped, otherwise."""
    text = text.strip()
    if text.startswith(("http://", "https://", "/")):
        try:
            path = urlsplit(text).path
        except ValueError:  # not an address after all (an unclosed IPv6 bracket): searched as given
            return text
        found = _UUID_IN_PATH.search(path)
        return found["id"] if found else text
    if named := _PASTED_NAME.match(text):
        text = named["value"].strip()
    text = text.rstrip(",;").strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    return text


def events_with_id(text: str, *, organization: Organization | None) -> Q:
    """Events that an id names: the provider's (or the one a rejected request claims), our event
    id, or a delivery's id (a replay's webhook-id). Index lookups, never a scan: exact ones, and
    the provider id's start up to a colon on its pattern index.

    The text is taken as given and, when it differs, as pasted_id reads it: an id may hold a quote
    or ": " itself, and is found either way.

    ``organization`` None is the platform admin's search, across organizations.
    """
    text = text.strip()
    matches = Q()
    for candidate in dict.fromkeys([text, pasted_id(text)]):
        if candidate:
            matches |= _events_with_exact_id(candidate, organization=organization)
    return matches if matches else Q(pk__in=[])


def _events_with_exact_id(text: str, *, organization: Organization | None) -> Q:
    matches = Q(provider_event_id=text) | Q(claimed_event_id=text)
    if len(text) >= ID_PREFIX_SEARCH_MIN_LENGTH and not text.endswith(":"):
        matches |= Q(provider_event_id__startswith=text + ":")
    our_id = parse_event_id(text)
    if our_id is not None:
        matches |= Q(id=our_id)
        # Looked up first, by its primary key: inside the OR, a subquery would keep PostgreSQL
        # from combining index lookups and make it read every event of the organization.
        deliveries = Delivery.objects.filter(pk=our_id)
        if organization is not None:
            deliveries = deliveries.filter(organization=organization)
        replayed_event_id = deliveries.values_list("event_id", flat=True).first()
        if replayed_event_id is not None:
            matches |= Q(id=replayed_event_id)
    return matches


def events_found_by_id(
    *, text: str, organization: Organization | None, source: Source | None = None, limit: int
) -> list[WebhookEvent]:
    """The events an id names (events_with_id), newest first, at most ``limit``, each with its
    organization; only their ids and organization are loaded. ``organization`` None searches
    every organization (operators); ``source`` narrows to one of the organization's sources."""
    events = WebhookEvent.objects.filter(events_with_id(text, organization=organization))
    if organization is not None:
        events = events.filter(organization=organization)
    if source is not None:
        events = events.filter(organization_id=source.organization_id, source=source)
    return list(
        events.select_related("organization")
        .only("id", "organization__slug", "organization__name")
        .order_by("-id")[:limit]
    )


def event_named_by_id(*, organization: Organization, text: str) -> uuid.UUID | None:
    """The id of the organization's one event that ``text`` names, as the events list's search
    reads it (events_with_id: the provider's id, one a rejected request claims, Hookline's event id,
    a webhook-id or a delivery's id); None when none or several do. Two are looked up to tell one
    from several. The lookup is the organization's alone, so another organization's ids are
    answered as ids nobody has."""
    found = events_found_by_id(text=text, organization=organization, limit=2)
    return found[0].pk if len(found) == 1 else None


def _filtered_events(
    organization: Organization,
    filters: EventFilters,
    *,
    before: uuid.UUID | None = None,
    from_id: uuid.UUID | None = None,
) -> QuerySet[WebhookEvent]:
    """Every filter but the body's (that one is only searched a window at a time, body_search_page)."""
    events = WebhookEvent.objects.filter(organization=organization)
    if before:
        events = events.filter(id__lt=before)
    if from_id:
        events = events.filter(id__gte=from_id)
    if filters.search:
        events = events.filter(events_with_id(filters.search, organization=organization))
    if filters.status in EVENT_STATUSES_FROM_DELIVERIES:
        failing = Delivery.objects.filter(organization=organization)
        if filters.status == EVENT_STATUS_FAILED:
            failing = failing.filter(status=Delivery.Status.DEAD)
        elif filters.status == EVENT_STATUS_RETRYING:
            failing = retrying_deliveries(failing)
        else:
            failing = held_by_platform_deliveries(failing)
        if filters.destination_id:
            # Failing *at that destination*: the same delivery must be the failing one.
            failing = failing.filter(destination_id=filters.destination_id)
        if before:
            # Bounded by the cursor too, so a deep page starts its walk of deliveries there.
            failing = failing.filter(event_id__lt=before)
        if from_id:
            failing = failing.filter(event_id__gte=from_id)
        events = events.filter(id__in=failing.values("event_id"))
    elif filters.status in WebhookEvent.Status.values:
        events = events.filter(status=filters.status)
    else:
        events = _of_kind(events, filters)
    if filters.source_id:
        events = events.filter(source_id=filters.source_id)
    if filters.provider_event_id:
        # A rejected request that claims the id is found too, as the dashboard's search finds it: a
        # wrong secret is the likeliest answer to "what happened to webhook X".
        events = events.filter(
            Q(provider_event_id=filters.provider_event_id) | Q(claimed_event_id=filters.provider_event_id)
        )
    if filters.event_type:
        # Read as destination filters read it (event_type_matches), so "invoice.*" or "issues"
        # finds what that filter sends. Matched against the organization's event types rather
        # than row by row where they are few enough to list: a pattern that matches nothing
        # then reads no event, and a rare one is found through the (organization, event_type) index.
        # Several patterns separated by commas, as a destination's filter takes them.
        patterns = event_type_patterns(filters.event_type)
        matching_types = organization_event_types_matching(organization=organization, patterns=patterns)
        if not patterns:
            pass  # only commas: no filter was meant
        elif matching_types is not None:
            events = events.filter(event_type__in=matching_types)
        else:
            events = events.filter(event_type_condition(patterns))
    if filters.destination_id and filters.status not in EVENT_STATUSES_FROM_DELIVERIES:
        to_destination = Delivery.objects.filter(event_id=OuterRef("id"), destination_id=filters.destination_id)
        # Bounded by the cursor as the failing ones are: PostgreSQL may merge the events with the
        # deliveries in id order, and unbounded it walked every newer delivery first (2 s for a
        # page 26 days back with 2,460,000 deliveries, docs/dashboard-bench.md).
        if before:
            to_destination = to_destination.filter(event_id__lt=before)
        if from_id:
            to_destination = to_destination.filter(event_id__gte=from_id)
        events = events.filter(Exists(to_destination))
    if filters.since:
        events = events.filter(id__gte=uuid7_floor(filters.since))
    if filters.until:
        events = events.filter(id__lt=uuid7_floor(filters.until))
    return events


def event_page(
    *,
    organization: Organization,
    filters: EventFilters,
    before: uuid.UUID | None = None,
    limit: int = EVENT_PAGE_SIZE,
) -> EventPage:
    """One page of events, newest first, older than ``before``: keyset paging, no OFFSET, no COUNT.

    With ``filters.body_contains``, one window of a body search instead (body_search_page); it
    raises BodySearchTimedOut when the database stops it, BodySearchBusy when too many run.
    """
    if filters.body_contains:
        page = body_search_page(
            organization=organization, filters=filters, before=before, limit=limit, rows=_rows_for_list
        )
        page.events = _note_hookline_tests(page.events)
        return page
    events = _filtered_events(organization, filters, before=before)
    rows = list(_rows_for_list(events).order_by("-id")[: limit + 1])
    next_before = rows[limit - 1].id if len(rows) > limit else None
    return EventPage(events=_note_hookline_tests(rows[:limit]), next_before=next_before)


# The count beside a list stops here: it walks an index entry per row counted.
REJECTED_COUNT_LIMIT = 10_000
REJECTED_COUNT_TIMEOUT_SECONDS = 1.0


def rejected_count_beside_list(*, organization: Organization, filters: EventFilters) -> int | None:
    """How many rejected requests a list without a status leaves out, in its source and received
    range (at most REJECTED_COUNT_LIMIT + 1 are counted); None when the list leaves none out that
    its filters would show: it has a status, or an id search (rejected ones are listed), or a filter
    no rejected request matches (an event type or a destination: they have neither)."""
    if filters.status or shows_rejected(filters) is not False or filters.event_type or filters.destination_id:
        return None
    rejected = WebhookEvent.objects.filter(organization=organization, status=WebhookEvent.Status.REJECTED)
    if filters.source_id:
        rejected = rejected.filter(source_id=filters.source_id)
    if filters.since:
        rejected = rejected.filter(id__gte=uuid7_floor(filters.since))
    if filters.until:
        rejected = rejected.filter(id__lt=uuid7_floor(filters.until))
    try:
        # Bounded in time too: the list must show whatever holds this count up.
        with _statement_timeout(REJECTED_COUNT_TIMEOUT_SECONDS):
            return rejected.order_by().values("id")[: REJECTED_COUNT_LIMIT + 1].count()
    except OperationalError as error:
        if _timed_out(error):
            logger.warning("count of rejected requests stopped after %s s", REJECTED_COUNT_TIMEOUT_SECONDS)
            return None
        raise


def sources_counting_replays_by_body(*, organization: Organization) -> list[str]:
    """The labels of the providers of the organization's sources (not being deleted) that count a
    request whose signed body equals a stored event's as that event's duplicate, whatever its id, as
    the provider says for the source's options (Provider.counts_replays_by_signed_content: GitHub,
    Shopify with merge_identical_bodies…). Such a request's own id is not kept, so a search for it
    finds nothing: the events list says so when one of these sources exists."""
    sources = Source.objects.filter(organization=organization, deletion_requested_at__isnull=True)
    return sorted(
        {
            PROVIDERS[kind].label
            for kind, options in sources.values_list("provider", "options").distinct()
            if kind in PROVIDERS and PROVIDERS[kind].counts_replays_by_signed_content(options or {})
        }
    )


def _rows_for_list(events: QuerySet[WebhookEvent]) -> QuerySet[WebhookEvent]:
    return (
        events.defer("body", "headers")
        .select_related("source")
        .defer(*_SOURCE_SECRETS)
        .prefetch_related(Prefetch("deliveries", queryset=_deliveries_for_list()))
    )


# --- Searching event bodies ---------------------------------------------------------
#
# A body is the provider's bytes, up to INGEST_MAX_BODY_BYTES, TOASTed and compressed when large:
# no index can find a text inside it, so a search reads bodies one by one. Each request reads at
# most BODY_SEARCH_WINDOW events of the organization, newest first from the cursor, and says how
# far back that took it; the next request goes on from there. The window is counted in the
# organization's events, not in those the other filters keep, so that its size bounds the work
# whatever the filters: finding 10,000 events of a rare filter could walk the whole table.
BODY_SEARCH_MIN_BYTES = 3  # shorter texts are in nearly every body
BODY_SEARCH_MAX_BYTES = 200


def body_search_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be searched for in bodies, or None."""
    size = len(text.encode())
    if size < BODY_SEARCH_MIN_BYTES:
        return f"give at least {BODY_SEARCH_MIN_BYTES} characters ({BODY_SEARCH_MIN_BYTES} bytes in UTF-8)"
    if size > BODY_SEARCH_MAX_BYTES:
        return f"give at most {BODY_SEARCH_MAX_BYTES} bytes in UTF-8 (this is {size})"
    return None


class BodySearchTimedOut(Exception):
    """The database stopped a body search at BODY_SEARCH_TIMEOUT_SECONDS."""


class BodyContains(Func):
    """The event's body holds these bytes: ``position(bytes IN body) > 0``, with the bytes bound."""

    output_field = BooleanField()

    def __init__(self, needle: bytes):
        super().__init__(Value(needle, output_field=BinaryField()), F("body"))

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="position(%(expressions)s) > 0", arg_joiner=" IN ", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        # The embedded mode: instr() compares BLOBs byte by byte.
        flipped = self.copy()
        flipped.set_source_expressions(list(reversed(self.get_source_expressions())))
        return flipped.as_sql(compiler, connection, template="instr(%(expressions)s) > 0", **extra)


@contextmanager
def _statement_timeout(seconds: float) -> Iterator[None]:
    """The statements inside end after ``seconds`` (PostgreSQL): SET LOCAL, in a transaction of
    their own, or a savepoint whose setting is put back after it when the caller holds a transaction."""
    if connection.vendor != "postgresql":
        yield
        return
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)",
            [f"{max(1, round(seconds * 1000))}ms"],
        )
        previous = cursor.fetchone()[0]
        yield
        if nested:  # SET LOCAL in a released savepoint lasts to the end of the outer transaction
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])


def _timed_out(error: OperationalError) -> bool:
    return getattr(error.__cause__, "sqlstate", None) == "57014"  # query_canceled


def body_search_page(
    *,
    organization: Organization,
    filters: EventFilters,
    before: uuid.UUID | None = None,
    limit: int = EVENT_PAGE_SIZE,
    rows: Callable[[QuerySet[WebhookEvent]], QuerySet[WebhookEvent]],
    window: int | None = None,
) -> EventPage:
    """The events whose body holds ``filters.body_contains`` among the ``window`` newest events of
    the organization older than ``before`` (and in the received range), newest first, at most
    ``limit``; ``rows`` shapes the query for its list (what it loads and prefetches).

    ``next_before`` continues the search: from the last event listed when the page is full, else
    from the window's end; None once no older event is left. Raises BodySearchTimedOut, and
    BodySearchBusy when the organization already runs BODY_SEARCH_CONCURRENCY searches.
    """
    window = window or settings.BODY_SEARCH_WINDOW
    # Counted in the requests of the kind listed: a flood of rejected ones does not narrow the
    # window of a search among accepted events, nor the other way round.
    in_range = _of_kind(WebhookEvent.objects.filter(organization=organization), filters)
    if before:
        in_range = in_range.filter(id__lt=before)
    if filters.until:
        in_range = in_range.filter(id__lt=uuid7_floor(filters.until))
    if filters.since:
        in_range = in_range.filter(id__gte=uuid7_floor(filters.since))
    try:
        with (
            body_search_slot(organization_id=organization.pk),
            _statement_timeout(settings.BODY_SEARCH_TIMEOUT_SECONDS),
        ):
            # The window's end: a walk of the (organization, -id) index, which reads no body. Fewer
            # events than a window are left when there is no such row: it then ends at the oldest.
            window_end = list(in_range.order_by("-id").values_list("id", flat=True)[window - 1 : window])
            full = bool(window_end)
            oldest = window_end[0] if full else in_range.order_by("id").values_list("id", flat=True).first()
            if oldest is None:
                return EventPage(events=[], next_before=None, searched_back_to=None)
            matching = _filtered_events(organization, filters, before=before, from_id=oldest).filter(
                BodyContains(filters.body_contains.encode())
            )
            found = list(rows(matching).order_by("-id")[: limit + 1])
    except OperationalError as error:
        if _timed_out(error):
            # Not the text: it may be a customer's data. Many of these say the window is too large.
            logger.warning(
                "body search stopped after %s s: organization %s, window of %s events",
                settings.BODY_SEARCH_TIMEOUT_SECONDS,
                organization.pk,
                window,
            )
            raise BodySearchTimedOut from error
        raise
    if len(found) > limit:
        found = found[:limit]
        reached = next_before = found[-1].id
    else:
        reached = oldest
        next_before = oldest if full else None
    return EventPage(events=found, next_before=next_before, searched_back_to=uuid7_time(reached))


# The live list's rows are those received since shortly before the page was loaded, read again in
# full at each poll. An event's id is made when its request arrives and the row becomes visible only
# at its commit, so rows do not appear in id order: a cursor at the newest id shown would skip a row
# with an older id committed after it (two web processes, one writer batch after another). Reading
# again everything since a point older than any uncommitted request can be (the commit timeout, and
# a margin) shows each row once, in its place, whenever it commits.
LIVE_ROWS_LIMIT = 100


def live_window_start(now: datetime | None = None) -> uuid.UUID:
    """The id the live list reads from: older than any request still waiting for its commit."""
    margin = timedelta(seconds=settings.INGEST_COMMIT_TIMEOUT_SECONDS + 5)
    return uuid7_floor((now or timezone.now()) - margin)


@dataclass
class LiveRows:
    events: list[WebhookEvent]  # newest first
    # More rows arrived since the window's start than the list shows: the oldest are left out.
    truncated: bool


def events_since(
    *, organization: Organization, filters: EventFilters, since: uuid.UUID, limit: int = LIVE_ROWS_LIMIT
) -> LiveRows:
    """Every event from ``since`` on (the live list polls this), newest first. None for a body
    search: its results are a window of history, searched once (body_search_page)."""
    if filters.body_contains:
        return LiveRows(events=[], truncated=False)
    events = _filtered_events(organization, filters).defer("body", "headers").filter(id__gte=since)
    rows = list(
        events.select_related("source")
        .defer(*_SOURCE_SECRETS)
        .prefetch_related(Prefetch("deliveries", queryset=_deliveries_for_list()))
        .order_by("-id")[: limit + 1]
    )
    return LiveRows(events=_note_hookline_tests(rows[:limit]), truncated=len(rows) > limit)


def _note_hookline_tests(events: list[WebhookEvent]) -> list[WebhookEvent]:
    """Sets ``is_hookline_test`` on each event: sent by Hookline's test sender (left out of the
    statistics and the usage). One look by id at the listed rows; bodies only of marked ones."""
    tests = {
        row["id"] for row in hookline_test_events(WebhookEvent.objects.filter(id__in=[e.id for e in events]), "id")
    }
    for event in events:
        event.is_hookline_test = event.id in tests
    return events


def events_for_api(*, organization: Organization, filters: EventFilters) -> QuerySet[WebhookEvent]:
    """The REST API's event list (it pages the queryset itself, on the id): without bodies or
    headers, with each delivery's state. A body search is event_body_search_for_api."""
    if filters.body_contains:
        raise ValueError("a body search is paged by windows: event_body_search_for_api")
    return _rows_for_api(_filtered_events(organization, filters))


def _rows_for_api(events: QuerySet[WebhookEvent]) -> QuerySet[WebhookEvent]:
    return events.defer("body", "headers").prefetch_related(
        Prefetch(
            "deliveries",
            queryset=Delivery.objects.only(
                "id", "event_id", "destination_id", "status", "is_replay", "attempt_count"
            ).order_by("id"),
        )
    )


def event_body_search_for_api(
    *, organization: Organization, filters: EventFilters, before: uuid.UUID | None, limit: int
) -> EventPage:
    """One window of the REST API's body search (body_search_page); raises BodySearchTimedOut or
    BodySearchBusy."""
    return body_search_page(organization=organization, filters=filters, before=before, limit=limit, rows=_rows_for_api)


DELIVERY_STATUS_RETRYING = "retrying"
DELIVERY_STATUS_HELD_BY_PLATFORM = "held_by_platform"


def with_event_context(deliveries: QuerySet[Delivery]) -> QuerySet[Delivery]:
    """Each delivery with what a list of failures needs of its event and its destination's name,
    in the same query: never the event's body or headers, nor the destination's secrets."""
    return deliveries.select_related("event", "destination").only(
        *(field.name for field in Delivery._meta.concrete_fields),
        "event__provider_event_id",
        "event__event_type",
        "event__source",
        "event__received_at",
        "destination__name",
        *(f"destination__{field}" for field in DESTINATION_FIELDS_READ),  # what it waits for
    )


def deliveries_for_organization(
    *,
    organization: Organization,
    status: str = "",
    destination_id: int | None = None,
    event_id=None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
) -> QuerySet[Delivery]:
    """The organization's deliveries, by status ("retrying": failed and waiting), destination, event
    or the time their event was received (as the event list and the dashboard filter it)."""
    deliveries = with_event_context(Delivery.objects.filter(organization=organization))
    if status == DELIVERY_STATUS_RETRYING:
        deliveries = retrying_deliveries(deliveries)
    elif status == DELIVERY_STATUS_HELD_BY_PLATFORM:
        deliveries = held_by_platform_deliveries(deliveries)
    elif status:
        deliveries = deliveries.filter(status=status)
    if destination_id:
        deliveries = deliveries.filter(destination_id=destination_id)
    if event_id:
        deliveries = deliveries.filter(event_id=event_id)
    # An event's id starts with the time it was received: no join, as _filtered_events does.
    if received_after:
        deliveries = deliveries.filter(event_id__gte=uuid7_floor(received_after))
    if received_before:
        deliveries = deliveries.filter(event_id__lt=uuid7_floor(received_before))
    return deliveries


def delivery_detail_for_organization(*, organization: Organization, delivery_id) -> Delivery:
    """A delivery with its event's context and its attempts; DoesNotExist for anyone else's."""
    return (
        with_event_context(Delivery.objects)
        .prefetch_related(Prefetch("attempts", queryset=DeliveryAttempt.objects.order_by("attempt_number")))
        .get(organization=organization, pk=delivery_id)
    )


def event_detail_for_organization(*, organization: Organization, event_id) -> WebhookEvent:
    """An event with its source, deliveries and their attempts; 404-worthy DoesNotExist otherwise."""
    return (
        WebhookEvent.objects.select_related("source")
        .defer(*_SOURCE_SECRETS)
        .prefetch_related(
            Prefetch(
                "deliveries",
                queryset=Delivery.objects.select_related("destination")
                .defer(*_DESTINATION_SECRETS)
                .prefetch_related(Prefetch("attempts", queryset=DeliveryAttempt.objects.order_by("attempt_number")))
                .order_by("id"),
            )
        )
        .get(organization=organization, pk=event_id)
    )


def event_progress_for_organization(*, organization: Organization, event_id) -> WebhookEvent:
    """An event with its deliveries and their destinations, without the body, headers or attempts:
    what the test sender's result polls every few seconds (DoesNotExist otherwise)."""
    return (
        WebhookEvent.objects.only("id", "organization_id", "status", "event_type")
        .prefetch_related(
            Prefetch(
                "deliveries",
                queryset=Delivery.objects.select_related("destination")
                .only(
                    "id",
                    "event_id",
                    "status",
                    "attempt_count",
                    "next_attempt_at",
                    "last_status_code",
                    "last_error",
                    "destination__id",
                    "destination__name",
                    "destination__paused_at",
                )
                .order_by("id"),
            )
        )
        .get(organization=organization, pk=event_id)
    )


# Beyond this many distinct event types an organization's list is not worth reading first.
EVENT_TYPES_LISTED_FOR_PATTERNS = 500


def event_type_condition(patterns: list[str], *, field: str = "event_type") -> Q:
    """Row by row, what event_type_matches takes for any of ``patterns``; ``field`` names the event
    type from another model (``event__event_type`` for deliveries)."""
    condition = Q(pk__in=[])
    for pattern in patterns:
        if any(character in pattern for character in WILDCARDS):
            condition |= Q(**{f"{field}__regex": shell_pattern_as_postgres_regex(pattern)})
        else:
            condition |= Q(**{field: pattern})
            for separator in TYPE_LEVEL_SEPARATORS:
                condition |= Q(**{f"{field}__startswith": pattern + separator})
    return condition


def event_type_patterns(text: str) -> list[str]:
    """Comma-separated patterns, as a destination's filter and the events list take them."""
    return [pattern.strip() for pattern in text.split(",") if pattern.strip()]


def organization_event_types_matching(*, organization: Organization, patterns: list[str]) -> list[str] | None:
    """The organization's event types that any of `patterns` takes (event_type_matches); None if it
    has too many to list."""
    event_types = _organization_event_types(organization)
    if event_types is None:
        return None
    return [
        event_type for event_type in event_types if any(event_type_matches(event_type, pattern) for pattern in patterns)
    ]


def event_type_patterns_matching_nothing(*, organization: Organization, patterns: list[str]) -> list[str]:
    """The destination filter patterns that take none of the event types the organization has received,
    so that saving one can say so (most often a typo). Nothing while
    nothing was received, or with too many types to list."""
    # Rejected requests have no type: they do not count as received types.
    event_types = [event_type for event_type in _organization_event_types(organization) or [] if event_type]
    if not event_types:
        return []
    return [
        pattern
        for pattern in patterns
        if not any(event_type_matches(event_type, pattern) for event_type in event_types)
    ]


def _organization_event_types(organization: Organization) -> list[str] | None:
    """Every distinct event type the organization has received; None if there are too many to list.

    Reads each distinct type once by skipping through the (organization, event_type) index
    (a recursive query: PostgreSQL has no skip scan), so the cost grows with the number of
    types, not of events.
    """
    table = WebhookEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH RECURSIVE types(event_type) AS (
                SELECT MIN(event_type) FROM {table} WHERE organization_id = %s
                UNION ALL
                SELECT (
                    SELECT MIN(event_type) FROM {table}
                    WHERE organization_id = %s AND event_type > types.event_type
                )
                FROM types WHERE types.event_type IS NOT NULL
            )
            SELECT event_type FROM types WHERE event_type IS NOT NULL LIMIT %s
            """,
            [organization.pk, organization.pk, EVENT_TYPES_LISTED_FOR_PATTERNS + 1],
        )
        event_types = [row[0] for row in cursor.fetchall()]
    if len(event_types) > EVENT_TYPES_LISTED_FOR_PATTERNS:
        return None
    return event_types


def shell_pattern_as_postgres_regex(pattern: str) -> str:
    """A PostgreSQL regular expression matching what fnmatchcase(text, pattern) matches.

    Destination filters match event types with fnmatch ("*", "?", "[…]", "[!…]"), so the
    events list translates the same pattern for the database instead of inventing its own.
    """
    parts, position = [], 0
    while position < len(pattern):
        character = pattern[position]
        position += 1
        if character == "*":
            parts.append(".*")
        elif character == "?":
            parts.append(".")
        elif character == "[" and (closing := closing_bracket(pattern, position)) is not None:
            parts.append(_bracket_set(pattern[position:closing]))
            position = closing + 1
        else:
            parts.append(_escaped(character))
    return "^" + "".join(parts) + "$"


def closing_bracket(pattern: str, first: int) -> int | None:
    """Where the set opened just before `first` closes, as fnmatch reads it; None if it never does."""
    if pattern[first : first + 1] == "!":
        first += 1
    if pattern[first : first + 1] == "]":
        first += 1  # a "]" right after the opening is a member
    closing = pattern.find("]", first)
    return closing if closing >= 0 else None


def _bracket_set(body: str) -> str:
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    members, position = [], 0
    while position < len(body):
        if position + 2 < len(body) and body[position + 1] == "-":
            low, high = body[position], body[position + 2]
            if low <= high:  # fnmatch drops a reversed range: it matches nothing
                members.append(f"{_escaped(low)}-{_escaped(high)}")
            position += 3
        else:
            members.append(_escaped(body[position]))
            position += 1
    if not members:
        # Every range was reversed: fnmatch reads "[!z-a]" as any character and "[z-a]" as none.
        return "." if negated else "[^\\s\\S]"
    return "[" + ("^" if negated else "") + "".join(members) + "]"


def _escaped(character: str) -> str:
    # In PostgreSQL's regular expressions a backslash before any non-alphanumeric character
    # stands for that character, inside brackets too.
    return character if character.isalnum() else "\\" + character


def event_types_for_organization(*, organization: Organization, limit: int = 200) -> list[str]:
    """Event types seen lately, for the filter's suggestions (the newest 5,000 events, cached a few minutes)."""

    def newest_types() -> list[str]:
        recent = (
            WebhookEvent.objects.filter(organization=organization)
            .exclude(event_type="")
            .order_by("-id")
            .values_list("event_type", flat=True)[:5000]
        )
        return sorted(set(recent))[:limit]

    try:
        return cache.get_or_set(f"dashboard:event-types:{organization.pk}", newest_types, timeout=300)
    except Exception:  # suggestions are a convenience: without the cache, compute them
        return newest_types()


def with_previous_secret_until(rows: QuerySet) -> QuerySet:
    """Sources or destinations with ``previous_secret_until``: when the secret a rotation replaced
    stops being accepted, or None (services.secrets.previous_secret_valid_until's rule, in SQL), so
    that a list says it without loading, and so decrypting, each row's previous secret."""
    return rows.annotate(
        previous_secret_until=Case(
            When(
                Q(previous_secret_expires_at__gt=Now()) & ~Q(previous_secret=""),
                then=F("previous_secret_expires_at"),
            ),
            default=None,
            output_field=DateTimeField(),
        )
    )


def source_for_organization(*, organization: Organization, source_id, with_secrets: bool = True) -> Source:
    """One source, not one being deleted (Source.DoesNotExist for that too: it is as good as gone).

    ``with_secrets``: its secrets that the keys decrypt are read with it; one that no key decrypts
    (a key dropped too early) is left unread and named in ``source.unreadable_secrets``
    (fields.take_readable_secrets), so that its pages open, say so, and offer a new secret.
    False leaves every secret unread, for what needs none (deleting it)."""
    return _one_with_readable_secrets(
        Source.objects.filter(organization=organization, pk=source_id, deletion_requested_at__isnull=True),
        with_secrets=with_secrets,
    )


def destination_for_organization(
    *, organization: Organization, destination_id, with_secrets: bool = True
) -> Destination:
    """One destination, not one being deleted (Destination.DoesNotExist for that too: it is as good as gone).
    ``with_secrets``: as source_for_organization's (its custom headers are one of its secrets)."""
    return _one_with_readable_secrets(
        Destination.objects.filter(organization=organization, pk=destination_id, deletion_requested_at__isnull=True),
        with_secrets=with_secrets,
    )


def _one_with_readable_secrets(rows: QuerySet, *, with_secrets: bool):
    if not with_secrets:
        return rows.defer(*encrypted_field_names(rows.model)).get()
    found = with_stored_tokens(rows).get()
    take_readable_secrets(found)
    return found


def delivery_for_organization(*, organization: Organization, delivery_id) -> Delivery:
    return (
        Delivery.objects.select_related("event", "destination")
        .defer(*_DESTINATION_SECRETS)
        .get(organization=organization, pk=delivery_id)
    )


def rejected_requests_for_source(*, source: Source, limit: int = 50) -> list[WebhookEvent]:
    """The newest verification failures of one source, with their reasons."""
    return list(
        WebhookEvent.objects.filter(
            organization_id=source.organization_id, source=source, status=WebhookEvent.Status.REJECTED
        )
        .defer("body")
        .order_by("-id")[:limit]
    )


def recent_events_for_source(*, source: Source, limit: int = 10) -> list[WebhookEvent]:
    """Its newest accepted events, with their deliveries (as the events list shows them): its page
    lists its rejected requests apart (rejected_requests_for_source)."""
    return _note_hookline_tests(
        list(
            WebhookEvent.objects.filter(organization_id=source.organization_id, source=source)
            .exclude(status=WebhookEvent.Status.REJECTED)
            .defer("body", "headers")
            .prefetch_related(Prefetch("deliveries", queryset=_deliveries_for_list()))
            .order_by("-id")[:limit]
        )
    )


@dataclass(frozen=True)
class BulkRetryOutcome:
    """What became of the deliveries a bulk retry made pending again, as they are now.

    Counted over the deliveries still marked as this job's (Delivery.bulk_retry): one deleted since
    (retention, its destination's or organization's deletion) or retried again since (by a later
    job, or by hand) is no longer this job's, and is ``not_followed``: ``retried`` less the rest.
    """

    succeeded: int
    dead: int  # failed again: a retry asked for by hand is one attempt, dead again if it fails
    pending: int  # waiting for its attempt, or being sent
    not_followed: int

    @classmethod
    def of(cls, job: BulkRetry) -> BulkRetryOutcome | None:
        """The outcome of a job read through with_bulk_retry_outcomes; None for a job from before
        outcomes were recorded."""
        if not job.outcome_recorded:
            return None
        counts = job.outcome_counts or {}  # none when no delivery is the job's (any more)
        counted = [counts.get(status, 0) for status in ("succeeded", "dead", "pending")]
        return cls(*counted, not_followed=max(job.retried - sum(counted), 0))


def _status_count(condition: Q) -> Count:
    return Count("pk", filter=condition)


def with_bulk_retry_outcomes(jobs: QuerySet[BulkRetry]) -> QuerySet[BulkRetry]:
    """``jobs`` with their deliveries counted by status (``outcome_counts``, read by
    BulkRetryOutcome.of; its ``sending_now``: those being sent or due now, that a page following
    the job polls for). One correlated subquery, run for the jobs shown only (a page, not every
    job), each an index range of delivery_bulk_retry_status. Scope ``jobs`` to an organization
    first: this counts whatever deliveries the jobs marked."""
    counts = (
        Delivery.objects.filter(bulk_retry=OuterRef("pk"))
        .order_by()
        .values("bulk_retry")
        .annotate(
            counts=JSONObject(
                succeeded=_status_count(Q(status=Delivery.Status.SUCCEEDED)),
                dead=_status_count(Q(status=Delivery.Status.DEAD)),
                pending=_status_count(Q(status__in=(Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT))),
                sending_now=_status_count(
                    Q(status=Delivery.Status.IN_FLIGHT) | Q(status=Delivery.Status.PENDING, next_attempt_at__lte=Now())
                ),
            )
        )
        .values("counts")
    )
    return jobs.annotate(outcome_counts=Subquery(counts, output_field=JSONField()))


def bulk_retry_for_organization(*, organization: Organization, job_id: int) -> BulkRetry:
    """One bulk retry job, with its outcome (BulkRetryOutcome.of); DoesNotExist for anyone else's."""
    return with_bulk_retry_outcomes(BulkRetry.objects.filter(organization=organization)).get(pk=job_id)


def bulk_retries_for_organization(*, organization: Organization, status: str = "") -> QuerySet[BulkRetry]:
    """The organization's bulk retry jobs (the dashboard's and the API's), with one ``status`` only if
    given, each with its outcome (BulkRetryOutcome.of)."""
    jobs = BulkRetry.objects.filter(organization=organization)
    return with_bulk_retry_outcomes(jobs.filter(status=status) if status else jobs)


def bulk_retries_for_destination(*, destination: Destination, limit: int = 5) -> list[BulkRetry]:
    """The destination's latest bulk retry jobs, each with its outcome."""
    return list(
        with_bulk_retry_outcomes(
            BulkRetry.objects.filter(organization_id=destination.organization_id, filters__destination=destination.pk)
        ).order_by("-created_at")[:limit]
    )


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""
    action: str = ""
    since: date | None = None
    until: date | None = None


AUDIT_PAGE_SIZE = 100


def audit_page(
    *, organization: Organization, filters: AuditFilters, before_id: int | None = None
) -> tuple[list[AuditLog], int | None]:
    """The organization's audit entries, newest first, keyset-paged on the id."""
    entries = AuditLog.objects.filter(organization=organization)
    if filters.actor:
        entries = entries.filter(actor_label__icontains=filters.actor)
    if filters.action:
        entries = entries.filter(action=filters.action)
    if filters.since:
        entries = entries.filter(created_at__date__gte=filters.since)
    if filters.until:
        entries = entries.filter(created_at__date__lte=filters.until)
    if before_id:
        entries = entries.filter(id__lt=before_id)
    rows = list(entries.order_by("-id")[: AUDIT_PAGE_SIZE + 1])
    next_before = rows[AUDIT_PAGE_SIZE - 1].id if len(rows) > AUDIT_PAGE_SIZE else None
    return rows[:AUDIT_PAGE_SIZE], next_before


def audit_actions_for_organization(*, organization: Organization) -> list[str]:
    return list(
        AuditLog.objects.filter(organization=organization)
        .order_by("action")
        .values_list("action", flat=True)
        .distinct()
    )


# Header names that carry a request's signature, by what every scheme we know calls them
# (stripe-signature, x-hub-signature-256, x-shopify-hmac-sha256, paypal-transmission-sig…).
_SIGNATURE_HEADER_PARTS = ("signature", "hmac", "-sig")
SIGNATURE_HIDDEN = "(a signature: shown to admins and owners)"


def headers_for_viewer(
    headers: dict[str, str], *, sees_signatures: bool, signature_headers: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Stored headers sorted by name, with signatures hidden from those who may only read.

    A signature with its body is enough to send the request again; for schemes whose event id
    is an unsigned header (GitHub…) that makes a second event. Members may read everything
    else; admins and owners, who can replay anyway, see it all.
    """
    from .services.ingest import MASKED  # here: ingest imports this module

    shown = []
    for name, value in sorted(headers.items()):
        lowered = name.lower()
        # A header masked when stored (a shared token's, any holding the source's secret) is shown
        # so to everyone: "shown to admins and owners" would promise what no one can see.
        shown_as_stored = sees_signatures or value == MASKED
        is_signature = lowered in signature_headers or any(part in lowered for part in _SIGNATURE_HEADER_PARTS)
        # Events stored before names were kept as documented say "X-Github-Delivery".
        shown.append(
            (documented_header_name(name), SIGNATURE_HIDDEN if is_signature and not shown_as_stored else value)
        )
    return shown


def configured_signature_header(source: Source) -> frozenset[str]:
    """The header a tenant named for a configurable scheme (Generic HMAC's "header" option)."""
    name = (source.options or {}).get("header")
    return frozenset({name.lower()}) if isinstance(name, str) and name else frozenset()


def options_for_viewer(options: dict) -> dict:
    """A source's options as shown, with any URL's ``user:password@`` left out: clean_options drops
    them (Twilio's), but a source saved before it did may still hold them."""
    shown = {}
    for name, value in (options or {}).items():
        if isinstance(value, str) and "@" in value:
            try:
                parts = urlsplit(value)
            except ValueError:
                parts = None
            if parts is not None and parts.scheme in {"http", "https"} and "@" in parts.netloc:
                value = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        shown[name] = value
    return shown


def url_for_viewer(url: str, *, sees_full: bool) -> str:
    """A destination's URL, with its path and query hidden from those who may only read.

    Many receivers take the URL itself as their credential (Slack's and Discord's incoming
    webhooks, automation hooks): whoever reads it can post there. Members still see where
    deliveries go, the scheme and host; admins and owners, who can change it anyway, see it all.
    """
    if sees_full:
        return url
    parts = urlsplit(url)
    if parts.path in ("", "/") and not parts.query and not parts.fragment and "@" not in parts.netloc:
        return url
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def audit_changes_for_viewer(changes, *, sees_full_urls: bool):
    """An audit entry's changes with every destination URL in them cut as url_for_viewer cuts it.

    Creating, changing or deleting a destination (in the dashboard or the admin) records its URL,
    before and after: the audit log, which members read, would otherwise show them the URL whole.
    """
    if sees_full_urls:
        return changes
    if isinstance(changes, dict):
        return {
            key: _urls_cut(value) if key == "url" else audit_changes_for_viewer(value, sees_full_urls=False)
            for key, value in changes.items()
        }
    if isinstance(changes, list):
        return [audit_changes_for_viewer(value, sees_full_urls=False) for value in changes]
    return changes


def _urls_cut(value):
    if isinstance(value, str):
        return url_for_viewer(value, sees_full=False)
    if isinstance(value, list):  # [before, after]
        return [_urls_cut(item) for item in value]
    return value
