"""Creating deliveries and deleting destinations at the same time, without either one failing."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import DatabaseError, connection, transaction
from django.db.models import Model

from organizations.models import Organization
from webhooks.fields import encrypted_field_names
from webhooks.models import Delivery, Destination, Source, WebhookEvent

# Why a deletion is tried again: a delivery or attempt committed after the deletion collected
# them (foreign_key_violation), or a lock cycle with the dispatcher (deadlock_detected).
_TRY_AGAIN = {"23503", "40P01"}


def lock_destinations_against_deletion(destination_ids: Iterable[int]) -> set[int]:
    """Of ``destination_ids``, those that still exist and are not being deleted, each locked until
    the transaction ends.

    FOR KEY SHARE is the lock a foreign-key check takes: it does not block updates of the
    destination (health, pause, rotation), only its deletion. Taken before deliveries are
    created, a deletion that committed first is seen here (its rows are left out), and one that
    reaches the destination's row later waits for the deliveries to be committed (and then
    takes them along, see delete_destinations). In id order, so that two callers cannot
    deadlock. A destination marked as being deleted is left out too: its deletion's request
    takes FOR UPDATE, so it waits for a caller holding the lock to commit, and a caller that
    comes after it waits for it and then (the row read again) finds the mark. Call it inside a
    transaction. Other databases (SQLite serializes writers) only filter.
    """
    return _lock_against_deletion(Destination, destination_ids, skip_being_deleted=True)


def lock_sources_against_deletion(source_ids: Iterable[int]) -> set[int]:
    """Of ``source_ids``, those that still exist, each locked against deletion until the transaction
    ends (as lock_destinations_against_deletion). For a transaction that links a source and then
    writes to the audit log: the link's foreign-key check, deferred to the commit (or to
    check_foreign_keys), would take this lock only after the audit chain's, while a source's
    deletion locks the source's row and then the audit chain's (source_deletion), and each would
    wait for the other. Taken before the first audit entry, the source comes first on both sides."""
    return _lock_against_deletion(Source, source_ids)


def lock_source_unless_being_deleted(source_id) -> bool:
    """Whether the source exists and is not being deleted, its row locked FOR SHARE until the
    transaction ends, so that it stays so: for a transaction that checks this and then writes
    something the deletion's request must see (a replay's delivery, a retry).

    FOR SHARE, not KEY SHARE: the request locks the row FOR NO KEY UPDATE (so as not to wait for
    ingest's key-share locks), which only FOR SHARE conflicts with. A request that comes first
    is waited for, and the row read again then has its mark; one that comes after waits for this
    transaction, whose rows it then finds as any made before it. Held briefly: it also holds up a
    change of the source (a rotation, the rejected-requests counts) until the commit. Take it before
    the audit entry's lock, as the request does (source, then audit chain)."""
    return bool(_lock_for_share(Source, [source_id]))


def lock_sources_unless_being_deleted(source_ids: Iterable[int]) -> set[int]:
    """Of ``source_ids``, those that exist and are not being deleted, each locked FOR SHARE until the
    transaction ends (as lock_source_unless_being_deleted), in id order so that two callers cannot
    deadlock: for a transaction that makes deliveries of many sources due again (a bulk retry's batch)."""
    return _lock_for_share(Source, source_ids)


def lock_organization_unless_being_deleted(organization_id) -> bool:
    """Whether the organization exists and is not being deleted, its row locked FOR SHARE until the
    transaction ends (as lock_source_unless_being_deleted: its deletion's request, and a suspension,
    lock the row FOR NO KEY UPDATE). Take it first, before rows of the organization (the retention
    run's give-up locks the organization and then its deliveries) and before the audit entry's lock."""
    return bool(_lock_for_share(Organization, [organization_id]))


def _lock_for_share(model: type[Model], pks: Iterable) -> set:
    ids = sorted(set(pks))
    if not ids:
        return set()
    if connection.vendor != "postgresql":
        found = model._default_manager.filter(pk__in=ids, deletion_requested_at__isnull=True)
        return set(found.values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {model._meta.db_table} WHERE id = ANY(%s) AND deletion_requested_at IS NULL"
            " ORDER BY id FOR SHARE",
            [ids],
        )
        return {row[0] for row in cursor.fetchall()}


def lock_event_against_deletion(event_id) -> bool:
    """Whether the event still exists, locked against deletion until the transaction ends (as
    lock_destinations_against_deletion): a delivery made for it then cannot point at an event its
    source's deletion or the retention purge removed since it was read."""
    return bool(_lock_against_deletion(WebhookEvent, [event_id]))


def _lock_against_deletion(model: type[Model], pks: Iterable[int], *, skip_being_deleted: bool = False) -> set[int]:
    ids = sorted(set(pks))
    if not ids:
        return set()
    if connection.vendor != "postgresql":
        found = model._default_manager.filter(pk__in=ids)
        if skip_being_deleted:
            found = found.filter(deletion_requested_at__isnull=True)
        return set(found.values_list("pk", flat=True))
    being_deleted = " AND deletion_requested_at IS NULL" if skip_being_deleted else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {model._meta.db_table} WHERE id = ANY(%s){being_deleted} ORDER BY id FOR KEY SHARE",
            [ids],
        )
        return {row[0] for row in cursor.fetchall()}


def delete_destinations(destination_ids: Iterable[int], tries: int = 3) -> list[int]:
    """Delete destinations with their deliveries and attempts, while deliveries may be created for them.

    Returns the ids it deleted (none of those another deletion got to first). In three steps,
    one transaction:

    1. Their deliveries and attempts, however many, without holding the destinations: the
       dispatcher locks a delivery and then its destination (health), so a deletion holding
       the destination while it waits for deliveries could deadlock with it.
    2. The destinations, locked: this waits for fan-outs and replays that hold FOR KEY SHARE
       on them (lock_destinations_against_deletion) to commit; later ones wait for this
       deletion and then leave the destinations out. Held only for step 3 and the commit.
    3. The destinations, with the few deliveries created between steps 1 and 2.

    The deferred foreign keys are checked inside a savepoint and a deadlock or a delivery that
    still slipped in means one more try.
    """
    ids = sorted(set(destination_ids))
    for attempt in range(1, tries + 1):
        try:
            with transaction.atomic():
                Delivery.objects.filter(destination_id__in=ids).delete()
                locked = lock_destinations_for_deletion(ids)
                # Without its secrets: a deletion must not need the keys to read them (see fields).
                Destination.objects.filter(pk__in=locked).defer(*encrypted_field_names(Destination)).delete()
                check_foreign_keys()
            return locked
        except DatabaseError as exc:
            if attempt == tries or getattr(exc.__cause__, "sqlstate", None) not in _TRY_AGAIN:
                raise
    return []  # pragma: no cover - the loop returns or raises


def lock_destinations_for_deletion(ids: list[int]) -> list[int]:
    return list(Destination.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))


def check_foreign_keys(referenced: Iterable[type[Model]] = (Destination, Delivery)) -> None:
    """Check now instead of at commit the deferred foreign keys that point at ``referenced``
    (PostgreSQL; by default destinations and deliveries: the rows a deletion removes). Only those,
    so a caller's own pending constraints stay deferred to its commit, as it expects."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT quote_ident(conname) FROM pg_constraint"
            " WHERE contype = 'f' AND condeferrable AND confrelid = ANY(%s::regclass[]) ORDER BY 1",
            [[model._meta.db_table for model in referenced]],
        )
        names = ", ".join(row[0] for row in cursor.fetchall())
        if names:
            cursor.execute(f"SET CONSTRAINTS {names} IMMEDIATE")  # raises here for a violation
            cursor.execute(f"SET CONSTRAINTS {names} DEFERRED")
