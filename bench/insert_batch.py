"""The ingest writer's batch INSERT alone: PostgreSQL backend CPU and client CPU per row.

Runs ``insert_event_batch`` (webhooks.services.ingest_writer) of this checkout in a loop on one
connection, as the writer process does, and reads the backend's CPU time from /proc/<pid>/stat
(PostgreSQL must run on this machine). Nothing else runs: no web server, no Redis, no worker.
Each measurement inserts ``--rows`` new events in batches of each ``--batch`` size, after a
warm-up; the rows are deleted and the table vacuumed before the next one, so that every run
starts from the same table. ``--rounds`` repeats the whole, to see the noise.

    DATABASE_URL=postgres://postgres@localhost:5432/hookline_bench_insert \\
        .venv/bin/python bench/insert_batch.py [--rows 6000] [--batch 2 8] [--rounds 2] [--sources 2000]

The database is created and migrated if needed; its tables are its own (never run it against a
database whose events matter: it deletes the events of its own organization, "bench-insert").
To compare two commits, run this file from a checkout of each, alternately, on the same database.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def backend_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sources", type=int, default=2000, help="sources in the table (one receives)")
    options = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        parser.error("set DATABASE_URL to a PostgreSQL database of this benchmark's own")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "DvYDLpKLLhLv09Ed4NPzG2XacL4YXQyL5GAbYbiy-6c=")
    os.environ.setdefault("PUBLIC_BASE_URL", "http://127.0.0.1:8000")  # required in server mode; unused here
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.chdir(ROOT)
    _ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from organizations.models import Organization
    from webhooks.models import Source, WebhookEvent
    from webhooks.services.ingest_writer import NewEvent, insert_event_batch

    call_command("migrate", "--noinput", verbosity=0)
    organization, _ = Organization.objects.get_or_create(slug="bench-insert", defaults={"name": "Bench insert"})
    missing = options.sources - Source.objects.filter(organization=organization).count()
    if missing > 0:
        secret = "whsec_" + "b" * 32  # never verified here
        Source.objects.bulk_create(
            [
                Source(organization=organization, provider="stripe", name=f"bench {n}", secret=secret)
                for n in range(missing)
            ]
        )
    source = Source.objects.filter(organization=organization).order_by("pk").first()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    connection.close()

    def clear() -> None:
        WebhookEvent.objects.filter(organization=organization).delete()
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {WebhookEvent._meta.db_table}")

    def batches(size: int, count: int, tag: str):
        for start in range(0, count, size):
            yield [
                NewEvent(
                    organization_id=organization.pk,
                    source_id=source.pk,
                    provider_event_id=f"evt_{tag}_{n}",
                    event_type="invoice.paid",
                    body=b'{"id": "evt", "object": "event", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}',
                    headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=" + "0" * 64},
                    remote_ip="203.0.113.7",
                )
                for n in range(start, min(start + size, count))
            ]

    print(f"{options.rows} rows per run, {Source.objects.count()} sources, checkout {ROOT}")
    for round_number in range(options.rounds):
        for size in options.batch:
            clear()
            connection.close()
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                (pid,) = cursor.fetchone()
            tag = f"{round_number}_{size}_{time.time_ns()}"
            for batch in batches(size, 50 * size, tag + "_warm"):  # prepares the statements
                insert_event_batch(batch)
            work = list(batches(size, options.rows, tag))
            backend_before, client_before, wall_before = backend_cpu_seconds(pid), time.process_time(), time.monotonic()
            for batch in work:
                outcomes = insert_event_batch(batch)
                assert all(outcome[1] for outcome in outcomes), outcomes
            backend, client = backend_cpu_seconds(pid) - backend_before, time.process_time() - client_before
            wall = time.monotonic() - wall_before
            print(
                f"round {round_number + 1}, batches of {size}: PostgreSQL {backend / options.rows * 1000:.3f} ms/row, "
                f"client {client / options.rows * 1000:.3f} ms/row, wall {wall / options.rows * 1000:.3f} ms/row"
            )
    clear()
    connection.close()
    return 0


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    sys.exit(main())
