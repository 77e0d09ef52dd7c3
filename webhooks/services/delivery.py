"""Delivering events to destinations: claiming, sending, and deciding what happens next.

A dispatcher (one Celery task) keeps a pool of sending threads busy. It claims
due deliveries in small batches with per-delivery conditional updates, never
more per destination than the destination's concurrency cap and rate limit,
so one slow or failing destination cannot hold the threads others need. The
threads only do HTTP; every database write happens on the dispatcher's thread.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.core.cache import cache
from django.db import Error as DatabaseOrConnectionError
from django.db import OperationalError, connection, transaction
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    OuterRef,
    PositiveIntegerField,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Concat, Now
from django.utils import timezone

from organizations.models import effective_max_concurrency
from organizations.services import audit_record
from webhooks.fields import SecretNotReadable, decrypting_for
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.providers.registry import documented_header_name

from . import outbound
from .claim_owners import ClaimOwner, live_claim_max_seconds, owners_alive, unrecorded_hold_seconds
from .destination_headers import masked_custom_headers
from .row_locks import (
    lock_destinations_against_deletion,
    lock_organization_unless_being_deleted,
    lock_source_unless_being_deleted,
)
from .scheduling import clear_flag, schedule_once, set_flag, worker_is_stopping
from .sender_marks import TEST_MARK_HEADER
from .text import duration_words, loggable_text, storable_text, visible_text

logger = logging.getLogger(__name__)

# Never forwarded: they describe the hop from the provider to us, not the event.
HOP_BY_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "proxy-connection",
    "host",
    "content-length",
    "accept-encoding",
    "authorization",
    "cookie",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "user-agent",
    # The sender's own Standard Webhooks headers: Hookline signs each delivery itself, and receivers'
    # libraries would read the sender's first (svix reads svix-* before webhook-*) and check its
    # signature against the destination's secret.
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
}
# Hookline's own: the test mark is for this deployment only (services.sender_marks).
NOT_FORWARDED_HEADERS = {TEST_MARK_HEADER.lower()}
# Never forwarded either: what proxies and frameworks in front of a receiver read as facts about the
# request they received (the client's address, the host, scheme or path asked for, its method). Whoever
# sends to an ingest URL chooses them, and Hookline's own router adds some: passed on, they would tell
# the receiver that a webhook came from 127.0.0.1 (past an allowlist), or was a DELETE (Symfony and
# Rack read X-HTTP-Method-Override on a POST) or for another path (X-Original-URL), though Hookline
# POSTed it to the destination's URL. Any x-forwarded-* (Envoy's client certificate among them) too.
REQUEST_DESCRIBING_HEADERS = {
    "client-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-envoy-external-address",
    "forwarded-for",
    "x-forwarded",
    "x-original-host",
    "x-host",
    "front-end-https",
    "x-url-scheme",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
}
REQUEST_DESCRIBING_HEADER_PREFIXES = ("x-forwarded-",)
RETRYABLE_CLIENT_ERRORS = {408, 409, 425, 429}

# The dispatcher holds this key while it runs; see schedule_dispatch().
DISPATCH_FLAG_KEY = "delivery:dispatcher"
DISPATCH_FLAG_TTL = 15
# A running dispatcher refreshes its flag at most this often, well within DISPATCH_FLAG_TTL. Set on
# every turn of its loop, it cost a Redis round trip per batch of results (one per five deliveries
# or so in a backlog) and, while slot 0 lingers, one every LINGER_POLL_SECONDS.
DISPATCH_FLAG_REFRESH_SECONDS = 1.0


def sign_standard_webhook(*, secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks v1 signature of ``body`` (secret in whsec_<base64> form)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- Retry policy -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str  # a Delivery.Status
    delay: float | None = None  # seconds until the next try, when status is pending
    error: str = ""


def retry_schedule_for(destination: Destination | None) -> list[int]:
    """The waits between a destination's retries, in seconds: its own schedule when it has one,
    else the platform's DELIVERY_RETRY_SCHEDULE."""
    own = destination.retry_schedule if destination is not None else None
    return own or settings.DELIVERY_RETRY_SCHEDULE


def retry_delay_seconds(
    attempt_count: int, *, max_attempts: int | None = None, schedule: list[int] | None = None
) -> float | None:
    """Delay before the next try after ``attempt_count`` failed tries on ``schedule`` (the platform's
    by default); None when they are used up (the schedule's steps, or fewer where a destination
    allows ``max_attempts`` in all).

    The step is read by the attempts made, from the schedule as it is now: a delivery that was
    already retrying when its destination's schedule changed takes its next wait from the new one,
    and is out of retries if the new one has no step left for it."""
    if schedule is None:
        schedule = settings.DELIVERY_RETRY_SCHEDULE
    if attempt_count > len(schedule) or (max_attempts is not None and attempt_count >= max_attempts):
        return None
    # Jitter spreads the retries of a destination that failed for many events at once.
    return schedule[attempt_count - 1] * random.uniform(0.9, 1.1)


def redirect_target_words(location: str | None, url: str) -> str:
    """Where a redirect points, said after "redirects are not followed": the origin it names (the
    receiver moved to HTTPS or to another host), or that it is another path on the same host. Never
    the path or query, which members may not read of a destination's URL and which may hold a token."""
    if not location or not location.strip():
        return ""
    try:
        target = urlsplit(urljoin(url, location.strip()))
        here = urlsplit(url)
        port = target.port
    except ValueError:  # a Location that is no URL (a bad port, an unbalanced bracket)
        return ""
    if target.scheme not in ("http", "https") or not target.hostname:
        return ""
    if (target.scheme, target.hostname, port) == (here.scheme, here.hostname, here.port):
        return " (it points to another path on the same host)"
    host = f"[{target.hostname}]" if ":" in target.hostname else target.hostname
    origin = f"{target.scheme}://{host}{f':{port}' if port is not None else ''}"
    return f" (it points to {visible_text(origin)}/…)"


def decide_outcome(
    response: outbound.OutboundResponse,
    *,
    attempt_count: int,
    destination: Destination,
    age_seconds: float = 0.0,
) -> Outcome:
    """What a response means: success, another try later, or dead.

    ``attempt_count`` counts the attempts on the schedule (Delivery.scheduled_attempt_count) and
    ``age_seconds`` how long ago the delivery was created. The waits are the destination's own
    retry schedule, or the platform's; its max_attempts and max_retry_age_seconds may end its
    retries before the schedule does.
    """
    status = response.status
    if status is not None and 200 <= status < 300:
        return Outcome(Delivery.Status.SUCCEEDED)
    if status is not None and 300 <= status < 400:
        where = redirect_target_words(response.location, destination.url)
        return Outcome(Delivery.Status.DEAD, error=f"HTTP {status}: redirects are not followed{where}; update the URL")
    retryable = (
        status is None
        or status >= 500
        or status in RETRYABLE_CLIENT_ERRORS
        or (400 <= status < 500 and destination.retry_client_errors)
    )
    error = response.error or f"HTTP {status}"
    if not retryable:
        return Outcome(Delivery.Status.DEAD, error=f"{error}: not retried (client error)")
    max_attempts = destination.max_attempts
    schedule = retry_schedule_for(destination)
    delay = retry_delay_seconds(attempt_count, max_attempts=max_attempts, schedule=schedule)
    if delay is None:
        if max_attempts is not None and max_attempts <= len(schedule):
            allowed = "no retries" if max_attempts == 1 else f"{max_attempts} attempts"
            return Outcome(Delivery.Status.DEAD, error=f"{error}: no retries left (the destination allows {allowed})")
        return Outcome(Delivery.Status.DEAD, error=f"{error}: no retries left")
    asked_wait = None
    said_wait = ""  # the receiver's Retry-After, said with the error of an outcome that waits for it
    if response.retry_after is not None:
        # A receiver's Retry-After may put the next try later, never sooner: each try still
        # uses up the schedule, so "Retry-After: 1" from a receiver in maintenance would
        # otherwise run through every retry in seconds and dead-letter what a pause would save.
        asked_wait = min(response.retry_after, float(settings.RETRY_AFTER_MAX_SECONDS))
        if asked_wait > delay:
            # Said with the error: a wait of an hour after a schedule of seconds would otherwise
            # look like Hookline's own doing on the event page, the API and show_event.
            # Not said by an outcome that ends the retries (the age limit below): "next try in 1 h" would
            # then stand before "no retries left".
            said_wait = f": next try in {duration_words(asked_wait)}"
            if response.retry_after > asked_wait:
                said_wait += (
                    f", the longest wait honoured (the receiver's Retry-After asks for "
                    f"{duration_words(response.retry_after)})"
                )
            else:
                said_wait += ", as the receiver's Retry-After asks"
            delay = asked_wait
    if (max_age := destination.max_retry_age_seconds) is not None:
        # No try later than max_age after the delivery was created: the schedule's next step is
        # moved up to that time (one last try at the limit), and a try at or past it was the last.
        # Never moved up before a receiver's Retry-After, which asked for no try until then.
        left = max_age - age_seconds
        limit = duration_words(max_age)
        if left <= 0:
            return Outcome(
                Delivery.Status.DEAD,
                error=f"{error}: no retries left (older than the destination's retry limit of {limit})",
            )
        if asked_wait is not None and asked_wait > left:
            return Outcome(
                Delivery.Status.DEAD,
                error=f"{error}: no retries left (Retry-After asks to wait past the destination's retry limit of {limit})",
            )
        delay = min(delay, left)
    return Outcome(Delivery.Status.PENDING, delay=delay, error=f"{error}{said_wait}")


# --- Claiming -----------------------------------------------------------------


def claim_clock(now=None):
    """What claims are dated and judged by: the database's clock, which every host shares, so a
    host whose own clock runs ahead cannot take a live send for a lost one. In the embedded mode
    (SQLite, one machine) the process's clock: SQLite's own would be stored in a form that no
    longer compares equal to the value read back, which the result's guard relies on."""
    if now is not None:
        return now
    return Now() if connection.vendor == "postgresql" else timezone.now()


def release_lost_claims(now=None) -> int:
    """Give back the deliveries of dispatchers that died mid-attempt; returns how many.

    An attempt cannot outlast its destination's timeout (the watchdog cuts it), so a claim
    is taken for lost STUCK_DELIVERY_MARGIN_SECONDS after that, and after STUCK_DELIVERY_SECONDS
    at the latest. Until then a dead worker's claims count against the destination's
    concurrency cap: with the default 15 s timeout that is 45 s of a frozen destination rather
    than STUCK_DELIVERY_SECONDS'. Judged by the database's clock, as claims are dated by it.

    Such a claim is kept while the dispatcher run that took it is alive (its mark in the cache,
    see services.claim_owners), up to LIVE_CLAIM_MAX_SECONDS after it was taken: a dispatcher that
    sent while it could not reach the database (down, frozen, partitioned off, failed over to a
    standby) keeps its results and records them once it can (dispatch_due_deliveries), and
    releasing them first would have them sent a second time. Past LIVE_CLAIM_MAX_SECONDS a live
    run is taken for wedged: its deliveries must not wait on it for ever. With the cache down
    (no mark can be read) and for claims that name no run, the age alone decides, as below.

    Age alone, a claim older than the database server's start is judged from that start
    instead: a dispatcher that sent while the database was restarting records its results
    within a second or so of its return, and judged from the claim, a restart that took longer
    than the margin would have the sweeper release those deliveries first.
    """
    database_up_since = None
    if now is None and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement_timestamp(), pg_postmaster_start_time()")
            judged_at, database_up_since = cursor.fetchone()
    else:
        judged_at = now or timezone.now()
    latest = timedelta(seconds=settings.STUCK_DELIVERY_SECONDS)
    margin = timedelta(seconds=settings.STUCK_DELIVERY_MARGIN_SECONDS)
    shortest = min(latest, timedelta(seconds=Destination.MIN_TIMEOUT_SECONDS) + margin)
    if database_up_since is not None and database_up_since >= judged_at - shortest:
        return 0  # up for less than the shortest wait: no claim can be judged lost yet
    in_flight = Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT, claimed_at__lt=judged_at - shortest)
    lost: dict = {}  # delivery id -> (its claim's owner, when it was claimed)
    for pk, claimed_at, claimed_by, timeout, changed_at in in_flight.values_list(
        "pk", "claimed_at", "claimed_by", "destination__timeout_seconds", "destination__updated_at"
    ):
        # A destination edited since the claim may have had a longer timeout when it was sent.
        attempt_may_last = timedelta(seconds=min(timeout, settings.DELIVERY_MAX_TIMEOUT_SECONDS)) + margin
        # (updated_at is a web host's clock, claimed_at the database's: the margin covers their skew.)
        edited_since = changed_at > claimed_at - margin
        waiting_since = max(claimed_at, database_up_since) if database_up_since is not None else claimed_at
        if waiting_since < judged_at - (latest if edited_since else min(latest, attempt_may_last)):
            lost[pk] = (claimed_by, claimed_at)
    alive = owners_alive({owner for owner, _ in lost.values() if owner})
    if alive:  # (None: the cache cannot be read, and the age alone decides)
        held_at_most = timedelta(seconds=live_claim_max_seconds())
        lost = {
            pk: (owner, claimed_at)
            for pk, (owner, claimed_at) in lost.items()
            if owner not in alive or claimed_at < judged_at - held_at_most
        }
    if not lost:
        return 0
    with transaction.atomic():
        # The same condition again: a claim renewed meanwhile (released and taken again) stays.
        # Locked and read first (in id order, as claims lock them), so that the log names each one.
        # FOR NO KEY UPDATE: only the claim's columns change, so an attempt recorded for one of them
        # meanwhile (its foreign key check takes a key share on the delivery) does not wait for this.
        released = list(
            in_flight.filter(pk__in=list(lost))
            .select_for_update(no_key=True)
            .order_by("pk")
            .values_list("pk", "event_id", "organization_id", "destination_id", "attempt_count", "claimed_at")
        )
        Delivery.objects.filter(pk__in=[row[0] for row in released]).update(
            status=Delivery.Status.PENDING, next_attempt_at=now or timezone.now(), claimed_at=None, claimed_by=None
        )
    for pk, event_id, organization_id, destination_id, attempt_count, claimed_at in released:
        # One line per delivery, its ids as the attempt lines give them: "released: 1" alone did
        # not say which webhook a receiver may get twice, nor why its attempt is missing.
        logger.info(
            "delivery %s of event %s attempt %s: organization %s destination %s: not recorded, its worker "
            "stopped mid-attempt (claimed at %s): released to be sent again with the same webhook-id",
            pk,
            event_id,
            attempt_count,
            organization_id,
            destination_id,
            claimed_at.isoformat() if claimed_at else "-",
        )
    return len(released)


def claim_due_deliveries(limit: int, now=None, *, owner: str | None = None) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries to send (see _claim_once).

    A claim whose deliveries were all of sources being deleted (dead-lettered unsent) is followed
    by another: an empty answer tells the dispatcher that nothing is due, and it would stop while
    other deliveries wait for the next sweep. Each round dead-letters at least one, so it ends.
    """
    while True:
        chosen, to_send = _claim_once(limit, now, owner=owner)
        if to_send or not chosen:
            return to_send


def _claim_once(limit: int, now=None, *, owner: str | None = None) -> tuple[list[int], list[Delivery]]:
    """Claim up to ``limit`` due deliveries (see _claim_waiting_for_organizations).

    A wait for an organization's claim lock that lasts past CLAIM_LOCK_TIMEOUT (its holder stalled
    mid-claim) fails the claim, whose transaction rolls back: nothing was claimed. The claim is
    made again at once, only trying the organizations' locks, so that the stalled holder's
    organizations are passed over as another claim's are, and every other tenant's deliveries are
    still claimed: a dispatcher serves all of them, and neither stops nor fails (with nothing in
    hand it would end its task) for one tenant's stalled claim.
    """
    global _claims_only_try_until
    if time.monotonic() < _claims_only_try_until:
        return _claim_waiting_for_organizations(limit, now, owner=owner, may_wait=False)
    try:
        return _claim_waiting_for_organizations(limit, now, owner=owner)
    except OperationalError as exc:
        if not _is_lock_timeout(exc):
            raise
        _claims_only_try_until = time.monotonic() + CLAIMS_ONLY_TRY_AFTER_A_TIMEOUT_SECONDS
        logger.warning(
            "a claim waited over %s for an organization's claim lock (its holder stalled?): "
            "claimed again, passing over the organizations held, as claims do for the next %d s",
            CLAIM_LOCK_TIMEOUT,
            CLAIMS_ONLY_TRY_AFTER_A_TIMEOUT_SECONDS,
        )
        return _claim_waiting_for_organizations(limit, now, owner=owner, may_wait=False)


# After a claim of this process timed out waiting for an organization's claim lock, its claims only
# try those locks for this long. A stall lasts as long as its cause (a stopped process, a partition
# that TCP keepalive ends after hours): waiting, every claim that reached the stalled tenant would
# pay CLAIM_LOCK_TIMEOUT again, a few deliveries every two seconds for every tenant. Only trying, a
# dispatcher may come back empty while another claim of a busy tenant holds its lock a few
# milliseconds (and stop until the sweeper publishes it again): a slower turn for that while only.
CLAIMS_ONLY_TRY_AFTER_A_TIMEOUT_SECONDS = 30
_claims_only_try_until = 0.0  # time.monotonic() of this process; one dispatcher loop per process


def _claim_waiting_for_organizations(
    limit: int, now=None, *, owner: str | None = None, may_wait: bool = True
) -> tuple[list[int], list[Delivery]]:
    """Claim up to ``limit`` due deliveries, within each destination's concurrency cap and rate limit;
    the ids claimed, and those of them to send.

    ``owner`` names the dispatcher run taking them (services.claim_owners): while its mark lives,
    the sweeper leaves its claims alone however long it cannot reach the database. ``may_wait``:
    whether it waits (up to CLAIM_LOCK_TIMEOUT) for organizations' claim locks, or only tries them.

    First the oldest due deliveries of all destinations. When those were all of destinations
    with no room left (one destination's backlog: a slow receiver, a resumed pause) or paused, the
    other destinations with due deliveries are looked up one by one, so that a backlog never
    hides other tenants' deliveries from the dispatchers. (Leaving the full destinations out
    of the first query instead would make every claim walk the whole backlog.)
    """
    if limit <= 0:
        return []
    claimed_at = claim_clock(now)
    now = now or timezone.now()
    window = _rate_window(now)
    with transaction.atomic():
        destinations: dict[int, _LockedDestination] = {}
        allowance: dict[int, int] = {}
        taken: dict[int, int] = defaultdict(int)
        chosen: list = []
        organizations = _OrganizationRoom(may_wait=may_wait)
        wanted = limit * 4
        # The first look reads the oldest due rows as they are in the index, paused destinations'
        # too (_lock_destinations gives those no room): filtering them in the query would make
        # every claim step over a paused destination's whole backlog, row by row, which a
        # circuit-broken destination that events keep arriving for makes large.
        candidates = _oldest_due(now, wanted)
        in_flight = _lock_destinations({d for _, d in candidates}, destinations, allowance, window, organizations)
        _choose(candidates, limit, allowance, taken, chosen, organizations)
        if len(chosen) < limit and len(candidates) == wanted:
            _choose_from_other_destinations(
                now, limit, destinations, allowance, taken, chosen, window, organizations, in_flight
            )
        for destination_id, count in taken.items():
            destination = destinations.get(destination_id)
            if count and destination.rate_limit_per_second:
                same_window = destination.rate_window_started_at == window
                Destination.objects.filter(pk=destination_id).update(
                    rate_window_started_at=window,
                    rate_window_count=(destination.rate_window_count if same_window else 0) + count,
                )
        if not chosen:
            return [], []
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    _claimed_rows_reader().sql,
                    [
                        Delivery.Status.IN_FLIGHT,
                        None if isinstance(claimed_at, Now) else claimed_at,  # None: the database's clock
                        owner,
                        chosen,
                        Delivery.Status.PENDING,
                    ],
                )
                rows = cursor.fetchall()
        else:
            rows = None
            Delivery.objects.filter(pk__in=chosen, status=Delivery.Status.PENDING).update(
                status=Delivery.Status.IN_FLIGHT,
                claimed_at=claimed_at,
                claimed_by=owner,
                attempt_count=F("attempt_count") + 1,
            )
    # Built once the claims are committed, as _load_claimed's are (see there).
    with decrypting_for("delivery"):
        claimed = _load_claimed(chosen) if rows is None else _build_claimed(rows)
    return chosen, _not_of_sources_being_deleted(claimed)


# The first look of a claim (PostgreSQL): the oldest due deliveries, locked, those other dispatchers
# hold passed over. Plain SQL, as the ORM's would be built anew on every claim (see _in_flight).
OLDEST_DUE_SQL = f"""
SELECT id, destination_id FROM webhooks_delivery
WHERE status = '{Delivery.Status.PENDING}' AND next_attempt_at <= %s
ORDER BY next_attempt_at, id
LIMIT %s
FOR NO KEY UPDATE SKIP LOCKED
"""


def _due_deliveries(now):
    """The due deliveries to claim, locked as they are read (the ORM's way: the embedded mode)."""
    return Delivery.objects.select_for_update(skip_locked=True, of=("self",), no_key=True).filter(
        status=Delivery.Status.PENDING, next_attempt_at__lte=now
    )


def _oldest_due(now, count: int) -> list[tuple]:
    """(delivery id, destination id) of up to ``count`` oldest due deliveries, locked, those locked
    by others passed over; of paused or inactive destinations too (see _claim_once)."""
    if connection.vendor != "postgresql":
        return list(_due_deliveries(now).order_by("next_attempt_at", "id").values_list("id", "destination_id")[:count])
    with connection.cursor() as cursor:
        cursor.execute(OLDEST_DUE_SQL, [now, count])
        return cursor.fetchall()


# The fields of a destination that are decrypted when loaded: left out where they are not needed,
# so that one that cannot be decrypted (a key removed too soon) trips only on its own sends.
DESTINATION_ENCRYPTED_FIELDS = ("secret", "previous_secret", "custom_headers")


def _load_claimed(chosen: list[int]) -> list[Delivery]:
    """The claimed deliveries, as sent (the embedded mode's read: on PostgreSQL the claiming statement
    returns them, see _build_claimed). Their claims are committed: one that cannot be loaded must
    not take the others down with it (they would stay in flight until the sweeper releases them,
    and be claimed with it again). Such a delivery is recorded as an attempt that could not be
    made, as send() records one, and is not sent."""
    claimed = _with_source_state(Delivery.objects.filter(pk__in=chosen)).order_by("next_attempt_at", "id")
    try:
        return list(claimed)
    except DatabaseOrConnectionError:
        raise
    except Exception:
        logger.exception("loading %d claimed deliveries failed; loading them one by one", len(chosen))
    loaded, unloadable = [], []
    for delivery_id in chosen:
        try:
            loaded += list(_with_source_state(Delivery.objects.filter(pk=delivery_id)))
        except DatabaseOrConnectionError:
            raise
        except Exception as exc:
            _log_unloadable(delivery_id, exc)
            unloadable.append((delivery_id, exc))
    _record_unloadable(unloadable)
    return sorted(loaded, key=lambda delivery: (delivery.next_attempt_at, delivery.pk))


def _log_unloadable(delivery_id, exc: Exception) -> None:
    if isinstance(exc, SecretNotReadable):
        # Its reason in words (never the token): the operator's to fix, not the tenant's receiver.
        logger.error("delivery %s: not sent, its destination's secret cannot be decrypted: %s", delivery_id, exc)
    else:
        logger.error("delivery %s: could not be loaded to be sent (%s)", delivery_id, type(exc).__name__)


def _record_unloadable(unloadable: list[tuple]) -> None:
    """Record each (delivery id, exception) as an attempt that could not be made."""
    for delivery_id, exc in unloadable:
        delivery = (
            Delivery.objects.select_related("destination")
            .defer(*(f"destination__{name}" for name in DESTINATION_ENCRYPTED_FIELDS))
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is not None:
            failed = outbound.OutboundResponse(
                status=None, body="", duration_ms=0, error=f"the attempt could not be made: {type(exc).__name__}"
            )
            record_results(
                [
                    (
                        delivery,
                        SendResult(
                            started_at=timezone.now(), headers={}, response=failed, unsent_reason=_unsent_reason(exc)
                        ),
                    )
                ]
            )


class _ColumnsOf:
    """One model's columns in a row of plain SQL, made into an instance as the ORM's own reads make
    one: each value through the converters the ORM would apply (the encrypted fields decrypted, the
    JSON ones decoded), then Model.from_db."""

    def __init__(self, model, alias: str, start: int):
        fields = model._meta.concrete_fields
        self.model = model
        self.select = ", ".join(f"{alias}.{connection.ops.quote_name(field.column)}" for field in fields)
        self.attnames = [field.attname for field in fields]
        self.start, self.end = start, start + len(fields)
        self.converters = []
        for index, field in enumerate(fields):
            column = field.get_col(alias)
            converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            if converters:
                self.converters.append((index, converters, column))

    def build(self, row: tuple):
        values = list(row[self.start : self.end])
        for index, converters, column in self.converters:
            for converter in converters:
                values[index] = converter(values[index], column, connection)
        return self.model.from_db(connection.alias, self.attnames, values)


class _ClaimedRowsReader(NamedTuple):
    sql: str
    delivery: _ColumnsOf
    event: _ColumnsOf
    destination: _ColumnsOf


@functools.cache
def _claimed_rows_reader() -> _ClaimedRowsReader:
    """The claiming UPDATE and the claimed rows' read in one statement (PostgreSQL): the rows as
    claimed, each with its event, its destination and its source's deletion mark, in the claim's
    order. Plain SQL, built once: the ORM built both statements anew on every claim, and built
    the instances at several times the cost (see _build_claimed)."""
    delivery = _ColumnsOf(Delivery, "claimed", 0)
    event = _ColumnsOf(WebhookEvent, "event", delivery.end)
    destination = _ColumnsOf(Destination, "destination", event.end)
    sql = f"""
WITH claimed AS (
    UPDATE {Delivery._meta.db_table}
    SET status = %s, claimed_at = COALESCE(%s::timestamptz, STATEMENT_TIMESTAMP()), claimed_by = %s,
        attempt_count = attempt_count + 1
    WHERE id = ANY(%s) AND status = %s
    RETURNING *
)
SELECT {delivery.select}, {event.select}, {destination.select}, source.deletion_requested_at
FROM claimed
JOIN {WebhookEvent._meta.db_table} event ON event.id = claimed.event_id
JOIN {Destination._meta.db_table} destination ON destination.id = claimed.destination_id
JOIN {Source._meta.db_table} source ON source.id = event.source_id
ORDER BY claimed.next_attempt_at, claimed.id
"""
    return _ClaimedRowsReader(sql, delivery, event, destination)


def _build_claimed(rows: list[tuple]) -> list[Delivery]:
    """The deliveries of _claimed_rows_reader's rows, as _with_source_state's ORM read makes them
    (the event and destination cached on each, the source's deletion mark an attribute). One
    that cannot be built (a destination's secret no key decrypts) is recorded as an attempt that
    could not be made, as in _load_claimed, and not sent; the others are."""
    reader = _claimed_rows_reader()
    loaded, unloadable = [], []
    for row in rows:
        try:
            delivery = reader.delivery.build(row)
            Delivery.event.field.set_cached_value(delivery, reader.event.build(row))
            Delivery.destination.field.set_cached_value(delivery, reader.destination.build(row))
        except Exception as exc:
            delivery_id = row[reader.delivery.start + reader.delivery.attnames.index("id")]
            _log_unloadable(delivery_id, exc)
            unloadable.append((delivery_id, exc))
            continue
        delivery.source_deletion_requested_at = row[reader.destination.end]
        loaded.append(delivery)
    _record_unloadable(unloadable)
    return loaded


SOURCE_BEING_DELETED_ERROR = "the event's source is being deleted: not sent"


def _with_source_state(deliveries):
    """Claimed deliveries as sent: with their event and destination, and whether the event's source
    is being deleted (one more join on the source's primary key, in the query that reads them anyway)."""
    return deliveries.select_related("event", "destination").annotate(
        source_deletion_requested_at=F("event__source__deletion_requested_at")
    )


def _not_of_sources_being_deleted(claimed) -> list[Delivery]:
    """``claimed`` less the deliveries whose event's source is being deleted, which are dead-lettered
    unsent rather than sent until the source's background deletion reaches them.

    Their events get no new deliveries (processing leaves such sources out), but those made before
    the deletion was asked for, and their retries, are still due. Dead, not deleted: the source's
    deletion removes them with its events and counts them, and until then a delivery's page says why
    it was not sent. The dead-letter digest leaves them out.
    """
    claimed = list(claimed)
    going = [delivery.pk for delivery in claimed if delivery.source_deletion_requested_at is not None]
    if not going:
        return claimed
    Delivery.objects.filter(pk__in=going, status=Delivery.Status.IN_FLIGHT).update(
        status=Delivery.Status.DEAD,
        attempt_count=F("attempt_count") - 1,  # claimed, never attempted
        completed_at=timezone.now(),
        next_attempt_at=None,
        claimed_at=None,
        claimed_by=None,
        last_error=SOURCE_BEING_DELETED_ERROR,
    )
    logger.info("%d deliveries of sources being deleted dead-lettered unsent", len(going))
    return [delivery for delivery in claimed if delivery.source_deletion_requested_at is None]


class _OrganizationRoom:
    """How many more sends each organization may have in flight (its max_concurrency, or
    ORGANIZATION_MAX_CONCURRENCY when it has none), over all its destinations, and whose each
    locked destination is.

    Without it, one tenant's destinations could hold every sending thread: each destination's cap
    (up to 50) bounds one receiver, not a tenant, and a few destinations that never answer, fed a
    steady stream of events older than anyone else's, would take every thread that frees up, so
    other tenants' deliveries waited behind them however long that lasted. The counts are read
    once the claim holds the organization's claim lock (see _lock_destinations), which claims of
    one organization take in turn: two dispatchers that locked different destinations of one
    tenant cannot both see the same room and together take more than its cap. Each
    organization's cap comes with the rows that name it (the locked destinations, the sends in
    flight), read in the same queries: no query per organization.
    """

    def __init__(self, *, may_wait: bool = True):
        self.left: dict[int, int] = {}  # organization id -> sends it may still start
        self.of: dict[int, int] = {}  # destination id -> organization id
        self.cap: dict[int, int] = {}  # organization id -> sends it may have in flight
        self.held: set[int] = set()  # organizations whose claim lock this claim holds (PostgreSQL)
        # Organizations with a destination that may send whose claim lock another claim holds:
        # passed over by this claim, the look beyond the backlog included.
        self.passed_over: set[int] = set()
        # Whether the claim may wait for an organization's claim lock (see _claim_once).
        self.may_wait = may_wait

    def add(self, destination_id: int, organization_id: int, cap: int) -> None:
        self.of[destination_id] = organization_id
        self.cap[organization_id] = cap

    def count_in_flight(self, in_flight: list[tuple[int, int, int, int, int]]) -> None:
        """Count the sends in flight (``in_flight``, from _in_flight) of the organizations not counted yet."""
        uncounted = set(self.of.values()) - set(self.left)
        if not uncounted:
            return
        counts: dict[int, int] = defaultdict(int)
        for organization_id, _, _, _, count in in_flight:
            if organization_id in uncounted:
                counts[organization_id] += count
        for organization_id in uncounted:
            self.left[organization_id] = max(self.cap[organization_id] - counts[organization_id], 0)

    def take(self, destination_id: int) -> bool:
        """One more send for the destination's organization, if it has room."""
        organization_id = self.of.get(destination_id)
        if organization_id is None or self.left[organization_id] <= 0:
            return False
        self.left[organization_id] -= 1
        return True

    def full(self) -> list[int]:
        return [organization_id for organization_id, left in self.left.items() if left <= 0]

    def full_anywhere(self, in_flight: list[tuple[int, int, int, int, int]]) -> list[int]:
        """The organizations with no room left: those counted so far, and any other whose sends in
        flight (``in_flight``, from _in_flight) already reach its cap. The look
        beyond the backlog must pass over the latter too: it takes as many destinations as there
        are free slots, the ones waiting longest, and those of one tenant at its limit that the
        first look never saw (its many receivers all slow, their deliveries older than anyone
        else's) filled it, claim after claim, while the other tenants' deliveries waited."""
        uncounted: dict[int, int] = defaultdict(int)
        caps: dict[int, int] = {}
        for organization_id, _, _, organization_cap, count in in_flight:
            if organization_id not in self.left:
                uncounted[organization_id] += count
                caps[organization_id] = organization_cap
        for organization_id, count in uncounted.items():
            if count >= caps[organization_id]:
                self.left[organization_id] = 0
        return self.full()


# Every send in flight, by organization and destination: (organization id, destination id, the
# destination's max_concurrency, its organization's effective max_concurrency, its sends in flight).
# At most a few rows per sending thread (the partial index delivery_in_flight_by_dest), joined to
# their destinations and organizations. One read serves the claim's three uses of them: each
# locked destination's room, each organization's, and, for the look beyond the backlog, the
# organizations and destinations already full anywhere. Plain SQL: the ORM took longer to build
# the statement than PostgreSQL to run it, on every claim.
IN_FLIGHT_SQL = f"""
SELECT webhooks_delivery.organization_id, webhooks_delivery.destination_id, webhooks_destination.max_concurrency,
    COALESCE(organizations_organization.max_concurrency, %s), COUNT(*)
FROM webhooks_delivery
JOIN webhooks_destination ON webhooks_destination.id = webhooks_delivery.destination_id
JOIN organizations_organization ON organizations_organization.id = webhooks_delivery.organization_id
WHERE webhooks_delivery.status = '{Delivery.Status.IN_FLIGHT}'
GROUP BY webhooks_delivery.organization_id, webhooks_delivery.destination_id,
    webhooks_destination.max_concurrency, organizations_organization.max_concurrency
"""


def _in_flight() -> list[tuple[int, int, int, int, int]]:
    """Every send in flight, grouped (IN_FLIGHT_SQL). The setting is read at each call, as
    organizations.models.effective_max_concurrency does."""
    with connection.cursor() as cursor:
        cursor.execute(IN_FLIGHT_SQL, [settings.ORGANIZATION_MAX_CONCURRENCY])
        return cursor.fetchall()


def _choose(candidates, limit: int, allowance: dict, taken: dict, chosen: list, organizations) -> None:
    for delivery_id, destination_id in candidates:
        if len(chosen) >= limit:
            return
        if taken[destination_id] < allowance[destination_id] and organizations.take(destination_id):
            taken[destination_id] += 1
            chosen.append(delivery_id)


def _choose_from_other_destinations(
    now, limit, destinations, allowance, taken, chosen, window, organizations, in_flight
) -> None:
    """The oldest due deliveries of destinations the first look did not reach.

    Those destinations are taken by how long their oldest due delivery has waited, so that a
    few busy destinations cannot keep taking the room left by a backlog from a quieter one; those
    of organizations with no room left are passed over, so that one tenant's many destinations
    cannot fill the look either, and so are those at their own max_concurrency or with their rate
    limit used up for this second, so that many slow or rate-limited receivers cannot.

    ``in_flight`` is the first look's read of the sends in flight (_lock_destinations), a few
    milliseconds old: it only chooses which destinations to lock (as the read of its own that this
    made before did, which was as old by the time they were locked). Their room is counted again
    once they are locked.
    """
    wanted = limit - len(chosen)
    postgresql = connection.vendor == "postgresql"
    # The organizations another claim holds are passed over too: chosen, their destinations would
    # take the look's places and give nothing (their locks only tried), and with a stalled holder
    # whose tenant's deliveries waited longest the claim came back empty claim after claim.
    full = [*organizations.full_anywhere(in_flight), *organizations.passed_over]
    # Destinations at their own max_concurrency are passed over as well, for the same reason: many
    # slow receivers, each with its sends in flight and deliveries older than the rest, filled the
    # look, were locked, had no room, and the claim came back empty while others' deliveries were
    # due. (Those whose rate limit is used up for this second the look itself leaves out.)
    exclude = [*allowance, *(destination_id for _, destination_id, cap, _, count in in_flight if count >= cap)]
    others = _waiting_longest(now, exclude=exclude, count=wanted, full_organizations=full) if postgresql else None
    if others is None:
        others = _waiting_longest_by_probes(now, exclude=exclude, count=wanted, full_organizations=full)
    _lock_destinations(set(others), destinations, allowance, window, organizations)
    if postgresql:
        rooms = [(d, min(allowance[d], wanted)) for d in others if allowance[d] > 0]
        _choose(_oldest_due_of(rooms, now), limit, allowance, taken, chosen, organizations)
        return
    for destination_id in others:  # the embedded mode (SQLite): a handful of destinations
        room = min(allowance[destination_id], limit - len(chosen))
        if room <= 0:
            continue
        candidates = list(
            _due_deliveries(now)
            .filter(
                destination_id=destination_id,
                destination__paused_at__isnull=True,
                destination__is_active=True,
                destination__organization__is_active=True,
            )
            .order_by("next_attempt_at", "id")
            .values_list("id", "destination_id")[:room]
        )
        _choose(candidates, limit, allowance, taken, chosen, organizations)


# How many destinations with pending deliveries _waiting_longest goes through before it leaves
# the choice to _waiting_longest_by_probes. A step of its walk costs about what three probes of
# the other way do, so the walk wins while fewer than about a third of the active destinations
# have deliveries waiting (the usual case: most have nothing pending); past this many, the walk
# stops and its few milliseconds are the price of not knowing beforehand.
WAITING_WALK_MAX_STEPS = 500

# The destinations that have waiting deliveries, found by skipping from one to the next along
# delivery_due_by_dest (PostgreSQL has no skip scan of its own before 18): one index probe per
# destination with pending deliveries, which also gives its oldest one, rather than one per
# active destination. A backlog or a back-off's thousands of rows at one destination are one
# probe too. ORDER BY both columns keeps the walk on the partial index (the plain
# destination_id index would go through every delivery ever sent to a destination to find a
# pending one). One row: how far the walk went, and the chosen destinations.
WAITING_LONGEST_SQL = f"""
WITH RECURSIVE waiting (destination_id, oldest, step) AS (
    (SELECT destination_id, next_attempt_at, 1 FROM webhooks_delivery
     WHERE status = '{Delivery.Status.PENDING}' ORDER BY destination_id, next_attempt_at LIMIT 1)
    UNION ALL
    SELECT following.destination_id, following.next_attempt_at, waiting.step + 1
    FROM waiting CROSS JOIN LATERAL (
        SELECT destination_id, next_attempt_at FROM webhooks_delivery
        WHERE status = '{Delivery.Status.PENDING}' AND destination_id > waiting.destination_id
        ORDER BY destination_id, next_attempt_at LIMIT 1
    ) AS following
    WHERE waiting.step < %(max_steps)s
)
SELECT
    (SELECT max(step) FROM waiting),
    ARRAY(
        SELECT waiting.destination_id FROM waiting
        JOIN webhooks_destination ON webhooks_destination.id = waiting.destination_id
        JOIN organizations_organization ON organizations_organization.id = webhooks_destination.organization_id
        WHERE webhooks_destination.is_active AND webhooks_destination.paused_at IS NULL
            AND organizations_organization.is_active
            AND waiting.oldest <= %(now)s AND NOT (waiting.destination_id = ANY(%(exclude)s::bigint[]))
            AND NOT (webhooks_destination.organization_id = ANY(%(full_organizations)s::bigint[]))
            AND NOT COALESCE(
                webhooks_destination.rate_limit_per_second > 0
                AND webhooks_destination.rate_window_started_at = %(window)s
                AND webhooks_destination.rate_window_count >= webhooks_destination.rate_limit_per_second,
                FALSE
            )
        ORDER BY waiting.oldest, waiting.destination_id
        LIMIT %(count)s
    )
"""


def _rate_window(now):
    """The second a claim at ``now`` counts against each destination's rate_limit_per_second."""
    return now.replace(microsecond=0)


def _waiting_longest(now, *, exclude: list[int], count: int, full_organizations: list[int] = ()) -> list[int] | None:
    """Up to ``count`` active, unpaused destinations not in ``exclude`` nor of ``full_organizations``
    with due deliveries, the one whose oldest due delivery has waited longest first (PostgreSQL);
    None when more than WAITING_WALK_MAX_STEPS destinations have deliveries waiting. Those whose
    rate limit is used up for ``now``'s second are left out: they would be locked for no send."""
    with connection.cursor() as cursor:
        cursor.execute(
            WAITING_LONGEST_SQL,
            {
                "max_steps": WAITING_WALK_MAX_STEPS,
                "now": now,
                "exclude": exclude,
                "count": count,
                "full_organizations": list(full_organizations),
                "window": _rate_window(now),
            },
        )
        steps, chosen = cursor.fetchone()
    if steps is not None and steps >= WAITING_WALK_MAX_STEPS:
        return None
    return chosen


def _waiting_longest_by_probes(now, *, exclude: list[int], count: int, full_organizations: list[int] = ()) -> list[int]:
    """What _waiting_longest finds (rate limits used up left out too), with an index probe per
    active destination: the embedded mode (SQLite), and PostgreSQL when many destinations have
    deliveries waiting."""
    oldest_due = (
        Delivery.objects.filter(destination=OuterRef("pk"), status=Delivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values("next_attempt_at")[:1]
    )
    # Destinations with nothing due sort last and are dropped here: a filter on the annotation
    # would make the database probe twice.
    ranked = (
        Destination.objects.filter(DESTINATION_SENDING)
        .exclude(pk__in=exclude)
        .exclude(organization_id__in=list(full_organizations))
        .exclude(
            rate_limit_per_second__gt=0,
            rate_window_started_at=_rate_window(now),
            rate_window_count__gte=F("rate_limit_per_second"),
        )
        .annotate(oldest_due=Subquery(oldest_due))
        .order_by(F("oldest_due").asc(nulls_last=True), "pk")
        .values_list("pk", "oldest_due")[:count]
    )
    return [pk for pk, oldest in ranked if oldest is not None]


# Up to ``room`` of each destination's oldest due deliveries in one query, in the order the
# destinations were chosen. The destinations are locked by now: checking them again here keeps
# out one paused or turned off since it was chosen.
OLDEST_DUE_OF_SQL = f"""
SELECT due.id, due.destination_id
FROM unnest(%s::bigint[], %s::integer[]) WITH ORDINALITY AS wanted (destination_id, room, rank)
JOIN webhooks_destination ON webhooks_destination.id = wanted.destination_id
JOIN organizations_organization ON organizations_organization.id = webhooks_destination.organization_id
CROSS JOIN LATERAL (
    SELECT id, destination_id, next_attempt_at FROM webhooks_delivery
    WHERE destination_id = wanted.destination_id AND status = '{Delivery.Status.PENDING}' AND next_attempt_at <= %s
    ORDER BY next_attempt_at, id
    LIMIT wanted.room
    FOR NO KEY UPDATE SKIP LOCKED
) AS due
WHERE webhooks_destination.is_active AND webhooks_destination.paused_at IS NULL AND organizations_organization.is_active
ORDER BY wanted.rank, due.next_attempt_at, due.id
"""


def _oldest_due_of(rooms: list[tuple[int, int]], now) -> list[tuple]:
    """(delivery id, destination id) of up to room oldest due deliveries of each destination (PostgreSQL)."""
    if not rooms:
        return []
    with connection.cursor() as cursor:
        cursor.execute(OLDEST_DUE_OF_SQL, [[d for d, _ in rooms], [room for _, room in rooms], now])
        return cursor.fetchall()


class _LockedDestination(NamedTuple):
    """What a claim reads of a destination it locked."""

    id: int
    organization_id: int
    is_active: bool
    paused_at: datetime | None
    max_concurrency: int
    rate_limit_per_second: int | None
    rate_window_started_at: datetime | None
    rate_window_count: int
    organization_active: bool
    organization_cap: int  # its organization's effective max_concurrency
    # Whether the claim holds its organization's claim lock (ORGANIZATION_CLAIM_LOCK_SPACE); always
    # in the embedded mode (SQLite), where one claim runs at a time.
    organization_held: bool = True


# Namespace of the transaction-scoped advisory locks that serialize claims per organization (the
# two-key form: apart from every single-key lock, and from the other namespaces' two-key ones).
ORGANIZATION_CLAIM_LOCK_SPACE = 0x686C6F63  # "hloc"

# How long a claim waits for an organization's claim lock before it gives up (see _claim_once).
# A claim holds these locks for the few milliseconds of its transaction: a wait past this is a
# holder that stalled mid-claim (its process stopped, its host paused, its session left idle in
# transaction by a partition, which can last until TCP keepalive gives up, hours). Unbounded, every
# dispatcher whose claim reached that tenant would wait with it, and deliveries stop for every
# tenant. Two seconds is hundreds of healthy claims' holds, so a busy tenant's claims still wait
# for one another; a claim that times out only passes that tenant over for its turn.
CLAIM_LOCK_TIMEOUT = "2s"

# The claim locks' second key is a 32-bit integer, organization ids are bigint: an organization's
# key is its id modulo this (its id itself below 2**31). Two organizations that share a key share
# the lock, serialized together; the order claims lock in is the keys' (see _lock_destinations).
ORGANIZATION_CLAIM_LOCK_KEYS = 2**31

# Never waited for: every organization is only tried (the claim after a timed-out wait).
NO_ORGANIZATION_WAITED_FOR = ORGANIZATION_CLAIM_LOCK_KEYS - 1


def organization_claim_lock_key(organization_id: int) -> int:
    """The second key of ``organization_id``'s claim lock (as LOCK_DESTINATIONS_SQL computes it)."""
    return organization_id % ORGANIZATION_CLAIM_LOCK_KEYS


# Lock the destinations (see _lock_destinations), then the claim locks of their organizations that
# may send, and read what the claim needs of them (PostgreSQL). The organizations are locked in
# ascending order of their locks' keys (the calls run over the sorted subquery's rows in turn),
# waiting for those whose key is above every one this claim holds already and only trying the others (see _lock_destinations).
#
# The wait is bounded by lock_timeout (CLAIM_LOCK_TIMEOUT), set in the statement itself (no round
# trip of its own) and put back once every lock is taken, so that no later statement of a caller's
# transaction inherits it. The order is made certain by what each step reads: the bound is set by
# the CTE the first WHEN of the locking CASE reads (a CASE's WHENs are taken in turn, and these
# volatile calls are never folded ahead), after the CTE that read the previous value; it is put
# back by a CTE whose one-time filter counts every row of organization_locks first, and which the
# outer query's one-time filter runs before any row is returned. A timed-out wait fails the
# statement, and the claim's transaction rolls back with the setting.
LOCK_DESTINATIONS_SQL = f"""
WITH locked AS MATERIALIZED (
    SELECT {", ".join(f"webhooks_destination.{name}" for name in _LockedDestination._fields[:-3])},
        organizations_organization.is_active AS organization_active,
        COALESCE(organizations_organization.max_concurrency, %(default_cap)s) AS organization_cap
    FROM webhooks_destination
    JOIN organizations_organization ON organizations_organization.id = webhooks_destination.organization_id
    WHERE webhooks_destination.id = ANY(%(ids)s::bigint[])
    ORDER BY webhooks_destination.id
    FOR NO KEY UPDATE OF webhooks_destination SKIP LOCKED
),
previous AS MATERIALIZED (SELECT current_setting('lock_timeout') AS lock_timeout),
bounded AS MATERIALIZED (
    SELECT previous.lock_timeout AS previous, set_config('lock_timeout', %(lock_timeout)s, true) AS lock_timeout
    FROM previous
),
organization_locks AS MATERIALIZED (
    SELECT sendable.organization_id,
        CASE WHEN (SELECT lock_timeout FROM bounded) IS NULL THEN NULL  -- (never: it sets the bound first)
            WHEN sendable.lock_key > %(held_up_to)s
            THEN pg_advisory_xact_lock(%(space)s, sendable.lock_key) IS NOT NULL
            ELSE pg_try_advisory_xact_lock(%(space)s, sendable.lock_key)
        END AS held
    FROM (
        SELECT DISTINCT organization_id, (organization_id %% {ORGANIZATION_CLAIM_LOCK_KEYS})::integer AS lock_key
        FROM locked
        WHERE is_active AND paused_at IS NULL AND organization_active
        ORDER BY lock_key, organization_id
    ) AS sendable
),
restored AS MATERIALIZED (
    SELECT set_config('lock_timeout', bounded.previous, true) AS lock_timeout FROM bounded
    WHERE (SELECT count(*) FROM organization_locks) >= 0
)
SELECT locked.*, COALESCE(organization_locks.held, FALSE)
FROM locked LEFT JOIN organization_locks ON organization_locks.organization_id = locked.organization_id
WHERE (SELECT lock_timeout FROM restored) IS NOT NULL
ORDER BY locked.id
"""


def _locked_destinations(ids: set[int], held_up_to: int = -1) -> list[_LockedDestination]:
    """Lock the destinations ``ids`` in id order, those locked by others passed over, and the claim
    locks of their organizations (PostgreSQL; ``held_up_to``: the highest key of the organizations'
    claim locks this claim holds already, see organization_claim_lock_key)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                LOCK_DESTINATIONS_SQL,
                {
                    "default_cap": settings.ORGANIZATION_MAX_CONCURRENCY,
                    "ids": sorted(ids),
                    "held_up_to": held_up_to,
                    "space": ORGANIZATION_CLAIM_LOCK_SPACE,
                    "lock_timeout": CLAIM_LOCK_TIMEOUT,
                },
            )
            return [_LockedDestination(*row) for row in cursor.fetchall()]
    locked = (
        Destination.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
        .filter(pk__in=ids)
        .order_by("pk")
        .annotate(
            organization_active=F("organization__is_active"),
            organization_cap=effective_max_concurrency("organization__"),
        )
        .values_list(*_LockedDestination._fields[:-1])
    )
    return [_LockedDestination(*row) for row in locked]


def _lock_destinations(ids: set[int], destinations: dict, allowance: dict, window, organizations) -> list[tuple]:
    """Lock the destinations and work out how many more deliveries each may take now.

    Locking serialises claims per destination, so caps hold across dispatchers. FOR NO KEY
    UPDATE: it must not block the fan-out inserting deliveries that reference the destination
    (their foreign-key check takes KEY SHARE, which FOR UPDATE would conflict with). SKIP
    LOCKED: a destination another dispatcher is claiming for is left to it this time (and
    rounds that lock in a different order cannot deadlock).

    The same statement then takes, on PostgreSQL, a transaction-scoped advisory lock per
    organization of the destinations that may send (ORGANIZATION_CLAIM_LOCK_SPACE), so that the
    organization's cap holds across dispatchers as well: without it, two dispatchers that locked
    different destinations of one tenant each counted its sends in flight, each saw the same room,
    and together claimed past its cap. These locks are waited for (up to CLAIM_LOCK_TIMEOUT, see
    _claim_once): passed over, the second dispatcher of a tenant with many destinations came back
    with nothing (and would stop, taking nothing due) while the first held the lock a few
    milliseconds. Deadlock-free: the destinations
    never wait (SKIP LOCKED) and a claim waits only for an organization whose lock's key is above
    every one it holds, taken in ascending order of the keys; the look beyond the backlog, which may reach organizations below one
    the first look holds, only tries those and passes over the ones another claim holds.

    Returns the sends in flight (_in_flight), read once the destinations and organizations are
    locked, in a statement of its own: that statement's snapshot is taken after the locks are held,
    so it sees every claim of another dispatcher that held one of them before (committed when it
    let go). Counted in the locking statement itself, they would be read with that statement's
    snapshot, taken before it reached the rows: a claim committed in between (its lock released, no
    row changed, so PostgreSQL does not look again) would go uncounted and the cap overrun.
    """
    if not ids:
        return []
    if organizations.may_wait:
        held_up_to = max((organization_claim_lock_key(held) for held in organizations.held), default=-1)
    else:
        held_up_to = NO_ORGANIZATION_WAITED_FOR
    locked_now = _locked_destinations(ids, held_up_to)
    organizations.held.update(
        destination.organization_id for destination in locked_now if destination.organization_held
    )
    locked = {destination.id: destination for destination in locked_now}
    in_flight = _in_flight()
    in_flight_of: dict[int, int] = defaultdict(int)
    for _, destination_id, _, _, count in in_flight:
        in_flight_of[destination_id] += count
    for destination_id in ids:
        destination = locked.get(destination_id)
        if (
            destination is None
            or not destination.is_active
            or destination.paused_at is not None
            or not destination.organization_active  # a suspended organization's wait as a paused one's
        ):
            allowance[destination_id] = 0
            continue
        if not destination.organization_held:  # another claim has its organization: left to it
            organizations.passed_over.add(destination.organization_id)
            allowance[destination_id] = 0
            continue
        destinations[destination_id] = destination
        organizations.add(destination_id, destination.organization_id, destination.organization_cap)
        room = destination.max_concurrency - in_flight_of[destination_id]
        if destination.rate_limit_per_second:
            used = destination.rate_window_count if destination.rate_window_started_at == window else 0
            room = min(room, destination.rate_limit_per_second - used)
        allowance[destination_id] = max(room, 0)
    organizations.count_in_flight(in_flight)
    return in_flight


INACTIVE_DESTINATION_ERROR = "the destination is inactive: not sent (retry once it is active again)"
# Why a retry, a replay or a bulk retry to a destination being deleted is refused (it is inactive
# too, but will never be active again).
DESTINATION_BEING_DELETED_ERROR = "the destination is being deleted: nothing more is sent to it"


def dead_letter_deliveries_of_inactive_destinations(now=None) -> int:
    """Dead-letter the waiting deliveries of inactive destinations; returns how many.

    An operator's "inactive" means "send nothing there": its deliveries would otherwise wait
    for ever, unclaimed, and keep their events past retention. Dead, they stay visible and can
    be retried in bulk once it is active again. Also catches deliveries a fan-out created just
    as the destination was turned off.
    """
    now = now or timezone.now()
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING,
        # Not those of a destination being deleted (inactive too): its deletion deletes them in
        # batches, where one UPDATE here would take all of them, however many, at once.
        destination_id__in=Destination.objects.filter(is_active=False, deletion_requested_at__isnull=True).values("pk"),
    ).update(
        status=Delivery.Status.DEAD,
        completed_at=now,
        next_attempt_at=None,
        claimed_at=None,
        last_error=INACTIVE_DESTINATION_ERROR,
    )


# --- Sending ------------------------------------------------------------------


def build_request_headers(delivery: Delivery, timestamp: int) -> dict[str, str]:
    event = delivery.event
    # Headers the sender's Connection header names belong to that hop too (RFC 9110 7.6.1).
    named_by_connection = {
        token.strip().lower()
        for name, value in event.headers.items()
        if name.lower() == "connection"
        for token in str(value).split(",")
    }
    # The destination's own headers (a gateway's key, basic auth) take the place of the provider's of
    # the same name; the platform's below (User-Agent, the signature) cannot be among them.
    custom = delivery.destination.custom_header_values()
    dropped = (
        HOP_BY_HOP_HEADERS
        | REQUEST_DESCRIBING_HEADERS
        | NOT_FORWARDED_HEADERS
        | named_by_connection
        | {name.lower() for name in custom}
    )
    headers = {
        # An event stored before names were kept as documented has "X-Github-Delivery".
        _latin1(documented_header_name(name)): _latin1(value)
        for name, value in event.headers.items()
        if name.lower() not in dropped and not name.lower().startswith(REQUEST_DESCRIBING_HEADER_PREFIXES)
    }
    headers.update(custom)
    # Retries keep the event's id so receivers can de-duplicate; a replay is a deliberate
    # new send and gets its own id so that a de-duplicating receiver processes it again.
    message_id = delivery.message_id
    headers.update(
        {
            "User-Agent": "Hookline-Webhooks/1.0",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            # Space-separated, one per valid secret: during a rotation's overlap the receiver
            # verifies with whichever secret it holds.
            "webhook-signature": " ".join(
                sign_standard_webhook(secret=secret, message_id=message_id, timestamp=timestamp, body=bytes(event.body))
                for secret in delivery.destination.signing_secrets()
            ),
        }
    )
    headers.setdefault("Content-Type", "application/json")
    return headers


@dataclass
class SendResult:
    started_at: object
    headers: dict[str, str]
    response: outbound.OutboundResponse
    # Names of the destination's custom headers among ``headers``: their values are credentials,
    # recorded masked.
    custom_header_names: frozenset[str] = frozenset()
    # Set when nothing was sent for a reason of the platform's own (a destination secret this
    # process cannot decrypt, a bound on DNS lookups): the delivery is put back unsent, see
    # _put_back_unsent, due again in ``unsent_retry_seconds`` (UNSENT_RETRY_SECONDS when None).
    unsent_reason: str | None = None
    unsent_retry_seconds: int | None = None
    # One of PUT_BACK_CAUSES: stored on the delivery (its waiting_for says it) and counted for /metrics.
    unsent_cause: str = "secret_unreadable"


# A delivery not sent because its destination's secret cannot be decrypted waits this long, then
# is claimed again: by then a rolling deploy of a new key has reached the worker, or not, and the
# health checks say why (services.secret_health).
UNSENT_RETRY_SECONDS = 60
# A delivery refused by a bound of the platform's own on DNS lookups (outbound.PlatformLookupsBusy:
# its organization's other destinations, or the whole process, have that many lookups waiting on
# DNS that does not answer) waits this long, doubled each time it is refused again in a row, up to
# UNSENT_RETRY_SECONDS: those lookups end with the resolver's timeout, within seconds, so the
# delivery goes out soon after; one refused for longer is tried once a minute, not every few
# seconds, and says so in its last_error (how many times in a row) and in the log.
#
# The run of refusals is the delivery's own (put_back_times, put_back_since), stored with it when
# it is put back, and read from the row its next claim returns, so it holds in whichever process
# claims it next. It lived in each process's memory: with several workers a delivery refused in
# one and claimed next by another started again at 5 s there, so a lasting refusal was tried every
# few seconds by the workers in turn instead of once a minute, and its last_error's count and the
# log's were each process's share of the run.
PLATFORM_LIMIT_RETRY_SECONDS = 5
# Deliveries put back unsent, counted by cause in the cache for every process (/metrics:
# hookline_deliveries_put_back_total): one put back now and then is nothing; a rate that holds
# says the platform keeps deliveries from going out (keys, or one tenant's unanswering DNS). The
# deliveries held now, by cause and since when, are the processing health's deliveries_held.
PUT_BACK_CAUSES = tuple(Delivery.PutBackCause.values)  # ("secret_unreadable", "dns_lookups_busy")
# What an attempt recorded, or a retry by hand, sets: the delivery is no longer held by the platform.
NOT_PUT_BACK = {"put_back_cause": None, "put_back_since": None, "put_back_times": None}
PUT_BACK_COUNT_KEY = "health:deliveries_put_back:{cause}"


def _unsent_reason(exc: Exception) -> str | None:
    """The delivery's last_error when ``exc`` is the platform's and not the receiver's, else None."""
    if not isinstance(exc, SecretNotReadable):
        return None
    what = (
        "is damaged (not a Fernet token)"
        if exc.malformed
        else "cannot be decrypted with this worker's FIELD_ENCRYPTION_KEYS (a new key being deployed, or a key missing)"
    )
    return (
        f"not sent: the destination's signing secret or custom headers {what}; the attempt is not counted "
        f"and the delivery is tried again in {UNSENT_RETRY_SECONDS} s"
    )


def _latin1(text: str) -> str:
    # HTTP header fields are latin-1 on the wire; a stored value may hold U+FFFD (see services.text).
    return text.encode("latin-1", errors="replace").decode("latin-1")


def send(delivery: Delivery) -> SendResult:
    """One HTTP attempt. Touches no database: it runs on the dispatcher's sending threads.

    Never raises: an attempt that cannot even be made is a failed attempt like any other,
    retried on the schedule, never a delivery left in flight; one that a destination secret no
    key decrypts stops is not an attempt at all (SendResult.unsent_reason).
    """
    started_at = timezone.now()
    try:
        with decrypting_for("delivery"):  # its fields may be read only now (one deferred)
            return _send(delivery, started_at)
    except SecretNotReadable as exc:
        logger.error("delivery %s: not sent, its destination's secret cannot be decrypted: %s", delivery.pk, exc)
        response = outbound.OutboundResponse(status=None, body="", duration_ms=0, error=type(exc).__name__)
        return SendResult(started_at=started_at, headers={}, response=response, unsent_reason=_unsent_reason(exc))


def _send(delivery: Delivery, started_at) -> SendResult:
    headers: dict[str, str] = {}
    custom_header_names: frozenset[str] = frozenset()
    try:
        custom_header_names = frozenset(delivery.destination.custom_header_values())
        headers = build_request_headers(delivery, int(time.time()))
        timeout = min(
            max(delivery.destination.timeout_seconds, Destination.MIN_TIMEOUT_SECONDS),
            settings.DELIVERY_MAX_TIMEOUT_SECONDS,
        )
        response = outbound.post(
            delivery.destination.url,
            body=bytes(delivery.event.body),
            headers=headers,
            timeout=timeout,
            organization_id=delivery.organization_id,
        )
    except SecretNotReadable:
        raise
    except Exception as exc:
        logger.exception("delivery %s: the attempt could not be made", delivery.pk)
        response = outbound.OutboundResponse(
            status=None, body="", duration_ms=0, error=f"the attempt could not be made: {exc.__class__.__name__}"
        )
    if response.platform_limit:
        return _refused_by_platform_limit(delivery, started_at, response)
    return SendResult(
        started_at=started_at, headers=headers, response=response, custom_header_names=custom_header_names
    )


def _refused_by_platform_limit(delivery: Delivery, started_at, response: outbound.OutboundResponse) -> SendResult:
    """Nothing was sent: a bound of the platform's own refused the send (outbound.PlatformLookupsBusy).

    Recorded as a failed attempt (as it was), another tenant's or the same tenant's other
    destinations' unanswering DNS used up this destination's retries, dead-lettered its deliveries,
    and counted against it, whose circuit breaker paused it and told its tenant that their receiver
    fails, though its own DNS answers. Put back unsent instead, as a secret that cannot be decrypted
    is (SendResult.unsent_reason), but due again within seconds: the lookups holding the bound end soon.
    """
    streak = _times_in_a_row(delivery, Delivery.PutBackCause.DNS_LOOKUPS_BUSY)
    delay = min(PLATFORM_LIMIT_RETRY_SECONDS * 2 ** min(streak - 1, 10), UNSENT_RETRY_SECONDS)
    in_a_row = f" ({streak} times in a row)" if streak > 1 else ""
    reason = (
        f"not sent{in_a_row}: {response.error}. A limit of the platform's own, not the receiver's: the attempt "
        f"is not counted and the delivery is tried again in {delay} s"
    )
    return SendResult(
        started_at=started_at,
        headers={},
        response=response,
        unsent_reason=reason,
        unsent_retry_seconds=delay,
        unsent_cause=Delivery.PutBackCause.DNS_LOOKUPS_BUSY,
    )


def _times_in_a_row(delivery: Delivery, cause: str) -> int:
    """How many times in a row ``delivery`` is put back for ``cause``, this one included: from its row
    as claimed (the claim returns it whole), whichever process put it back before."""
    return (delivery.put_back_times or 0) + 1 if delivery.put_back_cause == cause else 1


def record_results(results: Iterable[tuple[Delivery, SendResult]]) -> list[Delivery]:
    """Store the attempts and move each delivery on; update each destination's health.

    One result the database refuses must not leave the others of its batch in flight (the
    sweeper would release them and they would be sent again): the batch is then recorded
    one by one, and a result that still fails is recorded without the receiver's answer.
    """
    results = list(results)
    if not results:
        return []
    try:
        return _record_results(results)
    # The database's or its driver's: PEP 249 keeps InterfaceError (a connection closed under us,
    # or left in a state it cannot be used in) out of DatabaseError, and taken for one result's
    # bug below, the results were dropped and their deliveries sent again.
    except DatabaseOrConnectionError as exc:
        if _database_unreachable():
            # Not one row's trouble: nothing can be recorded now. The caller keeps the results
            # (the dispatcher records them once the database is back) rather than lose them,
            # which would have their deliveries sent again once released.
            raise DatabaseUnavailable from exc
        # The first pass waited RECORD_LOCK_TIMEOUT for any lock: the next ones barely wait, so
        # that a few results held up by a deletion cost the rest of the batch a second, not 15 s each.
        remaining = _without_deleted_deliveries(results)
        if len(remaining) < len(results):
            if not remaining:
                return []
            try:  # the deleted ones were the trouble: the rest is recorded as it is
                return _record_results(remaining, lock_timeout=RETRY_LOCK_TIMEOUT)
            except Exception:
                results = remaining
        if len(results) > 1:
            logger.exception("recording %d delivery results failed; recording them one by one", len(results))
    except Exception:
        # Not the database: a bug one result trips on (a value the policy code does not expect).
        # The batch holds other tenants' results: each is recorded alone, so that one result's
        # trouble keeps none of the others in flight, to be released and sent again.
        if len(results) > 1:
            logger.exception("recording %d delivery results failed; recording them one by one", len(results))
    recorded = []
    for result in results:
        try:
            recorded += _record_results([result], lock_timeout=RETRY_LOCK_TIMEOUT)
        except DatabaseOrConnectionError as exc:
            if _is_lock_timeout(exc):
                # Its row is held (a deletion under way): the answer cannot be stored either.
                # Left in flight: gone with the deletion, or released by the sweeper if it rolls back.
                logger.warning("delivery %s: its row is locked; its result is not recorded", result[0].pk)
                continue
            if _database_unreachable():
                # Gone partway through: the caller keeps the whole batch and records it once the
                # database is back, rather than have the rest released and sent again. The results
                # recorded before this one are not recorded twice (see _record_results).
                raise DatabaseUnavailable from exc
            recorded += _record_without_response(result)
        except Exception:
            recorded += _record_without_response(result)
    return recorded


class DatabaseUnavailable(Exception):
    """The database cannot be reached: results were not recorded and are still the caller's."""


def _database_unreachable() -> bool:
    """After a failed recording, whether the database itself is down (rather than one row)."""
    if connection.in_atomic_block:
        return False  # inside a caller's transaction: its own error handling decides
    connected = False
    try:
        connection.close_if_unusable_or_obsolete()
        connected = connection.connection is not None
        _select_one()
    except DatabaseOrConnectionError:
        if not connected:
            return True
        # The connection failed, not necessarily the database: Django keeps a connection whose
        # queries fail (an InterfaceError) once a rollback on it went through. Once more, on a new one.
        with contextlib.suppress(DatabaseOrConnectionError):
            connection.close()
        try:
            _select_one()
        except DatabaseOrConnectionError:
            return True
    return False


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _is_lock_timeout(exc: DatabaseOrConnectionError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "55P03"  # lock_not_available


def _without_deleted_deliveries(results: list[tuple[Delivery, SendResult]]) -> list[tuple[Delivery, SendResult]]:
    """The results whose delivery still exists. Deleting a source, destination or event while
    its deliveries are being sent is an ordinary action: their results have nothing left to
    record, which is not an error."""
    try:
        existing = set(Delivery.objects.filter(pk__in=[d.pk for d, _ in results]).values_list("pk", flat=True))
    except DatabaseOrConnectionError:  # the database itself is failing: the callers' fallbacks deal with it
        return results
    kept = [(delivery, sent) for delivery, sent in results if delivery.pk in existing]
    for delivery, _ in results:
        if delivery.pk not in existing:
            logger.info("delivery %s was deleted while being sent; its result is not recorded", delivery.pk)
    return kept


def _record_without_response(result: tuple[Delivery, SendResult]) -> list[Delivery]:
    delivery, sent = result
    logger.exception("delivery %s: its result could not be stored; storing it without the response", delivery.pk)
    bare = outbound.OutboundResponse(
        status=sent.response.status,
        body="",
        duration_ms=sent.response.duration_ms,
        error="the receiver's answer could not be stored",
        retry_after=sent.response.retry_after,
    )
    try:
        # An unsent one stays unsent (put back, not charged): only its reason matters then.
        bare_result = replace(sent, headers={}, response=bare, custom_header_names=frozenset())
        return _record_results([(delivery, bare_result)], lock_timeout=RETRY_LOCK_TIMEOUT)
    except DatabaseOrConnectionError as exc:
        if _database_unreachable():  # not this row's trouble: the caller keeps the batch (see record_results)
            raise DatabaseUnavailable from exc
        # E.g. the delivery was deleted meanwhile; the sweeper has the last word.
        logger.exception("delivery %s: its result could not be stored at all", delivery.pk)
        return []
    except Exception as exc:
        return _put_back_unrecorded(delivery, exc)


def _put_back_unrecorded(delivery: Delivery, exc: Exception) -> list[Delivery]:
    """The last resort for a result that even a bare recording trips on (a bug in the recording
    itself): take the delivery out of flight without it. Left in flight, the sweeper would release
    it and it would be sent again at once, every few minutes; here it waits for the schedule's next
    step, or is dead when the schedule is used up, and its attempt counts as made."""
    now = timezone.now()
    # The destination's own schedule and attempts when it came with the delivery; the platform's
    # schedule when it did not (loading it now could be what fails) or its policy is what tripped.
    destination = delivery.destination if Delivery.destination.is_cached(delivery) else None
    try:
        delay = retry_delay_seconds(
            delivery.scheduled_attempt_count,
            max_attempts=destination.max_attempts if destination is not None else None,
            schedule=retry_schedule_for(destination),
        )
    except Exception:
        delay = retry_delay_seconds(delivery.scheduled_attempt_count)
    error = f"its result could not be recorded ({type(exc).__name__})"
    fields = _outcome_fields(
        Outcome(Delivery.Status.PENDING, delay=delay, error=f"{error}; tried again later")
        if delay is not None
        else Outcome(Delivery.Status.DEAD, error=f"{error}: no retries left"),
        None,
        now,
    )
    logger.error("delivery %s: %s; taken out of flight without it", delivery.pk, error)
    try:
        Delivery.objects.filter(
            pk=delivery.pk, status=Delivery.Status.IN_FLIGHT, claimed_at=delivery.claimed_at
        ).update(**fields)
    except DatabaseOrConnectionError as db_exc:
        if _database_unreachable():
            raise DatabaseUnavailable from db_exc
        logger.exception("delivery %s: could not be taken out of flight; the sweeper releases it", delivery.pk)
        return []
    return [delivery]


# A result that waits on a row lock (a deletion of many deliveries holds theirs) gives up after
# this, so that record_results' fallbacks record the rest of its batch: waiting longer would keep
# every other result of the batch in flight until the sweeper takes them for lost, and sends them again.
RECORD_LOCK_TIMEOUT = "5s"
RETRY_LOCK_TIMEOUT = "100ms"  # the fallbacks', after the first pass waited the above


def _record_results(
    results: list[tuple[Delivery, SendResult]], *, lock_timeout: str = RECORD_LOCK_TIMEOUT
) -> list[Delivery]:
    """Record each result once, however many times it is handed in.

    A recording whose COMMIT went through but whose reply was lost looks failed to the caller,
    who records it again (record_results' fallbacks at once, the dispatcher once the database is
    back): the second time its delivery is no longer in flight on its claim and its attempt is
    already on record, so it writes nothing, moves no delivery and counts nothing against the
    destination again. Told by the guarded UPDATE's count, so the usual batch pays no extra query.
    """
    now = timezone.now()
    health: dict[int, list[bool]] = defaultdict(list)
    # The same send handed in twice in one batch is one send.
    sends = list({_claim_of(delivery): (delivery, result) for delivery, result in results}.values())
    unsent = [(delivery, result) for delivery, result in sends if result.unsent_reason]
    sends = [(delivery, result) for delivery, result in sends if not result.unsent_reason]
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
        # Deliveries that end the same way share one UPDATE (a batch of successes is one query).
        same_outcome: dict[tuple, list[tuple[Delivery, SendResult, Outcome]]] = defaultdict(list)
        for delivery, result in sends:
            outcome = decide_outcome(
                result.response,
                attempt_count=delivery.scheduled_attempt_count,
                destination=delivery.destination,
                age_seconds=(now - delivery.created_at).total_seconds(),
            )
            fields = _outcome_fields(outcome, result.response.status, now)
            fields["last_error"] = storable_text(fields["last_error"])
            same_outcome[(delivery.claimed_at, *sorted(fields.items()))].append((delivery, result, outcome))
        # Deliveries put back unsent are one more UPDATE each, in the same id order.
        if len(same_outcome) + len(unsent) > 1:
            _lock_in_id_order([delivery.pk for delivery, _ in sends + unsent])
        put_back = _put_back_unsent(unsent, now)
        unrecorded: list[tuple[Delivery, SendResult, Outcome]] = []
        not_all_finished: list[tuple[Delivery, SendResult, Outcome]] = []
        for (claimed_at, *fields_items), group in same_outcome.items():
            # Only our claim may be finished: if the sweeper released it meanwhile (and another
            # dispatcher claimed it again), that newer claim's own result decides, not this one.
            # A row another recording of the same send holds is waited for, then seen finished.
            fields = dict(fields_items)
            if fields["status"] == Delivery.Status.SUCCEEDED:
                fields["latency"] = _latency_since_receipt(now)
            finished = Delivery.objects.filter(
                pk__in=[delivery.pk for delivery, _, _ in group],
                status=Delivery.Status.IN_FLIGHT,
                claimed_at=claimed_at,
            ).update(**fields)
            (unrecorded if finished == len(group) else not_all_finished).extend(group)
        if not_all_finished:
            # Some were no longer ours to finish: recorded already (a COMMIT whose reply was lost),
            # or released and claimed again. A send still happened either way, so it stays on
            # record under its own attempt number (a newer claim has the next one), unless an
            # earlier recording of it committed. Rare: the usual batch costs no query for this.
            on_record = _attempts_on_record([delivery for delivery, _, _ in not_all_finished])
            unrecorded += [send for send in not_all_finished if (send[0].pk, send[0].attempt_count) not in on_record]
        DeliveryAttempt.objects.bulk_create(
            [
                DeliveryAttempt(
                    organization_id=delivery.organization_id,
                    delivery_id=delivery.pk,
                    attempt_number=delivery.attempt_count,
                    started_at=result.started_at,
                    duration_ms=result.response.duration_ms,
                    request_headers={
                        storable_text(k): storable_text(v)
                        for k, v in masked_custom_headers(result.headers, result.custom_header_names).items()
                        if k.lower() != "webhook-signature"
                    },
                    response_status=result.response.status,
                    response_body=storable_text(result.response.body),
                    response_truncated=not result.response.body_complete,
                    error=storable_text(result.response.error)[:500],
                )
                for delivery, result, _ in unrecorded
            ],
            # A send already on record (attempt_delivery_number) stays as it was recorded first.
            ignore_conflicts=True,
        )
        for delivery, _, outcome in unrecorded:
            health[delivery.destination_id].append(outcome.status == Delivery.Status.SUCCEEDED)
        # In id order, so that two dispatchers recording for the same destinations cannot deadlock.
        tripped = [
            destination
            for destination_id, successes in sorted(health.items())
            if (destination := _update_destination_health(destination_id, successes, now)) is not None
        ]
        # Audited once every destination is locked: the audit log's lock, one for the platform and
        # held to the commit, taken after the first trip, would be held while this waits for the next
        # destination's row, whose pause, resume or edit holds it and waits for the audit lock.
        for destination in tripped:
            _audit_tripped(destination)
        paused = [destination.pk for destination in tripped]
    # Only once committed: should this fail, the objects keep their claim for a retry of the recording.
    for (_, *fields_items), group in same_outcome.items():
        for delivery, _, _ in group:
            for name, value in fields_items:
                setattr(delivery, name, value)
    for delivery, fields in put_back:
        for name, value in fields.items():
            setattr(delivery, name, value)
        delivery.attempt_count -= 1
    for destination_id in paused:
        transaction.on_commit(lambda destination_id=destination_id: _alert_paused(destination_id))
    transaction.on_commit(lambda: _log_attempts(unrecorded))
    return [delivery for delivery, _ in results]


def _put_back_unsent(unsent: list[tuple[Delivery, SendResult]], now) -> list[tuple[Delivery, dict]]:
    """Put deliveries that were not sent for the platform's own reason (SendResult.unsent_reason)
    back to pending, due again in their result's unsent_retry_seconds, their claim's attempt uncounted.

    A secret this worker cannot decrypt says nothing about the receiver: recorded as a failed
    attempt (as it was), it used up the delivery's retries, dead-lettering it while the keys were
    wrong, and counted against the destination, whose circuit breaker paused it and told its
    tenant that their receiver fails; so did a send refused by the platform's own bound on DNS
    lookups (_refused_by_platform_limit). No attempt row either: nothing was sent (the delivery's
    last_error says why). Only deliveries still on their claim: one released meanwhile is another
    claim's. The cause is stored on the delivery, with when its run of put-backs for that cause began
    and its length: the platform's doing, not the receiver's, as every surface that says what it waits
    for shows (delivery_waits), until an attempt is recorded. Returns each delivery put back with the
    fields it was given."""
    put_back = []
    causes: Counter = Counter()
    for delivery, result in unsent:
        delay = UNSENT_RETRY_SECONDS if result.unsent_retry_seconds is None else result.unsent_retry_seconds
        same_cause = delivery.put_back_cause == result.unsent_cause
        fields = {
            "status": Delivery.Status.PENDING,
            "next_attempt_at": now + timedelta(seconds=delay),
            "last_error": storable_text(result.unsent_reason)[:500],
            "claimed_at": None,
            "claimed_by": None,
            "put_back_cause": result.unsent_cause,
            "put_back_since": delivery.put_back_since if same_cause and delivery.put_back_since else now,
            "put_back_times": _times_in_a_row(delivery, result.unsent_cause),
        }
        if Delivery.objects.filter(
            pk=delivery.pk, status=Delivery.Status.IN_FLIGHT, claimed_at=delivery.claimed_at
        ).update(attempt_count=F("attempt_count") - 1, **fields):
            put_back.append((delivery, fields))
            causes[result.unsent_cause] += 1
            transaction.on_commit(
                lambda delivery=delivery, reason=fields["last_error"]: logger.warning(
                    "delivery %s of event %s: organization %s destination %s: %s",
                    delivery.pk,
                    delivery.event_id,
                    delivery.organization_id,
                    delivery.destination_id,
                    reason,
                )
            )
    if causes:
        transaction.on_commit(lambda: _count_put_back(causes))
    return put_back


def _count_put_back(causes: Counter) -> None:
    """Add to the shared counts of deliveries put back unsent. Never raises: the cache down loses a count only."""
    for cause, count in causes.items():
        key = PUT_BACK_COUNT_KEY.format(cause=cause)
        try:
            try:
                cache.incr(key, count)
            except ValueError:  # not there yet (or the cache was emptied)
                if not cache.add(key, count, timeout=None):
                    cache.incr(key, count)
        except Exception as exc:
            logger.debug("could not count deliveries put back: %s", exc)


def put_back_counts() -> dict[str, int]:
    """Deliveries put back unsent since the cache was last emptied, by cause, every process's;
    raises if the cache does not answer."""
    found = cache.get_many([PUT_BACK_COUNT_KEY.format(cause=cause) for cause in PUT_BACK_CAUSES])
    return {cause: int(found.get(PUT_BACK_COUNT_KEY.format(cause=cause), 0)) for cause in PUT_BACK_CAUSES}


def _log_attempts(recorded: list[tuple[Delivery, SendResult, Outcome]]) -> None:
    """One line per attempt recorded, with what comes of it: found by the delivery's id, its event's
    or the provider's event id (see README, "Tracing a webhook").

    INFO whatever the receiver answered: a tenant's receiver failing is the tenant's to see (on
    its pages, and by the alerts), not an error of this deployment's. The destination is named by
    its id, never its URL (whose query string may hold the receiver's token), and the error is
    outbound's own words (status, timeout, connection failure), never the receiver's body."""
    for delivery, result, outcome in recorded:
        response = result.response
        answer = f"HTTP {response.status}" if response.status is not None else (response.error or "no answer")
        if outcome.status == Delivery.Status.SUCCEEDED:
            then = "succeeded"
        elif outcome.status == Delivery.Status.PENDING:
            then = f"retry in {duration_words(outcome.delay)}"
        else:
            then = f"{outcome.status}: {outcome.error}"
        # The event comes with a claimed delivery; one that could not be loaded to be sent came without it.
        provider_event_id = delivery.event.provider_event_id if Delivery.event.is_cached(delivery) else None
        logger.info(
            "delivery %s of event %s attempt %s: organization %s destination %s provider event %s: %s in %d ms, %s",
            delivery.pk,
            delivery.event_id,
            delivery.attempt_count,
            delivery.organization_id,
            delivery.destination_id,
            loggable_text(provider_event_id),
            answer,
            response.duration_ms,
            then,
        )


def _lock_in_id_order(delivery_ids: list) -> None:
    """Lock the rows a recording is about to finish, in id order, before its UPDATEs.

    The UPDATEs go by outcome, so together they lock rows out of id order: against another
    transaction that locks some of the same rows in id order (the sweeper releasing lost claims,
    a deletion), that is a lock cycle, which PostgreSQL breaks by cancelling one side after a
    second, and the recording falls back to one result at a time. Called only when there is more
    than one UPDATE (a round trip, about 0.2 ms): a batch that ended one way is one UPDATE, whose
    scan of the primary key's index visits the ids in order (PostgreSQL sorts an ``= ANY`` list).
    Only rows still in flight: one finished or released meanwhile is not this recording's to wait for.
    """
    if connection.vendor != "postgresql":
        return  # SQLite serializes writers
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Delivery._meta.db_table} WHERE id = ANY(%s) AND status = %s"
            " ORDER BY id FOR NO KEY UPDATE",
            [sorted(set(delivery_ids)), Delivery.Status.IN_FLIGHT],
        )


def _claim_of(delivery: Delivery) -> tuple:
    """What tells one claim of a delivery from the next: each claim dates it and counts one more attempt."""
    return (delivery.pk, delivery.claimed_at, delivery.attempt_count)


def _attempts_on_record(deliveries: list[Delivery]) -> set[tuple]:
    """(delivery id, attempt number) of the attempts already recorded for ``deliveries``. Each
    claim numbers its attempt anew (attempt_count goes up with it), so a number on record means
    that very send was recorded before."""
    if not deliveries:
        return set()
    return set(
        DeliveryAttempt.objects.filter(
            delivery_id__in={delivery.pk for delivery in deliveries},
            attempt_number__in={delivery.attempt_count for delivery in deliveries},
        ).values_list("delivery_id", "attempt_number")
    )


def _outcome_fields(outcome: Outcome, status_code: int | None, now) -> dict:
    fields = {
        "last_status_code": status_code,
        "last_error": outcome.error[:500],
        "claimed_at": None,
        "claimed_by": None,
        **NOT_PUT_BACK,  # an attempt was made: whatever waits now is the receiver's doing
    }
    if outcome.status == Delivery.Status.PENDING:
        fields.update(status=Delivery.Status.PENDING, next_attempt_at=now + timedelta(seconds=outcome.delay))
    else:
        fields.update(status=outcome.status, completed_at=now, next_attempt_at=None)
    return fields


def _latency_since_receipt(completed_at: datetime) -> ExpressionWrapper:
    """A succeeded delivery's latency, ``completed_at`` less its event's receipt, for the UPDATE that
    records the success: read in that statement (the event's primary key, a row the worker has just
    read to send it), so that a batch of successes stays one UPDATE. The overview's percentiles read it."""
    received_at = WebhookEvent.objects.filter(pk=OuterRef("event_id")).values("received_at")[:1]
    return ExpressionWrapper(
        Value(completed_at, output_field=DateTimeField()) - Subquery(received_at, output_field=DateTimeField()),
        output_field=DurationField(),
    )


def _update_destination_health(destination_id: int, successes: list[bool], now) -> Destination | None:
    """Count consecutive failures; pause the destination when the breaker trips. The destination if
    it paused now (for the caller to audit, see _audit_tripped)."""
    if all(successes):
        Destination.objects.filter(pk=destination_id, consecutive_failures__gt=0).update(
            consecutive_failures=0, failing_since=None
        )
        return None
    # OF the row itself: the model's ordering joins its organization, whose row would be locked too.
    destination = (
        Destination.objects.select_for_update(no_key=True, of=("self",))
        .defer(*DESTINATION_ENCRYPTED_FIELDS)
        .filter(pk=destination_id)
        .first()
    )
    if destination is None:  # deleted while being sent: its deliveries went with it (see record_results)
        return None
    if destination.being_deleted:
        # A send in flight when its deletion was asked for: nothing more is sent to it, so there is
        # no breaker to trip, and a pause would email its admins about a destination they deleted.
        return None
    for succeeded in successes:
        if succeeded:
            destination.consecutive_failures, destination.failing_since = 0, None
        else:
            destination.consecutive_failures += 1
            destination.failing_since = destination.failing_since or now
    tripped = (
        destination.paused_at is None
        and destination.consecutive_failures >= settings.CIRCUIT_BREAKER_FAILURES
        and now - destination.failing_since >= timedelta(seconds=settings.CIRCUIT_BREAKER_PERIOD_SECONDS)
    )
    if tripped:
        destination.paused_at = now
        destination.pause_notice_due_at = now  # sent after the commit, else by the sweeper
        destination.pause_reason = (
            f"paused automatically after {destination.consecutive_failures} consecutive failed attempts "
            f"since {destination.failing_since:%Y-%m-%d %H:%M} UTC"
        )
    destination.save(
        update_fields=["consecutive_failures", "failing_since", "paused_at", "pause_reason", "pause_notice_due_at"]
    )
    return destination if tripped else None


def _audit_tripped(destination: Destination) -> None:
    audit_record(
        action="destination.paused",
        organization=destination.organization,
        target=destination,
        changes={"reason": destination.pause_reason},
    )


def _alert_paused(destination_id: int) -> None:
    from .alerts import alert_destination_paused

    try:
        alert_destination_paused(destination_id)
    except Exception:  # mail trouble must not undo a delivery result
        logger.exception("could not send the paused-destination alert")


# --- The dispatcher -----------------------------------------------------------


def _dispatch_flag(slot: int) -> str:
    return DISPATCH_FLAG_KEY if slot == 0 else f"{DISPATCH_FLAG_KEY}:{slot}"


class _DispatchFlag:
    """A running dispatcher's flag: set again only once DISPATCH_FLAG_REFRESH_SECONDS have passed
    since it was last set, and always after it was cleared."""

    def __init__(self, slot: int):
        self.key = _dispatch_flag(slot)
        self.set_at: float | None = None  # the monotonic clock just before it was last set

    def keep(self) -> None:
        now = time.monotonic()
        if self.set_at is None or now - self.set_at >= DISPATCH_FLAG_REFRESH_SECONDS:
            set_flag(self.key, DISPATCH_FLAG_TTL)
            self.set_at = now

    def clear(self) -> None:
        clear_flag(self.key)
        self.set_at = None


def schedule_dispatch(slot: int = 0) -> None:
    """Make sure a dispatcher runs soon; one message serves any number of due deliveries.

    Slot 0 is the dispatcher every caller relies on. While it finds a backlog it starts the
    next slot, up to ``DELIVERY_DISPATCHERS``, so that a backlog uses every worker process.
    """
    from webhooks.tasks import dispatch_deliveries

    schedule_once(_dispatch_flag(slot), DISPATCH_FLAG_TTL, dispatch_deliveries.s(slot))


# How long past its deadline a dispatcher keeps results it could not record for the database
# to come back, when its claims are judged by their age (its mark not kept: the cache down) or
# the worker is shutting down; then their deliveries are released and sent again, as after a
# crash. With its mark kept it holds each up to unrecorded_hold_seconds() after its claim.
UNRECORDED_GRACE_SECONDS = 30.0
DATABASE_RETRY_SECONDS = 1.0


def _claim_unless_the_database_is_down(limit: int, *, keeping: bool, owner: str) -> list[Delivery]:
    """A dispatcher holding sends or unrecorded results keeps going through a database outage."""
    try:
        return claim_due_deliveries(limit, owner=owner)
    except DatabaseOrConnectionError as exc:
        if not keeping:
            raise  # nothing held: the task fails, and the sweeper starts another when it is back
        logger.warning("claiming failed (a database error); trying again next turn: %s", exc)
        return []


def _record_or_keep(results: list[tuple[Delivery, SendResult]]) -> list[tuple[Delivery, SendResult]]:
    """Record ``results``; while the database is down, give them back to try again next turn.

    Some of them may have been recorded after all (a COMMIT whose reply was lost): recording
    them again writes nothing (see _record_results)."""
    if not results:
        return []
    try:
        record_results(results)
    except DatabaseUnavailable:
        logger.warning("database unavailable: %d delivery results kept until it is back", len(results))
        time.sleep(DATABASE_RETRY_SECONDS)
        return results
    return []


def _still_worth_holding(
    unrecorded: list[tuple[Delivery, SendResult]], claimed_since: dict, *, deadline: float, owner: ClaimOwner
) -> list[tuple[Delivery, SendResult]]:
    """Those of ``unrecorded`` the dispatcher keeps trying to record; the rest are given up on.

    While the run's mark is kept the sweeper leaves its claims alone up to
    LIVE_CLAIM_MAX_SECONDS, so each result is held up to unrecorded_hold_seconds() after its
    claim (``claimed_since``: the monotonic clock just before it was asked for). Without the
    mark the sweeper judges the claims by their age, and on a worker's shutdown the run must
    end: then all are given up UNRECORDED_GRACE_SECONDS past the deadline, as before marks.
    A result given up on leaves its delivery in flight: released by the sweeper (once the
    run's mark is gone, or by its age) and sent again.
    """
    now = time.monotonic()
    if now >= deadline + UNRECORDED_GRACE_SECONDS and (worker_is_stopping() or not owner.mark_kept()):
        kept = []
    else:
        hold = unrecorded_hold_seconds()
        kept = [(delivery, sent) for delivery, sent in unrecorded if now - claimed_since[delivery.pk] < hold]
    if len(kept) < len(unrecorded):
        logger.error(
            "the database stayed unavailable: %d delivery results not recorded; they will be sent again",
            len(unrecorded) - len(kept),
        )
    return kept


def dispatcher_time_limits() -> tuple[float, float]:
    """The dispatch task's Celery time limits (soft, hard): above the longest a run lasts.

    A run claims until its deadline (DISPATCHER_MAX_SECONDS), its last sends end within
    DELIVERY_MAX_TIMEOUT_SECONDS, and it may hold their results for unrecorded_hold_seconds()
    after their claims (or UNRECORDED_GRACE_SECONDS past the deadline). The tasks' usual limits
    (CELERY_TASK_SOFT_TIME_LIMIT, 120 s) would end it first while the database is down: the soft
    limit's exception ends the run and its held results are lost, their deliveries sent again.
    A minute more for the run's lag; the hard limit as far past the soft one as the usual pair.
    """
    held = max(unrecorded_hold_seconds(), settings.DELIVERY_MAX_TIMEOUT_SECONDS + UNRECORDED_GRACE_SECONDS)
    soft = max(float(settings.CELERY_TASK_SOFT_TIME_LIMIT), settings.DISPATCHER_MAX_SECONDS + held + 60)
    return soft, soft + settings.CELERY_TASK_TIME_LIMIT - settings.CELERY_TASK_SOFT_TIME_LIMIT


def dispatch_due_deliveries(
    *, max_seconds: float | None = None, threads: int | None = None, slot: int = 0, linger_seconds: float | None = None
) -> int:
    """Send due deliveries until none is left (or ``max_seconds`` pass); returns how many were attempted.

    Slot 0, once idle, keeps looking every ``LINGER_POLL_SECONDS`` for ``linger_seconds``
    (``DISPATCHER_LINGER_SECONDS``) before it ends, so that a steady stream of webhooks is
    served by one running dispatcher rather than a message and a task start each.
    """
    linger_seconds = settings.DISPATCHER_LINGER_SECONDS if linger_seconds is None else linger_seconds
    flag = _DispatchFlag(slot)
    next_slot = slot + 1 if slot + 1 < settings.DELIVERY_DISPATCHERS else None
    max_seconds = settings.DISPATCHER_MAX_SECONDS if max_seconds is None else max_seconds
    threads = threads or settings.DELIVERY_THREADS
    deadline = time.monotonic() + max_seconds
    pending: dict[Future, Delivery] = {}
    unrecorded: list[tuple[Delivery, SendResult]] = []  # sent, not recorded: the database is down
    claimed_since: dict = {}  # delivery id -> the monotonic clock just before its claim was asked for
    attempted = 0
    # A claim costs the same few queries for one delivery or many: wait until a quarter of the
    # threads are free before claiming again, unless nothing is in flight.
    claim_batch = max(1, threads // 4)
    idle_since = None
    # The owner's mark keeps this run's claims from the sweeper while it cannot record them (the
    # database down or frozen); it goes once the run ends, after the pool's last sends.
    with ClaimOwner() as owner, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deliver") as pool:
        while True:
            if worker_is_stopping():
                # Claim nothing more: finish and record what is being sent, and a fresh task on
                # another (or the restarted) worker takes the rest, as at the deadline.
                deadline = min(deadline, time.monotonic())
            flag.keep()
            # Results held through an outage first: the sooner they are in, the less chance the
            # sweeper takes their deliveries for lost.
            unrecorded = _record_or_keep(unrecorded)
            claimed = []
            free = threads - len(pending)
            if time.monotonic() < deadline and (free >= claim_batch or not pending):
                asked_at = time.monotonic()
                claimed = _claim_unless_the_database_is_down(free, keeping=bool(pending or unrecorded), owner=owner.id)
                claimed_since.update((delivery.pk, asked_at) for delivery in claimed)
                if next_slot is not None and claimed and len(claimed) == free:
                    schedule_dispatch(next_slot)  # a backlog: let another worker process help
                for delivery in claimed:
                    pending[pool.submit(send, delivery)] = delivery
            if claimed or pending:
                idle_since = None
            elif slot == 0 and not unrecorded and time.monotonic() < deadline:
                # Idle: keep looking a little (flag still set) rather than end and be started
                # again by the next event, which costs a message and a task start per webhook.
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since < linger_seconds:
                    time.sleep(settings.LINGER_POLL_SECONDS)
                    continue
            if not pending and not unrecorded:
                if time.monotonic() >= deadline:
                    flag.clear()
                    if Delivery.objects.filter(
                        status=Delivery.Status.PENDING, next_attempt_at__lte=timezone.now()
                    ).exists():
                        schedule_dispatch(slot)  # a fresh task continues, so no task outlives its time limit
                    return attempted
                # Clear the flag, then look once more (see services.scheduling).
                flag.clear()
                asked_at = time.monotonic()
                claimed = claim_due_deliveries(threads, owner=owner.id)
                if not claimed:
                    return attempted
                claimed_since = {delivery.pk: asked_at for delivery in claimed}  # nothing else is held
                flag.keep()
                for delivery in claimed:
                    pending[pool.submit(send, delivery)] = delivery
            done, _ = wait(pending, timeout=settings.DISPATCHER_POLL_SECONDS, return_when=FIRST_COMPLETED)
            finished = [(pending.pop(future), future.result()) for future in done]
            attempted += len(finished)
            unrecorded = _record_or_keep(unrecorded + finished)
            if unrecorded:
                unrecorded = _still_worth_holding(unrecorded, claimed_since, deadline=deadline, owner=owner)
            if finished:  # forget the claims that are over
                held = {delivery.pk for delivery in pending.values()} | {delivery.pk for delivery, _ in unrecorded}
                claimed_since = {pk: asked_at for pk, asked_at in claimed_since.items() if pk in held}


# --- Manual operations ----------------------------------------------------------


class DeliveryRetryError(ValueError):
    """The delivery cannot be retried by hand (message is safe to show)."""


class DeliveryGone(DeliveryRetryError):
    """The delivery was deleted after it was looked up (its destination's or organization's deletion,
    retention): the API answers 404, as it would have had it been asked a moment later."""


# The destinations the dispatcher sends to: active, not paused, and of an active organization (a
# suspended one, or one being deleted, is inactive). Which of these holds a destination's
# deliveries is delivery_waits.delivery_hold's to say; the admin's "Sending" filter is this rule too.
DESTINATION_SENDING = Q(is_active=True, paused_at__isnull=True, organization__is_active=True)

# manual_attempts after a retry by hand is asked for. The first attempt is the schedule's own,
# so after k attempts at most k - 1 were by hand; one more makes it k, the attempt to come. A
# delivery not yet tried, or one whose retry is already waiting (a second click, a paused
# destination), is not counted again.
MANUAL_ATTEMPT_ASKED = Case(
    When(manual_attempts__lt=F("attempt_count"), then=F("manual_attempts") + 1),
    default=F("manual_attempts"),
    output_field=PositiveIntegerField(),
)


def revived_last_outcome() -> dict:
    """The last_status_code and last_error of a delivery retried by hand or in bulk (as UPDATE fields).

    A dead one's last_error is why it died ("HTTP 500: no retries left", an inactive destination):
    kept, a pending delivery would say both that it is tried again now and that it is not. It gets
    what record_results leaves on a delivery waiting for a retry after its last attempt: that
    attempt's error, or "HTTP <status>", and nothing when it died unsent. A waiting one keeps its
    own. Subqueries on the latest attempt (by the attempt_delivery_number index), so a bulk retry's
    batch is still one UPDATE; they read the row as it was before the UPDATE, still dead.
    """
    latest = DeliveryAttempt.objects.filter(delivery_id=OuterRef("pk")).order_by("-attempt_number")
    attempt_error = Case(
        When(~Q(error=""), then=F("error")),
        When(response_status__isnull=False, then=Concat(Value("HTTP "), Cast("response_status", CharField()))),
        default=Value(""),
        output_field=CharField(),
    )
    dead = Q(status=Delivery.Status.DEAD)
    return {
        "last_status_code": Case(
            When(dead, then=Subquery(latest.values("response_status")[:1])),
            default=F("last_status_code"),
        ),
        "last_error": Case(
            When(dead, then=Coalesce(Subquery(latest.annotate(shown=attempt_error).values("shown")[:1]), Value(""))),
            default=F("last_error"),
            output_field=CharField(),
        ),
    }


@transaction.atomic
def delivery_retry(*, delivery: Delivery, actor=None) -> Delivery:
    """Send a dead or waiting delivery again now (one more attempt, on top of the schedule)."""
    owners = Delivery.objects.filter(pk=delivery.pk).values("organization_id", "event__source_id").first()
    if owners is None:
        raise DeliveryGone("the delivery no longer exists: it was deleted meanwhile")
    # Made pending, one of an organization or a source being deleted would wait unsent until the
    # deletion takes it, or be dead-lettered unsent: "queued" would be untrue. Checked under locks
    # that the deletions' requests wait for (and this for them): read plainly, a request committed
    # between the check and the update let the retry through. The organization first, as the
    # retention run's give-up locks it and then its deliveries; both before the delivery's row.
    if not lock_organization_unless_being_deleted(owners["organization_id"]):
        raise DeliveryRetryError("its organization is being deleted: nothing more is sent")
    if not lock_source_unless_being_deleted(owners["event__source_id"]):
        raise DeliveryRetryError("its event's source is being deleted: its events are not sent again")
    locked = Delivery.objects.select_for_update().filter(pk=delivery.pk).first()
    if locked is None:
        raise DeliveryGone("the delivery no longer exists: it was deleted meanwhile")
    if locked.status in (Delivery.Status.SUCCEEDED, Delivery.Status.IN_FLIGHT):
        state = "already succeeded" if locked.status == Delivery.Status.SUCCEEDED else "is being sent right now"
        raise DeliveryRetryError(f"the delivery {state}; nothing to retry")
    # Held against its deletion's request (FOR KEY SHARE, which the request's FOR UPDATE waits for),
    # after the delivery's row as the dispatcher takes them: read plainly, a request committed
    # meanwhile left the delivery queued for a destination sent nothing, its deletion under way.
    held = lock_destinations_against_deletion([locked.destination_id])
    state = Destination.objects.filter(pk=locked.destination_id).values("is_active", "deletion_requested_at").first()
    if not held or (state and state["deletion_requested_at"] is not None):
        raise DeliveryRetryError(f"its {DESTINATION_BEING_DELETED_ERROR.removeprefix('the ')}")
    if not state or not state["is_active"]:
        raise DeliveryRetryError("its destination is inactive: it is sent nothing until it is active again")
    previous = locked.status
    Delivery.objects.filter(pk=locked.pk).update(
        status=Delivery.Status.PENDING,
        next_attempt_at=timezone.now(),
        completed_at=None,
        latency=None,
        manual_attempts=MANUAL_ATTEMPT_ASKED,
        bulk_retry=None,  # retried by hand: what happens now is no bulk retry's outcome
        **revived_last_outcome(),
        **NOT_PUT_BACK,  # asked for now: a platform's hold starts again, if it still holds, at its first delay
    )
    previous_error = locked.last_error
    locked.refresh_from_db()
    changes = {"status": [previous, Delivery.Status.PENDING]}
    if locked.last_error != previous_error:
        # Why it died is no longer on the delivery; the entry of the retry keeps it.
        changes["last_error"] = [previous_error, locked.last_error]
    audit_record(
        action="delivery.retried",
        organization=locked.organization,
        actor=actor,
        target=locked,
        target_label=f"{locked.event} → {locked.destination.name}",
        changes=changes,
    )
    transaction.on_commit(schedule_dispatch)
    return locked
