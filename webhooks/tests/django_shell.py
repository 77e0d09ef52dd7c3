"""A `manage.py shell` kept open for the steps a test runs on a private cluster, one at a time.

Each manage.py loads Django anew: seconds on a loaded machine, and a test that ran a few of them in
turn (set a claim up, sweep, wait, sweep again) spent most of its time there. A DjangoShell loads
Django once, when it is made (in parallel with whatever the test does meanwhile), then runs each
step it is given when it is given it, on a database connection of its own opened for that step: as a
long-lived process of the platform does (a worker's sweeper runs across a database restart).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading

from .processes import PATIENCE_SECONDS, ROOT, PostgresServer

_DONE = "--step done--"

# Reads a step (JSON-encoded code) a line at a time and runs it; nothing before the first step
# touches the database (a connection opened then could be one the test cuts off or restarts the
# server under). The namespace is shared by the steps: one may use what an earlier one imported.
_LOOP = f"""
import json, sys
from django.db import connections
namespace = {{"__name__": "__step__"}}
for line in sys.stdin:
    connections.close_all()
    exec(json.loads(line), namespace)
    print({_DONE!r}, flush=True)
"""


class DjangoShell:
    def __init__(self, env: dict, prepare: str = ""):
        """``prepare``: imports to do while loading, before the first step is asked for."""
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", prepare + "\n" + _LOOP],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # it exited

    def run(self, code: str, timeout: float = PATIENCE_SECONDS) -> str:
        """Run ``code`` now; the last line it printed."""
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        printed: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"a step of manage.py shell printed nothing for {timeout} s: {code}") from None
            if line is None:  # it exited: the step raised
                self.process.wait(timeout)
                self._stderr.seek(0)
                raise AssertionError(f"manage.py shell exited with {self.process.returncode}: {self._stderr.read()}")
            if line == _DONE:
                return printed[-1] if printed else ""
            printed.append(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()

    def __enter__(self) -> DjangoShell:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# Rows a fresh migrate writes (the rest of its work is schema): the migrations applied, and the
# content types and permissions of its post_migrate.
_ROWS_OF_A_MIGRATE = ("django_migrations", "django_content_type", "auth_permission")


def copy_the_migrated_test_database(target_url: str) -> None:
    """Hookline's migrated tables into the empty database at ``target_url`` (another server's):
    those of pytest-django's test database, which this session's migrate made, in a second or
    two (pg_dump | psql) rather than a migrate's several (many times that on a loaded machine).
    The test database's rows are other tests' business and are not copied: only those a migrate
    leaves. Its schema is checked to be every migration's latest first: a test that moves it back
    and forth puts it back (in a `finally`), and one that could not would fail here, not later."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    # pytest-django sets the test database up only for a session whose tests ask for one: without it
    # this connection is DATABASE_URL's own database, whatever a developer has in it.
    assert connection.settings_dict["NAME"].startswith("test_"), (
        f"not the test database: {connection.settings_dict['NAME']} (mark the tests django_db)"
    )
    executor = MigrationExecutor(connection)
    unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    assert not unapplied, f"the test database is not at every migration's latest: {unapplied}"
    db = connection.settings_dict
    env = {**os.environ, "PGPASSWORD": db["PASSWORD"] or ""}
    source = ["-h", db["HOST"] or "localhost", "-p", str(db["PORT"] or 5432), "-U", db["USER"], db["NAME"]]
    options = ["--no-owner", "--no-privileges"]
    dump = subprocess.run(
        ["pg_dump", *options, "--schema-only", *source], env=env, check=True, capture_output=True
    ).stdout
    tables = [argument for table in _ROWS_OF_A_MIGRATE for argument in ("-t", table)]
    dump += subprocess.run(
        ["pg_dump", *options, "--data-only", *tables, *source], env=env, check=True, capture_output=True
    ).stdout
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", target_url.replace("postgres://", "postgresql://")],
        input=dump,
        check=True,
        capture_output=True,
    )


class QuickPostgresServer(PostgresServer):
    """A PostgresServer whose initdb does not wait for its files to reach the disk (--no-sync): the
    cluster is a test's, thrown away with it, and runs with fsync off already."""

    def _as_postgres(self, *command: str) -> None:
        if command and command[0].endswith("/initdb"):
            command = (*command, "--no-sync")
        super()._as_postgres(*command)
