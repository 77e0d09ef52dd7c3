"""Fan-out at its bounds: process_event_batch() with a tenant at every limit.

Creates (or recreates) its own database (default ``hookline_bench_fan_out``), migrates it, and
for each body size (default 2 KiB, 256 KiB and 1 MiB) seeds:

  worst tenant     MAX_DESTINATIONS_PER_ORGANIZATION destinations (100), each with
                   MAX_PAYLOAD_FILTERS conditions (10) on its one source, every condition read
                   for every event (nine hold for all; the last one for --taken of the
                   destinations), and --events received events whose JSON bodies are a Stripe-like
                   invoice padded with line items to the size
  ordinary tenant  one destination without payload filters and --ordinary small events, received
                   among the worst tenant's (so that a batch takes both, as in production)

then calls process_event_batch() (as the processing loop does) until nothing is received, timing
each batch: wall, this process's CPU, the database backend's CPU (read from /proc when it is on
this machine), events processed (of each tenant), body bytes read by payload filters and
deliveries created. Last, the events are made received again and one batch is run under
tracemalloc for its peak memory in this process.

    .venv/bin/python bench/fan_out.py [--sizes 2k,256k,1m] [--events 300] [--ordinary 60]
        [--taken 0.5] [--max-seconds 240] [--json] [--keep] [--database-name NAME]

Bounded: at most 1,000 events of at most 4 MiB each; measuring stops at --max-seconds (a size
whose seeding would start past it is skipped); the database is dropped at the end unless --keep.
Only the local PostgreSQL and Redis are used (Redis only by Django's settings: the after-commit
scheduling of deliveries publishes to the bench's own Celery queue, which nothing consumes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import tracemalloc
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.seeding import (  # noqa: E402
    add_connection_arguments,
    configure_environment,
    database_urls,
    log,
    migrate_and_set_up_django,
    recreate_database,
)

MAX_EVENTS = 1000
MAX_BODY_BYTES = 4 * 1024 * 1024
BENCH_SECRET = "whsec_" + "bench" * 4  # signs nothing: no request is sent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    found = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)i?[bB]?\s*", text)
    if not found:
        raise ValueError(text)
    return int(found[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[found[2].lower()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2k,256k,1m", help="body sizes, comma-separated (2k, 256k, 1m)")
    parser.add_argument("--events", type=int, default=300, help="received events of the worst tenant, per size")
    parser.add_argument("--ordinary", type=int, default=60, help="small events of the ordinary tenant, per size")
    parser.add_argument(
        "--taken", type=float, default=0.5, help="share of the destinations whose filters take an event"
    )
    parser.add_argument("--max-seconds", type=float, default=240)
    parser.add_argument("--database-name", default=os.environ.get("BENCH_DB_NAME", "hookline_bench_fan_out"))
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.sizes = [parse_size(size) for size in args.sizes.split(",") if size.strip()]
    except ValueError as exc:
        parser.error(f"--sizes: cannot read “{exc}” (write 2k, 256k, 1m)")
    if not args.sizes or not all(512 <= size <= MAX_BODY_BYTES for size in args.sizes):
        parser.error(f"each size between 512 bytes and {MAX_BODY_BYTES // 1024 // 1024} MiB")
    if not 1 <= args.events <= MAX_EVENTS or not 0 <= args.ordinary <= MAX_EVENTS or not 0 <= args.taken <= 1:
        parser.error(f"1 <= --events <= {MAX_EVENTS}, 0 <= --ordinary <= {MAX_EVENTS}, 0 <= --taken <= 1")
    for url in (args.database_url, args.redis_url):
        if urllib.parse.urlsplit(url).hostname not in ("localhost", "127.0.0.1", "::1"):
            parser.error(f"{url}: the benchmark only talks to this machine")
    return args


def worst_body(size: int, number: int = 0) -> bytes:
    """A Stripe-like invoice, padded with line items to about ``size`` bytes: many small objects, the
    costly kind of JSON to parse (a long string would parse in a fraction of the time)."""
    head = {
        "id": f"evt_{number}",
        "object": "event",
        "type": "invoice.paid",
        "data": {"object": {f"k{c}": c for c in range(9)} | {"livemode": True, "lines": []}},
    }
    skeleton = json.dumps(head, separators=(",", ":")).encode()
    item = b'{"id":"li_%06d","amount":%d,"currency":"eur","quantity":1,"proration":false}'
    items, length, n = [], len(skeleton), 0
    while True:
        line = item % (n, 1000 + n % 9000)
        if length + len(line) + 1 > size:
            break
        items.append(line)
        length += len(line) + 1
        n += 1
    return skeleton.replace(b'"lines":[]', b'"lines":[' + b",".join(items) + b"]")


def conditions_for(destination_number: int, destinations: int, taken: float) -> list[dict]:
    """Ten conditions, every one read: nine hold for every event, the last for ``taken`` of the destinations."""
    conditions = [{"path": f"data.object.k{c}", "op": "exists"} for c in range(9)]
    last_op = "exists" if destination_number < round(taken * destinations) else "not_exists"
    conditions.append({"path": "data.object.livemode", "op": last_op})
    return conditions


class Seeded:
    def __init__(self, label: str, worst_org: int, worst_source: int, ordinary_org: int, ordinary_source: int):
        self.label = label
        self.worst_org, self.worst_source = worst_org, worst_source
        self.ordinary_org, self.ordinary_source = ordinary_org, ordinary_source


def seed(*, label: str, size: int, events: int, ordinary: int, taken: float) -> Seeded:
    """The two tenants for one body size, their events received, interleaved in time."""
    from django.conf import settings
    from django.db import connection

    from organizations.services import organization_create
    from webhooks.services.destinations import destination_create
    from webhooks.services.payload_filters import MAX_PAYLOAD_FILTERS
    from webhooks.services.sources import source_create

    destinations = settings.MAX_DESTINATIONS_PER_ORGANIZATION
    worst = organization_create(name=f"Worst {label}", slug=f"worst-{label}", owner_email=f"o@worst-{label}.example")
    worst_source, _ = source_create(organization=worst, provider="stripe", name="live", secret=BENCH_SECRET)
    for number in range(destinations):
        conditions = conditions_for(number, destinations, taken)[:MAX_PAYLOAD_FILTERS]
        destination_create(
            organization=worst,
            name=f"App {number}",
            url=f"http://127.0.0.1:9/{number}",
            sources=[worst_source],
            payload_filters=conditions,
        )
    plain = organization_create(name=f"Plain {label}", slug=f"plain-{label}", owner_email=f"o@plain-{label}.example")
    plain_source, _ = source_create(organization=plain, provider="stripe", name="live", secret=BENCH_SECRET)
    destination_create(organization=plain, name="App", url="http://127.0.0.1:9/plain", sources=[plain_source])

    body = worst_body(size)
    small = b'{"id":"evt_small","object":"event","type":"invoice.paid","data":{"object":{"livemode":true}}}'
    insert = """
        INSERT INTO webhooks_webhookevent (id, organization_id, source_id, provider_event_id, event_type, body,
            headers, remote_ip, status, rejection_code, rejection_detail, duplicate_count, received_at,
            processing_failures, processing_error)
        SELECT gen_random_uuid(), %s, %s, %s || g, 'invoice.paid', %s, '{"content-type": "application/json"}',
            '192.0.2.10', 'received', '', '', 0, now() - interval '1 hour' + g * %s * interval '1 millisecond', 0, ''
        FROM generate_series(%s::int, %s::int) AS g
    """
    # The ordinary tenant's events spread evenly among the worst tenant's: every 10 ms for those.
    spacing = events * 10 / max(ordinary, 1)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        for first in range(1, events + 1, 50):  # 50 bodies a statement: at most 200 MiB in one
            last = min(first + 49, events)
            cursor.execute(insert, [worst.pk, worst_source.pk, "evt_worst_", body, 10, first, last])
        if ordinary:
            cursor.execute(insert, [plain.pk, plain_source.pk, "evt_plain_", small, spacing, 1, ordinary])
        cursor.execute("ANALYZE webhooks_webhookevent")
        cursor.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('webhooks_webhookevent')),"
            " pg_column_size(body), length(body) FROM webhooks_webhookevent WHERE organization_id = %s LIMIT 1",
            [worst.pk],
        )
        table_size, stored, raw = cursor.fetchone()
    log(
        f"  seeded {events} events of {raw:,} bytes ({stored:,} stored) and {ordinary} small ones "
        f"in {time.monotonic() - started:.1f} s; events table {table_size}"
    )
    return Seeded(label, worst.pk, worst_source.pk, plain.pk, plain_source.pk)


class BackendClock:
    """The CPU seconds of this connection's PostgreSQL backend, from /proc (None when not readable)."""

    def __init__(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.path = f"/proc/{cursor.fetchone()[0]}/stat"

    def seconds(self) -> float | None:
        try:
            fields = Path(self.path).read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class BodyCounter:
    """Counts the bodies payload filters parse (payload_document is called once per body read)."""

    def __init__(self) -> None:
        from webhooks.services import payload_filters

        self.module = payload_filters
        self.real = payload_filters.payload_document
        self.bodies = 0
        self.bytes = 0

    def __enter__(self):
        def counting(body):
            self.bodies += 1
            self.bytes += len(body)
            return self.real(body)

        self.module.payload_document = counting
        return self

    def __exit__(self, *exc) -> None:
        self.module.payload_document = self.real


def run_batches(seeded: Seeded, deadline: float) -> tuple[list[dict], bool]:
    """process_event_batch() until nothing is received (or past ``deadline``): one record per batch."""
    from django.db import connection
    from django.db.models import Count

    from webhooks.models import Delivery, WebhookEvent
    from webhooks.services.processing import process_event_batch

    clock = BackendClock()
    batches = []
    finished = False
    while time.monotonic() < deadline:
        before = dict(
            WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSED)
            .values_list("organization_id")
            .annotate(n=Count("id"))
        )
        deliveries_before = Delivery.objects.count()
        with BodyCounter() as bodies:
            db_before, cpu_before = clock.seconds(), time.process_time()
            started = time.perf_counter()
            processed = process_event_batch()
            wall = time.perf_counter() - started
            cpu, db_after = time.process_time() - cpu_before, clock.seconds()
        if not processed:
            finished = True
            break
        after = dict(
            WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSED)
            .values_list("organization_id")
            .annotate(n=Count("id"))
        )
        batches.append(
            {
                "events": processed,
                "worst_events": after.get(seeded.worst_org, 0) - before.get(seeded.worst_org, 0),
                "ordinary_events": after.get(seeded.ordinary_org, 0) - before.get(seeded.ordinary_org, 0),
                "bodies_read": bodies.bodies,
                "body_bytes_read": bodies.bytes,
                "deliveries": Delivery.objects.count() - deliveries_before,
                "wall_s": wall,
                "cpu_s": cpu,
                "db_cpu_s": None if db_before is None or db_after is None else db_after - db_before,
            }
        )
        connection.queries_log.clear()
    return batches, finished


def peak_memory_of_one_batch(seeded: Seeded) -> dict:
    """Everything of this size received again, then one batch under tracemalloc."""
    from webhooks.models import Delivery, WebhookEvent
    from webhooks.services.processing import process_event_batch

    mine = [seeded.worst_org, seeded.ordinary_org]
    Delivery.objects.filter(organization_id__in=mine).delete()
    WebhookEvent.objects.filter(organization_id__in=mine).update(status=WebhookEvent.Status.RECEIVED, processed_at=None)
    tracemalloc.start()
    try:
        with BodyCounter() as bodies:
            processed = process_event_batch()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Out of the next size's way.
    Delivery.objects.filter(organization_id__in=mine).delete()
    WebhookEvent.objects.filter(organization_id__in=mine).update(status=WebhookEvent.Status.PROCESSED)
    return {"events": processed, "body_bytes_read": bodies.bytes, "peak_bytes": peak}


def summary(size: int, batches: list[dict], finished: bool, memory: dict | None, ordinary: int) -> dict:
    walls = [batch["wall_s"] for batch in batches]
    done_ordinary, last_ordinary_batch, elapsed, ordinary_done_at = 0, None, 0.0, None
    for number, batch in enumerate(batches, start=1):
        elapsed += batch["wall_s"]
        done_ordinary += batch["ordinary_events"]
        if ordinary and done_ordinary >= ordinary and last_ordinary_batch is None:
            last_ordinary_batch, ordinary_done_at = number, elapsed
    total_events = sum(batch["events"] for batch in batches)
    return {
        "body_bytes": size,
        "finished": finished,
        "batches": len(batches),
        "events": total_events,
        "events_per_batch_max": max((batch["events"] for batch in batches), default=0),
        "wall_s_median": statistics.median(walls) if walls else None,
        "wall_s_max": max(walls, default=None),
        "cpu_s_max": max((batch["cpu_s"] for batch in batches), default=None),
        "db_cpu_s_max": max((batch["db_cpu_s"] or 0 for batch in batches), default=None),
        "body_mib_read_max": max((batch["body_bytes_read"] for batch in batches), default=0) / 2**20,
        "deliveries": sum(batch["deliveries"] for batch in batches),
        "deliveries_per_batch_max": max((batch["deliveries"] for batch in batches), default=0),
        "events_per_s": total_events / sum(walls) if walls else None,
        "ordinary_all_done_after_batches": last_ordinary_batch,
        "ordinary_all_done_after_s": ordinary_done_at,
        "peak_memory_mib": memory["peak_bytes"] / 2**20 if memory else None,
        "per_batch": batches,
    }


def print_table(report: dict) -> None:
    print(
        f"fan-out at its bounds: {report['config']['destinations']} destinations × "
        f"{report['config']['conditions']} conditions, {report['config']['events']} events of the worst tenant "
        f"and {report['config']['ordinary']} of an ordinary one per size; EVENT_BATCH_SIZE "
        f"{report['config']['batch_size']}, body budget {report['config']['body_budget']}, "
        f"delivery budget {report['config']['delivery_budget']}"
    )
    print(
        f"{'body':>8} {'batches':>7} {'ev/batch':>8} {'wall med':>9} {'wall max':>9} {'cpu max':>8} "
        f"{'db cpu':>7} {'MiB read':>8} {'deliv/batch':>11} {'ev/s':>7} {'peak MiB':>8} {'ordinary done':>16}"
    )
    for row in report["results"]:
        ordinary = (
            f"{row['ordinary_all_done_after_batches']} b / {row['ordinary_all_done_after_s']:.1f} s"
            if row["ordinary_all_done_after_batches"]
            else "-"
        )
        print(
            f"{row['body_bytes'] // 1024:>6} K {row['batches']:>7} {row['events_per_batch_max']:>8} "
            f"{row['wall_s_median']:>8.2f}s {row['wall_s_max']:>8.2f}s {row['cpu_s_max']:>7.2f}s "
            f"{row['db_cpu_s_max']:>6.2f}s {row['body_mib_read_max']:>8.1f} {row['deliveries_per_batch_max']:>11,} "
            f"{row['events_per_s']:>7.1f} {row['peak_memory_mib'] or 0:>8.1f} {ordinary:>16}"
            + ("" if row["finished"] else "  (stopped at --max-seconds)")
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    database_url, admin_url = database_urls(args.database_url, args.database_name)
    log(f"recreating database {args.database_name}")
    recreate_database(admin_url, args.database_name)
    try:
        configure_environment(database_url, args.redis_url)
        migrate_and_set_up_django()
        from django.conf import settings

        from webhooks.services import payload_filters, processing

        report = {
            "config": {
                "cpus": os.cpu_count(),
                "loadavg_at_start": os.getloadavg()[0],
                "destinations": settings.MAX_DESTINATIONS_PER_ORGANIZATION,
                "conditions": payload_filters.MAX_PAYLOAD_FILTERS,
                "events": args.events,
                "ordinary": args.ordinary,
                "taken": args.taken,
                "batch_size": processing.EVENT_BATCH_SIZE,
                "body_budget": getattr(settings, "PROCESSING_BATCH_BODY_BYTES", None),
                "delivery_budget": getattr(settings, "PROCESSING_BATCH_DELIVERIES", None),
            },
            "results": [],
        }
        for size in args.sizes:
            if time.monotonic() > deadline:
                log(f"skipping {size:,} bytes: past --max-seconds")
                continue
            label = f"{size // 1024}k"
            log(f"body size {size:,} bytes")
            seeded = seed(label=label, size=size, events=args.events, ordinary=args.ordinary, taken=args.taken)
            batches, finished = run_batches(seeded, deadline)
            memory = peak_memory_of_one_batch(seeded) if finished and time.monotonic() < deadline else None
            row = summary(size, batches, finished, memory, args.ordinary)
            report["results"].append(row)
            log(
                f"  {row['batches']} batches, wall median {row['wall_s_median']:.2f} s, max {row['wall_s_max']:.2f} s"
                if batches
                else "  no batch ran"
            )
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_table(report)
        return 0
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            recreate_database(admin_url, args.database_name, create=False)


if __name__ == "__main__":
    sys.exit(main())
