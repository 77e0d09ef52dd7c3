"""Deleting a large organization from the admin: the confirmation page, the request, the background deletion.

Creates (or recreates) its own database, migrates it, seeds one organization with N events
(default 25,000), each with a delivery and an attempt, and a small second organization that
must survive, then with Django's test client: renders the admin's delete confirmation page,
posts the confirmation, and runs the background deletion (``organization_deletion_run``, as
the Celery task does) until the organization is gone. Prints the time, queries and size of
the page, the time and queries of the request, and the deletion's total time and its
transactions (the longest one is what other writers may wait for).

    .venv/bin/python bench/organization_deletion.py [--events 25000] [--database-name NAME] [--keep]

Bounded by the number of events; the database is dropped at the end unless --keep. Only the
local PostgreSQL and Redis are used.
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
    add_connection_arguments,
    configure_environment,
    database_urls,
    log,
    migrate_and_set_up_django,
    recreate_database,
)

SEED_BATCH = 5000
BENCH_SOURCE_SECRET = "whsec_" + "bench" * 4  # signs nothing: no request is sent


def seed_tenant(name: str, slug: str, events: int):
    from organizations.services import organization_create
    from webhooks.models import Delivery, DeliveryAttempt, WebhookEvent
    from webhooks.services.destinations import destination_create
    from webhooks.services.sources import source_create

    organization = organization_create(name=name, slug=slug, owner_email=f"owner@{slug}.example")
    source, _ = source_create(
        organization=organization, provider="stripe", name="live", secret=BENCH_SOURCE_SECRET, options={}
    )
    destination, _ = destination_create(
        organization=organization, name="endpoint", url="http://127.0.0.1:9/hooks", sources=[source]
    )
    body = b'{"id": "evt", "object": "event", "type": "invoice.paid", "data": "' + b"x" * 400 + b'"}'
    for start in range(0, events, SEED_BATCH):
        created = WebhookEvent.objects.bulk_create(
            WebhookEvent(
                organization=organization,
                source=source,
                provider_event_id=f"evt_{start + number}",
                event_type="invoice.paid",
                body=body,
                status=WebhookEvent.Status.PROCESSED,
            )
            for number in range(min(SEED_BATCH, events - start))
        )
        deliveries = Delivery.objects.bulk_create(
            Delivery(
                organization=organization,
                event=event,
                destination=destination,
                status=Delivery.Status.SUCCEEDED,
                attempt_count=1,
            )
            for event in created
        )
        DeliveryAttempt.objects.bulk_create(
            DeliveryAttempt(
                organization=organization, delivery=delivery, attempt_number=1, response_status=200, duration_ms=5
            )
            for delivery in deliveries
        )
    return organization


class TransactionClock:
    """How long each transaction lasts (outermost atomic blocks, and statements run in autocommit), and
    how many statements ran."""

    def __init__(self, connection) -> None:
        from django.db import transaction

        self.connection = connection
        self.spans: list[float] = []
        self.statements = 0
        self._atomic = transaction.Atomic
        self._enter, self._exit = transaction.Atomic.__enter__, transaction.Atomic.__exit__
        self._opened: float | None = None

    def __enter__(self):
        clock = self

        def enter(atomic):
            if not clock.connection.in_atomic_block:
                clock._opened = time.monotonic()
            return clock._enter(atomic)

        def exit_(atomic, *exc):
            result = clock._exit(atomic, *exc)
            if not clock.connection.in_atomic_block and clock._opened is not None:
                clock.spans.append(time.monotonic() - clock._opened)
                clock._opened = None
            return result

        self._atomic.__enter__, self._atomic.__exit__ = enter, exit_
        self._wrapper = self.connection.execute_wrapper(self._autocommit)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        self._wrapper.__exit__(*exc)
        self._atomic.__enter__, self._atomic.__exit__ = self._enter, self._exit

    def _autocommit(self, execute, sql, params, many, context):
        self.statements += 1
        if self.connection.in_atomic_block:
            return execute(sql, params, many, context)
        started = time.monotonic()
        try:
            return execute(sql, params, many, context)
        finally:
            self.spans.append(time.monotonic() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=25_000)
    parser.add_argument("--database-name", default="hookline_bench_organization_deletion")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)

    database_url, admin_url = database_urls(args.database_url, args.database_name)
    log(f"recreating database {args.database_name}")
    recreate_database(admin_url, args.database_name)
    try:
        configure_environment(database_url, args.redis_url, public_base_url="http://testserver")
        migrate_and_set_up_django()
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext
        from django.urls import reverse

        from organizations.models import Organization
        from webhooks.models import WebhookEvent
        from webhooks.services.organization_deletion import organization_deletion_run

        started = time.monotonic()
        big = seed_tenant("Big", "big", args.events)
        other = seed_tenant("Other", "other", 100)
        log(f"seeded {args.events:,} events, deliveries and attempts in {time.monotonic() - started:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

        client = Client()
        client.force_login(get_user_model().objects.create_superuser("root@bench.example", "bench-password-" + "x" * 8))
        url = reverse("admin:organizations_organization_delete", args=[big.pk])

        with CaptureQueriesContext(connection) as queries:
            started = time.monotonic()
            response = client.get(url)
            page_seconds = time.monotonic() - started
        assert response.status_code == 200, response.status_code
        print(
            f"confirmation page: {page_seconds:.2f} s, {len(queries)} queries, {len(response.content) / 1024:,.0f} KiB"
        )

        with TransactionClock(connection) as clock, CaptureQueriesContext(connection) as queries:
            started = time.monotonic()
            response = client.post(url, {"post": "yes"})
            request_seconds = time.monotonic() - started
        assert response.status_code == 302, response.status_code
        print(
            f"confirmed request: {request_seconds:.2f} s, {len(queries)} queries, "
            f"longest transaction {max(clock.spans) * 1000:.0f} ms"
        )

        with TransactionClock(connection) as clock:
            started = time.monotonic()
            runs = 0
            while True:
                runs += 1
                if organization_deletion_run(organization_id=big.pk).finished:
                    break
            deletion_seconds = time.monotonic() - started
        spans = clock.spans
        print(
            f"background deletion: {deletion_seconds:.2f} s in {runs} run(s), {clock.statements} queries, "
            f"{len(spans)} transactions (statements in autocommit included): longest {max(spans) * 1000:.0f} ms, "
            f"median {statistics.median(spans) * 1000:.1f} ms, p99 {sorted(spans)[int(len(spans) * 0.99)] * 1000:.0f} ms"
        )
        assert not Organization.objects.filter(pk=big.pk).exists()
        assert not WebhookEvent.objects.filter(organization_id=big.pk).exists()
        assert WebhookEvent.objects.filter(organization=other).count() == 100
        print("the organization is gone, the other one keeps its 100 events")
        return 0
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            recreate_database(admin_url, args.database_name, create=False)


if __name__ == "__main__":
    sys.exit(main())
