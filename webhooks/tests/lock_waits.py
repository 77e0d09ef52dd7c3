"""Two transactions at once, on real connections: one held at a point of its own, the other's fate seen."""

from __future__ import annotations

import threading
import time

from django.db import connection


def waits_for_a_lock(thread: threading.Thread, seconds: float = 10) -> bool:
    """Whether ``thread`` came to wait for a lock (True) rather than ending without one (False).

    Another connection to the test database waiting for a lock is looked for until there is one
    or the thread has ended; one still running after ``seconds`` without either fails the test."""
    deadline = time.monotonic() + seconds
    while thread.is_alive():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return True
        assert time.monotonic() < deadline, "the second transaction neither waited for a lock nor ended"
        time.sleep(0.01)
    return False
