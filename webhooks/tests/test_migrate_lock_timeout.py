"""The release phase's migrate runs beside the previous release's processes: a schema change that
waits for its table's lock behind one long transaction must not hold up their statements behind it
(PostgreSQL queues them after the waiting ALTER), and index builds must not be cut short by that bound."""

import io
import threading
import time

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from webhooks.management.commands import migrate as migrate_command
from webhooks.migration_helpers import build_index_concurrently
from webhooks.models import Destination, ProcessMark
from webhooks.services.delivery import RECORD_LOCK_TIMEOUT

BEFORE, LATEST = "0036_process_mark", "0037_destination_deletion"
DESTINATION_TABLE = Destination._meta.db_table


def other_connection(**kwargs) -> psycopg.Connection:
    """A connection of another process (an old worker, a long request of the old web)."""
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"], port=db["PORT"] or None, **kwargs
    )


def waiting_on_a_lock(watcher: psycopg.Connection, query_start: str) -> bool:
    return (
        watcher.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            [query_start + "%"],
        ).fetchone()
        is not None
    )


# How long the tests below hold a lock that a statement waits for unbounded, by the server's own
# count of that wait: well past the 0.2 s bound that would wrongly cut it short. A fixed sleep after
# the wait was seen left that bound's timer 0.1 s to fire on a loaded machine, or the test passed
# without proving anything; this takes no longer on an idle one.
UNBOUNDED_WAIT_HELD_SECONDS = 0.5


def lock_waited_long(watcher: psycopg.Connection, query_start: str) -> bool:
    """Whether a statement starting ``query_start`` has waited UNBOUNDED_WAIT_HELD_SECONDS for a lock."""
    return (
        watcher.execute(
            "SELECT 1 FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE NOT granted AND query LIKE %s"
            " AND clock_timestamp() - waitstart >= make_interval(secs => %s)",
            [query_start + "%", UNBOUNDED_WAIT_HELD_SECONDS],
        ).fetchone()
        is not None
    )


def wait_until(condition, what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    pytest.fail(f"never saw: {what}")


def migrate_in_a_thread(*args, stderr: io.StringIO, outcome: dict) -> threading.Thread:
    def run():
        try:
            call_command("migrate", *args, verbosity=0, stderr=stderr)
            outcome["done"] = True
        except Exception as exc:  # the test asserts on it
            outcome["error"] = exc
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def applied(name: str) -> bool:
    return MigrationRecorder(connection).migration_qs.filter(app="webhooks", name=name).exists()


@pytest.fixture(scope="module", autouse=True)
def every_migration_applied_after_the_module(django_db_setup, django_db_blocker):
    """Every app's latest once the module's tests are done, for the tests after them.

    Not after each test: each begins with its own migrate to where it starts (migrated_to), from
    wherever the one before left it, which is mostly a step or two away (where the latest is
    several, and a migrate back renders every migration's state)."""
    yield
    with django_db_blocker.unblock():
        call_command("migrate", verbosity=0)


def migrated_to(name: str) -> None:
    """The webhooks app at migration ``name``, back or forward from where it is."""
    executor = MigrationExecutor(connection)
    if executor.migration_plan([("webhooks", name)]):
        call_command("migrate", "webhooks", name, verbosity=0)


@pytest.fixture
def quick_turns(monkeypatch):
    """A migrate waiting its turn tries again every 50 ms rather than every second: when it gets
    its turn is not what the tests that use this prove."""
    monkeypatch.setattr(migrate_command, "MIGRATE_TURN_POLL_SECONDS", 0.05)


@pytest.fixture
def migrated_back_one_step(settings):
    settings.MIGRATION_LOCK_TIMEOUT_SECONDS = 0.2
    settings.MIGRATION_LOCK_RETRY_SECONDS = 0.1
    migrated_to(BEFORE)


@pytest.mark.django_db(transaction=True)
def test_a_schema_change_behind_a_long_transaction_does_not_hold_up_the_old_workers(migrated_back_one_step, settings):
    settings.MIGRATION_LOCK_TRIES = 10_000
    stderr, outcome = io.StringIO(), {}
    with other_connection() as long_request, other_connection() as worker, other_connection(autocommit=True) as watch:
        # An old web process's long transaction that read the destinations (a destination deleted
        # with its deliveries in the request took 59 s in the upgrade trial).
        long_request.execute(f"SELECT count(*) FROM {DESTINATION_TABLE}")
        migrating = migrate_in_a_thread("webhooks", LATEST, stderr=stderr, outcome=outcome)
        try:
            wait_until(lambda: waiting_on_a_lock(watch, f'ALTER TABLE "{DESTINATION_TABLE}"'), "the ALTER waiting")
            # An old worker records a sent delivery's result: its destination's health, under the
            # bound past which it gives the result up and the delivery is sent again.
            worker.execute(f"SET lock_timeout = '{RECORD_LOCK_TIMEOUT}'")
            worker.execute(f"UPDATE {DESTINATION_TABLE} SET consecutive_failures = 0 WHERE id = -1")
            worker.commit()
            assert not outcome, "the migration got the lock while the long transaction held the table"
        finally:
            long_request.rollback()
            migrating.join()
    assert outcome == {"done": True}
    assert "trying again" in stderr.getvalue()
    assert applied(LATEST)


@pytest.mark.django_db(transaction=True)
def test_the_put_back_columns_are_added_under_the_bound_without_holding_up_the_old_workers(settings):
    # 0040 adds its three columns to the deliveries table, the one every claim and result of the old
    # workers writes: under the bound, as any schema change, and not in the migration outside a
    # transaction that builds its index (whose unbounded wait queued their statements behind it).
    settings.MIGRATION_LOCK_TIMEOUT_SECONDS = 0.2
    settings.MIGRATION_LOCK_RETRY_SECONDS = 0.1
    settings.MIGRATION_LOCK_TRIES = 10_000
    delivery_table = "webhooks_delivery"
    migrated_to("0039_event_rejected_index")
    stderr, outcome = io.StringIO(), {}
    with (
        other_connection() as long_request,
        other_connection() as worker,
        other_connection(autocommit=True) as watch,
    ):
        long_request.execute(f"SELECT count(*) FROM {delivery_table}")
        migrating = migrate_in_a_thread("webhooks", stderr=stderr, outcome=outcome)
        try:
            wait_until(lambda: waiting_on_a_lock(watch, f'ALTER TABLE "{delivery_table}"'), "the ALTER waiting")
            # An old worker records a sent delivery's result, under the bound past which it gives
            # the result up and the delivery is sent again.
            worker.execute(f"SET lock_timeout = '{RECORD_LOCK_TIMEOUT}'")
            worker.execute(f"UPDATE {delivery_table} SET last_error = '' WHERE id IS NULL")
            worker.commit()
            assert not outcome, "the migration got the lock while the long transaction held the table"
        finally:
            long_request.rollback()
            migrating.join()
    assert outcome == {"done": True}, stderr.getvalue()
    assert "trying again" in stderr.getvalue()


@pytest.mark.django_db(transaction=True)
def test_migrate_gives_up_after_its_tries_with_the_reason_and_nothing_half_done(migrated_back_one_step, settings):
    settings.MIGRATION_LOCK_TRIES = 2
    stderr, outcome = io.StringIO(), {}
    with other_connection() as long_request:
        long_request.execute(f"SELECT count(*) FROM {DESTINATION_TABLE}")
        migrating = migrate_in_a_thread("webhooks", LATEST, stderr=stderr, outcome=outcome)
        try:
            wait_until(lambda: not migrating.is_alive(), "migrate giving up while the table is held")
        finally:
            long_request.rollback()
            migrating.join()
    assert isinstance(outcome.get("error"), CommandError)
    assert "did not get its table's lock within 0.2 s in 2 tries" in str(outcome["error"])
    assert "pg_stat_activity" in str(outcome["error"])
    assert stderr.getvalue().count("trying again") == 1
    assert not applied(LATEST)
    columns = {
        column.name for column in connection.introspection.get_table_description(connection.cursor(), DESTINATION_TABLE)
    }
    assert "deletion_progress" not in columns  # the migration's transaction rolled back whole


@pytest.mark.django_db(transaction=True)
def test_an_index_build_waits_for_older_writers_whatever_the_sessions_lock_timeout():
    table = ProcessMark._meta.db_table
    name = "test_processmark_at_built_concurrently"
    outcome: dict = {}

    def build():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '200ms'")  # migrate's bound for the session
            with connection.schema_editor(atomic=False) as editor:
                build_index_concurrently(
                    editor, name, f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (at)"
                )
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('lock_timeout')")
                outcome["lock_timeout_after"] = cursor.fetchone()[0]
        except Exception as exc:  # the test asserts on it
            outcome["error"] = exc
        finally:
            connections.close_all()

    with other_connection() as writer, other_connection(autocommit=True) as watch:
        # A transaction that writes to the table: the build waits for it to end, blocking no one.
        writer.execute(f"UPDATE {table} SET at = at WHERE name = 'none'")
        building = threading.Thread(target=build, daemon=True)
        building.start()
        try:
            wait_until(
                lambda: waiting_on_a_lock(watch, "CREATE INDEX CONCURRENTLY") or not building.is_alive(),
                "the build waiting",
            )
            # Held well past the session's 200 ms bound: a build bounded by it fails meanwhile.
            wait_until(
                lambda: lock_waited_long(watch, "CREATE INDEX CONCURRENTLY") or not building.is_alive(),
                "the build waiting past the bound",
            )
        finally:
            writer.rollback()
            building.join()
        try:
            assert outcome == {"lock_timeout_after": "200ms"}
            assert watch.execute(
                "SELECT indisvalid FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid WHERE relname = %s", [name]
            ).fetchone() == (True,)
        finally:
            watch.execute(f"DROP INDEX IF EXISTS {name}")


@pytest.mark.django_db(transaction=True)
def test_a_migration_outside_a_transaction_waits_for_its_lock_unbounded(settings):
    # 0026 adds its columns with plain AddFields outside a transaction: cut short after the first, it
    # could not run again over its own half (the column exists), so it keeps Django's wait. Shown with
    # 0038, outside a transaction too and whose first step adds a column to the events: a few steps
    # back and forth, where 0026 was fifteen.
    settings.MIGRATION_LOCK_TIMEOUT_SECONDS = 0.2
    settings.MIGRATION_LOCK_RETRY_SECONDS = 0.1
    settings.MIGRATION_LOCK_TRIES = 1
    before, outside_a_transaction = LATEST, "0038_event_signed_content_digest"
    event_table = "webhooks_webhookevent"
    migrated_to(before)
    migration = MigrationLoader(connection).get_migration("webhooks", outside_a_transaction)
    assert migration.atomic is False
    stderr, outcome = io.StringIO(), {}
    with other_connection() as long_request, other_connection(autocommit=True) as watch:
        long_request.execute(f"SELECT count(*) FROM {event_table}")
        migrating = migrate_in_a_thread("webhooks", outside_a_transaction, stderr=stderr, outcome=outcome)
        try:
            wait_until(
                lambda: waiting_on_a_lock(watch, f'ALTER TABLE "{event_table}"') or not migrating.is_alive(),
                "the ALTER waiting",
            )
            # Well past the 0.2 s bound of the atomic migrations: one bounded by it fails meanwhile.
            wait_until(
                lambda: lock_waited_long(watch, f'ALTER TABLE "{event_table}"') or not migrating.is_alive(),
                "the ALTER waiting past the bound",
            )
        finally:
            long_request.rollback()
            migrating.join()
    assert outcome == {"done": True}, stderr.getvalue()
    assert applied(outside_a_transaction)


def lock_waiters(watcher: psycopg.Connection, query_start: str) -> int:
    return watcher.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND query LIKE %s",
        [query_start + "%"],
    ).fetchone()[0]


WAITING_ITS_TURN = "Another migrate is running on this database: waiting for it to end"


def two_migrates_at_once(target: str, hold_sql: list[str], first_waits_on: str) -> tuple[dict, dict, str]:
    """A first migrate to ``target`` held up by another session's open transaction (``hold_sql``)
    at the statement ``first_waits_on``, a second started meanwhile; both ended once it lets go."""
    first_err, second_err, first, second = io.StringIO(), io.StringIO(), {}, {}
    with other_connection() as long_request, other_connection(autocommit=True) as watch:
        for statement in hold_sql:
            long_request.execute(statement)
        migrating = [migrate_in_a_thread("webhooks", target, stderr=first_err, outcome=first)]
        try:
            wait_until(
                lambda: waiting_on_a_lock(watch, first_waits_on) or not migrating[0].is_alive(),
                "the first migrate waiting",
            )
            assert migrating[0].is_alive(), (first, first_err.getvalue())
            migrating.append(migrate_in_a_thread("webhooks", target, stderr=second_err, outcome=second))
            # The second waiting its turn, or (without one) for the first's lock, or done already.
            wait_until(
                lambda: (
                    WAITING_ITS_TURN in second_err.getvalue()
                    or lock_waiters(watch, "") > 1
                    or not migrating[1].is_alive()
                ),
                "the second migrate waiting or done",
            )
        finally:
            long_request.rollback()
            for thread in migrating:
                thread.join()
    return first, second, second_err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_two_migrates_at_once_apply_each_migration_once_and_both_succeed(migrated_back_one_step, quick_turns, settings):
    # Two releases migrating at once (two containers of the compose file's web, a second deploy
    # started while the first one's release phase runs): the second read the plan while the first
    # applied 0037, then applied it again over it, "column ... already exists", and its release failed.
    settings.MIGRATION_LOCK_TIMEOUT_SECONDS = 60  # bounded, but longer than this test waits
    first, second, second_err = two_migrates_at_once(
        LATEST, [f"SELECT count(*) FROM {DESTINATION_TABLE}"], f'ALTER TABLE "{DESTINATION_TABLE}"'
    )
    assert first == {"done": True}
    assert second == {"done": True}, second_err
    assert WAITING_ITS_TURN in second_err
    assert MigrationRecorder(connection).migration_qs.filter(app="webhooks", name=LATEST).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_migrate_waiting_its_turn_does_not_deadlock_the_other_ones_index_build(quick_turns, settings):
    # 0038 adds its column, then builds its index CONCURRENTLY, which waits for every transaction
    # older than the build: a second migrate that began waiting its turn before the build must not
    # wait in one, or each waits for the other (PostgreSQL fails one: deadlock). Here the first is
    # held at the column (0038 is outside a transaction: unbounded) while the second starts.
    settings.MIGRATION_LOCK_TIMEOUT_SECONDS = 60
    signed_content = "0038_event_signed_content_digest"
    migrated_to(LATEST)
    first, second, second_err = two_migrates_at_once(
        signed_content,
        ["SELECT count(*) FROM webhooks_webhookevent"],
        'ALTER TABLE "webhooks_webhookevent"',
    )
    assert first == {"done": True}
    assert second == {"done": True}, second_err
    assert WAITING_ITS_TURN in second_err
    assert MigrationRecorder(connection).migration_qs.filter(app="webhooks", name=signed_content).count() == 1


@pytest.mark.django_db(transaction=True)
def test_migrate_lets_its_turn_go_when_it_ends_on_a_connection_kept_open():
    from webhooks.management.commands.migrate import MIGRATE_LOCK_KEY

    call_command("migrate", verbosity=0)  # this test's connection stays open after it
    with other_connection(autocommit=True) as next_release:
        assert next_release.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_KEY]).fetchone() == (True,)
