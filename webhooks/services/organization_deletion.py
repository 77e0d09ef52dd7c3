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

from collections import Counter
from collections.abc import Callable

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Invitation
from organizations.deletion_counts import COUNT_CAP, KindCount, count_kinds
from organizations.models import ApiKey, IdempotencyKey, Membership, MonthlyUsage, Organization
from organizations.services import audit_record
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

from .batched_deletion import (
    BATCH_SIZE,
    LINKS,
    BatchDeleter,
    DeletionRun,
    OwnerDeletions,
    removed_by_kind,
)
from .row_locks import delete_destinations

DELETION_REQUESTED_ACTION = "organization.deletion_requested"
DELETED_ACTION = "organization.deleted"

# Its runs' advisory lock keys: a prefix of its own above the id, so no two kinds share a key.
_DELETIONS = OwnerDeletions(Organization, "organization", "delete_organization", lock_prefix=0x6F7267 << 40)  # "org"


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
        ("API idempotency keys", IdempotencyKey.objects.filter(organization_id=organization_id)),
        ("API keys", ApiKey.objects.filter(organization_id=organization_id)),
    ]


def organization_contents(*, organization: Organization, cap: int | None = None) -> list[KindCount]:
    """What deleting ``organization`` deletes, per kind: one capped count each, so the cost does not
    grow with the organization's size (an index range of at most ``cap`` + 1 entries per kind)."""
    return count_kinds(_kinds(organization.pk), cap or COUNT_CAP)


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


def publish_organization_deletion(organization_id: int) -> bool:
    """Ask a worker to run the deletion, unless a run was published recently; never raises."""
    return _DELETIONS.publish(organization_id)


def resume_organization_deletions() -> int:
    """The sweeper's part: publish the deletions under way (OwnerDeletions.resume)."""
    return _DELETIONS.resume()


def organization_deletion_task(organization_id: int) -> bool:
    """One run of the deletion (the Celery task's body); publishes the next run if there is more to do.

    Returns True once the organization is gone.
    """
    return _DELETIONS.task(organization_id, lambda: organization_deletion_run(organization_id=organization_id))


def organization_deletion_run(
    *, organization_id: int, batch_size: int | None = None, max_seconds: float | None = None
) -> DeletionRun:
    """Delete a marked organization's rows in batches, then the organization; resumable at any point
    (see batched_deletion.run_deletion). Returns before finishing after ``max_seconds``; the caller
    publishes the next run."""
    return _DELETIONS.run(
        organization_id, lambda progress: _Run(organization_id, batch_size or BATCH_SIZE, progress), max_seconds
    )


class _Run(BatchDeleter):
    """One run's batches. Each step deletes one batch and says whether there may be more."""

    owner_model = Organization

    def steps(self) -> list[Callable[[], bool]]:
        organization_id = self.owner_id
        # Events first (nearly all the rows, with their deliveries and attempts), so that what
        # follows is small; the organization's own row last (finish).
        return [
            lambda: self.delete_events(WebhookEvent.objects.filter(organization_id=organization_id)),
            self._destinations,
            lambda: self.delete_rows(SignatureNonce.objects.filter(source__organization_id=organization_id)),
            self._purged_keys,
            self._sources,
            *(
                lambda model=model: self.delete_rows(model.objects.filter(organization_id=organization_id))
                for model in (BulkRetry, Invitation, Membership, MonthlyUsage, IdempotencyKey, ApiKey)
            ),
        ]

    def _destinations(self) -> bool:
        """Destinations with their links, as the dashboard deletes them (their deliveries went with the events)."""
        ids = self.first_ids(Destination.objects.filter(organization_id=self.owner_id), 100)
        if not ids:
            return False

        def work() -> Counter:
            links = Subscription.objects.filter(destination_id__in=ids).count()
            gone = delete_destinations(ids)
            return Counter({"destinations": len(gone), LINKS: links if gone else 0})

        self.batch(work)
        return True

    def _purged_keys(self) -> bool:
        # One per purged event, kept PurgedEventKey.KEPT_DAYS: a busy source with a short retention
        # has millions. In batches here, rather than in one statement with their source.
        # By the (source, digest) index of the organization's few sources, in no order: the key's id
        # order would walk the whole table's keys, every organization's, for each batch.
        sources = Source.objects.filter(organization_id=self.owner_id).values("pk")
        return self.delete_rows(PurgedEventKey.objects.filter(source_id__in=sources), in_id_order=False)

    def _sources(self) -> bool:
        # With the few rows that may have arrived after the event batches (a rejected request's
        # record, made through a web process's cached source for up to INGEST_SOURCE_CACHE_SECONDS;
        # accepted events are refused by the INSERT itself), counted with the others.
        # A source being deleted on its own goes here too if its run has not finished.
        ids = self.first_ids(Source.objects.filter(organization_id=self.owner_id), 100)
        if not ids:
            return False
        # Without their secrets: a deletion must not need the keys to read them (see fields).
        unread = encrypted_field_names(Source)
        self.batch(lambda: removed_by_kind(Source.objects.filter(pk__in=ids).defer(*unread).delete()[1]))
        return True

    def finish(self) -> bool:
        """The organization itself, once nothing of it is left, audited; False if rows came back meanwhile.

        The organization's row is locked first: a row that references it takes a key-share lock
        on it when committed, so one not committed before this point fails instead of being left
        behind, and one committed before it is seen here.
        """
        with transaction.atomic():
            organization = Organization.objects.select_for_update().filter(pk=self.owner_id).first()
            if organization is None:
                return True
            if any(rows.exists() for _, rows in _kinds(self.owner_id)):
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
                    "deleted": self.total,
                },
            )
            Organization.objects.filter(pk=self.owner_id).delete()
        return True
