"""Where a delivery spends its time: cProfile over the dispatcher, in-process, against PostgreSQL, Redis
and a local receiver.

Runs the worker's own loop (services.delivery.dispatch_due_deliveries: claim, send on its threads,
record) in this process, against the benchmark's database and a Redis DB (flushed), sending to
bench/delivery.py's threaded receiver in a process of its own on 127.0.0.1. Events are fanned out
by the real processing step before each measured round, untimed. Prints, per delivery: the SQL
statements and Redis commands, the process's CPU time without the profiler, and the top functions
by cumulative and own CPU time (each thread's own CPU clock, so that waits for PostgreSQL, the
receiver or a core of a shared machine do not count), the dispatcher's thread and the sending
threads together, with the share spent in Hookline's code, Django, psycopg and urllib3/http.client.

    .venv/bin/python bench/profile_delivery.py [--events 2000] [--top 30] [--receiver-port 0]

Bounded: each round stops after --max-seconds, and the receiver is stopped when it ends.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stack import HOST, PYTHON, production_env, stop_group, wait_for_port  # noqa: E402

FIXTURE = ROOT / "webhooks" / "tests" / "fixtures" / "stripe" / "invoice.paid.json"
BENCH_FERNET_KEY = "q3Yb0mFQ6sWm5b1j8mY0k2fS1xk3bVf3m8y9bq0zQ1Y="  # the benchmark's own database only
SOURCE_SECRET = "whsec_profile"  # the events are made here, never verified: any value does

# Where a function's own time is counted, by the file it is in (first match wins).
SHARES = (
    ("hookline", (str(ROOT / "webhooks"), str(ROOT / "organizations"), str(ROOT / "config"))),
    ("django ORM", ("django/db/models",)),
    ("django other", ("django/",)),
    ("psycopg", ("psycopg",)),
    ("urllib3 / http.client", ("urllib3", "http/client.py", "http/", "email/")),
    ("socket / ssl / selectors", ("socket.py", "ssl.py", "selectors.py", "<method 'recv", "<method 'send")),
    ("redis", ("redis/", "django_redis")),
    ("cryptography (Fernet)", ("cryptography", "fernet")),
    ("threads / waits", ("threading.py", "concurrent/futures", "queue.py", "<method 'acquire")),
)


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="deliveries per measured round")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="sending threads (0: DELIVERY_THREADS)")
    parser.add_argument("--max-concurrency", type=int, default=0, help="the destination's cap (0: model default)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="each round stops after this")
    parser.add_argument("--stats-file", help="also write the merged profile here (pstats format)")
    parser.add_argument("--receiver-port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--database-url",
        default=env("BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/hookline_bench_profile_delivery"),
        help="the profile's own database (created when missing; its events are truncated)",
    )
    parser.add_argument("--redis-url", default=env("BENCH_REDIS_URL", "redis://localhost:6379/13"), help="flushed")
    args = parser.parse_args(argv)
    import urllib.parse

    for url in (args.database_url, args.redis_url):
        if urllib.parse.urlsplit(url).hostname not in ("localhost", "127.0.0.1"):
            parser.error(f"{url}: the profile only talks to this machine")
    if args.events <= 0 or not 0 < args.max_seconds <= 600:
        parser.error("--events must be > 0 and 0 < --max-seconds <= 600")
    return args


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def run(args) -> int:
    import ingest as ingest_bench  # bench/ingest.py: creating the database, flushing Redis

    ingest_bench.ensure_database(args.database_url)
    ingest_bench.flush_redis(args.redis_url)
    port = args.receiver_port or free_port()
    os.environ.update(
        production_env(
            database_url=args.database_url,
            redis_url=args.redis_url,
            secret_key="bench-only-secret-key-" + "x" * 32,
            fernet_key=BENCH_FERNET_KEY,
            web_port=port,
            queue="hookline-bench-profile-delivery",
        )
    )
    os.chdir(ROOT)
    # A SIGTERM (timeout, a kill) ends the run through the finally below, which stops the receiver.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    receiver = subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / "delivery.py"), "_receiver", str(port), "threading"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, receiver)
        return profile(args, port)
    finally:
        stop_group(receiver)
        ingest_bench.flush_redis(args.redis_url)


def profile(args, port: int) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from organizations.models import Organization
    from webhooks.models import Delivery, Destination, WebhookEvent
    from webhooks.services import delivery, processing
    from webhooks.services.destinations import destination_create
    from webhooks.services.sources import source_create

    # No Celery messages: this process is the only dispatcher, and nothing consumes the queue.
    delivery.schedule_dispatch = processing.schedule_dispatch = lambda slot=0: None
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE webhooks_webhookevent CASCADE")
    Destination.objects.update(is_active=False)  # earlier runs' destinations
    organization, _ = Organization.objects.get_or_create(slug="bench-profile", defaults={"name": "Bench profile"})
    run_id = str(int(time.time()))
    source, _ = source_create(
        organization=organization, provider="stripe", name=f"profile {run_id}", secret=SOURCE_SECRET, options={}
    )
    destination, _ = destination_create(
        organization=organization, name=f"receiver {run_id}", url=f"http://{HOST}:{port}/hook", sources=[source]
    )
    if args.max_concurrency:
        Destination.objects.filter(pk=destination.pk).update(max_concurrency=args.max_concurrency)
    destination.refresh_from_db()
    threads = args.threads or settings.DELIVERY_THREADS
    body = FIXTURE.read_bytes()
    headers = {"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=x", "User-Agent": "Stripe/1.0"}

    def fan_out(count: int, prefix: str) -> None:
        WebhookEvent.objects.bulk_create(
            WebhookEvent(
                organization=organization,
                source=source,
                provider_event_id=f"evt_{prefix}_{n}",
                event_type="invoice.paid",
                body=body,
                headers=headers,
                remote_ip="127.0.0.1",
            )
            for n in range(count)
        )
        processing.process_received_events(linger_seconds=0)
        due = Delivery.objects.filter(destination=destination, status=Delivery.Status.PENDING).count()
        assert due == count, f"{due} deliveries due, {count} expected"

    def dispatch(count: int) -> float:
        """Send every due delivery (a run ends at --max-seconds, as in the worker: then another
        starts); the dispatchers' wall time."""
        started = time.perf_counter()
        sent = 0
        while sent < count and time.perf_counter() - started < 4 * args.max_seconds:
            sent += delivery.dispatch_due_deliveries(max_seconds=args.max_seconds, threads=threads, linger_seconds=0)
        elapsed = time.perf_counter() - started
        left = Delivery.objects.filter(destination=destination).exclude(status=Delivery.Status.SUCCEEDED).count()
        assert sent == count and left == 0, f"{sent} sent of {count}, {left} not succeeded"
        return elapsed

    print(
        f"destination max_concurrency {destination.max_concurrency}, {threads} sending threads, "
        f"{args.events} deliveries a round, receiver http.server (threaded) on {HOST}:{port}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start"
    )
    fan_out(200, f"warm{run_id}")
    dispatch(200)  # imports, connections, pools

    # SQL statements and Redis commands of one round (the dispatcher's thread makes every query).
    queries: list[str] = []
    redis_commands: Counter = Counter()
    counting = threading.local()  # inside a pipeline: its commands are one round trip

    def record(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    import redis.client

    original_execute = redis.client.Redis.execute_command
    original_pipeline = redis.client.Pipeline.execute

    def counted_execute(self, *command, **options):
        if not getattr(counting, "inside_pipeline", False):
            redis_commands[str(command[0]).upper()] += 1
        return original_execute(self, *command, **options)

    def counted_pipeline(self, *a, **kw):
        redis_commands["(pipeline)"] += 1
        counting.inside_pipeline = True
        try:
            return original_pipeline(self, *a, **kw)
        finally:
            counting.inside_pipeline = False

    fan_out(args.events, f"count{run_id}")
    redis.client.Redis.execute_command = counted_execute
    redis.client.Pipeline.execute = counted_pipeline
    try:
        with connection.execute_wrapper(record):
            dispatch(args.events)
    finally:
        redis.client.Redis.execute_command = original_execute
        redis.client.Pipeline.execute = original_pipeline
    by_kind = Counter(_kind(sql) for sql in queries)

    # CPU without the profiler: the whole process (dispatcher and sending threads; the receiver
    # is another process).
    fan_out(args.events, f"plain{run_id}")
    cpu_before = time.process_time()
    plain_seconds = dispatch(args.events)
    cpu_ms = (time.process_time() - cpu_before) / args.events * 1000

    # The profile: the dispatcher's thread, and each sending thread's calls of send().
    fan_out(args.events, f"profiled{run_id}")
    thread_profiles: list[cProfile.Profile] = []
    own_profile = threading.local()
    original_send = delivery.send

    def profiled_send(claimed):
        profiler = getattr(own_profile, "profiler", None)
        if profiler is None:
            profiler = own_profile.profiler = cProfile.Profile(time.thread_time)
            thread_profiles.append(profiler)
        profiler.enable()
        try:
            return original_send(claimed)
        finally:
            profiler.disable()

    delivery.send = profiled_send
    main_profiler = cProfile.Profile(time.thread_time)
    try:
        main_profiler.enable()
        profiled_seconds = dispatch(args.events)
        main_profiler.disable()
    finally:
        delivery.send = original_send

    n = args.events
    print(
        f"\nper delivery: {cpu_ms:.2f} ms of process CPU without the profiler "
        f"({n / plain_seconds:.0f} deliveries/s wall, {n / profiled_seconds:.0f}/s profiled; the machine is shared)"
    )
    print(f"SQL per delivery: {len(queries) / n:.2f} statements ({len(queries)} for {n})")
    for kind, count in by_kind.most_common():
        print(f"  {count / n:6.3f}  {kind}")
    total_redis = sum(redis_commands.values())
    print(f"Redis round trips per delivery: {total_redis / n:.3f} ({total_redis} for {n})")
    for command, count in redis_commands.most_common():
        print(f"  {count / n:6.3f}  {command}")

    stats = pstats.Stats(main_profiler, stream=io.StringIO())
    for profiler in thread_profiles:
        stats.add(profiler)
    if args.stats_file:
        stats.dump_stats(args.stats_file)
    print(f"\nown CPU time by library (dispatcher thread + {len(thread_profiles)} sending threads):")
    for name, share in _shares(stats).items():
        print(f"  {share:5.1f} %  {name}")
    for sort in ("cumulative", "tottime"):
        out = io.StringIO()
        stats.stream = out
        stats.sort_stats(sort).print_stats(args.top)
        print(f"\n=== top {args.top} by {sort} ===")
        print("\n".join(out.getvalue().splitlines()[5:]))
    return 0


def _kind(sql: str) -> str:
    """A statement's shape, for counting: its verb and first table."""
    words = sql.split()
    verb = words[0].upper() if words else "?"
    table = next((w.strip('"') for w in words if w.strip('"').startswith(("webhooks_", "organizations_"))), "")
    if verb == "SELECT" and "set_config" in sql:
        return "SELECT set_config(lock_timeout)"
    if verb == "SELECT" and "FOR NO KEY UPDATE" in sql:
        return f"SELECT … FOR NO KEY UPDATE {table}"
    return f"{verb} {table}".strip()


def _shares(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) by where the function is, as a share of the total."""
    totals: Counter = Counter()
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():
        where = f"{filename} {name}"
        label = next((label for label, marks in SHARES if any(mark in where for mark in marks)), "other")
        totals[label] += tottime
    grand = sum(totals.values()) or 1.0
    return {label: 100 * total / grand for label, total in totals.most_common()}


if __name__ == "__main__":
    sys.exit(run(parse_args()))
