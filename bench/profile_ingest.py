"""Where an ingest request spends its time: cProfile over Django's test Client, against PostgreSQL and Redis.

Uses the benchmark's database and Redis DB (see bench/ingest.py), runs the whole
Django stack in-process (middleware, URL resolution, DRF view, service), and prints
the top functions by cumulative and own time, plus the SQL statements and Redis
commands one request makes.

    .venv/bin/python bench/profile_ingest.py [--requests 2000] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ingest as bench  # noqa: E402  (bench/ingest.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", bench.parse_args([]).database_url)
    )
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://localhost:6379/14"))
    options = parser.parse_args()

    args = bench.parse_args(["--database-url", options.database_url, "--redis-url", options.redis_url])
    bench.ensure_database(args.database_url)
    bench.flush_redis(args.redis_url)
    os.environ.update(bench.server_env(args))
    os.chdir(ROOT)

    import django

    django.setup()
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client

    from organizations.models import Organization
    from webhooks.services.sources import source_create

    bench.manage(args, "migrate", "--noinput")
    organization, _ = Organization.objects.get_or_create(slug="bench-profile", defaults={"name": "Bench profile"})
    secret = "whsec_bench_profile"
    source, _ = source_create(organization=organization, provider="stripe", name="profile", secret=secret, options={})
    path = f"/in/{source.ingest_token}/"
    template = bench.body_template()
    run_id = f"evt_profile_{int(time.time())}_"
    _, _, signed = bench.sign_requests(secret, run_id, options.requests + 401)
    bodies = [((template[0] + event_id + template[1]).encode(), sig) for event_id, sig in signed]
    client = Client(HTTP_HOST="127.0.0.1")

    def post(n: int):
        body, sig = bodies[n]
        response = client.post(path, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=sig)
        assert response.status_code == 200, response.content
        return response

    for n in range(100):  # warm caches, imports, the connection
        post(n)

    # One request's SQL and Redis traffic.
    redis_client = cache.client.get_client()  # django-redis
    calls_before = _redis_calls(redis_client)
    # (CaptureQueriesContext would miss them: request_started resets the query log.)
    queries: list[tuple[str, float]] = []

    def record(execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((sql, (time.perf_counter() - began) * 1000))

    with connection.execute_wrapper(record):
        post(100)
        one_request = list(queries)
        for n in range(101, 201):
            post(n)
    sql_ms = sum(ms for _, ms in queries[len(one_request) :]) / 100
    redis_delta = {k: v - calls_before.get(k, 0) for k, v in _redis_calls(redis_client).items()}
    redis_delta = {k: v for k, v in redis_delta.items() if v and k not in ("info",)}

    # Wall time without the profiler, then with it.
    started = time.perf_counter()
    for n in range(201, 401):
        post(n)
    plain_ms = (time.perf_counter() - started) / 200 * 1000

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for n in range(401, 401 + options.requests):
        post(n)
    profiler.disable()
    profiled_ms = (time.perf_counter() - started) / options.requests * 1000

    print(f"ingest in-process (test Client): {plain_ms:.2f} ms/request without profiler, {profiled_ms:.2f} with")
    print(f"SQL per request: {len(one_request)} statements, {sql_ms:.2f} ms in all (mean of 100 requests)")
    for sql, ms in one_request:
        print(f"  {ms:6.2f} ms  {sql[:150]}")
    print(f"Redis commands per request (server-wide commandstats delta): {redis_delta or 'none'}")
    for sort in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(sort).print_stats(options.top)
        print(f"\n=== top {options.top} by {sort} ===")
        print("\n".join(out.getvalue().splitlines()[5:]))
    return 0


def _redis_calls(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


if __name__ == "__main__":
    sys.exit(main())
