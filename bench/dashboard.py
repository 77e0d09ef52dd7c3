"""Dashboard page speed with a million events: server time of the events list and event detail.

Creates (or recreates) its own database ``hookline_bench_dashboard``, migrates it,
seeds one organization with N events (default 1,000,000) spread over 30 days,
deliveries and attempts for a share of them, using server-side
``INSERT … SELECT generate_series`` (seconds, not an ORM loop), then renders
pages in-process with Django's test client and prints, per page, the median and
p95 of the whole server time (view + queries + template) and of the SQL time
alone, with the number of queries.

    .venv/bin/python bench/dashboard.py [--events 1000000] [--runs 15] [--max-seconds 900] [--keep]

Bounded: seeding and measuring stop at --max-seconds; the database is dropped
at the end unless --keep. Only the local PostgreSQL and Redis are used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DB_NAME = "hookline_bench_dashboard"
BENCH_FERNET_KEY = "DvYDLpKLLhLv09Ed4NPzG2XacL4YXQyL5GAbYbiy-6c="
EVENT_TYPES = [
    "invoice.paid",
    "invoice.payment_failed",
    "charge.succeeded",
    "charge.failed",
    "customer.created",
    "customer.updated",
    "payment_intent.succeeded",
    "checkout.session.completed",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def database_urls(base_url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(base_url)
    bench = urllib.parse.urlunsplit(parts._replace(path=f"/{DB_NAME}"))
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    return bench, admin


def recreate_database(admin_url: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))


def drop_database(admin_url: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))


def configure_environment(database_url: str, redis_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-only-secret-key-" + "x" * 32,
        FIELD_ENCRYPTION_KEYS=os.environ.get("FIELD_ENCRYPTION_KEYS") or BENCH_FERNET_KEY,
        PUBLIC_BASE_URL=os.environ.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8000",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        CELERY_QUEUE="hookline-bench",
        ALLOW_PRIVATE_DESTINATIONS="true",
    )


# A UUIDv7 made in SQL from a timestamp and the series number: time-ordered like the real ids,
# unique through the series number in the last 12 hex digits.
UUID7_SQL = (
    "(lpad(to_hex((extract(epoch FROM {ts}) * 1000)::bigint), 12, '0') || '7' || lpad(to_hex({n} % 4096), 3, '0')"
    " || to_hex(8 + {n} % 4) || lpad(to_hex(({n} * 7919) % 4096), 3, '0') || lpad(to_hex({salt} * 1000000000 + {n}), 12, '0'))::uuid"
)


def seed(*, events: int, deadline: float) -> dict:
    """One organization, 3 sources, 2 destinations, ``events`` events, deliveries for 30% of them."""
    from django.db import connection

    from organizations.models import Membership
    from organizations.services import organization_create
    from webhooks.services.destinations import destination_create
    from webhooks.services.sources import source_create

    organization = organization_create(name="Bench", slug="bench", owner_email="owner@bench.example")
    owner = Membership.objects.get(organization=organization).user
    sources = [
        source_create(organization=organization, provider="stripe", name=f"Stripe {n}", secret=f"whsec_bench_{n}")[0]
        for n in range(3)
    ]
    destinations = [
        destination_create(organization=organization, name=f"App {n}", url=f"http://127.0.0.1:9/{n}", sources=sources)[
            0
        ]
        for n in range(2)
    ]
    source_ids = "ARRAY[" + ",".join(str(source.pk) for source in sources) + "]"
    destination_ids = "ARRAY[" + ",".join(str(destination.pk) for destination in destinations) + "]"
    types = "ARRAY[" + ",".join(f"'{event_type}'" for event_type in EVENT_TYPES) + "]"
    # Spread over 30 days, newest now.
    # One fixed "now" for every statement, so that events and deliveries compute the same ids.
    anchor = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ts = f"('{anchor}'::timestamptz - ({events} - g) * interval '{30 * 86400 / events:.6f} seconds')"
    started = time.monotonic()
    with connection.cursor() as raw_cursor:
        # The SQL below uses % as the modulo operator; the driver wants it doubled.
        def execute(sql: str, params: list) -> None:
            raw_cursor.execute(sql.replace(" % ", " %% "), params)

        raw_cursor.execute("SET synchronous_commit = off")
        chunk = 250_000
        for first in range(1, events + 1, chunk):
            if time.monotonic() > deadline:
                raise TimeoutError("seeding ran past --max-seconds")
            last = min(first + chunk - 1, events)
            execute(
                f"""
                INSERT INTO webhooks_webhookevent (id, organization_id, source_id, provider_event_id, event_type, body,
                    headers, remote_ip, status, rejection_code, rejection_detail, duplicate_count, received_at,
                    processed_at)
                SELECT {UUID7_SQL.format(ts=ts, n="g", salt=0)}, %s, ({source_ids})[1 + g % 3],
                    CASE WHEN g % 100 = 0 THEN NULL ELSE 'evt_' || g END,
                    CASE WHEN g % 100 = 0 THEN '' ELSE ({types})[1 + g % 8] END,
                    convert_to('{{"id":"evt_' || g || '","object":"event","type":"' || ({types})[1 + g % 8]
                        || '","data":{{"object":{{"id":"in_' || g || '","amount":' || (g % 9000) || '}}}}}}', 'UTF8'),
                    jsonb_build_object('content-type', 'application/json', 'stripe-signature', 't=1,v1=' || md5(g::text)),
                    '192.0.2.10',
                    CASE WHEN g % 100 = 0 THEN 'rejected' ELSE 'processed' END,
                    CASE WHEN g % 100 = 0 THEN 'no_matching_secret' ELSE '' END,
                    CASE WHEN g % 100 = 0 THEN 'no signature matches the secret' ELSE '' END,
                    0, {ts}, CASE WHEN g % 100 = 0 THEN NULL ELSE {ts} END
                FROM generate_series(%s::bigint, %s::bigint) AS g
                """,
                [organization.pk, first, last],
            )
            # Deliveries for 30% of the accepted events; 1 in 50 of them is dead.
            execute(
                f"""
                INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
                    attempt_count, next_attempt_at, last_status_code, last_error, created_at, completed_at)
                SELECT {UUID7_SQL.format(ts=ts, n="g", salt=1)}, %s, {UUID7_SQL.format(ts=ts, n="g", salt=0)},
                    ({destination_ids})[1 + g % 2], false,
                    CASE WHEN g % 50 = 1 THEN 'dead' ELSE 'succeeded' END, 1, NULL,
                    CASE WHEN g % 50 = 1 THEN 503 ELSE 200 END, '', {ts},
                    {ts} + interval '120 milliseconds'
                FROM generate_series(%s::bigint, %s::bigint) AS g
                WHERE g % 10 < 3 AND g % 100 <> 0
                """,
                [organization.pk, first, last],
            )
            execute(
                f"""
                INSERT INTO webhooks_deliveryattempt (id, organization_id, delivery_id, attempt_number, started_at,
                    duration_ms, request_headers, response_status, response_body, error)
                SELECT {UUID7_SQL.format(ts=ts, n="g", salt=2)}, %s, {UUID7_SQL.format(ts=ts, n="g", salt=1)}, 1,
                    {ts}, 40 + g % 200, '{{}}'::jsonb, CASE WHEN g % 50 = 1 THEN 503 ELSE 200 END,
                    CASE WHEN g % 50 = 1 THEN 'upstream unavailable' ELSE 'ok' END, ''
                FROM generate_series(%s::bigint, %s::bigint) AS g
                WHERE g % 10 < 3 AND g % 100 <> 0
                """,
                [organization.pk, first, last],
            )
            log(f"  seeded events {first:,}–{last:,} ({time.monotonic() - started:.0f} s)")
        raw_cursor.execute("ANALYZE")
    return {
        "organization": organization,
        "owner": owner,
        "sources": sources,
        "destinations": destinations,
        "seconds": time.monotonic() - started,
    }


def existing_world() -> dict:
    from organizations.models import Membership
    from webhooks.models import Destination, Source

    membership = Membership.objects.select_related("organization", "user").get(organization__slug="bench")
    organization = membership.organization
    return {
        "organization": organization,
        "owner": membership.user,
        "sources": list(Source.objects.filter(organization=organization).order_by("pk")),
        "destinations": list(Destination.objects.filter(organization=organization).order_by("pk")),
    }


def measure(client, url: str, runs: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    totals, sql_times, query_counts = [], [], []
    for run in range(runs + 2):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        if run < 2:
            continue  # warm-up: connection, template loading, PostgreSQL caches
        totals.append(elapsed)
        sql_times.append(sum(float(query["time"]) for query in queries.captured_queries) * 1000)
        query_counts.append(len(queries.captured_queries))
    totals.sort()
    return {
        "median_ms": statistics.median(totals),
        "p95_ms": totals[min(len(totals) - 1, int(0.95 * len(totals)))],
        "sql_median_ms": statistics.median(sql_times),
        "queries": max(query_counts),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the seeded database afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure a database kept by an earlier --keep run")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/postgres")
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://localhost:6379/14",
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds

    database_url, admin_url = database_urls(args.database_url)
    if not args.reuse:
        log(f"recreating database {DB_NAME}")
        recreate_database(admin_url)
    try:
        configure_environment(database_url, args.redis_url)
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True, timeout=300)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.test import Client

        settings.DEBUG = False
        if args.reuse:
            world = existing_world()
        else:
            log(f"seeding {args.events:,} events")
            world = seed(events=args.events, deadline=deadline)
            log(f"seeded in {world['seconds']:.0f} s")

        from webhooks.models import Delivery, WebhookEvent

        organization = world["organization"]
        events = WebhookEvent.objects.filter(organization=organization)
        newest = events.order_by("-id").values_list("id", flat=True).first()
        total = events.count() if args.reuse else args.events
        deep = events.order_by("id").values_list("id", flat=True)[total // 10]  # ~90% of the way back
        middle_event = events.filter(provider_event_id=f"evt_{total // 2 + 1}").values_list("id", flat=True)[0]
        dead_event = (
            Delivery.objects.filter(organization=organization, status="dead")
            .order_by("-id")
            .values_list("event_id", flat=True)
            .first()
        )
        base = f"/o/{organization.slug}"
        source, destination = world["sources"][1], world["destinations"][1]
        scenarios = [
            ("events list, first page", f"{base}/events/"),
            ("events, filter status=failed", f"{base}/events/?status=failed"),
            ("events, filter source", f"{base}/events/?source={source.pk}"),
            ("events, filter event type", f"{base}/events/?event_type=charge.failed"),
            ("events, filter event type wildcard", f"{base}/events/?event_type=charge.*"),
            ("events, filter rare wildcard", f"{base}/events/?event_type=*.session.*"),
            ("events, filter wildcard matching nothing", f"{base}/events/?event_type=nothing.*"),
            ("events, filter status=retrying", f"{base}/events/?status=retrying"),
            ("events, filter destination", f"{base}/events/?destination={destination.pk}"),
            (
                "events, filter type + source + 24h",
                f"{base}/events/?event_type=invoice.paid&source={source.pk}&range=24h",
            ),
            ("events, search provider id", f"{base}/events/?q=evt_{total // 3 + 1}"),
            ("events, search our id", f"{base}/events/?q={middle_event}"),
            ("events, deep keyset page (~900k back)", f"{base}/events/?before={deep}"),
            ("events, deep page + status=failed", f"{base}/events/?status=failed&before={deep}"),
            ("events, live poll (nothing new)", f"{base}/events/live/?after={newest}"),
            ("event detail", f"{base}/events/{middle_event}/"),
            ("event detail, failed delivery", f"{base}/events/{dead_event}/"),
            ("overview (not in the 100 ms target)", f"{base}/"),
        ]
        client = Client()
        client.force_login(world["owner"])
        rows = []
        for label, url in scenarios:
            if time.monotonic() > deadline:
                log("stopping: --max-seconds reached")
                break
            result = measure(client, url, args.runs)
            rows.append((label, result))
            log(f"  {label}: median {result['median_ms']:.1f} ms")

        total_events = WebhookEvent.objects.filter(organization=organization).count()
        print(f"\nDashboard server time, {total_events:,} events in one organization, {args.runs} runs each")
        print("| page | median ms | p95 ms | SQL median ms | queries |")
        print("|---|---:|---:|---:|---:|")
        for label, result in rows:
            print(
                f"| {label} | {result['median_ms']:.1f} | {result['p95_ms']:.1f} | "
                f"{result['sql_median_ms']:.1f} | {result['queries']} |"
            )
        from django.db import connections

        connections.close_all()
    finally:
        if not (args.keep or args.reuse):
            drop_database(admin_url)
            log(f"dropped {DB_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
