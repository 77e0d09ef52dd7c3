"""Usage counting, quota notices, retention, and forgetting secrets whose rotation window ended."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from organizations.idempotency import idempotency_keys_expired
from organizations.models import MIN_RETENTION_DAYS, Membership, MonthlyUsage, Organization
from organizations.names import one_line
from organizations.services import audit_purge_in_batches, audit_record
from webhooks.models import Delivery, Destination, PurgedEventKey, SignatureNonce, Source, WebhookEvent

from .event_hours import forget_event_hours, forget_old_event_hours
from .ingest_writer import event_id_digest
from .run_locks import release_run_lock, try_run_lock
from .scheduling import clear_flag, schedule_once
from .sender_marks import hookline_test_events

logger = logging.getLogger(__name__)


def record_usage(events: list[WebhookEvent]) -> None:
    """Count processed events per organization and month (called inside the processing transaction).

    Over quota nothing is refused: a webhook is never dropped for billing
    reasons. The owners are told once per month, and again if the quota is changed
    (Organization.save re-arms the notice). Hookline's own test sends are not counted.
    """
    tests = _hookline_test_event_ids(events)
    counts = Counter(
        (event.organization_id, event.received_at.date().replace(day=1)) for event in events if event.id not in tests
    )
    if not counts:
        return
    # In one order for every batch: two processing tasks counting the same organizations lock
    # their rows in the same order and cannot deadlock.
    keys = sorted(counts)
    MonthlyUsage.objects.bulk_create(
        [MonthlyUsage(organization_id=org_id, month=month) for org_id, month in keys],
        ignore_conflicts=True,
    )
    for org_id, month in keys:
        count = counts[(org_id, month)]
        MonthlyUsage.objects.filter(organization_id=org_id, month=month).update(events=F("events") + count)
        over = MonthlyUsage.objects.filter(
            organization_id=org_id,
            month=month,
            quota_notified_at__isnull=True,
            events__gt=F("organization__monthly_event_quota"),
        )
        if over.update(quota_notified_at=timezone.now()):
            transaction.on_commit(lambda org_id=org_id, month=month: _notify_quota_exceeded(org_id, month))


def _hookline_test_event_ids(events: list[WebhookEvent]) -> set:
    return {row["id"] for row in hookline_test_events(WebhookEvent.objects.filter(id__in=[e.id for e in events]), "id")}


def _notify_quota_exceeded(organization_id: int, month: date) -> None:
    organization = Organization.objects.get(pk=organization_id)
    owners = list(
        Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).values_list(
            "user__email", flat=True
        )
    )
    try:
        send_mail(
            subject=f"[Hookline] {one_line(organization.name)} is over its monthly event quota",
            message=(
                f"{organization.name} has received more than {organization.monthly_event_quota} events in "
                f"{month:%B %Y}. Nothing is refused or delayed: every webhook is still accepted and delivered. "
                "Consider a larger plan.\n"
            ),
            from_email=None,
            recipient_list=owners,
        )
    except Exception:
        logger.exception("could not send the quota notice")


RETENTION_PURGED_ACTION = "retention.purged"


@dataclass
class RetentionRun:
    deleted: int  # events and rejected requests this run deleted
    finished: bool  # nothing purgeable was left (or a batch could not be deleted safely: see _purge_organization)
    stopped_at: int | None = None  # the organization the run's time ran out on; the next run starts after it
    busy: bool = False  # another run holds the purge
    # The run's time ran out in the cleanup before the organizations (_retention_cleanup): the next
    # run starts with the cleanup again, then with the organizations this one was to start from.
    stopped_in_cleanup: bool = False


def purge_expired_events(*, batch_size: int | None = None, now=None) -> int:
    """One retention run without a time bound (tests, the shell); returns what it deleted."""
    return retention_run(batch_size=batch_size, now=now, max_seconds=float("inf")).deleted


def retention_task(start_after: int | None = None) -> RetentionRun:
    """One run of the retention purge (the Celery task's body): at most RETENTION_RUN_SECONDS, and
    the next run published at once if its time ran out with more to purge.

    The hourly beat run starts with the first organization; a run published by one whose time ran
    out starts after the organization it stopped on, so that a tenant with a large backlog takes
    its turn with the others instead of holding every run.
    """
    run = retention_run(start_after=start_after)
    if run.busy:
        return run  # another run is at it
    # The flag stood for this run (or none): the next one is published now if there is more to do.
    # It only keeps two runs from both publishing one; a run that is lost leaves the backlog to the
    # next hourly run.
    clear_flag(_RETENTION_PUBLISHED_FLAG)
    if run.stopped_at is not None or run.stopped_in_cleanup:
        from webhooks.tasks import purge_expired_events as task

        next_start_after = run.stopped_at if run.stopped_at is not None else start_after
        schedule_once(_RETENTION_PUBLISHED_FLAG, 300, task.s(next_start_after))
    return run


_RETENTION_PUBLISHED_FLAG = "retention:next-run-published"
_RETENTION_RUN_LOCK = 0x686C7274  # "hlrt"


def retention_run(
    *, batch_size: int | None = None, now=None, max_seconds: float | None = None, start_after: int | None = None
) -> RetentionRun:
    """Delete events past their organization's retention, with deliveries and attempts, in small batches.

    An event that is not finished (not yet fanned out, or with a delivery still waiting or
    being sent, say to a paused destination) is kept until it is: retention must never drop
    a webhook that was acknowledged but not yet delivered. A paused destination holds its deliveries
    PAUSED_DESTINATION_HOLD_DAYS at most, a suspended organization SUSPENDED_ORGANIZATION_HOLD_DAYS:
    each run first marks dead those held longer (give_up_long_held_deliveries), and their events are
    then kept the retention from there. Nothing younger than
    MIN_RETENTION_DAYS is deleted, whatever the stored retention says. Each run records one
    audit entry per organization whose events it deleted. A run that cannot delete a batch
    safely (see _purge_organization) stops there; the next run goes on.

    Bounded in time: after a batch, or an organization it deleted from, that ends past ``max_seconds``
    (RETENTION_RUN_SECONDS) the run stops with ``stopped_at`` set, and the next run (retention_task)
    goes on; the cleanup before the organizations (_retention_cleanup) stops the same way, with
    ``stopped_in_cleanup`` set. Organizations are taken in id order, those after ``start_after``
    first. One run at a time (a session advisory lock).
    """
    if not try_run_lock(_RETENTION_RUN_LOCK):
        return RetentionRun(deleted=0, finished=False, busy=True)
    try:
        return _retention_run(
            batch_size=batch_size or settings.RETENTION_BATCH_SIZE,
            now=now or timezone.now(),
            deadline=time.monotonic() + (settings.RETENTION_RUN_SECONDS if max_seconds is None else max_seconds),
            start_after=start_after,
        )
    finally:
        release_run_lock(_RETENTION_RUN_LOCK)


def _organizations_from(start_after: int | None) -> list[Organization]:
    organizations = list(Organization.objects.only("pk", "name", "retention_days").order_by("pk"))
    if start_after is None:
        return organizations
    return [o for o in organizations if o.pk > start_after] + [o for o in organizations if o.pk <= start_after]


def _retention_run(*, batch_size: int, now, deadline: float, start_after: int | None) -> RetentionRun:
    if not _retention_cleanup(batch_size=batch_size, now=now, deadline=deadline):
        return RetentionRun(deleted=0, finished=False, stopped_in_cleanup=True)
    # Before the purge: what it marks dead is kept the organization's retention from now on.
    try:
        give_up_long_held_deliveries(now=now, batch_size=batch_size, deadline=deadline)
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        if not connection.is_usable():
            raise
        # A held delivery waits one more hour; the purge of every organization must not wait with it.
        logger.exception("retention: giving up the deliveries held by long pauses or suspensions failed; going on")
    deleted = 0
    organizations = _organizations_from(start_after)
    for organization in organizations:
        # The model refuses less than a day; a value stored past it (an UPDATE, an old row) must
        # still not wipe the tenant's history at the next run.
        retention_days = max(organization.retention_days, MIN_RETENTION_DAYS)
        cutoff = now - timedelta(days=retention_days)
        counts = Counter()
        try:
            finished = _purge_organization(organization, cutoff, batch_size, counts, now, deadline)
        except SoftTimeLimitExceeded:
            raise  # the task's time is up: taken for this organization's trouble, the next would be killed halfway
        except Exception:
            if not connection.is_usable():
                raise  # the database, not this organization: the next run goes on
            # One organization's trouble (a row a bug trips on, a lock it waited too long for)
            # must not keep every organization after it from its retention: the next run tries it again.
            logger.exception("retention: purging the events of organization %s failed; going on", organization.pk)
            finished = True
        finally:
            # Also after a failed batch: what the earlier batches deleted is gone for good.
            if counts["events"] or counts["rejected_requests"]:
                audit_record(
                    action=RETENTION_PURGED_ACTION,
                    organization=organization,
                    changes={
                        "events": counts["events"],
                        "rejected_requests": counts["rejected_requests"],
                        "deliveries": counts["deliveries"],
                        "retention_days": retention_days,
                        "cutoff": cutoff.isoformat(),
                    },
                )
        deleted += counts["events"] + counts["rejected_requests"]
        if finished is None:
            return RetentionRun(deleted=deleted, finished=False, stopped_at=organization.pk)
        if not finished:
            # The statement that outlasted the wait most likely started before the next
            # organization's first batch too: waiting again for it would only make this run longer.
            return RetentionRun(deleted=deleted, finished=False)
        if (
            (counts["events"] or counts["rejected_requests"])
            and time.monotonic() > deadline
            and organization is not organizations[-1]
        ):
            # Time is also looked at between organizations: those with less than a batch each (and
            # each batch's wait for older statements) would otherwise take the run past Celery's soft
            # limit, and the next hourly run would start again with the first, never reaching the
            # last. Only after one that deleted something: those with nothing to delete cost one
            # query, and a run that only passed them must not hand over to yet another.
            return RetentionRun(deleted=deleted, finished=False, stopped_at=organization.pk)
    return RetentionRun(deleted=deleted, finished=True)


def _retention_cleanup(*, batch_size: int, now, deadline: float) -> bool:
    """What each run deletes before the organizations' events, each kind in batches; False when a batch
    ended past ``deadline`` (time.monotonic) with more of its kind left, or a kind that deleted
    something ended past it: the run stops there, at most one batch late, and the next one goes on.

    Without the bound a backlog of one kind (a week of sign-ins' sessions, a first purge of a
    years-old audit log) took the run past Celery's time limits, killed every hour at the same place.
    """
    # Signed tokens past the age at which their signatures are refused anyway (see SignatureNonce).
    kept = timedelta(seconds=SignatureNonce.KEPT_SECONDS + SignatureNonce.CLOCK_SKEW_SECONDS)
    expired_kinds = (
        SignatureNonce.objects.filter(created_at__lt=now - kept),
        PurgedEventKey.objects.filter(forget_after__lt=now),
        # Django's database sessions are never deleted once expired (its clearsessions command is not
        # run anywhere else): one row per sign-in, forever.
        Session.objects.filter(expire_date__lt=now),
        # The API's Idempotency-Keys, with the answers they replay, past their 24 hours.
        idempotency_keys_expired(now=now),
        # The overview's counts of hours past its week.
        forget_old_event_hours(now),
    )
    for expired in expired_kinds:
        deleted, finished = _delete_in_batches(expired, batch_size, deadline)
        if not finished or (deleted and time.monotonic() > deadline):
            return False
    if settings.AUDIT_LOG_RETENTION_DAYS:  # 0: kept forever
        audit = audit_purge_in_batches(
            before=now - timedelta(days=settings.AUDIT_LOG_RETENTION_DAYS), batch_size=batch_size, deadline=deadline
        )
        if not audit.finished or (audit.deleted and time.monotonic() > deadline):
            return False
    return True


def _delete_in_batches(expired, batch_size: int, deadline: float = float("inf")) -> tuple[int, bool]:
    """Delete the ``expired`` rows ``batch_size`` at a time, not in one statement: a run's purged keys
    all expire together, as many as the events it purged, and an hour's signature bindings (one per
    request of their providers) together too; one statement for them all would be one long
    transaction holding back every vacuum meanwhile. Returns how many it deleted, and False when a
    full batch ended past ``deadline`` (more may be left)."""
    expired = expired.order_by()
    deleted = 0
    while True:
        ids = list(expired.values_list("pk", flat=True)[:batch_size])
        if ids:
            deleted += expired.model.objects.filter(pk__in=ids).delete()[0]
        if len(ids) < batch_size:
            return deleted, True
        if time.monotonic() > deadline:
            return deleted, False


def _purge_organization(
    organization: Organization, cutoff, batch_size: int, counts: Counter, now, deadline: float = float("inf")
) -> bool | None:
    """Delete the organization's finished events past ``cutoff`` (received, and with every delivery ended,
    before it: _expired_and_finished); adds what it deleted to ``counts``.

    Returns None when the run's time (``deadline``, monotonic) ran out with more of them left.

    Each deleted event with a provider event id leaves its key (PurgedEventKey) for KEPT_DAYS more,
    committed before the event is deleted: a redelivery is still a duplicate once the body is gone.
    Returns False when it left a batch undeleted because older statements did not end in time.

    Why the key is committed first, and the delete waits: the ingest INSERT skips a row whose key
    exists (ingest_writer._NOT_PURGED) and counts one that conflicts with the stored event, in one
    statement and one snapshot. Were the key and the delete one commit, a redelivery whose snapshot
    predates it would see no key, wait on the event's row lock, find the row gone at the commit and
    be stored as a new event. Here, once the keys are committed, a statement that starts sees them
    (a duplicate, answered with the purged or still stored event's id: _purged_originals); the delete
    waits until every statement that started before that commit has ended, and those found the event
    still stored (a duplicate counted on it). A redelivery between the two steps is a duplicate
    either way. A key whose event then stays (retried since, say) only answers as that event.
    """
    forget_after = now + timedelta(days=PurgedEventKey.KEPT_DAYS)
    while True:
        ids = list(_expired_and_finished(organization, cutoff).order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            return True
        # Short transactions per batch: no long locks, bounded memory. The events are locked and
        # looked at again in each, so that an event retried since the ids were read is kept, and
        # a replay started now waits and then finds it gone.
        with transaction.atomic():
            # FOR NO KEY UPDATE: this transaction only looks at them again and writes their keys
            # elsewhere; a replay's delivery to one of them (a key share, its foreign key check)
            # need not wait. The deleting transaction below locks them FOR UPDATE.
            _lock_batch(ids, deliveries=False, no_key=True)
            purgeable = list(
                _expired_and_finished(organization, cutoff).filter(pk__in=ids).values_list("pk", flat=True)
            )
            wrote_keys = _keep_keys(WebhookEvent.objects.filter(pk__in=purgeable), forget_after=forget_after)
        if wrote_keys and not _older_statements_ended(settings.RETENTION_PURGE_WAIT_SECONDS):
            # Deleting now could store a redelivery as a new event. The events stay, with their keys
            # (a redelivery meanwhile is a duplicate of the stored event); a later run deletes them.
            logger.warning(
                "retention: statements started before the keys' commit still ran after %s s; %d events of "
                "organization %s are left to the next run",
                settings.RETENTION_PURGE_WAIT_SECONDS,
                len(purgeable),
                organization.pk,
            )
            return False
        with transaction.atomic():
            _lock_batch(purgeable, deliveries=True)
            # Only the events looked at above, whose keys are kept: one finished since waits for the next run.
            batch = _expired_and_finished(organization, cutoff).filter(pk__in=purgeable)
            forget_event_hours(batch)  # the overview's counts of the hours they were received in
            rejected = batch.filter(status=WebhookEvent.Status.REJECTED).count()
            removed = batch.delete()[1]
        events = removed.get(WebhookEvent._meta.label, 0)
        counts["rejected_requests"] += rejected
        counts["events"] += events - rejected
        counts["deliveries"] += removed.get(Delivery._meta.label, 0)
        if len(ids) < batch_size:
            return True
        if time.monotonic() > deadline:
            return None


def _lock_batch(ids: list, *, deliveries: bool, no_key: bool = False) -> None:
    # In id order, as recording locks deliveries (delivery._lock_in_id_order): the models'
    # newest-first default would lock them the other way round, a lock cycle with it.
    events = WebhookEvent.objects.select_for_update(no_key=no_key).filter(pk__in=ids).order_by("pk")
    list(events.values_list("pk", flat=True))
    if deliveries:
        list(Delivery.objects.select_for_update().filter(event_id__in=ids).order_by("pk").values_list("pk", flat=True))


# Statements of other clients of this database that were running when the keys were committed.
# Their start time is set before their snapshot is taken, and they show as active from then on: a
# statement not listed here with a start before the commit had ended, or takes its snapshot later.
# Backends of other roles show no state unless this role may read all statistics (pg_read_all_stats):
# the ingest must connect with the purge's role, or this role be granted it.
_OLDER_STATEMENTS_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE state = 'active' AND query_start < %s AND pid <> pg_backend_pid()
  AND datname = current_database() AND backend_type = 'client backend'
"""


def _older_statements_ended(timeout: float) -> bool:
    """Wait until no statement that started before now is still running, at most ``timeout`` seconds."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        # SQLite (embedded mode) has one writer at a time: the keys' commit came after any statement
        # that could miss them. Inside a caller's transaction nothing is committed yet to wait for.
        return True
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")  # the server's clock, as query_start
        committed_at = cursor.fetchone()[0]
        pause = 0.002
        while True:
            # Backend states are read once per transaction unless the snapshot is cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(_OLDER_STATEMENTS_SQL, [committed_at])
            if not cursor.fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _keep_keys(events, *, forget_after) -> bool:
    """Keep the keys of ``events`` that have a provider event id; whether there were any."""
    keyed = events.exclude(status=WebhookEvent.Status.REJECTED).filter(provider_event_id__isnull=False)
    keys = [
        PurgedEventKey(
            source_id=source_id,
            event_id_digest=event_id_digest(provider_event_id),
            original_id=event_id,
            received_at=received_at,
            forget_after=forget_after,
        )
        for event_id, source_id, provider_event_id, received_at in keyed.values_list(
            "id", "source_id", "provider_event_id", "received_at"
        )
    ]
    # A key may be there already: left by a batch whose delete an earlier run put off (its event
    # stayed), or by a redelivery stored in the instant of an earlier purge. It then counts from
    # this purge, as the event's own key would.
    PurgedEventKey.objects.bulk_create(
        keys, update_conflicts=True, unique_fields=["source", "event_id_digest"], update_fields=["forget_after"]
    )
    return bool(keys)


def _expired_and_finished(organization: Organization, cutoff):
    """The organization's events past their retention: received before ``cutoff``, processed, and
    with every delivery finished before ``cutoff`` too.

    The retention counts from the last delivery's end, not only from receipt: a delivery that died
    late (its destination paused for days, a long retry schedule, a retry by hand) is announced by
    the dead-letter mail, and the tenant must still find the event to look at and retry for the
    whole retention after that. A retry (by hand or in bulk) makes the delivery pending again and
    its new end starts the time anew. One NOT EXISTS on the deliveries, by their event (its foreign
    key's index): a delivery waiting or being sent, or one that ended at or after the cutoff, keeps
    the event. Rejected requests have no deliveries and go by their receipt alone.
    """
    keeps_the_event = Delivery.objects.filter(event=OuterRef("pk")).filter(
        Q(status__in=(Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT)) | Q(completed_at__gte=cutoff)
    )
    return (
        WebhookEvent.objects.filter(organization=organization, received_at__lt=cutoff)
        .exclude(status=WebhookEvent.Status.RECEIVED)
        .filter(~Exists(keeps_the_event))
    )


HELD_DELIVERIES_GIVEN_UP_ACTION = "destination.held_deliveries_given_up"
SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION = "organization.held_deliveries_given_up"


# How the last_error of a delivery given up behind a long pause begins (the dead-letter digest tells
# these from the ones that failed: their status code is an older attempt's).
PAUSED_HOLD_ERROR_START = "the destination was paused for more than "
# The same for one given up while its organization stayed suspended.
SUSPENDED_HOLD_ERROR_START = "held too long while the organization was suspended "


def paused_hold_error(hold_days: int) -> str:
    """The last_error of a delivery given up behind a long pause: why it died, and what to do."""
    return f"{PAUSED_HOLD_ERROR_START}{hold_days} days: not sent (retry once it is resumed)"


def suspended_hold_error(hold_days: int) -> str:
    """The last_error of a delivery given up while its organization stayed suspended."""
    return f"{SUSPENDED_HOLD_ERROR_START}(more than {hold_days} days): not sent (retry once it is active again)"


@dataclass(frozen=True)
class _Hold:
    """What holds deliveries unsent for as long as it lasts: a paused destination, a suspended organization."""

    holder: type  # Destination or Organization
    held_by: str  # the Delivery field naming its holder
    hold_days: int
    cutoff: datetime  # held since before this: given up
    reason: str
    long_held: Q  # holders held since before the cutoff (a filter on ``holder``)
    # The holder's fields its audit entry shows (the hold's start, its reason), read under the lock
    # that gave its deliveries up: read after, a resume or a reactivation since would have cleared them.
    shown: tuple[str, ...]

    def still_held(self, holder_id: int):
        return self.holder.objects.filter(self.long_held, pk=holder_id)


def _holds(now) -> list[_Hold]:
    paused_days, suspended_days = settings.PAUSED_DESTINATION_HOLD_DAYS, settings.SUSPENDED_ORGANIZATION_HOLD_DAYS
    paused_cutoff, suspended_cutoff = now - timedelta(days=paused_days), now - timedelta(days=suspended_days)
    return [
        _Hold(
            holder=Destination,
            held_by="destination_id",
            hold_days=paused_days,
            cutoff=paused_cutoff,
            reason=paused_hold_error(paused_days),
            # One being deleted loses its deliveries soon anyway (in batches): nothing to mark dead.
            long_held=Q(paused_at__lt=paused_cutoff, deletion_requested_at__isnull=True),
            shown=("paused_at", "pause_reason"),
        ),
        _Hold(
            holder=Organization,
            held_by="organization_id",
            hold_days=suspended_days,
            cutoff=suspended_cutoff,
            reason=suspended_hold_error(suspended_days),
            # One being deleted loses everything soon anyway: nothing to say to its admins.
            long_held=Q(is_active=False, deletion_requested_at__isnull=True, suspended_at__lt=suspended_cutoff),
            shown=("suspended_at",),
        ),
    ]


def give_up_long_held_deliveries(*, now=None, batch_size: int | None = None, deadline: float = float("inf")) -> int:
    """Mark dead the pending deliveries held by a destination paused for more than
    PAUSED_DESTINATION_HOLD_DAYS, or by an organization suspended for more than
    SUSPENDED_ORGANIZATION_HOLD_DAYS, and due for as long; returns how many.

    A destination that stays paused (an abandoned endpoint the circuit breaker stopped), or an
    organization an operator never makes active again, would hold its deliveries for ever: their
    events would never reach retention, and the tenant would hear nothing more. Dead, they show in the
    dead-letter views and the digest email, can be retried once it is resumed or active again (by
    hand or in bulk), and retention counts from now. Both bounds: a delivery that arrived (or was
    retried by hand) during the hold is held as long as the others, from then on. A destination
    resumed, or an organization made active again, before the bound keeps all of them: resume brings
    them due now, and reactivation clears the suspension's time (a new suspension counts from itself).

    In batches of ``batch_size``, each its own transaction, until ``deadline`` (monotonic) has passed;
    the rest wait for the next run. One audit entry per holder and run, the reason with it.
    """
    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    _catch_up_suspension_times(now)
    given_up = 0
    for hold in _holds(now):
        # Paused destinations and suspended organizations are few, and their rows small: no index needed.
        for holder_id in list(hold.holder.objects.filter(hold.long_held).order_by("pk").values_list("pk", flat=True)):
            count, shown = 0, None
            try:
                for destination_id in _destinations_held_by(hold, holder_id):
                    while True:
                        done, held_as = _give_up_held_batch(
                            hold, holder_id, destination_id, now=now, batch_size=batch_size
                        )
                        count += done
                        shown = shown or held_as
                        if done < batch_size or time.monotonic() > deadline:
                            break
                    if time.monotonic() > deadline:
                        break
            finally:
                # Also after a failed batch (a lock timeout, say): the earlier batches' deliveries are dead for good.
                if count:
                    _audit_held_deliveries_given_up(hold, holder_id, count=count, shown=shown or {})
            given_up += count
            if time.monotonic() > deadline:
                return given_up
    return given_up


def _catch_up_suspension_times(now) -> None:
    """Organization.suspended_at for organizations suspended or made active again by a raw UPDATE of
    is_active (organization_set_active and Organization.save keep it in step): the hold of one suspended without it counts from
    now, and one active again has none (a later suspension must not start past its bound)."""
    Organization.objects.filter(is_active=False, suspended_at__isnull=True).update(suspended_at=now)
    Organization.objects.filter(is_active=True, suspended_at__isnull=False).update(suspended_at=None)


def _destinations_held_by(hold: _Hold, holder_id: int) -> list[int]:
    # Batches by destination: the destination's pending index (delivery_due_by_dest) finds them.
    if hold.holder is Destination:
        return [holder_id]
    # Not one being deleted, as the paused hold leaves it out (_holds): its batches delete its deliveries.
    destinations = Destination.objects.filter(organization_id=holder_id, deletion_requested_at__isnull=True)
    return list(destinations.order_by("pk").values_list("pk", flat=True))


def _audit_held_deliveries_given_up(hold: _Hold, holder_id: int, *, count: int, shown: dict) -> None:
    """``shown``: the holder's hold as the batches that gave its deliveries up saw it (see _Hold.shown)."""
    changes = {
        "deliveries": count,
        **{name: value.isoformat() if isinstance(value, datetime) else value for name, value in shown.items()},
        "hold_days": hold.hold_days,
        "reason": hold.reason,
    }
    if hold.holder is Organization:
        organization = Organization.objects.filter(pk=holder_id).first()
        if organization is not None:
            audit_record(
                action=SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION,
                organization=organization,
                target=organization,
                changes=changes,
            )
        return
    destination = Destination.objects.select_related("organization").only("pk", "name", "organization")
    destination = destination.filter(pk=holder_id).first()
    if destination is not None:
        audit_record(
            action=HELD_DELIVERIES_GIVEN_UP_ACTION,
            organization=destination.organization,
            target=destination,
            changes=changes,
        )


def _give_up_held_batch(
    hold: _Hold, holder_id: int, destination_id: int, *, now, batch_size: int
) -> tuple[int, dict | None]:
    """One batch of give_up_long_held_deliveries, for one destination: how many it marked dead, and
    the holder's hold as it was then (its fields _Hold.shown; None when it did not look).

    Against a resume (or a reactivation) at the same moment: the holder's row (the destination, or
    the organization) is locked before any delivery is marked, on the condition that it is still
    held since before the cutoff. A resume that got there first has then committed (the lock waits
    for it, and looks at the row again after: not held, nothing is done) or waits until this batch
    has committed (its deliveries died before it). Without the lock, the UPDATE's snapshot could predate a resume that commits while
    it waits on the deliveries' rows: PostgreSQL looks at an updated delivery again, not at its
    holder, and would kill what the resume has just queued. The UPDATE checks the hold too (a
    subquery), the status and the due time, whatever took the rows meanwhile. The lock is FOR NO KEY
    UPDATE: it waits for a resume's UPDATE as FOR UPDATE would, but lets the fan-out insert
    deliveries meanwhile (their foreign key checks take KEY SHARE).

    The candidates are read before the lock: once the first run after the bound has marked dead what
    was held, every later run of a hold that lasts (an abandoned endpoint, an organization never made
    active again, each of its destinations) finds nothing, and must not lock, and write, the holder's
    row each hour for that (nor keep a reactivation waiting). What the UPDATE marks dead it looks at
    again under the lock, in a snapshot taken after it.
    """
    # The destination's pending index (delivery_due_by_dest), in the dispatcher's order.
    held = Delivery.objects.filter(
        destination_id=destination_id, status=Delivery.Status.PENDING, next_attempt_at__lt=hold.cutoff
    )
    ids = list(held.order_by("next_attempt_at", "id").values_list("pk", flat=True)[:batch_size])
    if not ids:
        return 0, None
    still_held = hold.still_held(holder_id)
    with transaction.atomic():
        # Ordered by pk: Destination's ordering joins its organization, whose row would be locked too
        # (of= is ignored by a values() query).
        held_as = still_held.select_for_update(no_key=True).order_by("pk").values(*hold.shown).first()
        if held_as is None:
            return 0, None
        given_up = Delivery.objects.filter(
            pk__in=ids,
            status=Delivery.Status.PENDING,
            # Looked at again too: a retry by hand (or in bulk) that made one due now and committed
            # since the ids were read has it held from now on.
            next_attempt_at__lt=hold.cutoff,
            **{f"{hold.held_by}__in": still_held.values("pk")},
        ).update(
            status=Delivery.Status.DEAD,
            completed_at=now,
            next_attempt_at=None,
            claimed_at=None,
            last_error=hold.reason,
        )
    return given_up, held_as


def forget_expired_previous_secrets(now=None) -> int:
    """Erase the previous secrets of rotations whose overlap has ended; returns how many were erased.

    Once its window is over a previous secret neither verifies nor signs anything, so keeping
    it would only leave one more secret to leak. A rotation running at the same time is safe:
    the UPDATE waits for its row lock and then re-checks the expiry it set.
    """
    now = now or timezone.now()
    return sum(
        model.objects.filter(previous_secret_expires_at__lte=now).update(
            previous_secret="", previous_secret_expires_at=None
        )
        for model in (Source, Destination)
    )
