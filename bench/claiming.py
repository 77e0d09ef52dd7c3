"""Claiming at scale: one ``claim_due_deliveries(limit)`` round with thousands of destinations.

Creates (or recreates) its own database (default ``hookline_bench_claiming``), migrates it,
and grows the number of active destinations step by step (default 100, 1,000, 10,000; ten
per organization). At each step it measures one claim round (median/p95 over --rounds,
the claimed deliveries released after each round) in these scenarios:

  ordinary         no backlog: --others due deliveries spread over N/2 destinations
  backlog, K=...   one destination has --backlog due deliveries, older than anything else,
                   and max_concurrency --max-concurrency, all of it in flight already (a slow
                   receiver): the first look (limit*4 oldest candidates) finds only it, so the
                   fallback looks for other destinations with due deliveries; K of the others
                   have due deliveries (--others in all, at least one each)
  paused backlog   the same backlog, its destination paused (circuit breaker), K=10

Every scenario also has one more destination with --future pending deliveries that are
not due yet (a failing receiver in back-off), and --backing-off destinations with one such
delivery each (default none). For the fallback, the queries that choose the
destinations (those before it locks them) are EXPLAIN ANALYZEd once per scenario.

    .venv/bin/python bench/claiming.py [--destinations 100,1000,10000] [--backlog 50000]
        [--others 300] [--limit 32] [--rounds 30] [--max-seconds 110] [--json] [--keep]

Bounded: at most 20,000 destinations and 200,000 backlog deliveries; measuring stops at
--max-seconds; the database is dropped at the end unless --keep. Only the local PostgreSQL
is used (and Redis only by Django's settings, never written to).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

# The environment every bench sets up for Django (bench/ is on sys.path when run as a script).
from dashboard import configure_environment

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DESTINATIONS_PER_ORGANIZATION = 10
MAX_DESTINATIONS = 20_000
MAX_BACKLOG = 200_000
BENCH_WHSEC = "whsec_bench_"  # signing secrets of the seeded sources and destinations: never used


def log(message: str) -> None:
    # Progress goes to stderr so that --json leaves stdout with one object.
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destinations", default="100,1000,10000", help="comma-separated, increasing")
    parser.add_argument("--backlog", type=int, default=50_000, help="due deliveries of the one slow destination")
    parser.add_argument("--max-concurrency", type=int, default=5, help="the slow destination's cap (all in flight)")
    parser.add_argument("--others", type=int, default=300, help="due deliveries at the other destinations")
    parser.add_argument("--future", type=int, default=10_000, help="pending, not yet due, at one destination")
    parser.add_argument(
        "--backing-off", type=int, default=0, help="destinations with one pending delivery not due yet (back-off)"
    )
    parser.add_argument("--limit", type=int, default=32, help="claim_due_deliveries(limit): the free threads")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--scenarios", default="", help="comma-separated subset: ordinary,k0,k10,khalf,paused")
    parser.add_argument("--max-seconds", type=float, default=110)
    parser.add_argument("--db-name", default=os.environ.get("BENCH_DB_NAME", "hookline_bench_claiming"))
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/postgres")
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://localhost:6379/14",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--plans", action="store_true", help="print the fallback's EXPLAIN ANALYZE to stderr")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    try:
        args.destinations = [int(n) for n in args.destinations.split(",") if n.strip()]
    except ValueError:
        parser.error("--destinations takes comma-separated numbers")
    if not args.destinations or args.destinations != sorted(args.destinations) or args.destinations[0] < 20:
        parser.error("--destinations must be increasing, each at least 20")
    if args.destinations[-1] > MAX_DESTINATIONS or not 0 <= args.backlog <= MAX_BACKLOG:
        parser.error(f"at most {MAX_DESTINATIONS:,} destinations and {MAX_BACKLOG:,} backlog deliveries")
    if not 0 < args.limit <= 256 or not 0 < args.rounds <= 500 or args.others < 0 or not 0 <= args.future <= 100_000:
        parser.error("0 < --limit <= 256, 0 < --rounds <= 500, --others >= 0, 0 <= --future <= 100000")
    if not 0 <= args.backing_off <= args.destinations[0]:
        parser.error("0 <= --backing-off <= the smallest --destinations")
    if args.backlog and args.backlog < 4 * args.limit:
        parser.error("--backlog must fill the first look (4 * --limit) for the fallback to run")
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()} or {
        "ordinary",
        "k0",
        "k10",
        "khalf",
        "paused",
    }
    if not args.scenarios <= {"ordinary", "k0", "k10", "khalf", "paused"}:
        parser.error("--scenarios takes ordinary,k0,k10,khalf,paused")
    for url in (args.database_url, args.redis_url):
        if urllib.parse.urlsplit(url).hostname not in ("localhost", "127.0.0.1"):
            parser.error(f"{url}: the benchmark only talks to this machine")
    return args


def database_urls(base_url: str, name: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}")), urllib.parse.urlunsplit(
        parts._replace(path="/postgres")
    )


def recreate_database(admin_url: str, name: str, *, create: bool = True) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class World:
    """The seeded database: organizations, destinations, a pool of events, and the deliveries."""

    def __init__(self) -> None:
        from django.db import connection

        self.connection = connection
        self.destination_ids: list[int] = []  # the ordinary ones, in creation order
        self.backlog_id: int | None = None
        self.future_id: int | None = None
        self.source_id: int | None = None
        self.other_events = 0

    def sql(self, statement: str, params=None) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params)

    def grow(self, count: int) -> None:
        """Up to ``count`` ordinary destinations (plus the backlog and the back-off ones)."""
        from organizations.models import Organization
        from webhooks.models import Destination, Source

        first = len(self.destination_ids)
        if self.source_id is None:
            organization = Organization.objects.create(name="Bench slow", slug="bench-slow")
            self.source_id = Source.objects.create(
                organization=organization, provider="stripe", name="Bench", secret=BENCH_WHSEC + "bench"
            ).pk
            self.backlog_id = Destination.objects.create(
                organization=organization, name="slow", url="http://127.0.0.1:9/slow", secret=BENCH_WHSEC + "slow"
            ).pk
            self.future_id = Destination.objects.create(
                organization=organization, name="backing off", url="http://127.0.0.1:9/off", secret=BENCH_WHSEC + "off"
            ).pk
        organizations = Organization.objects.bulk_create(
            Organization(name=f"Bench {n}", slug=f"bench-{n}")
            for n in range(first // DESTINATIONS_PER_ORGANIZATION, -(-count // DESTINATIONS_PER_ORGANIZATION))
        )
        by_number = {int(o.slug.rsplit("-", 1)[1]): o for o in organizations}
        created = Destination.objects.bulk_create(
            (
                Destination(
                    organization=by_number[n // DESTINATIONS_PER_ORGANIZATION],
                    name=f"App {n}",
                    url=f"http://127.0.0.1:9/{n}",
                    secret=f"{BENCH_WHSEC}app_{n}",
                )
                for n in range(first, count)
            ),
            batch_size=2000,
        )
        self.destination_ids.extend(d.pk for d in created)

    def ensure_events(self, backlog: int, others: int, future: int) -> None:
        """The events the deliveries point at (made once; a delivery needs one per destination)."""
        wanted = {"bl": backlog, "ot": others, "fu": max(future, 1)}
        for prefix, count in wanted.items():
            self.sql(
                """
                INSERT INTO webhooks_webhookevent (id, organization_id, source_id, provider_event_id, event_type,
                    body, headers, remote_ip, status, rejection_code, rejection_detail, duplicate_count,
                    received_at, processed_at)
                SELECT gen_random_uuid(), s.organization_id, s.id, %s || '_' || g, 'invoice.paid',
                    convert_to('{"id":"' || %s || '_' || g || '","type":"invoice.paid"}', 'UTF8'),
                    '{"content-type": "application/json"}'::jsonb, '192.0.2.10', 'processed', '', '', 0,
                    now(), now()
                FROM webhooks_source s, generate_series(1, %s) AS g
                WHERE s.id = %s
                """,
                [prefix, prefix, count, self.source_id],
            )

    def reset_deliveries(
        self, *, backlog: int, max_concurrency: int, others: int, spread: list[int], future: int, backing_off: list[int]
    ):
        """All deliveries replaced: the slow destination's backlog (its cap's worth in flight),
        ``others`` due deliveries spread over ``spread``, ``future`` not due yet at one destination,
        and one not due yet at each of ``backing_off``."""
        self.sql("DELETE FROM webhooks_delivery")
        self.sql(
            "UPDATE webhooks_destination SET max_concurrency = %s, paused_at = NULL WHERE id = %s",
            [max_concurrency, self.backlog_id],
        )
        insert = """
            INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
                attempt_count, manual_attempts, next_attempt_at, claimed_at, last_error, created_at)
            SELECT gen_random_uuid(), d.organization_id, e.id, d.id, false, {status}, {attempts}, 0, {due},
                {claimed}, '', now()
            FROM webhooks_webhookevent e
            JOIN LATERAL (SELECT split_part(e.provider_event_id, '_', 2)::int AS g) n ON true
            JOIN webhooks_destination d ON d.id = {destination}
            WHERE e.provider_event_id LIKE %s AND n.g <= %s
        """
        if backlog:
            # Older than anything else due, one every 50 ms from an hour and a bit ago.
            self.sql(
                insert.format(
                    status="CASE WHEN n.g <= %s THEN 'in_flight' ELSE 'pending' END",
                    attempts="CASE WHEN n.g <= %s THEN 1 ELSE 0 END",
                    due="now() - interval '1 hour' - (%s - n.g) * interval '50 milliseconds'",
                    claimed="CASE WHEN n.g <= %s THEN now() ELSE NULL END",
                    destination="%s",
                ),
                [max_concurrency, max_concurrency, backlog, max_concurrency, self.backlog_id, "bl\\_%", backlog],
            )
        if future:
            self.sql(
                insert.format(
                    status="'pending'",
                    attempts="3",
                    due="now() + interval '1 hour' + n.g * interval '10 milliseconds'",
                    claimed="NULL",
                    destination="%s",
                ),
                [self.future_id, "fu\\_%", future],
            )
        if backing_off:
            self.sql(
                """
                INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
                    attempt_count, manual_attempts, next_attempt_at, claimed_at, last_error, created_at)
                SELECT gen_random_uuid(), d.organization_id, e.id, d.id, false, 'pending', 2, 0,
                    now() + interval '30 minutes', NULL, '', now()
                FROM webhooks_destination d, webhooks_webhookevent e
                WHERE d.id = ANY(%s::bigint[]) AND e.provider_event_id = 'fu_1'
                """,
                [backing_off],
            )
        if others and spread:
            # Due within the last half hour: younger than the whole backlog.
            self.sql(
                insert.format(
                    status="'pending'",
                    attempts="0",
                    due="now() - (n.g %% 1800) * interval '1 second' - n.g * interval '1 millisecond'",
                    claimed="NULL",
                    destination="(%s::bigint[])[1 + n.g %% %s]",
                ),
                [spread, len(spread), "ot\\_%", others],
            )
        self.sql("VACUUM ANALYZE webhooks_delivery")
        self.sql("ANALYZE webhooks_destination")

    def pause_backlog(self) -> None:
        self.sql("UPDATE webhooks_destination SET paused_at = now() WHERE id = %s", [self.backlog_id])


def spread_over(ids: list[int], k: int) -> list[int]:
    """``k`` of ``ids``, evenly spaced."""
    if k <= 0:
        return []
    step = len(ids) / k
    return [ids[int(i * step)] for i in range(k)]


def measure(limit: int, rounds: int, deadline: float) -> dict:
    """Median/p95 of one claim round, the fallback's share, and the fallback's first query."""
    from django.db import connection
    from django.db.models import F
    from django.test.utils import CaptureQueriesContext

    from webhooks.models import Delivery
    from webhooks.services import delivery as delivery_service

    real_fallback = delivery_service._choose_from_other_destinations
    fallback = {"seconds": 0.0, "calls": 0, "choice_queries": None}

    def timed_fallback(*args, **kwargs):
        seen = len(connection.queries_log)
        started = time.perf_counter()
        try:
            return real_fallback(*args, **kwargs)
        finally:
            fallback["seconds"] += time.perf_counter() - started
            fallback["calls"] += 1
            if fallback["choice_queries"] is None and len(connection.queries_log) > seen:
                # The queries that choose the destinations: those before the first lock.
                fallback["choice_queries"] = list(
                    itertools.takewhile(
                        lambda sql: "FOR NO KEY UPDATE" not in sql,
                        (query["sql"] for query in list(connection.queries_log)[seen:]),
                    )
                )

    def release(claimed) -> None:
        Delivery.objects.filter(pk__in=[d.pk for d in claimed]).update(
            status=Delivery.Status.PENDING, claimed_at=None, attempt_count=F("attempt_count") - 1
        )

    delivery_service._choose_from_other_destinations = timed_fallback
    try:
        # One round with the queries captured: their count, and the fallback's SQL.
        with CaptureQueriesContext(connection) as captured:
            claimed = delivery_service.claim_due_deliveries(limit)
        release(claimed)
        queries, choice_queries = len(captured.captured_queries), fallback["choice_queries"] or []
        claimed_counts, totals, fallback_ms = [], [], []
        for run in range(rounds + 3):
            if time.monotonic() > deadline:
                break
            fallback["seconds"], fallback["calls"] = 0.0, 0
            started = time.perf_counter()
            claimed = delivery_service.claim_due_deliveries(limit)
            elapsed = (time.perf_counter() - started) * 1000
            release(claimed)
            if run < 3:
                continue  # warm-up
            totals.append(elapsed)
            fallback_ms.append(fallback["seconds"] * 1000 if fallback["calls"] else None)
            claimed_counts.append(len(claimed))
    finally:
        delivery_service._choose_from_other_destinations = real_fallback
    if not totals:
        return {}
    totals.sort()
    used = [ms for ms in fallback_ms if ms is not None]
    result = {
        "rounds": len(totals),
        "median_ms": statistics.median(totals),
        "p95_ms": totals[min(len(totals) - 1, int(0.95 * len(totals)))],
        "fallback_median_ms": statistics.median(used) if used else None,
        "claimed": max(claimed_counts),
        "queries": queries,
        "explain_ms": None,
        "choice_queries": 0,
        "plan": None,
    }
    # TIMING OFF: per-node clocks would add more to the walk's thousands of small steps than to
    # one scan; the execution time stays honest, the plan keeps its rows and loops.
    plans, explain_ms = [], 0.0
    with connection.cursor() as cursor:
        for sql in choice_queries:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql)
            plan = [row[0] for row in cursor.fetchall()]
            plans.extend(plan)
            explain_ms += next(
                (float(line.split(":")[1].split()[0]) for line in plan if line.startswith("Execution Time")), 0.0
            )
    if choice_queries:
        result.update(plan=plans, explain_ms=explain_ms, choice_queries=len(choice_queries))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    database_url, admin_url = database_urls(args.database_url, args.db_name)
    log(f"recreating database {args.db_name}")
    recreate_database(admin_url, args.db_name)
    report = {
        "config": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg()[0],
            "limit": args.limit,
            "backlog": args.backlog,
            "max_concurrency": args.max_concurrency,
            "others": args.others,
            "future": args.future,
            "backing_off": args.backing_off,
            "rounds": args.rounds,
        },
        "results": [],
    }
    try:
        configure_environment(database_url, args.redis_url)
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True, timeout=300)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.db import connection

        settings.DEBUG = False
        server = connection.cursor().connection.info.server_version
        report["config"]["postgresql"] = server
        world = World()
        world.grow(0)
        world.ensure_events(args.backlog, max(args.others, args.destinations[-1] // 2), args.future)
        stopped = False
        for count in args.destinations:
            if stopped:
                break
            log(f"{count:,} destinations")
            world.grow(count)
            ids = world.destination_ids
            scenarios = []
            if "ordinary" in args.scenarios:
                scenarios.append(("ordinary", 0, count // 2, False))
            for key, k in (("k0", 0), ("k10", 10), ("khalf", count // 2)):
                if key in args.scenarios:
                    scenarios.append((f"backlog, K={k:,}", args.backlog, k, False))
            if "paused" in args.scenarios:
                scenarios.append(("paused backlog, K=10", args.backlog, 10, True))
            for label, backlog, k, paused in scenarios:
                if time.monotonic() > deadline:
                    log("stopping: --max-seconds reached")
                    stopped = True
                    break
                others = max(args.others, k) if k else 0
                world.reset_deliveries(
                    backlog=backlog,
                    max_concurrency=args.max_concurrency,
                    others=others,
                    spread=spread_over(ids, k),
                    future=args.future,
                    backing_off=spread_over(ids[::-1], args.backing_off),
                )
                if paused:
                    world.pause_backlog()
                result = measure(args.limit, args.rounds, deadline)
                if not result:
                    stopped = True
                    break
                result.update(destinations=count + 2, scenario=label, due_elsewhere=others, with_due=min(k, others))
                report["results"].append(result)
                log(
                    f"  {label}: median {result['median_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
                    f"claimed {result['claimed']}"
                )
                if args.plans and result["plan"]:
                    log("    " + "\n    ".join(result["plan"]))
        from django.db import connections

        connections.close_all()
    finally:
        if not args.keep:
            recreate_database(admin_url, args.db_name, create=False)
            log(f"dropped {args.db_name}")
    if args.json:
        for result in report["results"]:
            result["plan"] = "\n".join(result["plan"] or [])
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


def print_table(report: dict) -> None:
    config = report["config"]
    print(
        f"\nOne claim_due_deliveries({config['limit']}) round; backlog {config['backlog']:,} due at one destination "
        f"(max_concurrency {config['max_concurrency']}, all in flight); {config['future']:,} not due at another; "
        f"{config.get('backing_off', 0):,} destinations backing off (one not due each); "
        f"{config['rounds']} rounds; PostgreSQL {config.get('postgresql')}"
    )
    print(
        "| destinations | scenario | due elsewhere (destinations) | median ms | p95 ms | fallback ms | "
        "choice EXPLAIN ms | claimed | queries |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["results"]:
        fallback = "-" if r["fallback_median_ms"] is None else f"{r['fallback_median_ms']:.1f}"
        explain = "-" if r["explain_ms"] is None else f"{r['explain_ms']:.1f}"
        print(
            f"| {r['destinations']:,} | {r['scenario']} | {r['due_elsewhere']:,} ({r['with_due']:,}) | "
            f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {fallback} | {explain} | {r['claimed']} | {r['queries']} |"
        )


if __name__ == "__main__":
    sys.exit(main())
