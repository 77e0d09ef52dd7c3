"""Seed a 2,000,000-event tenant (5 sources, 8 destinations, ~2.5M deliveries, ~2.9M attempts) next to a
smaller one, into an already-migrated database, with bench/seeding.py's ``INSERT … SELECT generate_series``.

    DATABASE_URL=postgres://…/hookline_scale .venv/bin/python bench/big_tenant.py [--events 2000000]

Used for the twenty-first session's measurements in docs/dashboard-bench.md (pages were then timed by
hand). Deliveries: one per accepted event to destination g % 8, a second one for every fourth event;
about 1 % of the first ones dead after 3 attempts, 1 in 500 retrying (1 failed attempt, due later), the
last 200 events' deliveries pending; one in five succeeded on a second attempt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.seeding import (  # noqa: E402
    SERIES,
    UUID7_SQL,
    insert_in_chunks,
    log,
    spread_over_30_days,
    sql_array,
    stripe_events_sql,
)


def tenant(slug: str, sources: int, destinations: int):
    from organizations.services import organization_create
    from webhooks.services.destinations import destination_create
    from webhooks.services.sources import source_create

    organization = organization_create(name=slug.title(), slug=slug, owner_email=f"owner@{slug}.example")
    source_list = [
        source_create(organization=organization, provider="stripe", name=f"Stripe {n}", secret=f"whsec_{slug}_{n}")[0]
        for n in range(sources)
    ]
    destination_list = [
        destination_create(
            organization=organization, name=f"App {n}", url=f"http://127.0.0.1:9/{n}", sources=source_list
        )[0]
        for n in range(destinations)
    ]
    return organization, source_list, destination_list


def statements(*, events: int, sources: list, destinations: list, salt: int) -> list[str]:
    source_ids = sql_array(str(s.pk) for s in sources)
    destination_ids = sql_array(str(d.pk) for d in destinations)
    ns, nd = len(sources), len(destinations)
    ts = spread_over_30_days(events)

    def uid(k: int) -> str:
        # bigint: a salt of 3 or more times 10^9 overflows an integer.
        return UUID7_SQL.format(ts=ts, n="g", salt=f"{salt + k}::bigint")

    recent = f"g > {events} - 200"
    dead = "g % 200 = 7"
    retrying = "g % 500 = 11"
    accepted = "g % 100 <> 0"
    events_sql = stripe_events_sql(
        event_id=uid(0), source_ids=source_ids, source_count=ns, ts=ts, provider_id_prefix=f"evt_{salt}_"
    )
    delivery_insert = """
        INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
            attempt_count, next_attempt_at, last_status_code, last_error, created_at, completed_at)
    """
    first_sql = f"""{delivery_insert}
        SELECT {uid(1)}, %s, {uid(0)}, ({destination_ids})[1 + g % {nd}], false,
            CASE WHEN {recent} THEN 'pending' WHEN {dead} THEN 'dead' WHEN {retrying} THEN 'pending'
                ELSE 'succeeded' END,
            CASE WHEN {recent} THEN 0 WHEN {dead} THEN 3 WHEN {retrying} THEN 1 WHEN g % 5 = 0 THEN 2 ELSE 1 END,
            CASE WHEN {recent} THEN {ts} WHEN {dead} THEN NULL
                WHEN {retrying} THEN now() + (g % 3600) * interval '1 second' ELSE NULL END,
            CASE WHEN {recent} THEN NULL WHEN {dead} OR {retrying} THEN 503 ELSE 200 END,
            CASE WHEN ({dead} OR {retrying}) AND NOT {recent} THEN 'HTTP 503' ELSE '' END,
            {ts},
            CASE WHEN {recent} OR {retrying} THEN NULL ELSE {ts} + interval '120 milliseconds' END
        FROM {SERIES}
        WHERE {accepted}
    """
    second_sql = f"""{delivery_insert}
        SELECT {uid(3)}, %s, {uid(0)}, ({destination_ids})[1 + (g + 3) % {nd}], false,
            CASE WHEN g % 400 = 8 THEN 'dead' ELSE 'succeeded' END, 1, NULL,
            CASE WHEN g % 400 = 8 THEN 410 ELSE 200 END,
            CASE WHEN g % 400 = 8 THEN 'HTTP 410' ELSE '' END,
            {ts}, {ts} + interval '90 milliseconds'
        FROM {SERIES}
        WHERE {accepted} AND g % 4 = 0 AND NOT {recent}
    """
    attempt_insert = """
        INSERT INTO webhooks_deliveryattempt (id, organization_id, delivery_id, attempt_number, started_at,
            duration_ms, request_headers, response_status, response_body, error)
    """
    first_attempts = f"""{attempt_insert}
        SELECT {uid(2)}, %s, {uid(1)}, 1, {ts}, 40 + g % 200, '{{}}'::jsonb,
            CASE WHEN {dead} OR {retrying} OR g % 5 = 0 THEN 503 ELSE 200 END,
            CASE WHEN {dead} OR {retrying} OR g % 5 = 0 THEN 'upstream unavailable' ELSE 'ok' END, ''
        FROM {SERIES}
        WHERE {accepted} AND NOT {recent}
    """
    later_attempts = f"""{attempt_insert}
        SELECT {uid(4)}, %s, {uid(1)}, 2, {ts} + interval '1 minute', 40 + g % 200, '{{}}'::jsonb,
            CASE WHEN {dead} THEN 503 ELSE 200 END,
            CASE WHEN {dead} THEN 'upstream unavailable' ELSE 'ok' END, ''
        FROM {SERIES}
        WHERE {accepted} AND NOT {recent} AND ({dead} OR g % 5 = 0);
        {attempt_insert}
        SELECT {uid(5)}, %s, {uid(1)}, 3, {ts} + interval '6 minutes', 30000, '{{}}'::jsonb, NULL, '',
            'timed out after 30 s'
        FROM {SERIES}
        WHERE {accepted} AND NOT {recent} AND {dead}
    """
    second_attempts = f"""{attempt_insert}
        SELECT {uid(6)}, %s, {uid(3)}, 1, {ts}, 35 + g % 150, '{{}}'::jsonb,
            CASE WHEN g % 400 = 8 THEN 410 ELSE 200 END,
            CASE WHEN g % 400 = 8 THEN 'gone' ELSE 'ok' END, ''
        FROM {SERIES}
        WHERE {accepted} AND g % 4 = 0 AND NOT {recent}
    """
    return [events_sql, first_sql, second_sql, first_attempts, second_attempts, later_attempts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--small-events", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=1800)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connection

    deadline = time.monotonic() + args.max_seconds
    started = time.monotonic()
    for slug, count, ns, nd, salt in (("big", args.events, 5, 8, 0), ("small", args.small_events, 2, 2, 10)):
        organization, sources, destinations = tenant(slug, ns, nd)
        sql = statements(events=count, sources=sources, destinations=destinations, salt=salt)
        # later_attempts holds two INSERTs, each taking the organization's id and the series bounds.
        simple, (double,) = sql[:-1], sql[-1:]
        insert_in_chunks(
            statements=simple, organization_id=organization.pk, count=count, chunk=250_000, deadline=deadline
        )
        with connection.cursor() as cursor:
            for first in range(1, count + 1, 250_000):
                last = min(first + 249_999, count)
                cursor.execute(double.replace(" % ", " %% "), [organization.pk, first, last] * 2)
        log(f"{slug}: seeded in {time.monotonic() - started:.0f} s")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    log(f"analysed, {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
