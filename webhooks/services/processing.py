"""Turning received events into deliveries, and the sweeper that makes sure nothing is left behind."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from contextlib import contextmanager, nullcontext
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Greatest, Length
from django.utils import timezone

from webhooks.models import Delivery, Subscription, WebhookEvent

from .alerts import send_owed_pause_emails
from .delivery import dead_letter_deliveries_of_inactive_destinations, release_lost_claims, schedule_dispatch
from .destination_deletion import resume_destination_deletions
from .lifecycle import record_usage
from .operations import resume_stalled_bulk_retries
from .organization_deletion import resume_organization_deletions
from .payload_filters import refusals_in_order
from .rejected_records import write_not_kept_counts
from .row_locks import lock_destinations_against_deletion
from .scheduling import clear_flag, schedule_once, set_flag, wait_before_last_look, worker_is_stopping
from .source_deletion import resume_source_deletions
from .text import storable_text

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


# An event whose processing fails alone (a bug its data meets, say) is set aside: still received,
# passed by until its next try, this long after its first failure, doubling up to the most.
SET_ASIDE_FIRST_WAIT = timedelta(minutes=1)
SET_ASIDE_LONGEST_WAIT = timedelta(hours=1)
PROCESSING_ERROR_CHARS = 300
_CLAIMED_FIELDS = ("id", "organization_id", "source_id", "event_type", "received_at", "processing_failures")


def process_event_batch(
    batch_size: int = EVENT_BATCH_SIZE, body_budget: int | None = None, delivery_budget: int | None = None
) -> int:
    """Claim up to ``batch_size`` received events, create their deliveries, mark them processed.

    One transaction: a worker that dies half-way leaves the events received, and SKIP LOCKED
    lets several workers take different batches. The batch is shared by every tenant, so one
    event must not stop it: if the batch fails, each event is processed alone (a savepoint
    each), and one that still fails is set aside (see _set_aside) while the others go on.
    Nor must one tenant's events make it slow: the bodies that payload filters read come to at
    most ``body_budget`` bytes (PROCESSING_BATCH_BODY_BYTES), and the deliveries created to at most
    ``delivery_budget`` (PROCESSING_BATCH_DELIVERIES), see _fan_out; the events past either stay
    received, in their place at the head of the queue, for the next batch.
    Returns how many events were processed or set aside.
    """
    body_budget = settings.PROCESSING_BATCH_BODY_BYTES if body_budget is None else body_budget
    delivery_budget = settings.PROCESSING_BATCH_DELIVERIES if delivery_budget is None else delivery_budget
    now = timezone.now()
    with transaction.atomic():
        waiting = (
            WebhookEvent.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=WebhookEvent.Status.RECEIVED)
            .only(*_CLAIMED_FIELDS)
            # The size PostgreSQL keeps beside a stored body: read without reading the body.
            .annotate(body_bytes=Length("body"))
        )
        # Set-aside events whose time came, in a group of their own, so that those still failing
        # cost the fresh ones nothing; at most half a batch, so that many coming due together
        # (a fix deployed after a bug set aside thousands) never hold up what keeps arriving.
        due_again = list(
            waiting.filter(processing_retry_at__lte=now).order_by("processing_retry_at")[: max(batch_size // 2, 1)]
        )
        fresh = list(
            waiting.filter(processing_retry_at__isnull=True).order_by("received_at")[: batch_size - len(due_again)]
        )
        batch = _Budget(body_budget, delivery_budget)
        # While set-aside events are due too, the fresh ones spend at most half of each budget: a
        # stream of large bodies or fan-outs must not keep the retries waiting.
        fresh_share = (
            _Budget(body_budget - body_budget // 2, delivery_budget - delivery_budget // 2, within=batch)
            if due_again
            else batch
        )
        handled = _fan_out_or_set_aside(fresh, now, fresh_share)
        handled_again = _fan_out_or_set_aside(due_again, now, batch)
    return handled + handled_again


class _Budget:
    """What is left of a batch's budgets: bytes of bodies that payload filters may read, deliveries
    it may create. Spent as the work is done, and so still spent when the transaction doing it fails
    (the time went all the same); a share of another budget spends from that one too."""

    def __init__(self, body_bytes: int, deliveries: int, *, within: _Budget | None = None):
        self.body_bytes = body_bytes
        self.deliveries = deliveries
        self.within = within

    def read(self, size: int) -> None:
        self.body_bytes -= size
        if self.within is not None:
            self.within.read(size)

    def create(self, count: int) -> None:
        self.deliveries -= count
        if self.within is not None:
            self.within.create(count)


def _fan_out_or_set_aside(events: list[WebhookEvent], now, budget: _Budget) -> int:
    """Fan ``events`` out together; if that fails, each alone, setting aside those that still fail.
    Returns how many were processed or set aside (the first of them within ``budget``, see _fan_out).

    The pass one at a time must reach the event at fault: stopping at the budget that the failed
    attempt spent would leave that event to fail the next batch too, and every batch would then do
    the failing work again for one event of progress, up to a batch per event of the attempt
    instead of one. So until an event has been set aside, the pass spends from a budget of its own,
    as large as the attempt's (it then goes no further than the attempt went); once one has been,
    it keeps to what is left of the batch's. A failing batch reads and creates at most twice its
    budgets, and the earlier the event at fault, the less."""
    if not events:
        return 0
    alone = _Budget(budget.body_bytes, budget.deliveries, within=budget)
    if len(events) > 1:
        try:
            with transaction.atomic():
                return _fan_out(events, now, budget)
        except Exception as exc:
            _reraise_unless_the_events_may_be_at_fault(exc)
            logger.warning(
                "processing a batch of %d events failed (%s); processing them one by one",
                len(events),
                type(exc).__name__,
            )
    handled = 0
    for event in events:
        try:
            with transaction.atomic():
                done = _fan_out([event], now, alone, at_least_one=not handled)
        except Exception as exc:
            _reraise_unless_the_events_may_be_at_fault(exc)
            _set_aside(event, exc, now)
            done = 1
            alone = budget  # found: what follows keeps to what is left of the batch's budget
        if not done:
            break  # past the budget: this event and the ones after it are left for the next batch
        handled += 1
    return handled


def _fan_out(events: list[WebhookEvent], now, budget: _Budget, *, at_least_one: bool = True) -> int:
    """Create the deliveries of the first of ``events`` that fit in ``budget`` (the first event
    whatever it costs, when ``at_least_one``), mark them processed and count them (inside the
    caller's transaction). Returns how many; the events after them are left as they were, received.

    Two budgets, because a batch's time goes in two places: the bodies that payload filters read and
    parse (a hundred 1 MiB bodies took seconds), and the deliveries created (one tenant's hundred
    destinations taking a hundred events made 8,400 in one batch, 0.65 s of CPU, over half of it in
    bulk_create). The bodies are cut first, by the sizes PostgreSQL keeps beside them; the deliveries
    are counted as the events are judged, in order, and the bodies past the cut are never parsed."""
    subscriptions_by_source: dict[int, list[Subscription]] = {}
    # A source being deleted gives its events no new deliveries: they are about to go. The
    # destination's payload filters come along in the same query (its row is joined already). In
    # destination order: an event's deliveries are made, and their ids ordered, as its destinations
    # were created, whatever plan PostgreSQL picks for the join.
    for subscription in (
        Subscription.objects.filter(
            source_id__in={event.source_id for event in events},
            destination__is_active=True,
            source__deletion_requested_at__isnull=True,
        )
        .annotate(payload_filters=F("destination__payload_filters"))
        .order_by("destination_id")
    ):
        subscriptions_by_source.setdefault(subscription.source_id, []).append(subscription)
    # Worked out once for each source and event type, not for each event: a batch often holds many
    # events of one kind, and most of them may go to the next batch.
    candidates = {
        (source_id, event_type): [
            subscription
            for subscription in subscriptions_by_source.get(source_id, ())
            if subscription.matches(event_type)
        ]
        for source_id, event_type in {(event.source_id, event.event_type) for event in events}
    }
    # Payload filters read the body: only of the events that a destination with payload filters
    # takes by type (none at all in the common case), each read and parsed once.
    read_by_filters = {
        kind for kind, subscriptions in candidates.items() if any(s.payload_filters for s in subscriptions)
    }
    to_read = {event.id for event in events if (event.source_id, event.event_type) in read_by_filters}
    events = _within_body_budget(events, to_read, budget.body_bytes, at_least_one)
    if not events:
        return 0
    kinds = {(event.source_id, event.event_type) for event in events}
    # Skip destinations deleted since, and keep the rest from being deleted until this commits.
    existing = lock_destinations_against_deletion(
        subscription.destination_id for kind in kinds for subscription in candidates[kind]
    )
    taken = {
        kind: [subscription for subscription in candidates[kind] if subscription.destination_id in existing]
        for kind in kinds
    }
    filtered = {
        kind: [(s.destination_id, s.payload_filters) for s in subscriptions if s.payload_filters]
        for kind, subscriptions in taken.items()
    }
    body_bytes = {event.id: event.body_bytes for event in events}
    judgments = refusals_in_order(
        (
            (event.id, filtered[event.source_id, event.event_type])
            for event in events
            if filtered[event.source_id, event.event_type]
        ),
        before_reading=lambda event_ids: budget.read(sum(body_bytes[event_id] for event_id in event_ids)),
    )
    kept, deliveries, fanned_out = [], [], []
    for position, event in enumerate(events):
        kind = (event.source_id, event.event_type)
        refused = next(judgments)[1] if filtered[kind] else ()
        destination_ids = [s.destination_id for s in taken[kind] if s.destination_id not in refused]
        # As with bodies, cut only at an event that creates deliveries: one that creates none costs
        # this budget nothing, even once the first event (taken whatever its fan-out) went past it.
        # A cut keeps the events taken a prefix of those claimed, so each tenant's stay in order.
        if (
            destination_ids
            and len(deliveries) + len(destination_ids) > budget.deliveries
            and (position or not at_least_one)
        ):
            break
        kept.append(event)
        created = [
            Delivery(
                organization_id=event.organization_id,
                event_id=event.id,
                destination_id=destination_id,
                next_attempt_at=now,
            )
            for destination_id in destination_ids
        ]
        fanned_out.append((event, created))
        deliveries.extend(created)
    if not kept:
        return 0
    budget.create(len(deliveries))
    # ignore_conflicts: a redelivered task never creates a second delivery.
    Delivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    WebhookEvent.objects.filter(id__in=[event.id for event in kept]).update(
        status=WebhookEvent.Status.PROCESSED,
        # ``now`` was read before the claim, and the web process that stamped received_at has a clock
        # of its own: an event committed meanwhile must not read as processed before it was received.
        processed_at=Greatest(Value(now, output_field=DateTimeField()), F("received_at")),
        processing_retry_at=None,
    )
    record_usage(kept)
    # Once committed: a batch that fails is processed again one event at a time, and only what
    # was committed happened.
    transaction.on_commit(lambda: _log_fan_out(fanned_out))
    if deliveries:
        transaction.on_commit(schedule_dispatch)
    return len(kept)


def _log_fan_out(fanned_out: list[tuple[WebhookEvent, list[Delivery]]]) -> None:
    """One line per processed event, between its "received" line and its deliveries' attempts:
    which delivery goes to which destination (a delivery's id is made here, before its INSERT)."""
    for event, deliveries in fanned_out:
        logger.info(
            "event %s processed: organization %s source %s, %s",
            event.pk,
            event.organization_id,
            event.source_id,
            ", ".join(f"delivery {delivery.pk} to destination {delivery.destination_id}" for delivery in deliveries)
            or "no destination takes it",
        )


def _within_body_budget(
    events: list[WebhookEvent], to_read: set, body_budget: int, at_least_one: bool
) -> list[WebhookEvent]:
    """The first of ``events`` whose bodies among ``to_read`` come to at most ``body_budget`` bytes.
    A batch of a hundred 1 MiB bodies, each read and parsed for a tenant's hundred destinations of
    ten conditions, took seconds that every tenant's events waited for; the first event is taken
    whatever its size (when ``at_least_one``), so that every batch goes forward."""
    read = 0
    for position, event in enumerate(events):
        size = event.body_bytes if event.id in to_read else 0
        # Cut only at a body to read: an event whose body nothing reads costs the budget nothing,
        # even once the first event (taken whatever its size) has gone past it.
        if size and read + size > body_budget and (position or not at_least_one):
            return events[:position]
        read += size
    return events


def _reraise_unless_the_events_may_be_at_fault(exc: Exception) -> None:
    # A lost connection or the task's time limit says nothing about the events: setting them aside
    # would only delay them (and recording it could not work anyway). The transaction ends, they
    # stay received and the next run takes them as they were.
    if isinstance(exc, (InterfaceError, SoftTimeLimitExceeded)) or not connection.is_usable():
        raise exc


def set_aside_wait(failures: int) -> timedelta:
    """How long an event that failed ``failures`` times in a row waits before its next try."""
    return min(SET_ASIDE_FIRST_WAIT * 2 ** min(failures - 1, 20), SET_ASIDE_LONGEST_WAIT)


def _set_aside(event: WebhookEvent, exc: Exception, now) -> None:
    """Keep the event received (acknowledged, so never dropped; a fixed deploy processes it) but out
    of the head of the queue until its next try, with what went wrong for its page."""
    failures = event.processing_failures + 1
    retry_at = now + set_aside_wait(failures)
    # Storable: a message quoting a body's "\u0000" or "\ud800" would fail this UPDATE, and with
    # it the whole batch, at every run.
    error = storable_text(f"{type(exc).__name__}: {_message_of(exc)}".strip().rstrip(":"))
    if len(error) > PROCESSING_ERROR_CHARS:
        error = error[: PROCESSING_ERROR_CHARS - 1] + "…"
    WebhookEvent.objects.filter(pk=event.pk).update(
        processing_failures=failures, processing_error=error, processing_retry_at=retry_at
    )
    # The error's class and where it was raised, never its message: that may quote the event's
    # headers or body, which stay out of the log (the message is on the event's own page).
    logger.error(
        "event %s (organization %s) could not be processed: %s, try %d, next try at %s\n%s",
        event.pk,
        event.organization_id,
        type(exc).__name__,
        failures,
        retry_at.isoformat(),
        "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
    )


def _message_of(exc: Exception) -> str:
    """The error's message, or none when building it fails: an exception whose __str__ raises
    would otherwise fail the set-aside UPDATE's transaction, and with it every tenant's batch."""
    try:
        return str(exc)
    except Exception:
        return ""


def process_set_aside_events_now(events) -> list[tuple[uuid.UUID, int]]:
    """Bring the next try of the set-aside events among ``events`` (a queryset) forward to now, as
    after a fix is deployed, instead of waiting up to an hour; returns the (id, organization id)
    of each one brought forward, for the admin action's audit entries. The processing takes them
    in its next batches, at most half of each, as any set-aside event that comes due."""
    now = timezone.now()
    with transaction.atomic():
        # Locked (in id order), which checks the condition again once a lock is held: an event that
        # a batch was processing meanwhile is left out, not reported as brought forward.
        brought_forward = list(
            WebhookEvent.objects.filter(
                pk__in=events.values("pk"), status=WebhookEvent.Status.RECEIVED, processing_retry_at__gt=now
            )
            .order_by("pk")
            .select_for_update(no_key=True)
            .values_list("pk", "organization_id")
        )
        WebhookEvent.objects.filter(pk__in=[pk for pk, _ in brought_forward]).update(processing_retry_at=now)
    if brought_forward:
        transaction.on_commit(schedule_event_processing)
    return brought_forward


def sweep(now=None) -> dict[str, int]:
    """Pick up work that was lost: unprocessed events, deliveries of dead workers, due retries.

    Each step on its own: one that fails (a row of one tenant that a bug trips on) is logged and
    counted in ``failed_steps``, and the others still run; the next sweep tries it again.
    """
    # Claims are judged by the database's clock (release_lost_claims) unless a time is given.
    given_now = now
    now = now or timezone.now()
    steps = {
        "events": lambda: _schedule_waiting_events(now),
        # A worker that died mid-attempt leaves its delivery in flight: give it back.
        "released": lambda: release_lost_claims(given_now),
        "inactive": lambda: dead_letter_deliveries_of_inactive_destinations(now),
        # Bulk retries whose message was lost with the broker, or whose worker died mid-job.
        "bulk_retries": lambda: resume_stalled_bulk_retries(now),
        # Pause emails whose after-commit step never ran: a COMMIT whose reply was lost, a worker gone.
        "pause_emails": lambda: send_owed_pause_emails(given_now),
        # Organization deletions under way whose run was lost (broker, killed worker), or that wait for their next run.
        "organization_deletions": resume_organization_deletions,
        # The same for sources being deleted.
        "source_deletions": resume_source_deletions,
        # And for destinations being deleted.
        "destination_deletions": resume_destination_deletions,
        "due": lambda: _schedule_due_deliveries(now),
        # Rejected requests answered but not kept, counted in Redis by ingest: added to their sources.
        "rejected_not_kept": write_not_kept_counts,
    }
    result = {"failed_steps": 0}
    names = list(steps)
    for position, name in enumerate(names):
        try:
            # A savepoint only when called inside a transaction (tests), so that a failed step leaves
            # it usable; otherwise each step commits as it always did.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                result[name] = steps[name]()
        except (OperationalError, InterfaceError) as exc:
            if connection.connection is not None:
                _log_failed_step(name)
                result[name] = 0
                result["failed_steps"] += 1
                continue
            # No connection could be made (a capped plan's "too many connections for role", the
            # database restarting): every other step would fail the same way, each with a traceback
            # (ten every sweep, one sweep every few seconds). One line says why; the next sweep tries all.
            skipped = names[position:]
            logger.warning(
                "sweep skipped (%d steps): the database refused a connection; the next sweep tries again: %s",
                len(skipped),
                " ".join(_message_of(exc).split())[:500] or exc.__class__.__name__,
            )
            result.update(dict.fromkeys(skipped, 0))
            result["failed_steps"] += len(skipped)
            break
        except Exception:
            _log_failed_step(name)
            result[name] = 0
            result["failed_steps"] += 1
    return result


def _log_failed_step(name: str) -> None:
    logger.exception("sweeper step %s failed; the other steps go on", name)


def _schedule_waiting_events(now) -> int:
    stuck_after = timedelta(seconds=settings.STUCK_EVENT_SECONDS)
    received = WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED)
    # Two looks, each served by its own partial index: events waiting too long, and set-aside
    # events whose next try came (a running loop takes those too; with none, this starts one).
    if (
        received.filter(processing_retry_at__isnull=True, received_at__lt=now - stuck_after).exists()
        or received.filter(processing_retry_at__lte=now).exists()
    ):
        # Through the flag: a loop that is running keeps it set and finds these itself. A flag
        # left by a lost message expires within PROCESSING_SCHEDULED_TTL, before the next sweep.
        schedule_event_processing()
        return 1
    return 0


def _schedule_due_deliveries(now) -> int:
    if Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now).exists():
        # Retries that came due, or deliveries whose dispatcher message was lost.
        schedule_dispatch()
        return 1
    return 0
