"""What the benches that seed a database of their own share: bench/dashboard.py, bench/body_search.py
and bench/organization_deletion.py.

The database's lifecycle (create it afresh, point Django at it, migrate, drop it) and, for the
million-event benches, the tenant and the server-side ``INSERT … SELECT generate_series`` loop
(seconds, not an ORM loop). Each bench keeps its own rows: it passes the SELECTs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENCH_FERNET_KEY = "DvYDLpKLLhLv09Ed4NPzG2XacL4YXQyL5GAbYbiy-6c="

# A UUIDv7 made in SQL from a timestamp and the series number: time-ordered like the real ids,
# unique through the series number in the last 12 hex digits.
UUID7_SQL = (
    "(lpad(to_hex((extract(epoch FROM {ts}) * 1000)::bigint), 12, '0') || '7' || lpad(to_hex({n} % 4096), 3, '0')"
    " || to_hex(8 + {n} % 4) || lpad(to_hex(({n} * 7919) % 4096), 3, '0') || lpad(to_hex({salt} * 1000000000 + {n}), 12, '0'))::uuid"
)

# The columns every seeded event fills, in the order of the SELECTs that bench/dashboard.py and
# bench/body_search.py pass to insert_in_chunks; SERIES is the FROM those SELECTs end with.
EVENT_INSERT = """
    INSERT INTO webhooks_webhookevent (id, organization_id, source_id, provider_event_id, event_type, body,
        headers, remote_ip, status, rejection_code, rejection_detail, duplicate_count, received_at,
        processed_at)
"""
SERIES = "generate_series(%s::bigint, %s::bigint) AS g"

# The eight Stripe event types the million-event benches' events take in turn.
STRIPE_EVENT_TYPES = [
    "invoice.paid",
    "invoice.payment_failed",
    "charge.succeeded",
    "charge.failed",
    "customer.created",
    "customer.updated",
    "payment_intent.succeeded",
    "checkout.session.completed",
]


def stripe_events_sql(*, event_id: str, source_ids: str, source_count: int, ts: str, provider_id_prefix: str) -> str:
    """The INSERT … SELECT over SERIES of bench/dashboard.py's and bench/big_tenant.py's events:
    Stripe-like bodies spread over the sources in turn, and 1 in 100 a rejected request (no provider
    id, no type, never processed). ``event_id`` and ``ts`` are SQL of the series number ``g``;
    ``source_ids`` an SQL array; the provider ids are ``<provider_id_prefix><g>``."""
    types = sql_array(f"'{event_type}'" for event_type in STRIPE_EVENT_TYPES)
    return f"""{EVENT_INSERT}
        SELECT {event_id}, %s, ({source_ids})[1 + g % {source_count}],
            CASE WHEN g % 100 = 0 THEN NULL ELSE '{provider_id_prefix}' || g END,
            CASE WHEN g % 100 = 0 THEN '' ELSE ({types})[1 + g % 8] END,
            convert_to('{{"id":"evt_' || g || '","object":"event","type":"' || ({types})[1 + g % 8]
                || '","data":{{"object":{{"id":"in_' || g || '","amount":' || (g % 9000) || '}}}}}}', 'UTF8'),
            jsonb_build_object('content-type', 'application/json', 'stripe-signature', 't=1,v1=' || md5(g::text)),
            '192.0.2.10',
            CASE WHEN g % 100 = 0 THEN 'rejected' ELSE 'processed' END,
            CASE WHEN g % 100 = 0 THEN 'no_matching_secret' ELSE '' END,
            CASE WHEN g % 100 = 0 THEN 'no signature matches the secret' ELSE '' END,
            0, {ts}, CASE WHEN g % 100 = 0 THEN NULL ELSE {ts} END
        FROM {SERIES}
    """


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_connection_arguments(parser) -> None:
    """--database-url (the server; the bench's database replaces its path) and --redis-url."""
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/postgres")
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://localhost:6379/14",
    )


def database_urls(base_url: str, name: str) -> tuple[str, str]:
    """The bench database's URL and the maintenance database's, on the server of ``base_url``."""
    parts = urllib.parse.urlsplit(base_url)
    return (
        urllib.parse.urlunsplit(parts._replace(path=f"/{name}")),
        urllib.parse.urlunsplit(parts._replace(path="/postgres")),
    )


def recreate_database(admin_url: str, name: str, *, create: bool = True) -> None:
    """Drop the database ``name`` (its sessions too), then create it empty unless ``create`` is false."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def configure_environment(database_url: str, redis_url: str, *, public_base_url: str | None = None) -> None:
    """Settings for Django in this process and in ``manage.py`` run from it. Nothing consumes the
    Celery queue: what a bench runs, it runs in-process."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-only-secret-key-" + "x" * 32,
        FIELD_ENCRYPTION_KEYS=os.environ.get("FIELD_ENCRYPTION_KEYS") or BENCH_FERNET_KEY,
        PUBLIC_BASE_URL=public_base_url or os.environ.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8000",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        CELERY_QUEUE="hookline-bench",
        ALLOW_PRIVATE_DESTINATIONS="true",
    )


def migrate_and_set_up_django() -> None:
    """Migrate the database configure_environment named, then set Django up in this process."""
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True, timeout=300)
    import django

    django.setup()


def bench_tenant(*, sources: int, destinations: int = 0) -> dict:
    """The organization "bench" with its owner, ``sources`` Stripe sources and ``destinations``
    destinations fed by all of them."""
    from organizations.models import Membership
    from organizations.services import organization_create
    from webhooks.services.destinations import destination_create
    from webhooks.services.sources import source_create

    organization = organization_create(name="Bench", slug="bench", owner_email="owner@bench.example")
    owner = Membership.objects.get(organization=organization).user
    source_list = [
        source_create(organization=organization, provider="stripe", name=f"Stripe {n}", secret=f"whsec_bench_{n}")[0]
        for n in range(sources)
    ]
    destination_list = [
        destination_create(
            organization=organization, name=f"App {n}", url=f"http://127.0.0.1:9/{n}", sources=source_list
        )[0]
        for n in range(destinations)
    ]
    return {
        "organization": organization,
        "owner": owner,
        "sources": source_list,
        "destinations": destination_list,
        "source_ids": sql_array(str(source.pk) for source in source_list),
        "destination_ids": sql_array(str(destination.pk) for destination in destination_list),
    }


def sql_array(items) -> str:
    """An SQL array literal of already-quoted items: ``ARRAY[1,2]``, ``ARRAY['a','b']``."""
    return "ARRAY[" + ",".join(items) + "]"


def spread_over_30_days(events: int) -> str:
    """The SQL time of event ``g`` of ``events``: spread evenly over the 30 days up to now, event ``events``
    now. One fixed "now" for every statement, so that events and deliveries compute the same ids."""
    anchor = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"('{anchor}'::timestamptz - ({events} - g) * interval '{30 * 86400 / events:.6f} seconds')"


def insert_in_chunks(*, statements: list[str], organization_id: int, count: int, chunk: int, deadline: float) -> None:
    """Run each ``INSERT … SELECT … FROM SERIES`` for g from 1 to ``count``, ``chunk`` at a time, with the
    organization's id as the first parameter. Stops with TimeoutError past ``deadline`` (monotonic)."""
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        for first in range(1, count + 1, chunk):
            if time.monotonic() > deadline:
                raise TimeoutError("seeding ran past --max-seconds")
            last = min(first + chunk - 1, count)
            for statement in statements:
                # The SQL uses % as the modulo operator; the driver wants it doubled.
                cursor.execute(statement.replace(" % ", " %% "), [organization_id, first, last])
            log(f"  seeded events {first:,}–{last:,} ({time.monotonic() - started:.0f} s)")
