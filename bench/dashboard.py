"""Dashboard page speed with a million events: server time of the events list and event detail.

Creates (or recreates) its own database (``--database``, default ``hookline_bench_dashboard``), migrates it,
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
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.seeding import (  # noqa: E402
    SERIES,
    UUID7_SQL,
    add_connection_arguments,
    bench_tenant,
    configure_environment,
    database_urls,
    insert_in_chunks,
    log,
    migrate_and_set_up_django,
    recreate_database,
    spread_over_30_days,
    stripe_events_sql,
)

DB_NAME = "hookline_bench_dashboard"


def seed(*, events: int, deadline: float) -> dict:
    """One organization, 3 sources, 2 destinations, ``events`` events, deliveries for 30% of them."""
    from django.db import connection

    world = bench_tenant(sources=3, destinations=2)
    source_ids, destination_ids = world.pop("source_ids"), world.pop("destination_ids")
    ts = spread_over_30_days(events)
    events_sql = stripe_events_sql(
        event_id=UUID7_SQL.format(ts=ts, n="g", salt=0),
        source_ids=source_ids,
        source_count=3,
        ts=ts,
        provider_id_prefix="evt_",
    )
    # Deliveries for 30% of the accepted events; 1 in 50 of them is dead.
    deliveries_sql = f"""
        INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
            attempt_count, next_attempt_at, last_status_code, last_error, created_at, completed_at)
        SELECT {UUID7_SQL.format(ts=ts, n="g", salt=1)}, %s, {UUID7_SQL.format(ts=ts, n="g", salt=0)},
            ({destination_ids})[1 + g % 2], false,
            CASE WHEN g % 50 = 1 THEN 'dead' ELSE 'succeeded' END, 1, NULL,
            CASE WHEN g % 50 = 1 THEN 503 ELSE 200 END, '', {ts},
            {ts} + interval '120 milliseconds'
        FROM {SERIES}
        WHERE g % 10 < 3 AND g % 100 <> 0
    """
    attempts_sql = f"""
        INSERT INTO webhooks_deliveryattempt (id, organization_id, delivery_id, attempt_number, started_at,
            duration_ms, request_headers, response_status, response_body, error)
        SELECT {UUID7_SQL.format(ts=ts, n="g", salt=2)}, %s, {UUID7_SQL.format(ts=ts, n="g", salt=1)}, 1,
            {ts}, 40 + g % 200, '{{}}'::jsonb, CASE WHEN g % 50 = 1 THEN 503 ELSE 200 END,
            CASE WHEN g % 50 = 1 THEN 'upstream unavailable' ELSE 'ok' END, ''
        FROM {SERIES}
        WHERE g % 10 < 3 AND g % 100 <> 0
    """
    started = time.monotonic()
    insert_in_chunks(
        statements=[events_sql, deliveries_sql, attempts_sql],
        organization_id=world["organization"].pk,
        count=events,
        chunk=250_000,
        deadline=deadline,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {**world, "seconds": time.monotonic() - started}


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
    parser.add_argument("--database", default=DB_NAME)
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds

    database_url, admin_url = database_urls(args.database_url, args.database)
    if not args.reuse:
        log(f"recreating database {args.database}")
        recreate_database(admin_url, args.database)
    try:
        configure_environment(database_url, args.redis_url)
        migrate_and_set_up_django()
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
            recreate_database(admin_url, args.database, create=False)
            log(f"dropped {args.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
