"""Django's migrate, with a bound on how long a schema change waits for its table's lock.

The release phase migrates while the previous release still serves. A schema change (ALTER TABLE)
takes its table's strongest lock, and PostgreSQL queues every later statement on that table behind
the waiting request, not only behind the transaction that holds the table. A migration stuck behind
one long transaction of the old processes (a destination deleted within its request, a long search)
held up every claim, fan-out and delivery result of the workers for as long: in a trial, a 30 s
transaction delayed deliveries by up to 45 s, and two sent deliveries whose results waited past
their 5 s bound were sent again. Here each statement waits at most MIGRATION_LOCK_TIMEOUT_SECONDS
for its lock; one that does not get it fails, its migration rolls back whole (one outside a
transaction runs again safely: webhooks.migration_helpers), and migrate tries again after
MIGRATION_LOCK_RETRY_SECONDS, up to MIGRATION_LOCK_TRIES times. Index builds (CONCURRENTLY) block
no one while they wait, and build_index_concurrently leaves them unbounded.

A migration outside a transaction (atomic = False) keeps Django's unbounded wait: cut short, it
would have done part of its work, and not every one of them can run again over its own half (0026
adds its columns with plain AddFields). Schema changes belong in atomic migrations; a non-atomic
one holds index builds, which wait without blocking anyone.
"""

import time

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_not_available: lock_timeout ran out


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE


class Command(DjangoMigrate):
    help = DjangoMigrate.help + (
        " A schema change waits at most MIGRATION_LOCK_TIMEOUT_SECONDS for its table's lock, then migrate"
        " tries again after MIGRATION_LOCK_RETRY_SECONDS, up to MIGRATION_LOCK_TRIES times."
    )

    def handle(self, *args, **options):
        connection = connections[options["database"] or DEFAULT_DB_ALIAS]
        timeout = settings.MIGRATION_LOCK_TIMEOUT_SECONDS
        if connection.vendor != "postgresql" or timeout <= 0:
            return super().handle(*args, **options)
        tries = settings.MIGRATION_LOCK_TRIES
        bound = f"{round(timeout * 1000)}ms"
        self.lock_bound = (connection, bound)
        for attempt in range(1, tries + 1):
            try:
                with connection.cursor() as cursor:
                    # For the session (is_local false): each migration runs in a transaction of its own.
                    cursor.execute("SELECT set_config('lock_timeout', %s, false)", [bound])
                return super().handle(*args, **options)
            except OperationalError as exc:
                if not is_lock_timeout(exc):
                    raise
                if attempt == tries:
                    raise CommandError(
                        f"a migration did not get its table's lock within {timeout:g} s in {tries} tries ({exc}):"
                        " a long transaction holds the table (see pg_stat_activity); run migrate again once it has"
                        " ended, or raise MIGRATION_LOCK_TRIES"
                    ) from exc
                self.stderr.write(
                    # After Django's "Applying …" (written without its line's end when the step fails).
                    f"\nA migration waited {timeout:g} s for its table's lock and let it go, so as not to hold up the"
                    f" running processes behind it ({str(exc).strip()}); trying again in"
                    f" {settings.MIGRATION_LOCK_RETRY_SECONDS:g} s (try {attempt + 1} of {tries})"
                )
                time.sleep(settings.MIGRATION_LOCK_RETRY_SECONDS)
            finally:
                # The connection may serve the same process afterwards (call_command, a shell).
                if connection.connection is not None and not connection.in_atomic_block:
                    try:
                        with connection.cursor() as cursor:
                            cursor.execute("RESET lock_timeout")
                    except OperationalError:
                        pass

    def migration_progress_callback(self, action, migration=None, fake=False):
        # Called before each migration's transaction (or its statements, outside one) begins.
        lock_bound = getattr(self, "lock_bound", None)
        if lock_bound is not None and action in ("apply_start", "unapply_start") and not fake:
            connection, bound = lock_bound
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, false)", [bound if migration.atomic else "0"])
        super().migration_progress_callback(action, migration, fake)
