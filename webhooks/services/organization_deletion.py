"""Deleting an organization with all its data, however large, without one long request or transaction.

Asking (``organization_request_deletion``) is one short transaction: the organization becomes
inactive at once (ingest answers 404 for its sources, delivery stops, its dashboard refuses)
and is marked as being deleted, with an audit entry. A background run
(``organization_deletion_run``, a Celery task, resumed by the sweeper) then deletes its rows in
bounded batches, each its own short transaction, and the organization row last. Audit entries
stay (AuditLog has no foreign key). User accounts stay too, also those of users who belonged to
no other organization: only their memberships go.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Invitation
from organizations.models import ApiKey, Membership, MonthlyUsage, Organization
from organizations.services import audit_record
from webhooks.models import (
    BulkRetry,
    Delivery,
    DeliveryAttempt,
    Destination,
    PurgedEventKey,
    SignatureNonce,
    Source,
    Subscription,
    WebhookEvent,
)

from .row_locks import check_foreign_keys, delete_destinations
from .scheduling import clear_flag, schedule_once, worker_is_stopping

logger = logging.getLogger(__name__)

DELETION_REQUESTED_ACTION = "organization.deletion_requested"
DELETED_ACTION = "organization.deleted"

# Rows per batch transaction: events (with their deliveries and attempts), or rows of another kind.
BATCH_SIZE = 500
# A run stops after this long (well inside Celery's soft time limit) and publishes the next one.
RUN_SECONDS = 50
# A published run not heard of again for this long (lost message, killed worker) is published
# again by the sweeper.
PUBLISHED_TTL_SECONDS = 300
# Counts on the confirmation page stop here, as the admin's lists do (CappedCountPaginator).
COUNT_CAP = 10_000
# Why a batch is tried again: a delivery or attempt committed after the batch read its rows
# (foreign_key_violation), or a lock cycle with a worker (deadlock_detected).
_TRY_AGAIN = {"23503", "40P01"}
_BATCH_TRIES = 3
# pg_try_advisory_lock key of an organization's run: this prefix above the organization's id.
_RUN_LOCK_PREFIX = 0x6F7267 << 40  # "org"


@dataclass(frozen=True)
class KindCount:
    """How many rows of one kind an organization has, counted up to a cap."""

    kind: str
    count: int
    capped: bool  # there are more than ``count``

    @property
    def label(self) -> str:
        return f"more than {self.count:,}" if self.capped else f"{self.count:,}"


def _kinds(organization_id: int) -> list[tuple[str, QuerySet]]:
    """Every kind of row an organization owns, by the name an operator knows it by."""
    return [
        ("sources", Source.objects.filter(organization_id=organization_id)),
        ("destinations", Destination.objects.filter(organization_id=organization_id)),
        ("source–destination links", Subscription.objects.filter(organization_id=organization_id)),
        ("events (and rejected requests)", WebhookEvent.objects.filter(organization_id=organization_id)),
        ("deliveries", Delivery.objects.filter(organization_id=organization_id)),
        ("delivery attempts", DeliveryAttempt.objects.filter(organization_id=organization_id)),
        ("replay-protection records", SignatureNonce.objects.filter(source__organization_id=organization_id)),
        ("purged events' keys", PurgedEventKey.objects.filter(source__organization_id=organization_id)),
        ("bulk retries", BulkRetry.objects.filter(organization_id=organization_id)),
        ("members", Membership.objects.filter(organization_id=organization_id)),
        ("invitations", Invitation.objects.filter(organization_id=organization_id)),
        ("monthly usage records", MonthlyUsage.objects.filter(organization_id=organization_id)),
        ("API keys", ApiKey.objects.filter(organization_id=organization_id)),
    ]


def organization_contents(*, organization: Organization, cap: int | None = None) -> list[KindCount]:
    """What deleting ``organization`` deletes, per kind: one capped count each, so the cost does not
    grow with the organization's size (an index range of at most ``cap`` + 1 entries per kind)."""
    cap = cap or COUNT_CAP
    counts = []
    for kind, rows in _kinds(organization.pk):
        count = rows.order_by().values("pk")[: cap + 1].count()
        counts.append(KindCount(kind, min(count, cap), count > cap))
    return counts


def organization_request_deletion(*, organization: Organization, actor=None, request=None) -> bool:
    """Make the organization inactive and mark it as being deleted, audited, and start the deletion.

    Returns False when it was already being deleted (nothing is written then; the deletion is
    published again, which is harmless). The rows themselves are deleted in the background.
    """
    # Counted before the transaction, which stays short: they are what the operator was shown.
    contents = {item.kind: item.label for item in organization_contents(organization=organization)}
    with transaction.atomic():
        # FOR NO KEY UPDATE: ingest and processing, whose new rows take a key-share lock on the
        # organization when they commit, do not wait for this.
        locked = Organization.objects.select_for_update(no_key=True).filter(pk=organization.pk).first()
        if locked is None:
            return False  # deleted meanwhile
        if locked.being_deleted:
            transaction.on_commit(lambda: publish_organization_deletion(locked.pk))
            return False
        locked.is_active = False
        locked.deletion_requested_at = timezone.now()
        locked.deletion_requested_by = str(actor)[:200] if actor is not None else "system"
        # save(), not update(): its post_save signal also empties this process's ingest source cache.
        locked.save(update_fields=["is_active", "deletion_requested_at", "deletion_requested_by"])
        audit_record(
            action=DELETION_REQUESTED_ACTION,
            organization=locked,
            actor=actor,
            target=locked,
            request=request,
            changes={
                "name": locked.name,
                "slug": locked.slug,
                "was_active": organization.is_active,
                "contents": contents,
            },
        )
        transaction.on_commit(lambda: publish_organization_deletion(locked.pk))
    organization.is_active = locked.is_active
    organization.deletion_requested_at = locked.deletion_requested_at
    organization.deletion_requested_by = locked.deletion_requested_by
    return True


def _published_flag(organization_id: int) -> str:
    return f"organization-deletion:{organization_id}:published"


def publish_organization_deletion(organization_id: int) -> bool:
    """Ask a worker to run the deletion, unless a run was published recently; never raises."""
    from webhooks.tasks import delete_organization

    return schedule_once(
        _published_flag(organization_id), PUBLISHED_TTL_SECONDS, delete_organization.s(organization_id)
    )


def resume_organization_deletions() -> int:
    """The sweeper's part: publish the deletions under way; returns how many it published. A run
    published less than PUBLISHED_TTL_SECONDS ago is not published again, so a lost one (broker,
    killed worker) is resumed within that time, and one at work is left alone."""
    ids = Organization.objects.filter(deletion_requested_at__isnull=False).values_list("pk", flat=True)[:100]
    return sum(publish_organization_deletion(organization_id) for organization_id in ids)


def organization_deletion_task(organization_id: int) -> bool:
    """One run of the deletion (the Celery task's body); publishes the next run if there is more to do.

    Returns True once the organization is gone.
    """
    run = organization_deletion_run(organization_id=organization_id)
    if run.busy:
        return False  # another run is at it; this one's message was a duplicate
    # The flag stood for this run: the next one (or none) is published now.
    clear_flag(_published_flag(organization_id))
    if not run.finished:
        publish_organization_deletion(organization_id)
    if run.deleted:
        logger.info(
            "organization %s: deleted %s%s",
            organization_id,
            dict(run.deleted),
            "; it is gone" if run.finished else "; more to do",
        )
    return run.finished


@dataclass
class DeletionRun:
    finished: bool  # the organization is gone (deleted by this run or an earlier one)
    deleted: Counter  # rows this run deleted, by kind
    busy: bool = False  # another run holds the organization


def organization_deletion_run(
    *, organization_id: int, batch_size: int | None = None, max_seconds: float | None = None
) -> DeletionRun:
    """Delete a marked organization's rows in batches, then the organization; resumable at any point.

    Each batch is one short transaction (which also records the progress), so a run stopped
    anywhere (a crash, the time limit) leaves only whole batches done, and the next run goes on
    from what is left. One run at a time per organization (a session advisory lock, released
    with the connection if the worker dies). Returns before finishing after ``max_seconds``;
    the caller publishes the next run.
    """
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return DeletionRun(finished=True, deleted=Counter())
    if not organization.being_deleted:
        raise ValueError(f"organization {organization_id} was not asked to be deleted")
    if not _try_run_lock(organization_id):
        return DeletionRun(finished=False, deleted=Counter(), busy=True)
    try:
        # Read again under the lock: the progress a run that just ended recorded.
        progress = Organization.objects.filter(pk=organization_id).values_list("deletion_progress", flat=True).first()
        run = _Run(organization_id, batch_size or BATCH_SIZE, Counter(progress or {}))
        deadline = time.monotonic() + (RUN_SECONDS if max_seconds is None else max_seconds)
        for step in run.steps():
            while step():
                if time.monotonic() > deadline or worker_is_stopping():
                    return DeletionRun(finished=False, deleted=run.deleted)
        return DeletionRun(finished=run.delete_organization_row(), deleted=run.deleted)
    finally:
        _release_run_lock(organization_id)


def _try_run_lock(organization_id: int) -> bool:
    if connection.vendor != "postgresql":
        return True  # SQLite (embedded mode) has a single worker
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_RUN_LOCK_PREFIX + organization_id])
        return bool(cursor.fetchone()[0])


def _release_run_lock(organization_id: int) -> None:
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_RUN_LOCK_PREFIX + organization_id])
    except DatabaseError:
        logger.warning("could not release the deletion lock of organization %s", organization_id)
        connection.close()  # the lock goes with the session


def _removed(removed: dict[str, int]) -> Counter:
    """A Django deletion's per-model counts, by the kinds an operator reads."""
    labels = {
        WebhookEvent._meta.label: "events (and rejected requests)",
        Delivery._meta.label: "deliveries",
        DeliveryAttempt._meta.label: "delivery attempts",
        Subscription._meta.label: "source–destination links",
        SignatureNonce._meta.label: "replay-protection records",
        PurgedEventKey._meta.label: "purged events' keys",
        Source._meta.label: "sources",
        Destination._meta.label: "destinations",
        BulkRetry._meta.label: "bulk retries",
        Invitation._meta.label: "invitations",
        Membership._meta.label: "members",
        MonthlyUsage._meta.label: "monthly usage records",
        ApiKey._meta.label: "API keys",
    }
    return Counter({labels[label]: count for label, count in removed.items() if count and label in labels})


class _Run:
    """One run's batches. Each step deletes one batch and says whether there may be more."""

    def __init__(self, organization_id: int, batch_size: int, progress: Counter) -> None:
        self.organization_id = organization_id
        self.batch_size = batch_size
        self.progress = progress  # what earlier runs deleted
        self.deleted: Counter = Counter()  # what this run deleted
        # The last event id deleted: each batch starts after it instead of scanning again the index
        # entries of the rows deleted before (dead until a vacuum).
        self.events_after = None

    def steps(self) -> list[Callable[[], bool]]:
        # Events first (nearly all the rows, with their deliveries and attempts), so that what
        # follows is small; the organization's own row last (delete_organization_row).
        return [
            self._events,
            self._destinations,
            self._nonces,
            self._purged_keys,
            self._sources,
            *(
                lambda model=model: self._plain(model)
                for model in (BulkRetry, Invitation, Membership, MonthlyUsage, ApiKey)
            ),
        ]

    def _batch(self, work: Callable[[], Counter]) -> None:
        """``work`` and the progress it makes, in one transaction; tried again after a deadlock or
        a row committed meanwhile. Counted only once committed."""
        for attempt in range(1, _BATCH_TRIES + 1):
            try:
                with transaction.atomic():
                    counts = work()
                    check_foreign_keys()
                    Organization.objects.filter(pk=self.organization_id).update(
                        deletion_progress=dict(self.progress + self.deleted + counts)
                    )
                break
            except DatabaseError as exc:
                if attempt == _BATCH_TRIES or getattr(exc.__cause__, "sqlstate", None) not in _TRY_AGAIN:
                    raise
        self.deleted += counts

    def _first_ids(self, rows: QuerySet, limit: int | None = None) -> list:
        return list(rows.order_by("pk").values_list("pk", flat=True)[: limit or self.batch_size])

    def _events(self) -> bool:
        """The oldest events of a batch with their deliveries and attempts."""
        events = WebhookEvent.objects.filter(organization_id=self.organization_id)
        if self.events_after is not None:
            events = events.filter(pk__gt=self.events_after)
        ids = self._first_ids(events)
        if not ids:
            return False

        def work() -> Counter:
            # Events, then their deliveries, each in id order, as the retention purge locks them
            # (lifecycle._purge_organization): a delivery's result recorded now waits for the
            # batch, then finds its row gone (record_results drops it).
            list(
                WebhookEvent.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True)
            )
            list(
                Delivery.objects.select_for_update()
                .filter(event_id__in=ids)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            return _removed(WebhookEvent.objects.filter(pk__in=ids).delete()[1])

        self._batch(work)
        self.events_after = ids[-1]
        return len(ids) == self.batch_size

    def _destinations(self) -> bool:
        """Destinations with their links, as the dashboard deletes them (their deliveries went with the events)."""
        ids = self._first_ids(Destination.objects.filter(organization_id=self.organization_id), 100)
        if not ids:
            return False

        def work() -> Counter:
            links = Subscription.objects.filter(destination_id__in=ids).count()
            gone = delete_destinations(ids)
            return Counter({"destinations": len(gone), "source–destination links": links if gone else 0})

        self._batch(work)
        return True

    def _nonces(self) -> bool:
        ids = self._first_ids(SignatureNonce.objects.filter(source__organization_id=self.organization_id))
        if not ids:
            return False
        self._batch(lambda: _removed(SignatureNonce.objects.filter(pk__in=ids).delete()[1]))
        return len(ids) == self.batch_size

    def _purged_keys(self) -> bool:
        # One per purged event, kept PurgedEventKey.KEPT_DAYS: a busy source with a short retention
        # has millions. In batches here, rather than in one statement with their source.
        # By the (source, digest) index of the organization's few sources, in no order: the key's id
        # order would walk the whole table's keys, every organization's, for each batch.
        sources = Source.objects.filter(organization_id=self.organization_id).values("pk")
        ids = list(PurgedEventKey.objects.filter(source_id__in=sources).values_list("pk", flat=True)[: self.batch_size])
        if not ids:
            return False
        self._batch(lambda: _removed(PurgedEventKey.objects.filter(pk__in=ids).delete()[1]))
        return len(ids) == self.batch_size

    def _sources(self) -> bool:
        # With the few events that may have arrived after the event batches (through a web
        # process's cached source, for up to INGEST_SOURCE_CACHE_SECONDS), counted with the others.
        ids = self._first_ids(Source.objects.filter(organization_id=self.organization_id), 100)
        if not ids:
            return False
        self._batch(lambda: _removed(Source.objects.filter(pk__in=ids).delete()[1]))
        return True

    def _plain(self, model) -> bool:
        ids = self._first_ids(model.objects.filter(organization_id=self.organization_id))
        if not ids:
            return False
        self._batch(lambda: _removed(model.objects.filter(pk__in=ids).delete()[1]))
        return len(ids) == self.batch_size

    def delete_organization_row(self) -> bool:
        """The organization itself, once nothing of it is left, audited; False if rows came back meanwhile.

        The organization's row is locked first: a row that references it takes a key-share lock
        on it when committed, so one not committed before this point fails instead of being left
        behind, and one committed before it is seen here.
        """
        with transaction.atomic():
            organization = Organization.objects.select_for_update().filter(pk=self.organization_id).first()
            if organization is None:
                return True
            if any(rows.exists() for _, rows in _kinds(self.organization_id)):
                return False
            audit_record(
                action=DELETED_ACTION,
                organization=organization,
                target=organization,
                changes={
                    "name": organization.name,
                    "slug": organization.slug,
                    "requested_by": organization.deletion_requested_by,
                    "requested_at": organization.deletion_requested_at.isoformat(),
                    "deleted": dict(sorted((self.progress + self.deleted).items())),
                },
            )
            Organization.objects.filter(pk=self.organization_id).delete()
        return True
