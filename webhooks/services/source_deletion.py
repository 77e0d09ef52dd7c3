"""Deleting a source with all its events, however many, without one long request or transaction.

Asking (``source_request_deletion``) is one short transaction whose cost does not grow with the
source's events: the source becomes inactive (ingest answers 404 for it and stores nothing from
then on: a web process's copy of the source may be INGEST_SOURCE_CACHE_SECONDS old, but the INSERT
checks the source's row) and is marked as being deleted, with an audit entry. From then on it is
hidden from everything but the dashboard's source list, which shows its state: it cannot be
changed, resumed, or linked to a destination, its received events get no new deliveries, and those
made before are dead-lettered unsent when claimed (delivery._not_of_sources_being_deleted). A
background run (``source_deletion_run``, a Celery task, resumed by the sweeper) then deletes its
events with their deliveries and attempts, its replay-protection records, its purged events' keys
and its links to destinations, in bounded batches, each its own short transaction, and the source
row last, with a second audit entry that counts what went. The machinery (batches, progress, one
run at a time, resuming) is organization deletion's (batched_deletion).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from organizations.deletion_counts import KindCount, count_kinds
from organizations.services import audit_record
from webhooks.models import (
    Delivery,
    DeliveryAttempt,
    PurgedEventKey,
    SignatureNonce,
    Source,
    Subscription,
    WebhookEvent,
)

from .batched_deletion import (
    BATCH_SIZE,
    EVENTS,
    LINKS,
    NONCES,
    PURGED_KEYS,
    BatchDeleter,
    DeletionRun,
    OwnerDeletions,
)
from .permissions import require_configure_role

DELETION_REQUESTED_ACTION = "source.deletion_requested"
DELETED_ACTION = "source.deleted"

# Its runs' advisory lock keys: a prefix of its own above the id, so no two kinds share a key.
_DELETIONS = OwnerDeletions(Source, "source", "delete_source", lock_prefix=0x737263 << 40)  # "src"


def source_request_deletion(*, source: Source, actor=None) -> bool:
    """Make the source inactive and mark it as being deleted, audited, and start the deletion.

    Returns False when it was already being deleted or is gone (nothing is written then; a
    deletion under way is published again, which is harmless). The rows go in the background.
    """
    require_configure_role(organization=source.organization, actor=actor)
    with transaction.atomic():
        # FOR NO KEY UPDATE: ingest and processing, whose new rows take a key-share lock on the
        # source when they commit, do not wait for this.
        # OF the row itself: the model's ordering joins its organization, whose row would be locked too.
        # Its secrets unread: a deletion needs none, and a process without the key they were saved
        # under (a key rollout) can still delete.
        locked = (
            Source.objects.select_for_update(no_key=True, of=("self",))
            .defer("secret", "previous_secret")
            .filter(pk=source.pk)
            .first()
        )
        if locked is None:
            return False  # deleted meanwhile (with its organization)
        if locked.being_deleted:
            transaction.on_commit(lambda: publish_source_deletion(locked.pk))
            return False
        was_active = locked.is_active
        locked.is_active = False
        locked.deletion_requested_at = timezone.now()
        locked.deletion_requested_by = str(actor)[:200] if actor is not None else "system"
        # save(), not update(): its post_save signal also empties this process's ingest source cache.
        locked.save(update_fields=["is_active", "deletion_requested_at", "deletion_requested_by", "updated_at"])
        audit_record(
            action=DELETION_REQUESTED_ACTION,
            organization=source.organization,
            actor=actor,
            target=locked,
            changes={"provider": locked.provider, "name": locked.name, "was_active": was_active},
        )
        transaction.on_commit(lambda: publish_source_deletion(locked.pk))
    source.is_active = locked.is_active
    source.deletion_requested_at = locked.deletion_requested_at
    source.deletion_requested_by = locked.deletion_requested_by
    return True


def publish_source_deletion(source_id: int) -> bool:
    """Ask a worker to run the deletion, unless a run was published recently; never raises."""
    return _DELETIONS.publish(source_id)


def resume_source_deletions() -> int:
    """The sweeper's part: publish the deletions under way (OwnerDeletions.resume)."""
    return _DELETIONS.resume()


def source_deletion_task(source_id: int) -> bool:
    """One run of the deletion (the Celery task's body); publishes the next run if there is more to do.

    Returns True once the source is gone.
    """
    return _DELETIONS.task(source_id, lambda: source_deletion_run(source_id=source_id))


def source_deletion_run(
    *, source_id: int, batch_size: int | None = None, max_seconds: float | None = None
) -> DeletionRun:
    """Delete a marked source's rows in batches, then the source; resumable at any point (see
    batched_deletion.run_deletion). Returns before finishing after ``max_seconds``; the caller
    publishes the next run."""
    organization_id = Source.objects.filter(pk=source_id).values_list("organization_id", flat=True).first()
    return _DELETIONS.run(
        source_id, lambda progress: _Run(source_id, batch_size or BATCH_SIZE, progress, organization_id), max_seconds
    )


def source_contents(*, source: Source, cap: int | None = None) -> list[KindCount]:
    """What deleting ``source`` deletes with it, per kind, counted up to a cap: its events (by the
    (organization, source, -id) index), their deliveries and attempts through them, and the rest."""
    events = WebhookEvent.objects.filter(organization_id=source.organization_id, source_id=source.pk)
    return count_kinds(
        [
            (EVENTS, events),
            ("deliveries", Delivery.objects.filter(event__in=events)),
            ("delivery attempts", DeliveryAttempt.objects.filter(delivery__event__in=events)),
            (NONCES, SignatureNonce.objects.filter(source_id=source.pk)),
            (PURGED_KEYS, PurgedEventKey.objects.filter(source_id=source.pk)),
            (LINKS, Subscription.objects.filter(source_id=source.pk)),
        ],
        cap,
    )


def _kinds(source_id: int) -> list:
    """Every kind of row a source owns (its events' deliveries and attempts go with the events)."""
    return [
        WebhookEvent.objects.filter(source_id=source_id),
        SignatureNonce.objects.filter(source_id=source_id),
        PurgedEventKey.objects.filter(source_id=source_id),
        Subscription.objects.filter(source_id=source_id),
    ]


class _Run(BatchDeleter):
    owner_model = Source

    def __init__(self, source_id, batch_size, progress, organization_id) -> None:
        super().__init__(source_id, batch_size, progress)
        self.organization_id = organization_id

    def steps(self) -> list[Callable[[], bool]]:
        source_id = self.owner_id
        # Events first: nearly all the rows. By the (organization, source, -id) index, in id order.
        events = WebhookEvent.objects.filter(organization_id=self.organization_id, source_id=source_id)
        return [
            lambda: self.delete_events(events),
            # Both by their (source, digest) unique index, in no order: id order would walk the
            # whole table's rows, every source's, for each batch.
            lambda: self.delete_rows(SignatureNonce.objects.filter(source_id=source_id), in_id_order=False),
            lambda: self.delete_rows(PurgedEventKey.objects.filter(source_id=source_id), in_id_order=False),
            lambda: self.delete_rows(Subscription.objects.filter(source_id=source_id)),
        ]

    def finish(self) -> bool:
        """The source itself, once nothing of it is left, audited; False if rows came back meanwhile.

        The source's row is locked first: a row that references it (an event through a web
        process's cached source, a link saved by a form read before the request) takes a key-share
        lock on it when committed, so one not committed before this point fails instead of being
        left behind, and one committed before it is seen here and deleted by the next run.

        Only the source's row (``of``): the organization's, which the join would lock too, is locked
        by a destination's creation before it links sources (see destinations.destination_create),
        and the two would wait for each other.
        """
        with transaction.atomic():
            source = (
                Source.objects.select_for_update(of=("self",))
                .select_related("organization")
                .filter(pk=self.owner_id)
                .first()
            )
            if source is None:
                return True  # deleted with its organization
            if any(rows.exists() for rows in _kinds(self.owner_id)):
                return False
            audit_record(
                action=DELETED_ACTION,
                organization=source.organization,
                target=source,
                changes={
                    "provider": source.provider,
                    "name": source.name,
                    "requested_by": source.deletion_requested_by,
                    "requested_at": source.deletion_requested_at.isoformat(),
                    "deleted": self.total,
                },
            )
            Source.objects.filter(pk=self.owner_id).delete()
        return True
