"""One run at a time of a long job (an organization's deletion, the retention purge): a PostgreSQL
session advisory lock, which goes with the connection if the process dies holding it."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)


def try_run_lock(key: int) -> bool:
    """Take the lock ``key`` if no other session holds it; True when this one now does."""
    if connection.vendor != "postgresql":
        return True  # SQLite (embedded mode) has a single worker
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        return bool(cursor.fetchone()[0])


def release_run_lock(key: int) -> None:
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
    except DatabaseError:
        logger.warning("could not release the run lock %s", key)
        connection.close()  # the lock goes with the session
