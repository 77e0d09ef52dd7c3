"""A migration that builds an index CONCURRENTLY runs outside a transaction: a release stopped while
the index is built (on a large table, the longest step: the release's time limit, a cancelled build)
leaves the steps before the build done but the migration not recorded, and the next release runs it
again from its first step. That run must finish the migration, not fail on what the first one did."""

import os
import subprocess
import sys

import psycopg
import pytest
from django.conf import settings

from .processes import ROOT, wait_until

BUILD_OF_THE_BULK_RETRY_INDEX = (
    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
    " AND query LIKE 'CREATE INDEX CONCURRENTLY%%delivery_bulk_retry_status%%'"
)


def _url(database: str) -> str:
    given = settings.DATABASES["default"]
    password = f":{given['PASSWORD']}" if given.get("PASSWORD") else ""
    return f"postgresql://{given['USER']}{password}@{given['HOST']}:{given['PORT'] or 5432}/{database}"


def _migrate(database: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "migrate", "--noinput", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": _url(database)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# A release's `manage.py migrate`, Django loaded ahead (while the test brings the database to where
# it starts), told when to run by a line on its stdin. Its system checks run then, as migrate's do.
_MIGRATE_WHEN_TOLD = """
import sys
from django.core.management import call_command
sys.stdin.readline()
call_command("migrate", "--noinput", skip_checks=False)
"""


class LoadedMigrate:
    def __init__(self, database: str):
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", _MIGRATE_WHEN_TOLD],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": _url(database)},
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self) -> subprocess.Popen:
        self.process.stdin.write("\n")
        self.process.stdin.close()
        return self.process

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def fresh_database():
    name = "test_" + settings.DATABASES["default"]["NAME"].removeprefix("test_") + "_rerun"
    with psycopg.connect(_url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(_url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_bulk_retry_migration_stopped_during_its_index_build_runs_again_to_its_end(fresh_database):
    # The two releases' migrates load Django while the database is migrated to where they start.
    first_release, second_release = LoadedMigrate(fresh_database), LoadedMigrate(fresh_database)
    try:
        _the_migration_stopped_then_run_again(fresh_database, first_release, second_release)
    finally:
        first_release.kill()
        second_release.kill()


def _the_migration_stopped_then_run_again(fresh_database, first_release, second_release):
    before = _migrate(fresh_database, "webhooks", "0034_event_org_accepted_index")
    assert before.wait() == 0, before.stderr.read()
    with (
        psycopg.connect(_url(fresh_database), autocommit=True) as holder,
        psycopg.connect(_url(fresh_database), autocommit=True) as operator,
    ):
        # A transaction older than the build, as a long report's: the build waits for it to end
        # (after the columns were added), and is stopped there, as a release's time limit would.
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM django_migrations")
        stopped = first_release.run()
        try:
            assert wait_until(
                lambda: operator.execute(BUILD_OF_THE_BULK_RETRY_INDEX, [fresh_database]).fetchone(), timeout=120
            ), "the index build never started"
            (build,) = operator.execute(BUILD_OF_THE_BULK_RETRY_INDEX, [fresh_database]).fetchone()
            operator.execute("SELECT pg_cancel_backend(%s)", [build])
            assert stopped.wait() != 0
        finally:
            first_release.kill()
        holder.execute("ROLLBACK")

    again = second_release.run()
    assert again.wait() == 0, again.stderr.read()
    with psycopg.connect(_url(fresh_database), autocommit=True) as check:
        assert check.execute(
            "SELECT 1 FROM django_migrations WHERE app = 'webhooks' AND name = '0035_delivery_bulk_retry'"
        ).fetchone()
        # The build the first run left invalid was made again, whole.
        assert check.execute(
            "SELECT indisvalid FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid"
            " WHERE relname = 'delivery_bulk_retry_status'"
        ).fetchone() == (True,)
