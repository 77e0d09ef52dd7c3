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

Two migrates at once on one database (two containers of the compose file's web, each migrating at
start; a deploy started while another's release phase runs) take turns: each holds a PostgreSQL
advisory lock (MIGRATE_LOCK_KEY) while it migrates, and the second reads what is applied only once
the first has ended. Without it the second read the plan while the first applied a migration, then
applied it again over it ("column ... already exists") and failed its release. --plan and --check
only read, and take no turn.
"""

import time
from contextlib import contextmanager, suppress

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connections

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_not_available: lock_timeout ran out
# The advisory lock one migrate holds at a time per database (any constant, the same in every release).
MIGRATE_LOCK_KEY = 0x486F6F6B6C696E65  # "Hookline"
MIGRATE_TURN_POLL_SECONDS = 1.0


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE


class Command(DjangoMigrate):
    help = DjangoMigrate.help + (
        " A schema change waits at most MIGRATION_LOCK_TIMEOUT_SECONDS for its table's lock, then migrate"
        " tries again after MIGRATION_LOCK_RETRY_SECONDS, up to MIGRATION_LOCK_TRIES times."
    )

    def handle(self, *args, **options):
        connection = connections[options["database"] or DEFAULT_DB_ALIAS]
        if connection.vendor != "postgresql" or options["plan"] or options["check_unapplied"]:
            return super().handle(*args, **options)
        with self._one_migrate_at_a_time(connection):
            return self._handle_with_lock_bound(connection, *args, **options)

    @contextmanager
    def _one_migrate_at_a_time(self, connection):
        """Hold MIGRATE_LOCK_KEY (session-level) while migrating; wait without bound for another
        migrate to end (its time is that migrate's, whose own lock waits are bounded).

        Waited for by trying again every MIGRATE_TURN_POLL_SECONDS, outside any transaction: a
        blocking pg_advisory_lock() is a transaction while it waits, and the other migrate's index
        build (CREATE INDEX CONCURRENTLY) waits for every transaction older than it to end, this
        one too: PostgreSQL found the two waiting for each other and failed one (deadlock)."""
        told = False
        while True:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_KEY])
                if cursor.fetchone()[0]:
                    break
            if not told:
                self.stderr.write("Another migrate is running on this database: waiting for it to end")
                told = True
            time.sleep(MIGRATE_TURN_POLL_SECONDS)
        try:
            yield
        finally:
            # A connection lost meanwhile took the lock with it (and so does a transaction left broken
            # around call_command: the session's end).
            if connection.connection is not None:
                with suppress(DatabaseError), connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_KEY])

    def _handle_with_lock_bound(self, connection, *args, **options):
        timeout = settings.MIGRATION_LOCK_TIMEOUT_SECONDS
        if timeout <= 0:
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
