"""Row locks that keep a destination from being deleted while deliveries for it are being created."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

from webhooks.models import Destination


def lock_destinations_against_deletion(destination_ids: Iterable[int]) -> set[int]:
    """Of ``destination_ids``, those that still exist, each locked until the transaction ends.

    FOR KEY SHARE is the lock a foreign-key check takes: it does not block updates of the
    destination (health, pause), only its deletion. Taking it before creating deliveries
    means a deletion that committed first is seen here (its rows are left out), and one that
    starts later waits for the deliveries to be committed and then deletes them with it;
    without it the two could cross and the database refuse one of them. Call it inside a
    transaction. Databases without row locks (SQLite, which serializes writers) only filter.
    """
    ids = sorted(set(destination_ids))
    if not ids:
        return set()
    if connection.vendor != "postgresql":
        return set(Destination.objects.filter(pk__in=ids).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {Destination._meta.db_table} WHERE id = ANY(%s) FOR KEY SHARE", [ids])
        return {row[0] for row in cursor.fetchall()}


def lock_destinations_for_deletion(destinations) -> list[int]:
    """Lock the rows of a queryset of destinations about to be deleted; returns the ids still there.

    Called before Django collects what the deletion takes along: deliveries being created for
    these destinations are committed first (their FOR KEY SHARE conflicts with FOR UPDATE), so
    they are collected and deleted too instead of making the database refuse the deletion.
    """
    return list(destinations.select_for_update().values_list("pk", flat=True))
