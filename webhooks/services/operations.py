"""What people do about failures: pause/resume, retry in bulk, replay. Each is audited."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from organizations.models import Organization
from organizations.services import audit_record
from webhooks.fields import encrypted_field_names
from webhooks.models import BulkRetry, Delivery, Destination, Source, WebhookEvent
from webhooks.selectors import event_type_condition, event_type_patterns, retrying_deliveries, uuid7_floor

from .delivery import (
    DESTINATION_BEING_DELETED_ERROR,
    MANUAL_ATTEMPT_ASKED,
    NOT_PUT_BACK,
    revived_last_outcome,
    schedule_dispatch,
)
from .permissions import require_configure_role
from .row_locks import (
    lock_destinations_against_deletion,
    lock_event_against_deletion,
    lock_organization_unless_being_deleted,
    lock_source_unless_being_deleted,
    lock_sources_unless_being_deleted,
)
from .scheduling import schedule_once

RETRIABLE_STATUSES = (Delivery.Status.DEAD, Delivery.Status.PENDING)
BULK_RETRY_BATCH = 500
# A bulk retry whose run has not reported progress for this long is taken up again. Far above
# one batch's time, so a live run is never doubled, even with clocks a little apart.
BULK_RETRY_STALLED_AFTER = timedelta(minutes=5)


class OperationError(ValueError):
    """The operation cannot be done as asked (message is safe to show)."""


class EventGone(OperationError):
    """The event was deleted after it was looked up (its source's deletion, retention)."""


class NothingToDo(OperationError):
    """Not refused: what was asked is already so (message is safe to show)."""


class NothingToRetry(NothingToDo):
    """No delivery matches a bulk retry: not refused, there is simply nothing to do. ``left_out``:
    how many matched but are left out, their source being deleted (then all those that matched)."""

    def __init__(self, message: str, *, left_out: int = 0):
        super().__init__(message)
        self.left_out = left_out


# Why a bulk retry leaves a matching delivery out (BulkRetry.left_out), as its count is shown: when it
# is asked for (a destination being deleted is inactive, and its deliveries do not match), and as its
# run finds them.
LEFT_OUT_BY_SOURCES = "their source is being deleted"
LEFT_OUT_REASON = "their source or destination is being deleted"


def _unchanged(destination: Destination, why: str) -> OperationError:
    """Why a conditional update of a destination changed no row: deleted meanwhile, being deleted, or already so."""
    found = list(Destination.objects.filter(pk=destination.pk).values_list("deletion_requested_at", flat=True)[:1])
    if not found:
        return OperationError("the destination has been deleted")
    if found[0] is not None:
        return OperationError(DESTINATION_BEING_DELETED_ERROR)
    return NothingToDo(why)


@transaction.atomic
def destination_pause(*, destination: Destination, reason: str = "paused by hand", actor=None) -> Destination:
    """Pause a destination: its deliveries wait. NothingToDo if it is paused already.

    Conditional, so that an earlier pause keeps its time and reason (the circuit breaker's
    "paused automatically after …" says why it stopped) and is not audited a second time.
    """
    # Not one being deleted: nothing is sent to it any more, and its list in the admin still offers it.
    paused = Destination.objects.filter(
        pk=destination.pk, paused_at__isnull=True, deletion_requested_at__isnull=True
    ).update(paused_at=timezone.now(), pause_reason=reason[:300])
    if not paused:
        raise _unchanged(destination, "the destination is paused already")
    audit_record(
        action="destination.paused",
        organization=destination.organization,
        actor=actor,
        target=destination,
        changes={"reason": reason},
    )
    destination.refresh_from_db()
    return destination


@transaction.atomic
def destination_resume(*, destination: Destination, actor=None) -> Destination:
    """Resume a paused destination: what queued up is sent in order of arrival, at its rate limit.

    NothingToDo if it is not paused: its failure count (on the way to the circuit breaker) and
    the retry times of its waiting deliveries are then left as they are.
    """
    now = timezone.now()
    # Not one being deleted: its waiting deliveries stay for its batches, not brought forward in one UPDATE.
    resumed = Destination.objects.filter(
        pk=destination.pk, paused_at__isnull=False, deletion_requested_at__isnull=True
    ).update(paused_at=None, pause_reason="", consecutive_failures=0, failing_since=None, pause_notice_due_at=None)
    if not resumed:
        raise _unchanged(destination, "the destination is not paused")
    # Same due time for all: the dispatcher's (next_attempt_at, id) order is then arrival order.
    waiting = Delivery.objects.filter(destination=destination, status=Delivery.Status.PENDING).update(
        next_attempt_at=now
    )
    audit_record(
        action="destination.resumed",
        organization=destination.organization,
        actor=actor,
        target=destination,
        changes={"queued_deliveries": waiting},
    )
    transaction.on_commit(schedule_dispatch)
    destination.refresh_from_db()
    return destination


# At most this many deliveries are brought forward by one "send waiting retries now": one short
# UPDATE whatever the backlog; asking again brings the rest.
SEND_WAITING_NOW_LIMIT = 10_000


def _waiting_for_retry(destination_id: int, now: datetime):
    """A destination's deliveries waiting for an attempt later than ``now`` (the index delivery_due_by_dest),
    not those the platform holds (put_back_cause): they wait for the platform, not for the receiver, and
    bringing them forward would only have them put back again."""
    return Delivery.objects.filter(
        destination_id=destination_id, status=Delivery.Status.PENDING, next_attempt_at__gt=now, put_back_cause=None
    )


def destination_waiting_for_retry_count(*, destination: Destination, limit: int = SEND_WAITING_NOW_LIMIT) -> int:
    """How many of a destination's deliveries wait for a later attempt, counted up to ``limit``."""
    # In the index's order: the model's default (newest id first) would walk the primary key
    # through every destination's deliveries.
    waiting = _waiting_for_retry(destination.pk, timezone.now()).order_by("next_attempt_at", "id")
    return waiting[:limit].count()


def destination_retrying_count(*, destination: Destination, limit: int = SEND_WAITING_NOW_LIMIT) -> int:
    """How many of a destination's deliveries are retrying, counted up to ``limit``, by the rule the
    health cards and the events list's "retrying" use (selectors.retrying_deliveries): pending after
    a failed attempt, whether its next attempt is due yet or not.

    destination_waiting_for_retry_count is the part of these whose time has not come (what "send
    waiting now" brings forward); one already due stays retrying until the dispatcher takes it.
    """
    retrying = retrying_deliveries(Delivery.objects.filter(destination_id=destination.pk, put_back_cause=None))
    # On the destination's pending index (delivery_due_by_dest), as above.
    return retrying.order_by("next_attempt_at", "id")[:limit].count()


def destination_has_deliveries_to_retry(*, destination: Destination) -> bool:
    """Whether a bulk retry of the destination's failed deliveries would find one: the rows
    bulk_retry_request matches, so that a page offers the retry only where it does something (the
    request still checks, as the page may be older than the last change)."""
    return _matching_deliveries(destination.organization_id, {"destination": destination.pk}).exists()


def destination_held_by_platform_counts(*, destination: Destination, limit: int = SEND_WAITING_NOW_LIMIT) -> dict:
    """The destination's pending deliveries the platform itself put back unsent, by cause (Delivery.put_back_cause),
    counted up to ``limit`` in all: they wait for the platform (a secret its workers cannot decrypt, its own bound
    on DNS lookups), not for the receiver, so the counts above leave them out. Only the causes this release knows:
    one stored by a later release (its workers beside this one's in a rolling release, or before a rollback) has
    no words here."""
    held = Delivery.objects.filter(
        destination_id=destination.pk, status=Delivery.Status.PENDING, put_back_cause__in=Delivery.PutBackCause.values
    ).order_by("next_attempt_at", "id")
    return dict(Counter(held.values_list("put_back_cause", flat=True)[:limit]))


def _bring_forward(destination_id: int, now: datetime) -> int:
    """One bounded UPDATE: the first SEND_WAITING_NOW_LIMIT waiting deliveries, in the dispatcher's
    order, due at ``now`` (one time for all, so that its (next_attempt_at, id) order is arrival order).

    On PostgreSQL the ids come from the destination's pending index and the rows are then updated
    through the primary key (``= ANY(ARRAY(…))``: an ``IN (subquery)`` is planned as a join that
    reads every row of the destination), in id order, as the sweeper and recordings lock them. The
    conditions are checked again on each row as it is updated: one claimed since is left alone.
    """
    if connection.vendor == "postgresql":
        table = Delivery._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET next_attempt_at = %(now)s WHERE id = ANY(ARRAY("
                f"SELECT id FROM {table} WHERE destination_id = %(destination)s AND status = %(pending)s"
                " AND next_attempt_at > %(now)s AND put_back_cause IS NULL"
                " ORDER BY next_attempt_at, id LIMIT %(limit)s))"
                " AND destination_id = %(destination)s AND status = %(pending)s AND next_attempt_at > %(now)s"
                " AND put_back_cause IS NULL",
                {
                    "now": now,
                    "destination": destination_id,
                    "pending": Delivery.Status.PENDING,
                    "limit": SEND_WAITING_NOW_LIMIT,
                },
            )
            return cursor.rowcount
    chosen = _waiting_for_retry(destination_id, now).order_by("next_attempt_at", "id").values("id")
    return (
        _waiting_for_retry(destination_id, now)
        .filter(id__in=chosen[:SEND_WAITING_NOW_LIMIT])
        .update(next_attempt_at=now)
    )


@transaction.atomic
def destination_send_waiting_now(*, destination: Destination, actor=None) -> int:
    """Make a destination's deliveries that wait for a later retry due now; returns how many.

    For when a receiver works again: they are sent on the next dispatch, in arrival order, within
    the destination's concurrency cap and rate limit. Only pending ones due later: none is
    claimed, finished or counted as an attempt here (the next attempt is the one scheduled, just
    sooner). NothingToDo when none waits; refused for a paused or inactive destination, which is
    sent nothing (resuming a paused one sends its waiting deliveries at once anyway).
    """
    require_configure_role(organization=destination.organization, actor=actor)
    state = (
        Destination.objects.filter(pk=destination.pk).values("paused_at", "is_active", "deletion_requested_at").first()
    )
    if state is None:
        raise OperationError("the destination has been deleted")
    if state["deletion_requested_at"] is not None:
        raise OperationError(DESTINATION_BEING_DELETED_ERROR)
    if not state["is_active"]:
        raise OperationError("the destination is inactive: it is sent nothing until it is active again")
    if state["paused_at"] is not None:
        raise OperationError(
            "the destination is paused: nothing is sent to it, and resuming it sends every waiting delivery at once"
        )
    brought_forward = _bring_forward(destination.pk, timezone.now())
    if not brought_forward:
        raise _unchanged(destination, "no delivery is waiting for a later retry")
    audit_record(
        action="destination.waiting_sent_now",
        organization=destination.organization,
        actor=actor,
        target=destination,
        changes={"brought_forward": brought_forward},
    )
    transaction.on_commit(schedule_dispatch)
    return brought_forward


@transaction.atomic
def event_replay(*, event: WebhookEvent, destination: Destination, actor=None) -> Delivery:
    """Send an event again to a destination of its organization, as a new delivery; history is kept."""
    if destination.organization_id != event.organization_id:
        raise OperationError("the destination belongs to another organization")
    if event.status == WebhookEvent.Status.REJECTED:
        raise OperationError("a rejected request was never verified and cannot be replayed")
    # Read afresh: the processing may have taken it since the caller loaded it. Not yet processed,
    # its deliveries are still to be made, and a replay now would send it to that destination twice.
    if WebhookEvent.objects.filter(pk=event.pk, status=WebhookEvent.Status.RECEIVED).exists():
        raise OperationError(
            "the event has not been processed yet: it goes to its destinations when it is, and can be replayed after"
        )
    if destination.being_deleted:
        raise OperationError(DESTINATION_BEING_DELETED_ERROR)
    if not destination.is_active:
        raise OperationError("the destination is inactive: it is sent nothing until it is active again")
    # Nor one of an organization being deleted (the admin's action reaches it): its delivery would
    # wait unsent until the deletion removes it. Under a lock its request waits for, as below; the
    # organization's row first, as every transaction that takes it with its rows' does.
    if not lock_organization_unless_being_deleted(event.organization_id):
        raise OperationError("the organization is being deleted: nothing more is sent")
    # Its delivery would be dead-lettered unsent and then deleted with the event. Checked under a
    # lock the deletion's request waits for (and this for it): read plainly, a request committed
    # between the check and the delivery's insert let the replay answer "queued" for a delivery
    # that was never to be sent. Before the destination's lock, as a source's update takes them.
    if not lock_source_unless_being_deleted(event.source_id):
        if Source.objects.filter(pk=event.source_id).exists():
            raise OperationError("the event's source is being deleted: its events are not sent again")
        raise EventGone("the event no longer exists: it was deleted meanwhile")
    if not lock_destinations_against_deletion([destination.pk]):
        # Its deletion was asked for since the caller read it (or it is gone).
        if Destination.objects.filter(pk=destination.pk).exists():
            raise OperationError(DESTINATION_BEING_DELETED_ERROR)
        raise OperationError("the destination has been deleted")
    if not lock_event_against_deletion(event.pk):
        raise EventGone("the event no longer exists: it was deleted meanwhile")
    delivery = Delivery.objects.create(
        organization_id=event.organization_id, event=event, destination=destination, is_replay=True
    )
    audit_record(
        action="event.replayed",
        organization=event.organization,
        actor=actor,
        target=event,
        target_label=f"{event} → {destination.name}",
        changes={"destination": destination.pk, "delivery": str(delivery.pk)},
    )
    transaction.on_commit(schedule_dispatch)
    return delivery


def _matching_deliveries(organization: Organization, filters: dict[str, Any]):
    # Never those of inactive destinations: the sweeper would only dead-letter them again.
    deliveries = Delivery.objects.filter(organization=organization, destination__is_active=True)
    statuses = filters.get("statuses") or [Delivery.Status.DEAD]
    if not set(statuses) <= set(RETRIABLE_STATUSES):
        raise OperationError("only dead or waiting deliveries can be retried")
    deliveries = deliveries.filter(status__in=statuses)
    if filters.get("source"):
        deliveries = deliveries.filter(event__source_id=filters["source"])
    if filters.get("destination"):
        deliveries = deliveries.filter(destination_id=filters["destination"])
    if patterns := event_type_patterns(filters.get("event_type") or ""):
        # Patterns as a destination's filter and the events list read them ("invoice.*", "push,ping").
        deliveries = deliveries.filter(event_type_condition(patterns, field="event__event_type"))
    # The event's received time from its id, as the API's event and delivery lists filter it, so
    # that a list and the retry of the same filters take the same rows (and no join is needed).
    for key, lookup in (("received_after", "event_id__gte"), ("received_before", "event_id__lt")):
        if filters.get(key):
            moment = filters[key] if isinstance(filters[key], datetime) else parse_datetime(str(filters[key]))
            if moment is None:
                raise OperationError(f"{key} is not a date and time")
            deliveries = deliveries.filter(**{lookup: uuid7_floor(moment)})
    return deliveries


def _bulk_retry_label(organization: Organization, filters: dict[str, Any]) -> str:
    """What a bulk retry's audit entry names: the destination whose failed deliveries it retries."""
    if not filters.get("destination"):
        return "every destination"
    name = Destination.objects.filter(organization=organization, pk=filters["destination"]).values_list(
        "name", flat=True
    )
    return name.first() or f"destination {filters['destination']}"


@transaction.atomic
def bulk_retry_start(*, organization: Organization, filters: dict[str, Any], actor=None) -> BulkRetry:
    """Queue a background retry of every matching delivery (dead by default).

    Those of sources being deleted are counted in the job's total and left out (``left_out``): sent
    again, they would only be dead-lettered unsent. Its run decides under a lock (bulk_retry_run);
    this count tells the person at once.
    """
    matching = _matching_deliveries(organization, filters)
    total = matching.count()
    if total == 0:  # no job, no audit entry, and the person is told rather than shown "0 retried"
        raise NothingToRetry("no delivery matches: there is nothing to retry")
    left_out = _of_sources_being_deleted(organization, matching, filters)
    if left_out == total:
        raise NothingToRetry(
            f"no delivery to retry: the {total} that match are left out, {LEFT_OUT_BY_SOURCES}",
            left_out=left_out,
        )
    job = BulkRetry.objects.create(
        organization=organization,
        # A person; an API key is named by the audit entry (requested_by links users only).
        requested_by=actor if isinstance(actor, get_user_model()) else None,
        filters={k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items() if v},
        total=total,
        left_out=left_out,
    )
    changes = {"filters": job.filters, "matching": total}
    if left_out:
        changes["left_out"] = left_out
    audit_record(
        action="deliveries.bulk_retry_requested",
        organization=organization,
        actor=actor,
        target=job,
        target_label=_bulk_retry_label(organization, job.filters),
        changes=changes,
    )
    # Committed first: with the broker down the job waits for the sweeper instead of failing.
    transaction.on_commit(lambda: publish_bulk_retry(job.pk))
    return job


def _of_sources_being_deleted(organization: Organization, matching, filters: dict[str, Any]) -> int:
    """How many of ``matching`` are of sources being deleted. A second count only while one is (the
    count through events then joins them); none with a source filter, whose source the request locked."""
    if filters.get("source"):
        return 0
    going = list(
        Source.objects.filter(organization=organization, deletion_requested_at__isnull=False).values_list(
            "pk", flat=True
        )
    )
    return matching.filter(event__source_id__in=going).count() if going else 0


# Namespace of the advisory locks that serialize bulk-retry requests per organization (the
# two-key form: it never collides with the audit chain's single-key lock).
_BULK_RETRY_LOCK_SPACE = 0x686C6272  # "hlbr"


def _overlapping_unfinished(organization: Organization, destination_id: int | None) -> BulkRetry | None:
    """A queued or running job that may take the same deliveries: of the same destination, or
    where either has none (every destination)."""
    unfinished = BulkRetry.objects.filter(
        organization=organization, status__in=(BulkRetry.Status.QUEUED, BulkRetry.Status.RUNNING)
    )
    if destination_id is not None:
        unfinished = unfinished.filter(Q(filters__destination=destination_id) | ~Q(filters__has_key="destination"))
    return unfinished.order_by("created_at").first()


@transaction.atomic
def bulk_retry_request(*, organization: Organization, filters: dict[str, Any], actor=None) -> BulkRetry:
    """Retry the matching dead deliveries in the background, for a person or a key allowed to.

    A request while a job that may take the same deliveries is queued or running is refused: it
    would count them again and retry them twice. Requests of one organization are serialized by an
    advisory lock, so that of two at the same moment one sees the other's job.
    """
    require_configure_role(organization=organization, actor=actor)
    # Under a lock its deletion's request waits for (and this for it): read plainly, a request
    # committed meanwhile let a job be queued for deliveries never to be sent. Before the advisory
    # lock, as the organization's row comes first in every transaction that takes it.
    if not lock_organization_unless_being_deleted(organization.pk):
        raise OperationError("the organization is being deleted: nothing more is sent")
    # A source's deliveries, not of one being deleted: they would be dead-lettered unsent again when
    # claimed. The caller found the source; its deletion asked for since is seen under the same lock.
    if (source_id := filters.get("source")) and not Source.objects.filter(
        organization=organization, pk=source_id
    ).exists():
        raise OperationError("the source has been deleted")
    if source_id and not lock_source_unless_being_deleted(source_id):
        raise OperationError("the source is being deleted: its events are not sent again")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # The two-key form takes 32-bit keys, and ids are bigint: past 2**31 - 1 the id is folded
            # (two organizations then share the lock, which only makes them wait for each other).
            key = organization.pk % 2**31
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s::integer)", [_BULK_RETRY_LOCK_SPACE, key])
    destination_id = filters.get("destination") or None
    if destination_id is not None:
        # Without its secrets, which queuing does not need: one this process cannot decrypt must not refuse it.
        destination = (
            Destination.objects.filter(organization=organization, pk=destination_id)
            .defer(*encrypted_field_names(Destination))
            .first()
        )
        if destination is None:
            raise OperationError("the destination has been deleted")
        if destination.being_deleted:
            raise OperationError(DESTINATION_BEING_DELETED_ERROR)
        if not destination.is_active:
            raise OperationError("the destination is inactive: it is sent nothing until it is active again")
    if unfinished := _overlapping_unfinished(organization, destination_id):
        if not unfinished.filters.get("destination"):
            what = "every destination"
        else:
            what = "this destination" if destination_id else f"destination {unfinished.filters['destination']}"
        raise OperationError(
            f"a bulk retry of {what} is already {unfinished.get_status_display().lower()} "
            f"(asked for {unfinished.created_at:%-d %b %H:%M} UTC); wait until it has finished"
        )
    return bulk_retry_start(organization=organization, filters=filters, actor=actor)


def publish_bulk_retry(job_id: int) -> None:
    """Ask a worker to run the job, at most once per stall period; never raises (the sweeper retries)."""
    from webhooks.tasks import run_bulk_retry

    schedule_once(
        f"bulk-retry:{job_id}:published", int(BULK_RETRY_STALLED_AFTER.total_seconds()), run_bulk_retry.s(job_id)
    )


def _stalled_bulk_retries(stalled_before):
    """Jobs nobody is running: never started, or whose run stopped beating. A job left running by
    code from before heartbeats (a deploy) counts as beating when it was asked for."""
    return BulkRetry.objects.filter(
        Q(status=BulkRetry.Status.QUEUED, heartbeat_at__isnull=True, created_at__lt=stalled_before)
        | Q(status=BulkRetry.Status.RUNNING, heartbeat_at__isnull=True, created_at__lt=stalled_before)
        | Q(status__in=(BulkRetry.Status.QUEUED, BulkRetry.Status.RUNNING), heartbeat_at__lt=stalled_before)
    )


def resume_stalled_bulk_retries(now=None) -> int:
    """Publish again the jobs nobody is running: never started (their message was lost) or whose run
    stopped beating (a worker killed mid-job). Returns how many were published."""
    now = now or timezone.now()
    job_ids = list(_stalled_bulk_retries(now - BULK_RETRY_STALLED_AFTER).values_list("pk", flat=True)[:100])
    for job_id in job_ids:
        publish_bulk_retry(job_id)
    return len(job_ids)


class _BulkRetryTakenOver(Exception):
    """Another run took the job over (this one was thought stalled): this one stops."""


def bulk_retry_run(job_id: int) -> BulkRetry:
    """Make the matching deliveries due now, in batches, recording progress; resumable after a crash.

    A run first takes the job (a conditional UPDATE), so a job published twice, by the sweeper
    and by its request, runs once. Its heartbeat is its claim: each batch commits only while the
    heartbeat is still the one it wrote, so a run taken over (thought stalled) stops instead of
    retrying alongside its successor.
    """
    job = BulkRetry.objects.select_related("organization").get(pk=job_id)
    beat = timezone.now()
    waiting = BulkRetry.objects.filter(pk=job_id).filter(
        Q(status=BulkRetry.Status.QUEUED) | Q(pk__in=_stalled_bulk_retries(beat - BULK_RETRY_STALLED_AFTER))
    )
    if not waiting.update(status=BulkRetry.Status.RUNNING, heartbeat_at=beat):
        return job  # done, or another run is at it
    job.refresh_from_db()
    statuses = job.filters.get("statuses") or [Delivery.Status.DEAD]
    # Only what existed when the job was asked for; keyset on the time-ordered id.
    matching = _matching_deliveries(job.organization, job.filters).filter(created_at__lte=job.created_at)
    # Counted again as the run finds them (the request's count was a moment's): from none on a first
    # run, from where it was on a run that takes over a stalled one.
    left_out = job.left_out if job.last_delivery_id else 0
    try:
        while True:
            page = matching.order_by("id")
            if job.last_delivery_id:
                page = page.filter(id__gt=job.last_delivery_id)
            batch = list(page.values_list("id", "event__source_id", "destination_id")[:BULK_RETRY_BATCH])
            if not batch:
                break
            with transaction.atomic():
                # Its organization's deletion asked for since the job was: nothing more is sent, and
                # the deletion removes the rest (made pending, they waited unsent until it did). The
                # organization's row first, as every transaction that takes it does.
                organization_kept = lock_organization_unless_being_deleted(job.organization_id)
                next_beat = timezone.now()
                if not BulkRetry.objects.filter(pk=job.pk, heartbeat_at=beat).update(heartbeat_at=next_beat):
                    raise _BulkRetryTakenOver
                beat = next_beat
                if not organization_kept:
                    left_out += page.count()
                    job.total = max(job.total, job.retried + left_out)
                    BulkRetry.objects.filter(pk=job.pk).update(left_out=left_out, total=job.total)
                    break
                # Not those whose source or destination is being deleted: sent again they would be
                # dead-lettered unsent, or held until the deletion removes them. Checked under the
                # locks the deletions' requests wait for (and they for these), read as they are now:
                # a request committed since the page was read is seen, and one made while this batch
                # runs waits for its commit and then finds its deliveries as any retried before it.
                # Sources first, as a replay takes them.
                sources = lock_sources_unless_being_deleted({source_id for _, source_id, _ in batch})
                destinations = lock_destinations_against_deletion({destination_id for _, _, destination_id in batch})
                kept = [
                    delivery_id
                    for delivery_id, source_id, destination_id in batch
                    if source_id in sources and destination_id in destinations
                ]
                left_out += len(batch) - len(kept)
                updated = Delivery.objects.filter(pk__in=kept, status__in=statuses).update(
                    status=Delivery.Status.PENDING,
                    next_attempt_at=timezone.now(),
                    completed_at=None,
                    latency=None,
                    manual_attempts=MANUAL_ATTEMPT_ASKED,  # on top of the schedule, as a single retry
                    bulk_retry_id=job.pk,  # its status is now this job's outcome (a later one's if retried again)
                    **revived_last_outcome(),  # a dead one's reason would contradict "pending"
                    **NOT_PUT_BACK,  # asked for by hand, as a single retry
                )
                job.retried += updated
                job.left_out = left_out
                job.last_delivery_id = batch[-1][0]
                # The total was counted when the job was asked for; deliveries that failed since
                # (they existed then) are retried too, and counted in the total: never "14 of 7".
                job.total = max(job.total, job.retried + job.left_out)
                BulkRetry.objects.filter(pk=job.pk).update(
                    retried=job.retried, left_out=job.left_out, total=job.total, last_delivery_id=job.last_delivery_id
                )
            schedule_dispatch()
    except _BulkRetryTakenOver:
        job.refresh_from_db()
        return job
    # left_out too: a run that found none of the request's count (deleted since) leaves out none.
    BulkRetry.objects.filter(pk=job.pk, heartbeat_at=beat).update(
        status=BulkRetry.Status.DONE, finished_at=timezone.now(), left_out=left_out
    )
    job.refresh_from_db()
    return job
