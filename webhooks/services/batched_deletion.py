"""Deleting something large (an organization, a source) in bounded batches, in the background.

What organization and source deletion share: an owner row marked as being deleted
(``deletion_requested_at``) records in its ``deletion_progress`` what has gone so far; a run
deletes its rows in batches, each its own short transaction that also records the progress, one
run at a time per owner (a session advisory lock); a run stops after RUN_SECONDS and publishes the
next, and the sweeper publishes again a run that was lost. What is deleted, and in which order,
is each owner's own (organization_deletion, source_deletion).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, transaction
from django.db.models import Model, QuerySet

from accounts.models import Invitation
from organizations.models import ApiKey, IdempotencyKey, Membership, MonthlyUsage
from webhooks.fields import encrypted_field_names
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

from .event_hours import forget_event_hours
from .row_locks import check_foreign_keys
from .run_locks import release_run_lock, try_run_lock
from .scheduling import clear_flag, schedule_once, worker_is_stopping

logger = logging.getLogger(__name__)

# Rows per batch transaction: events (with their deliveries and attempts), or rows of another kind.
BATCH_SIZE = 500
# A run stops after this long (well inside Celery's soft time limit) and publishes the next one.
RUN_SECONDS = 50
# A published run not heard of again for this long (lost message, killed worker) is published
# again by the sweeper.
PUBLISHED_TTL_SECONDS = 300
# Why a batch is tried again: a delivery or attempt committed after the batch read its rows
# (foreign_key_violation), or a lock cycle with a worker (deadlock_detected).
_TRY_AGAIN = {"23503", "40P01"}
_BATCH_TRIES = 3

# The kinds of rows, by the name an operator knows them by (audit entries, progress).
EVENTS = "events (and rejected requests)"
LINKS = "source–destination links"
NONCES = "replay-protection records"
PURGED_KEYS = "purged events' keys"
_LABELS = {
    WebhookEvent._meta.label: EVENTS,
    Delivery._meta.label: "deliveries",
    DeliveryAttempt._meta.label: "delivery attempts",
    Subscription._meta.label: LINKS,
    SignatureNonce._meta.label: NONCES,
    PurgedEventKey._meta.label: PURGED_KEYS,
    Source._meta.label: "sources",
    Destination._meta.label: "destinations",
    BulkRetry._meta.label: "bulk retries",
    Invitation._meta.label: "invitations",
    Membership._meta.label: "members",
    MonthlyUsage._meta.label: "monthly usage records",
    IdempotencyKey._meta.label: "API idempotency keys",
    ApiKey._meta.label: "API keys",
}


def removed_by_kind(removed: dict[str, int]) -> Counter:
    """A Django deletion's per-model counts, by the kinds an operator reads."""
    return Counter({_LABELS[label]: count for label, count in removed.items() if count and label in _LABELS})


@dataclass
class DeletionRun:
    finished: bool  # the owner is gone (deleted by this run or an earlier one)
    deleted: Counter  # rows this run deleted, by kind
    busy: bool = False  # another run holds the owner


class BatchDeleter:
    """One run's batches of one owner's rows. A subclass lists its steps, each of which deletes one
    batch and says whether there may be more, and deletes the owner's row at the end (``finish``)."""

    owner_model: type[Model]  # its row records the progress (deletion_progress)

    def __init__(self, owner_id: int, batch_size: int, progress: Counter) -> None:
        self.owner_id = owner_id
        self.batch_size = batch_size
        self.progress = progress  # what earlier runs deleted
        self.deleted: Counter = Counter()  # what this run deleted
        # The last event id deleted: each batch starts after it instead of scanning again the index
        # entries of the rows deleted before (dead until a vacuum).
        self.events_after = None

    def steps(self) -> list[Callable[[], bool]]:
        raise NotImplementedError

    def finish(self) -> bool:
        """Delete the owner's row once nothing of it is left; False if rows came back meanwhile."""
        raise NotImplementedError

    @property
    def total(self) -> dict[str, int]:
        return dict(sorted((self.progress + self.deleted).items()))

    def batch(self, work: Callable[[], Counter]) -> None:
        """``work`` and the progress it makes, in one transaction; tried again after a deadlock or
        a row committed meanwhile. Counted only once committed."""
        for attempt in range(1, _BATCH_TRIES + 1):
            try:
                with transaction.atomic():
                    counts = work()
                    check_foreign_keys()
                    self.owner_model.objects.filter(pk=self.owner_id).update(
                        deletion_progress=dict(self.progress + self.deleted + counts)
                    )
                break
            except DatabaseError as exc:
                if attempt == _BATCH_TRIES or getattr(exc.__cause__, "sqlstate", None) not in _TRY_AGAIN:
                    raise
        self.deleted += counts

    def first_ids(self, rows: QuerySet, limit: int | None = None) -> list:
        return list(rows.order_by("pk").values_list("pk", flat=True)[: limit or self.batch_size])

    def delete_events(self, events: QuerySet) -> bool:
        """The oldest of ``events`` (the owner's) of a batch, with their deliveries and attempts."""
        if self.events_after is not None:
            events = events.filter(pk__gt=self.events_after)
        ids = self.first_ids(events)
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
            forget_event_hours(WebhookEvent.objects.filter(pk__in=ids))  # the overview's counts of their hours
            return removed_by_kind(WebhookEvent.objects.filter(pk__in=ids).delete()[1])

        self.batch(work)
        self.events_after = ids[-1]
        return len(ids) == self.batch_size

    def delete_rows(self, rows: QuerySet, *, in_id_order: bool = True, limit: int | None = None) -> bool:
        """A batch of ``rows`` (of a kind without many children of its own)."""
        limit = limit or self.batch_size
        if in_id_order:
            ids = self.first_ids(rows, limit)
        else:
            ids = list(rows.values_list("pk", flat=True)[:limit])
        if not ids:
            return False
        model = rows.model
        self.batch(lambda: removed_by_kind(model.objects.filter(pk__in=ids).delete()[1]))
        return len(ids) == limit


def run_deletion(
    *,
    owner_model: type[Model],
    owner_id: int,
    lock_key: int,
    deleter: Callable[[Counter], BatchDeleter],
    max_seconds: float | None = None,
) -> DeletionRun:
    """Delete a marked owner's rows in batches, then the owner; resumable at any point.

    Each batch is one short transaction (which also records the progress), so a run stopped
    anywhere (a crash, the time limit) leaves only whole batches done, and the next run goes on
    from what is left. One run at a time per owner (a session advisory lock on ``lock_key``,
    released with the connection if the worker dies). Returns before finishing after
    ``max_seconds`` (RUN_SECONDS by default); the caller publishes the next run.
    """
    # Without its secrets: deleting must not need the keys to read them (see fields).
    owner = owner_model.objects.filter(pk=owner_id).defer(*encrypted_field_names(owner_model)).first()
    if owner is None:
        return DeletionRun(finished=True, deleted=Counter())
    if not owner.being_deleted:
        raise ValueError(f"{owner_model._meta.verbose_name} {owner_id} was not asked to be deleted")
    if not try_run_lock(lock_key):
        return DeletionRun(finished=False, deleted=Counter(), busy=True)
    try:
        # Read again under the lock: the progress a run that just ended recorded.
        progress = owner_model.objects.filter(pk=owner_id).values_list("deletion_progress", flat=True).first()
        run = deleter(Counter(progress or {}))
        deadline = time.monotonic() + (RUN_SECONDS if max_seconds is None else max_seconds)
        for step in run.steps():
            while step():
                if time.monotonic() > deadline or worker_is_stopping():
                    return DeletionRun(finished=False, deleted=run.deleted)
        return DeletionRun(finished=run.finish(), deleted=run.deleted)
    finally:
        release_run_lock(lock_key)


def publish_once(flag: str, task) -> bool:
    """Ask a worker to run ``task``, unless a run was published recently; never raises."""
    return schedule_once(flag, PUBLISHED_TTL_SECONDS, task)


def deletion_task(*, run: Callable[[], DeletionRun], flag: str, publish: Callable[[], bool], what: str) -> bool:
    """One run of a deletion (a Celery task's body); publishes the next run if there is more to do.

    Returns True once the owner is gone.
    """
    result = run()
    if result.busy:
        return False  # another run is at it; this one's message was a duplicate
    # The flag stood for this run: the next one (or none) is published now.
    clear_flag(flag)
    if not result.finished:
        publish()
    if result.deleted:
        logger.info(
            "%s: deleted %s%s", what, dict(result.deleted), "; it is gone" if result.finished else "; more to do"
        )
    return result.finished


@dataclass(frozen=True)
class OwnerDeletions:
    """The background deletions of one kind of owner (organization, source, destination): how a run
    is published, resumed by the sweeper, run as its Celery task and run at all. The owner's module
    says only what differs: its model, its task, its run lock's prefix and its BatchDeleter."""

    owner_model: type[Model]
    name: str  # "source": its published flags' prefix and its log lines
    task_name: str  # the Celery task in webhooks.tasks that runs one deletion
    # pg_try_advisory_lock keys of its runs: this prefix above the owner's id (each kind its own).
    lock_prefix: int

    def _flag(self, owner_id: int) -> str:
        return f"{self.name}-deletion:{owner_id}:published"

    def publish(self, owner_id: int) -> bool:
        """Ask a worker to run the deletion, unless a run was published recently; never raises."""
        from webhooks import tasks

        return publish_once(self._flag(owner_id), getattr(tasks, self.task_name).s(owner_id))

    def resume(self) -> int:
        """The sweeper's part: publish the deletions under way; returns how many it published. A run
        published less than PUBLISHED_TTL_SECONDS ago is not published again, so a lost one (broker,
        killed worker) is resumed within that time, and one at work is left alone."""
        ids = self.owner_model.objects.filter(deletion_requested_at__isnull=False).values_list("pk", flat=True)[:100]
        return sum(self.publish(owner_id) for owner_id in ids)

    def task(self, owner_id: int, run: Callable[[], DeletionRun]) -> bool:
        """One run of the deletion (the Celery task's body; see deletion_task). True once the owner is gone."""
        return deletion_task(
            run=run, flag=self._flag(owner_id), publish=lambda: self.publish(owner_id), what=f"{self.name} {owner_id}"
        )

    def run(
        self, owner_id: int, deleter: Callable[[Counter], BatchDeleter], max_seconds: float | None = None
    ) -> DeletionRun:
        """Delete the marked owner's rows in batches, then the owner (see run_deletion)."""
        return run_deletion(
            owner_model=self.owner_model,
            owner_id=owner_id,
            lock_key=self.lock_prefix + owner_id,
            deleter=deleter,
            max_seconds=max_seconds,
        )
