"""Deleting a destination with all its deliveries, however many, without one long request or transaction.

Asking (``destination_request_deletion``) is one short transaction whose cost does not grow with
the destination's deliveries: the destination becomes inactive and is marked as being deleted,
with an audit entry. From then on it is hidden from everything but the destination lists, which
show its state: it cannot be changed, and nothing more is sent to it. Claims give an inactive
destination no room, so its deliveries wait unsent (the sweeper's dead-lettering of inactive
destinations' deliveries leaves those of one being deleted alone: one UPDATE of all of them is
what this avoids); the fan-out gives it no new deliveries (lock_destinations_against_deletion
leaves it out), and retries, replays and bulk retries to it are refused. A background run
(``destination_deletion_run``, a Celery task, resumed by the sweeper) then deletes its deliveries
with their attempts and its links to sources, in bounded batches, each its own short transaction,
and the destination row last, with a second audit entry that counts what went. The events stay
(other destinations, replay). The machinery (batches, progress, one run at a time, resuming) is
organization and source deletion's (batched_deletion).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from organizations.services import audit_record
from webhooks.models import Delivery, Destination, Subscription

from .batched_deletion import (
    BATCH_SIZE,
    BatchDeleter,
    DeletionRun,
    OwnerDeletions,
    removed_by_kind,
)
from .permissions import require_configure_role

DELETION_REQUESTED_ACTION = "destination.deletion_requested"
DELETED_ACTION = "destination.deleted"

# Its runs' advisory lock keys: a prefix of its own above the id, so no two kinds share a key.
_DELETIONS = OwnerDeletions(Destination, "destination", "delete_destination", lock_prefix=0x647374 << 40)  # "dst"


def destination_request_deletion(*, destination: Destination, actor=None) -> bool:
    """Make the destination inactive and mark it as being deleted, audited, and start the deletion.

    Returns False when it was already being deleted or is gone (nothing is written then; a
    deletion under way is published again, which is harmless). The rows go in the background.
    """
    require_configure_role(organization=destination.organization, actor=actor)
    with transaction.atomic():
        # FOR UPDATE, not NO KEY: it waits for a fan-out or replay that holds the destination
        # against deletion (FOR KEY SHARE, lock_destinations_against_deletion) to commit, and one
        # that comes after waits for this, then leaves the destination out. Either way no delivery
        # is made for it once this has committed. A claim passes a locked destination over.
        # of self: the default ordering joins the organization, whose row must not be locked with it.
        # Its secrets unread: a deletion needs none, and a process without the key they were saved
        # under (a key rollout) can still delete.
        locked = (
            Destination.objects.select_for_update(of=("self",))
            .defer("secret", "previous_secret", "custom_headers")
            .filter(pk=destination.pk)
            .first()
        )
        if locked is None:
            return False  # deleted meanwhile (with its organization)
        if locked.being_deleted:
            transaction.on_commit(lambda: publish_destination_deletion(locked.pk))
            return False
        was_active = locked.is_active
        requested_at = timezone.now()
        requested_by = str(actor)[:200] if actor is not None else "system"
        Destination.objects.filter(pk=locked.pk).update(
            is_active=False,
            deletion_requested_at=requested_at,
            deletion_requested_by=requested_by,
            updated_at=requested_at,
        )
        # Written last, after the destination's row: the audit log's lock (one for the whole
        # platform) in the order replay and rotation take them.
        audit_record(
            action=DELETION_REQUESTED_ACTION,
            organization=destination.organization,
            actor=actor,
            target=locked,
            changes={"name": locked.name, "url": locked.url, "was_active": was_active},
        )
        transaction.on_commit(lambda: publish_destination_deletion(locked.pk))
    destination.is_active = False
    destination.deletion_requested_at = requested_at
    destination.deletion_requested_by = requested_by
    return True


def publish_destination_deletion(destination_id: int) -> bool:
    """Ask a worker to run the deletion, unless a run was published recently; never raises."""
    return _DELETIONS.publish(destination_id)


def resume_destination_deletions() -> int:
    """The sweeper's part: publish the deletions under way (OwnerDeletions.resume)."""
    return _DELETIONS.resume()


def destination_deletion_task(destination_id: int) -> bool:
    """One run of the deletion (the Celery task's body); publishes the next run if there is more to do.

    Returns True once the destination is gone.
    """
    return _DELETIONS.task(destination_id, lambda: destination_deletion_run(destination_id=destination_id))


def destination_deletion_run(
    *, destination_id: int, batch_size: int | None = None, max_seconds: float | None = None
) -> DeletionRun:
    """Delete a marked destination's rows in batches, then the destination; resumable at any point
    (see batched_deletion.run_deletion). Returns before finishing after ``max_seconds``; the caller
    publishes the next run."""
    return _DELETIONS.run(
        destination_id, lambda progress: _Run(destination_id, batch_size or BATCH_SIZE, progress), max_seconds
    )


def _kinds(destination_id: int) -> list:
    """Every kind of row a destination owns (its deliveries' attempts go with the deliveries)."""
    return [
        Delivery.objects.filter(destination_id=destination_id),
        Subscription.objects.filter(destination_id=destination_id),
    ]


class _Run(BatchDeleter):
    owner_model = Destination

    def steps(self) -> list[Callable[[], bool]]:
        destination_id = self.owner_id
        return [
            self._deliveries,
            lambda: self.delete_rows(Subscription.objects.filter(destination_id=destination_id)),
        ]

    def _deliveries(self) -> bool:
        """A batch of the destination's deliveries with their attempts: nearly all the rows.

        By the destination's index, in no order: id order would read (and sort) every delivery of
        the destination left, for each batch. Locked in id order, as the retention purge and the
        event batches lock deliveries: a result recorded now waits for the batch, then finds its
        row gone (record_results drops it)."""
        ids = list(
            Delivery.objects.filter(destination_id=self.owner_id).values_list("pk", flat=True)[: self.batch_size]
        )
        if not ids:
            return False

        def work() -> Counter:
            list(Delivery.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))
            return removed_by_kind(Delivery.objects.filter(pk__in=ids).delete()[1])

        self.batch(work)
        return len(ids) == self.batch_size

    def finish(self) -> bool:
        """The destination itself, once nothing of it is left, audited; False if rows came back meanwhile.

        The destination's row is locked first: a row that references it (a delivery or a link)
        takes a key-share lock on it when committed, so one not committed before this point fails
        instead of being left behind, and one committed before it is seen here and deleted by the
        next run.
        """
        with transaction.atomic():
            destination = (
                # of self: the organization's row stays unlocked, as in the source's last step.
                Destination.objects.select_for_update(of=("self",))
                .select_related("organization")
                .only("pk", "name", "url", "organization", "deletion_requested_at", "deletion_requested_by")
                .filter(pk=self.owner_id)
                .first()
            )
            if destination is None:
                return True  # deleted with its organization
            if any(rows.exists() for rows in _kinds(self.owner_id)):
                return False
            audit_record(
                action=DELETED_ACTION,
                organization=destination.organization,
                target=destination,
                changes={
                    "name": destination.name,
                    "url": destination.url,
                    "requested_by": destination.deletion_requested_by,
                    "requested_at": destination.deletion_requested_at.isoformat(),
                    "deleted": self.total,
                },
            )
            Destination.objects.filter(pk=self.owner_id).delete()
        return True
