"""Turning received events into deliveries, and the sweeper that makes sure nothing is left behind."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from webhooks.models import Delivery, Subscription, WebhookEvent

from .alerts import send_owed_pause_emails
from .delivery import dead_letter_deliveries_of_inactive_destinations, release_lost_claims, schedule_dispatch
from .lifecycle import record_usage
from .operations import resume_stalled_bulk_retries
from .organization_deletion import resume_organization_deletions
from .row_locks import lock_destinations_against_deletion
from .scheduling import clear_flag, schedule_once, set_flag, wait_before_last_look, worker_is_stopping
from .source_deletion import resume_source_deletions

logger = logging.getLogger(__name__)

# While this key exists a processing task is queued or running, so ingest
# requests skip publishing another one: one Celery message serves a burst.
PROCESSING_SCHEDULED_KEY = "processing:scheduled"
PROCESSING_SCHEDULED_TTL = 5
EVENT_BATCH_SIZE = 100
# One processing loop runs at a time, holding a lease in the cache: another process_events
# message (a sweeper's, a hand-over racing a loop that saw new work) ends at once rather than
# run beside it for PROCESSING_MAX_SECONDS; two such loops handing over to each other kept two
# of a worker's processes busy for good, the dispatcher's message waiting behind them. A lease
# rather than a database session's lock: a loop that dies or hangs without its connection
# closing (a lost host) lets go when the lease expires, not when TCP gives up on it hours later.
PROCESSING_LEASE_KEY = "processing:loop"
PROCESSING_LEASE_SECONDS = 10  # renewed every second by the running loop
# How long a second loop waits for the lease: a loop ending (its last look done, or handing over
# at its deadline) lets go within this, and the new message must then do the work.
PROCESSING_LEASE_WAIT_SECONDS = 2.0


def schedule_event_processing(*, from_ingest: bool = False) -> None:
    """Make sure a worker will process received events soon (see services.scheduling).

    Ingest passes ``from_ingest``: it may then trust a recent sighting of the flag.
    Workers never do: a task handing over to a fresh one must really publish it.
    """
    from webhooks.tasks import process_events

    schedule_once(
        PROCESSING_SCHEDULED_KEY,
        PROCESSING_SCHEDULED_TTL,
        process_events,
        trust_seen_seconds=settings.PROCESSING_FLAG_TRUST_SECONDS if from_ingest else 0.0,
    )


class _Lease:
    def __init__(self, token: str | None):
        self.token = token  # None: taken without the cache (it is down), nothing to renew

    def renew(self) -> None:
        if self.token is None:
            return
        try:
            holder = cache.get(PROCESSING_LEASE_KEY)
            if holder == self.token:
                cache.set(PROCESSING_LEASE_KEY, self.token, timeout=PROCESSING_LEASE_SECONDS)
            elif holder is None:  # expired during a long batch: taken again unless another loop has
                cache.add(PROCESSING_LEASE_KEY, self.token, timeout=PROCESSING_LEASE_SECONDS)
        except Exception as exc:
            logger.warning("cache unavailable while renewing the processing lease: %s", exc)

    def release(self) -> None:
        if self.token is None:
            return
        try:
            if cache.get(PROCESSING_LEASE_KEY) == self.token:
                cache.delete(PROCESSING_LEASE_KEY)
        except Exception as exc:
            logger.warning("cache unavailable while releasing the processing lease: %s", exc)


@contextmanager
def _the_only_processing_loop():
    """Yields this loop's lease, or None when another loop holds it.

    With the cache down every message runs (SKIP LOCKED keeps their batches apart): waiting
    for a lease nobody can read would stop processing altogether.
    """
    token = uuid.uuid4().hex
    give_up_at = time.monotonic() + PROCESSING_LEASE_WAIT_SECONDS
    while True:
        try:
            taken = cache.add(PROCESSING_LEASE_KEY, token, timeout=PROCESSING_LEASE_SECONDS)
        except Exception as exc:
            logger.warning("cache unavailable for the processing lease; processing without it: %s", exc)
            yield _Lease(None)
            return
        if taken:
            break
        if time.monotonic() >= give_up_at:
            yield None  # the loop holding it finds the work this message was sent for
            return
        time.sleep(0.05)
    lease = _Lease(token)
    try:
        yield lease
    finally:
        lease.release()


def process_received_events(linger_seconds: float | None = None) -> int:
    """Fan out every received event; returns how many were processed.

    When nothing is left, the task looks again every ``LINGER_POLL_SECONDS`` for
    ``linger_seconds`` (``PROCESSING_LINGER_SECONDS``) before it ends, with its flag still
    set: under a steady trickle of webhooks one running task serves them all, instead of a
    Celery message and a task start per webhook. Only one runs at a time.
    """
    with _the_only_processing_loop() as lease:
        return _process_until_idle(linger_seconds, lease) if lease is not None else 0


def _process_until_idle(linger_seconds: float | None, lease: _Lease) -> int:
    linger_seconds = settings.PROCESSING_LINGER_SECONDS if linger_seconds is None else linger_seconds
    # A steady stream would keep one task running for ever: end after a while, so the tasks
    # queued behind it (sweeper, bulk retries, digests) get a worker process; the next
    # webhook schedules a fresh one.
    deadline = time.monotonic() + settings.PROCESSING_MAX_SECONDS
    total = 0
    idle_since = None
    flag_set_at = float("-inf")  # set at once: this task may run without a web request having set it
    while True:
        processed = process_event_batch()
        total += processed
        now = time.monotonic()
        if now >= deadline or worker_is_stopping():  # stopping: the next worker continues
            clear_flag(PROCESSING_SCHEDULED_KEY)
            lease.release()  # before the successor is published: it must find the lease free
            schedule_event_processing()  # a fresh task continues, behind what is queued
            return total
        if now - flag_set_at >= 1:
            # Keep the flag alive while this task runs: once it expires, every ingest would
            # publish a second task that only competes with this one.
            set_flag(PROCESSING_SCHEDULED_KEY, PROCESSING_SCHEDULED_TTL)
            lease.renew()
            flag_set_at = now
        if processed:
            idle_since = None
            continue
        idle_since = idle_since or now
        if now - idle_since < linger_seconds:
            time.sleep(settings.LINGER_POLL_SECONDS)
            continue
        # Clear the flag, let ingest processes' sightings of it expire, then look once more
        # (see services.scheduling).
        clear_flag(PROCESSING_SCHEDULED_KEY)
        wait_before_last_look(settings.PROCESSING_FLAG_TRUST_SECONDS)
        processed = process_event_batch()
        if processed == 0:
            return total
        total += processed
        idle_since = None


def process_event_batch(batch_size: int = EVENT_BATCH_SIZE) -> int:
    """Claim up to ``batch_size`` received events, create their deliveries, mark them processed.

    One transaction: a worker that dies half-way leaves the events received,
    and SKIP LOCKED lets several workers take different batches.
    """
    now = timezone.now()
    with transaction.atomic():
        events = list(
            WebhookEvent.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=WebhookEvent.Status.RECEIVED)
            .order_by("received_at")
            .only("id", "organization_id", "source_id", "event_type", "received_at")[:batch_size]
        )
        if not events:
            return 0
        subscriptions_by_source: dict[int, list[Subscription]] = {}
        # A source being deleted gives its events no new deliveries: they are about to go.
        for subscription in Subscription.objects.filter(
            source_id__in={event.source_id for event in events},
            destination__is_active=True,
            source__deletion_requested_at__isnull=True,
        ):
            subscriptions_by_source.setdefault(subscription.source_id, []).append(subscription)
        # Skip destinations deleted since, and keep the rest from being deleted until this commits.
        existing = lock_destinations_against_deletion(
            subscription.destination_id for found in subscriptions_by_source.values() for subscription in found
        )
        deliveries = [
            Delivery(
                organization_id=event.organization_id,
                event_id=event.id,
                destination_id=subscription.destination_id,
                next_attempt_at=now,
            )
            for event in events
            for subscription in subscriptions_by_source.get(event.source_id, ())
            if subscription.destination_id in existing and subscription.matches(event.event_type)
        ]
        # ignore_conflicts: a redelivered task never creates a second delivery.
        Delivery.objects.bulk_create(deliveries, ignore_conflicts=True)
        WebhookEvent.objects.filter(id__in=[event.id for event in events]).update(
            status=WebhookEvent.Status.PROCESSED, processed_at=now
        )
        record_usage(events)
        if deliveries:
            transaction.on_commit(schedule_dispatch)
    return len(events)


def sweep(now=None) -> dict[str, int]:
    """Pick up work that was lost: unprocessed events, deliveries of dead workers, due retries."""
    # Claims are judged by the database's clock (release_lost_claims) unless a time is given.
    given_now = now
    now = now or timezone.now()
    result = {
        "events": 0,
        "released": 0,
        "inactive": 0,
        "bulk_retries": 0,
        "pause_emails": 0,
        "organization_deletions": 0,
        "source_deletions": 0,
        "due": 0,
    }

    stuck_after = timedelta(seconds=settings.STUCK_EVENT_SECONDS)
    if WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED, received_at__lt=now - stuck_after).exists():
        # Through the flag: a loop that is running keeps it set and finds these itself. A flag
        # left by a lost message expires within PROCESSING_SCHEDULED_TTL, before the next sweep.
        schedule_event_processing()
        result["events"] = 1

    # A worker that died mid-attempt leaves its delivery in flight: give it back.
    result["released"] = release_lost_claims(given_now)

    result["inactive"] = dead_letter_deliveries_of_inactive_destinations(now)

    # Bulk retries whose message was lost with the broker, or whose worker died mid-job.
    result["bulk_retries"] = resume_stalled_bulk_retries(now)

    # Pause emails whose after-commit step never ran: a COMMIT whose reply was lost, a worker gone.
    result["pause_emails"] = send_owed_pause_emails(given_now)

    # Organization deletions under way whose run was lost (broker, killed worker), or that wait for their next run.
    result["organization_deletions"] = resume_organization_deletions()
    # The same for sources being deleted.
    result["source_deletions"] = resume_source_deletions()

    if Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now).exists():
        # Retries that came due, or deliveries whose dispatcher message was lost.
        schedule_dispatch()
        result["due"] = 1
    return result
