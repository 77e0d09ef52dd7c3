"""Body search speed: server time of the events list's "Body contains" with a million events of 1–4 KiB.

Creates (or recreates) its own database (``--database``, default ``hookline_bench_body_search``),
migrates it, seeds one organization with N events (default 1,000,000) over 30 days whose bodies are
Stripe-like JSON of 1 to 4 KiB (those over about 2 KiB are TOASTed: compressed, and stored out of
line when still large), with ``INSERT … SELECT generate_series`` (bench/seeding.py) as bench/dashboard.py does, then
renders the events list in-process with a body search and prints, per page and window size, the
median and p95 of the whole server time and of the SQL time alone.

    .venv/bin/python bench/body_search.py [--events 1000000] [--runs 9] [--max-seconds 900] [--keep]

Bounded: seeding and measuring stop at --max-seconds; the database is dropped at the end unless
--keep. Only the local PostgreSQL and Redis are used.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dashboard import measure  # noqa: E402
from bench.seeding import (  # noqa: E402
    EVENT_INSERT,
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
    sql_array,
)

EVENT_TYPES = ["invoice.paid", "invoice.payment_failed", "charge.succeeded", "customer.updated"]
# In one body in 40,000: the "order 1234" a tenant looks for.
RARE_EVERY = 40_000


def seed(*, events: int, deadline: float) -> dict:
    """One organization, 3 sources, ``events`` events of 1–4 KiB bodies."""
    from django.db import connection

    world = bench_tenant(sources=3)
    source_ids = world["source_ids"]
    types = sql_array(f"'{event_type}'" for event_type in EVENT_TYPES)
    ts = spread_over_30_days(events)
    # 9 to 38 line items of about 105 bytes after a 300-byte head: 1 to 4 KiB. Keys repeat and
    # values vary, as in real payloads, so TOAST compresses those over 2 KiB to about half, which
    # keeps them in the table's pages. One body in 5 carries 1.3 to 2.2 KiB of hex as well (a
    # signature chain, an attachment), which does not compress: those over 2 KiB are moved out of
    # line, to the TOAST table, as they are.
    line = (
        '\'{"id":"li_\' || substr(md5((g * 40 + k)::text), 1, 14) || \'","price":"price_\''
        ' || substr(md5((g + k)::text), 1, 10) || \'","quantity":\' || (k % 7 + 1) ||'
        " ',\"description\":\"Seat licence ' || k || ', monthly\"}'"
    )
    hex_blob = "(SELECT string_agg(md5((g * 100 + j)::text), '') FROM generate_series(1, 40 + g % 30) AS j)"
    body = (
        'convert_to(\'{"id":"evt_\' || g || \'","object":"event","type":"\' || '
        f'({types})[1 + g % 4] || \'","created":\' || extract(epoch FROM {ts})::bigint'
        ' || \',"data":{"object":{"id":"in_\' || md5(g::text)'
        ' || \'","customer":"cus_\' || substr(md5((g % 20000)::text), 1, 14) || \'",\''
        f" || CASE WHEN g % {RARE_EVERY} = 7 THEN '\"description\":\"order 1234\",' ELSE '' END"
        f" || CASE WHEN g % 5 = 0 THEN '\"attachment\":\"' || {hex_blob} || '\",' ELSE '' END"
        " || '\"lines\":[' || (SELECT string_agg("
        f"{line}, ',') FROM generate_series(1, 9 + g % (CASE WHEN g % 5 = 0 THEN 10 ELSE 30 END)) AS k)"
        " || ']}}}', 'UTF8')"
    )
    started = time.monotonic()
    insert_in_chunks(
        statements=[
            f"""{EVENT_INSERT}
            SELECT {UUID7_SQL.format(ts=ts, n="g", salt=0)}, %s, ({source_ids})[1 + g % 3], 'evt_' || g,
                ({types})[1 + g % 4], {body},
                jsonb_build_object('content-type', 'application/json'), '192.0.2.10', 'processed', '', '', 0,
                {ts}, {ts}
            FROM {SERIES}
            """
        ],
        organization_id=world["organization"].pk,
        count=events,
        chunk=100_000,
        deadline=deadline,
    )
    with connection.cursor() as raw_cursor:
        raw_cursor.execute("VACUUM ANALYZE webhooks_webhookevent")
        raw_cursor.execute(
            "SELECT avg(octet_length(body)), count(*) FILTER (WHERE octet_length(body) > 2048),"
            " count(*) FILTER (WHERE pg_column_size(body) < octet_length(body)),"
            " pg_total_relation_size('webhooks_webhookevent') FROM webhooks_webhookevent"
        )
        average, over_2k, compressed, table_bytes = raw_cursor.fetchone()
    return {
        "organization": world["organization"],
        "owner": world["owner"],
        "sources": world["sources"],
        "seconds": time.monotonic() - started,
        "average_body": float(average),
        "over_2k": over_2k,
        "compressed": compressed,
        "table_bytes": table_bytes,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--windows", default="5000,10000,20000", help="window sizes to time, comma-separated")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the seeded database afterwards")
    parser.add_argument("--database", default="hookline_bench_body_search")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    database_url, admin_url = database_urls(args.database_url, args.database)
    log(f"recreating database {args.database}")
    recreate_database(admin_url, args.database)
    try:
        configure_environment(database_url, args.redis_url)
        migrate_and_set_up_django()
        from django.conf import settings
        from django.test import Client

        from webhooks.models import WebhookEvent

        settings.DEBUG = False
        log(f"seeding {args.events:,} events")
        world = seed(events=args.events, deadline=deadline)
        log(f"seeded in {world['seconds']:.0f} s")
        organization = world["organization"]
        ids = WebhookEvent.objects.filter(organization=organization).order_by("id").values_list("id", flat=True)
        deep = ids[args.events // 10]  # ~90 % of the way back
        base = f"/o/{organization.slug}/events/"
        scenarios = [
            ("absent text (reads the whole window)", {"body": "cus_NOWHERE"}),
            ('rare text ("order 1234", 1 in 40,000)', {"body": "order 1234"}),
            ('common text ("invoice.paid", 1 in 4)', {"body": '"invoice.paid"'}),
            ("absent text + source", {"body": "cus_NOWHERE", "source": world["sources"][1].pk}),
            ("absent text, ~900k back", {"body": "cus_NOWHERE", "before": deep}),
        ]
        client = Client()
        client.force_login(world["owner"])
        rows = [("—", "no body search (the list as before)", measure(client, base, args.runs))]
        for window in [int(size) for size in args.windows.split(",")]:
            settings.BODY_SEARCH_WINDOW = window
            for label, params in scenarios:
                if time.monotonic() > deadline:
                    log("stopping: --max-seconds reached")
                    break
                result = measure(client, f"{base}?{urllib.parse.urlencode(params)}", args.runs)
                rows.append((window, label, result))
                log(f"  window {window:,}, {label}: median {result['median_ms']:.1f} ms")

        print(
            f"\nBody search, {args.events:,} events in one organization (average body {world['average_body']:,.0f}"
            f" bytes, {world['over_2k']:,} over 2 KiB, {world['compressed']:,} of them stored compressed;"
            " table with TOAST and indexes"
            f" {world['table_bytes'] / 2**30:.2f} GiB, seeded in {world['seconds']:.0f} s), {args.runs} runs each"
        )
        print("| window | page | median ms | p95 ms | SQL median ms | queries |")
        print("|---:|---|---:|---:|---:|---:|")
        for window, label, result in rows:
            shown = f"{window:,}" if isinstance(window, int) else window
            print(
                f"| {shown} | {label} | {result['median_ms']:.1f} | {result['p95_ms']:.1f} | "
                f"{result['sql_median_ms']:.1f} | {result['queries']} |"
            )
        from django.db import connections

        connections.close_all()
    finally:
        if not args.keep:
            recreate_database(admin_url, args.database, create=False)
            log(f"dropped {args.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
