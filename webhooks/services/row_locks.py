"""Creating deliveries and deleting destinations at the same time, without either one failing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet

from webhooks.models import Destination

# Why a deletion is tried again: a delivery committed for the destination after the deletion
# collected its deliveries (foreign_key_violation), or a lock cycle with fan-out over several
# destinations of an admin's bulk delete (deadlock_detected).
_CROSSED_A_NEW_DELIVERY = {"23503", "40P01"}


def lock_destinations_against_deletion(destination_ids: Iterable[int]) -> set[int]:
    """Of ``destination_ids``, those that still exist, each locked until the transaction ends.

    FOR KEY SHARE is the lock a foreign-key check takes: it does not block updates of the
    destination (health, pause, rotation), only its deletion. Taken before deliveries are
    created, a deletion that committed first is seen here (its rows are left out), and one that
    reaches the destination's row later waits for the deliveries to be committed (and then
    takes them along, see delete_destinations). In id order, so that two callers cannot
    deadlock. Call it inside a transaction. Other databases (SQLite serializes writers) only filter.
    """
    ids = sorted(set(destination_ids))
    if not ids:
        return set()
    if connection.vendor != "postgresql":
        return set(Destination.objects.filter(pk__in=ids).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Destination._meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE", [ids]
        )
        return {row[0] for row in cursor.fetchall()}


@contextlib.contextmanager
def new_deliveries_stopped(destinations: QuerySet) -> Iterator[list[int]]:
    """Mark destinations inactive for the block, so that fan-out stops creating deliveries for them.

    Yields the ids of those that exist. Outside a transaction the mark is committed at once,
    which is the point: a destination that keeps receiving events would otherwise get new
    deliveries faster than its deletion can collect them (see delete_destinations). Those
    that were active and still exist afterwards (the deletion failed or did not happen) are
    marked active again.
    """
    found = dict(destinations.values_list("pk", "is_active"))
    Destination.objects.filter(pk__in=list(found), is_active=True).update(is_active=False)
    try:
        yield list(found)
    finally:
        Destination.objects.filter(pk__in=[pk for pk, active in found.items() if active]).update(is_active=True)


def delete_destinations(destinations: QuerySet, tries: int = 3) -> None:
    """Delete destinations with their deliveries and attempts, while deliveries may be created for them.

    Nothing is locked before Django collects the deliveries: the dispatcher locks a delivery and
    then its destination, and a deletion taking the destination first could deadlock with it.
    Instead, a delivery committed by fan-out or replay after the collection makes the foreign
    keys fail when they are checked; they are checked right here, inside a savepoint, and the
    deletion is tried again, collecting the new deliveries too. Call it inside
    new_deliveries_stopped, so that only the few deliveries already on their way can cross it.
    """
    for attempt in range(1, tries + 1):
        try:
            with transaction.atomic():
                destinations.delete()
                check_foreign_keys()
            return
        except DatabaseError as exc:
            if attempt == tries or getattr(exc.__cause__, "sqlstate", None) not in _CROSSED_A_NEW_DELIVERY:
                raise


def check_foreign_keys() -> None:
    """Check the transaction's deferred foreign keys now instead of at its commit (PostgreSQL)."""
    if connection.vendor == "postgresql":
        connection.check_constraints()
