"""The retention purge at scale: how long it runs, what ingest and the delivery claim wait meanwhile,
a run killed halfway, de-duplication after the purge, what it must keep, and the space it frees.

Creates (or recreates) its own database, migrates it, and seeds by ``INSERT … SELECT
generate_series`` three organizations with retentions of 7, 30 and 90 days, each with one source
and one destination, their events spread over the last 100 days (a twentieth rejected requests;
the rest processed, each with a delivery and an attempt; one in a thousand still retrying, one in
a thousand still received and one in a thousand dead). Then:

1. runs the purge (``purge_expired_events``) in a child process and kills it (SIGKILL) after
   ``--kill-after`` seconds;
2. runs it again, to the end, in this process, while one thread inserts events through the ingest
   writer (``insert_event_batch``) and another claims due deliveries (``claim_due_deliveries``),
   each timing every call, and a third samples ``pg_locks`` for lock waits;
3. posts again provider ids of purged events (each must be a duplicate of the purged event);
4. checks that nothing still retrying or received was deleted;
5. reads the tables' sizes and dead rows, waits up to ``--vacuum-wait`` seconds for autovacuum,
   runs a plain VACUUM if it did not come (it may be off on a test server), then inserts as many
   events again and reads the sizes once more.

Prints one JSON object. Only the local PostgreSQL and Redis are used; bounded by --max-seconds;
the database is dropped at the end unless --keep.

    .venv/bin/python bench/retention.py [--events 400000] [--kill-after 8] [--vacuum-wait 150]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.organization_deletion import TransactionClock  # noqa: E402
from bench.seeding import (  # noqa: E402
    PYTHON,
    UUID7_SQL,
    add_connection_arguments,
    configure_environment,
    database_urls,
    log,
    migrate_and_set_up_django,
    recreate_database,
)

RETENTIONS = (7, 30, 90)
SPAN_DAYS = 100
CHUNK = 20_000
LIVE_PENDING = 3000  # recent deliveries due now, for the claim loop
TABLES = ("webhooks_webhookevent", "webhooks_delivery", "webhooks_deliveryattempt", "webhooks_purgedeventkey")


def received_at(anchor: str, count: int) -> str:
    return f"('{anchor}'::timestamptz - ({count} - g) * interval '{SPAN_DAYS * 86400 / count:.6f} seconds')"


def seed(organization_index: int, organization_id: int, source_id: int, destination_id: int, count: int) -> None:
    from django.db import connection

    anchor = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ts = received_at(anchor, count)
    event_id = UUID7_SQL.format(ts=ts, n="g", salt=f"{organization_index}::bigint")
    delivery_id = UUID7_SQL.format(ts=ts, n="g", salt=f"{organization_index + 10}::bigint")
    attempt_id = UUID7_SQL.format(ts=ts, n="g", salt=f"{organization_index + 20}::bigint")
    status = "CASE WHEN g % 20 = 0 THEN 'rejected' WHEN g % 1000 = 8 THEN 'received' ELSE 'processed' END"
    events = f"""
        INSERT INTO webhooks_webhookevent (id, organization_id, source_id, provider_event_id, event_type, body,
            headers, remote_ip, status, rejection_code, rejection_detail, duplicate_count, received_at,
            processed_at, processing_error, processing_failures)
        SELECT {event_id}, %s, {source_id}, 'evt_{organization_index}_' || g, 'invoice.paid',
            convert_to(repeat('x', 400), 'UTF8'), '{{"content-type": "application/json"}}', '203.0.113.9',
            {status}, CASE WHEN g % 20 = 0 THEN 'bad_signature' ELSE '' END, '', 0, {ts},
            CASE WHEN g % 20 = 0 OR g % 1000 = 8 THEN NULL ELSE {ts} END, '', 0
        FROM generate_series(%s::bigint, %s::bigint) AS g"""
    delivery_status = "CASE WHEN g % 1000 = 7 THEN 'pending' WHEN g % 1000 = 9 THEN 'dead' ELSE 'succeeded' END"
    deliveries = f"""
        INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
            attempt_count, next_attempt_at, last_status_code, last_error, created_at, completed_at, manual_attempts)
        SELECT {delivery_id}, %s, {event_id}, {destination_id}, false, {delivery_status},
            CASE WHEN g % 1000 = 7 THEN 3 ELSE 1 END,
            CASE WHEN g % 1000 = 7 THEN now() + interval '1 hour' ELSE NULL END,
            CASE WHEN g % 1000 IN (7, 9) THEN 500 ELSE 200 END, '', {ts},
            CASE WHEN g % 1000 = 7 THEN NULL ELSE {ts} END, 0
        FROM generate_series(%s::bigint, %s::bigint) AS g WHERE g % 20 <> 0 AND g % 1000 <> 8"""
    attempts = f"""
        INSERT INTO webhooks_deliveryattempt (id, organization_id, delivery_id, attempt_number, started_at,
            duration_ms, request_headers, response_status, response_body, error)
        SELECT {attempt_id}, %s, {delivery_id}, 1, {ts}, 40, '{{}}', 200, 'ok', ''
        FROM generate_series(%s::bigint, %s::bigint) AS g WHERE g % 20 <> 0 AND g % 1000 <> 8"""
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        for first in range(1, count + 1, CHUNK):
            last = min(first + CHUNK - 1, count)
            for statement in (events, deliveries, attempts):
                cursor.execute(statement.replace(" % ", " %% "), [organization_id, first, last])


def seed_live_pending(organization_id: int, source_id: int, destination_id: int) -> None:
    """Recent events, each with a delivery due now: what the claim loop takes."""
    from django.db import connection

    # One fixed time for both statements, so that the deliveries compute their events' ids.
    anchor = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    ts = f"('{anchor}'::timestamptz + g * interval '1 millisecond')"
    # The SQL uses % as the modulo operator; the driver wants it doubled.
    event_id = UUID7_SQL.format(ts=ts, n="g", salt="7::bigint").replace(" % ", " %% ")
    delivery_id = UUID7_SQL.format(ts=ts, n="g", salt="17::bigint").replace(" % ", " %% ")
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO webhooks_webhookevent (id, organization_id, source_id, provider_event_id, event_type,
                body, headers, status, rejection_code, rejection_detail, duplicate_count, received_at, processed_at,
                processing_error, processing_failures)
            SELECT {event_id}, %s, %s, 'live_' || g, 'invoice.paid', '\\x7b7d', '{{}}', 'processed', '', '', 0,
                {ts}, {ts}, '', 0 FROM generate_series(1, %s) AS g""",
            [organization_id, source_id, LIVE_PENDING],
        )
        cursor.execute(
            f"""INSERT INTO webhooks_delivery (id, organization_id, event_id, destination_id, is_replay, status,
                attempt_count, next_attempt_at, last_error, created_at, manual_attempts)
            SELECT {delivery_id}, %s, {event_id}, %s, false, 'pending', 0, {ts}, '', {ts}, 0
            FROM generate_series(1, %s) AS g""",
            [organization_id, destination_id, LIVE_PENDING],
        )


def table_sizes() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            """SELECT relname, pg_total_relation_size(relid), pg_relation_size(relid), n_live_tup, n_dead_tup,
                      last_autovacuum IS NOT NULL, autovacuum_count
               FROM pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY relname""",
            [list(TABLES)],
        )
        return {
            name: {
                "total_mb": round(total / 2**20, 1),
                "heap_mb": round(heap / 2**20, 1),
                "live_rows": live,
                "dead_rows": dead,
                "autovacuumed": vacuumed,
                "autovacuum_count": count,
            }
            for name, total, heap, live, dead, vacuumed, count in cursor.fetchall()
        }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


class Loop(threading.Thread):
    """Calls ``work`` until stopped, timing each call (ms), on its own database connection."""

    def __init__(self, work) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.timings: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            number = 0
            while not self.stop.is_set():
                number += 1
                started = time.monotonic()
                try:
                    self.work(number)
                except Exception as exc:  # counted and shown, the loop goes on
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                self.timings.append((time.monotonic() - started) * 1000)
                time.sleep(0.005)
        finally:
            connection.close()

    def summary(self) -> dict:
        return {
            "calls": len(self.timings),
            "p50_ms": round(percentile(self.timings, 0.5), 1),
            "p99_ms": round(percentile(self.timings, 0.99), 1),
            "max_ms": round(max(self.timings, default=0), 1),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
        }


def lock_sampler(stop: threading.Event, purge_pid_holder: list, found: dict) -> None:
    """Every 20 ms: the longest lock wait in this database, and how many locks the purge held."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            while not stop.is_set():
                cursor.execute(
                    """SELECT coalesce(max(extract(epoch FROM clock_timestamp() - waitstart)), 0),
                              count(*) FILTER (WHERE NOT granted)
                       FROM pg_locks WHERE pid IN (
                           SELECT pid FROM pg_stat_activity WHERE datname = current_database())"""
                )
                longest, waiting = cursor.fetchone()
                found["longest_lock_wait_ms"] = max(found["longest_lock_wait_ms"], round(float(longest) * 1000, 1))
                found["most_waiting_at_once"] = max(found["most_waiting_at_once"], waiting)
                if purge_pid_holder:
                    cursor.execute(
                        "SELECT count(*), count(*) FILTER (WHERE locktype = 'relation' AND mode IN"
                        " ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))"
                        " FROM pg_locks WHERE pid = %s",
                        [purge_pid_holder[0]],
                    )
                    held, exclusive = cursor.fetchone()
                    found["purge_most_locks_held"] = max(found["purge_most_locks_held"], held)
                    found["purge_table_locks_blocking_inserts_seen"] = max(
                        found["purge_table_locks_blocking_inserts_seen"], exclusive
                    )
                found["samples"] += 1
                stop.wait(0.02)
    finally:
        connection.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000, help="events over the three organizations")
    parser.add_argument("--kill-after", type=float, default=8.0, help="seconds before the first run is killed")
    parser.add_argument("--vacuum-wait", type=float, default=150.0, help="longest wait for autovacuum (s)")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--database-name", default="hookline_bench_retention")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    report: dict = {"events_seeded": args.events}

    database_url, admin_url = database_urls(args.database_url, args.database_name)
    log(f"recreating database {args.database_name}")
    recreate_database(admin_url, args.database_name)
    try:
        configure_environment(database_url, args.redis_url)
        # The purge's wait for older statements: short here, the loops' statements are short.
        os.environ.setdefault("RETENTION_PURGE_WAIT_SECONDS", "30")
        migrate_and_set_up_django()
        from django.db import connection
        from django.db.models import Exists, OuterRef

        from organizations.models import Organization
        from webhooks.models import Delivery, DeliveryAttempt, PurgedEventKey, WebhookEvent
        from webhooks.services import lifecycle
        from webhooks.services.delivery import claim_due_deliveries
        from webhooks.services.destinations import destination_create
        from webhooks.services.ingest_writer import NewEvent, insert_event_batch
        from webhooks.services.sources import source_create

        started = time.monotonic()
        tenants = []
        per_organization = args.events // len(RETENTIONS)
        for index, days in enumerate(RETENTIONS, start=1):
            from organizations.services import organization_create

            organization = organization_create(name=f"R{days}", slug=f"r{days}", owner_email=f"o@r{days}.example")
            Organization.objects.filter(pk=organization.pk).update(retention_days=days)
            source, _ = source_create(organization=organization, provider="stripe", name="s", secret=f"whsec_r{days}")
            destination, _ = destination_create(
                organization=organization, name="d", url="http://127.0.0.1:9/hooks", sources=[source]
            )
            seed(index, organization.pk, source.pk, destination.pk, per_organization)
            tenants.append((index, days, organization, source, destination))
            log(f"seeded organization R{days} ({time.monotonic() - started:.0f} s)")
        _, _, live_org, live_source, live_destination = tenants[-1]
        seed_live_pending(live_org.pk, live_source.pk, live_destination.pk)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        report["seed_seconds"] = round(time.monotonic() - started, 1)
        report["before"] = table_sizes()

        def expired_unfinished() -> int:
            count = 0
            for _, days, organization, _, _ in tenants:
                cutoff = f"now() - interval '{days} days'"
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"""SELECT count(*) FROM webhooks_webhookevent e WHERE e.organization_id = %s
                            AND e.received_at < {cutoff} AND (e.status = 'received' OR EXISTS (
                            SELECT 1 FROM webhooks_delivery d WHERE d.event_id = e.id
                            AND d.status IN ('pending', 'in_flight')))""",
                        [organization.pk],
                    )
                    count += cursor.fetchone()[0]
            return count

        unfinished_before = expired_unfinished()

        # 1. A run killed halfway.
        log(f"first run, killed {args.kill_after:.0f} s after its first batch")
        child = subprocess.Popen(
            [
                PYTHON,
                "manage.py",
                "shell",
                "-c",
                "from webhooks.services.lifecycle import purge_expired_events; purge_expired_events()",
            ],
            cwd=ROOT,
            env=os.environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Killed once it has deleted something (its start-up is slow on a busy machine), at
        # --kill-after seconds after that: in the middle of a batch or between two.
        total = args.events + LIVE_PENDING
        waited = time.monotonic()
        while WebhookEvent.objects.count() == total and time.monotonic() - waited < 120:
            time.sleep(0.2)
        time.sleep(args.kill_after)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        events_after_kill = WebhookEvent.objects.count()
        report["killed_run"] = {
            "killed_seconds_after_first_batch": args.kill_after,
            "events_deleted": args.events + LIVE_PENDING - events_after_kill,
            "keys_kept": PurgedEventKey.objects.count(),
            # Deliveries or attempts whose event is gone: a whole batch or nothing is the rule.
            "orphan_deliveries": Delivery.objects.exclude(
                Exists(WebhookEvent.objects.filter(pk=OuterRef("event_id")))
            ).count(),
            "orphan_attempts": DeliveryAttempt.objects.exclude(
                Exists(Delivery.objects.filter(pk=OuterRef("delivery_id")))
            ).count(),
            # Keys kept for events still stored: the batch the kill interrupted between its two steps.
            "keys_of_events_still_stored": PurgedEventKey.objects.filter(
                Exists(WebhookEvent.objects.filter(pk=OuterRef("original_id")))
            ).count(),
        }

        # 2. The run to the end, with ingest and the delivery claim running.
        def insert(number: int) -> None:
            outcome = insert_event_batch(
                [
                    NewEvent(
                        organization_id=live_org.pk,
                        source_id=live_source.pk,
                        provider_event_id=f"ingest_{number}",
                        event_type="invoice.paid",
                        body=b"{}",
                        headers={},
                        remote_ip="127.0.0.1",
                    )
                ]
            )[0]
            if isinstance(outcome, Exception):
                raise outcome

        def claim(number: int) -> None:
            from django.db import transaction

            claimed = claim_due_deliveries(5)
            if claimed:  # put back, so that the loop keeps finding work
                with transaction.atomic():
                    Delivery.objects.filter(pk__in=[d.pk for d in claimed]).update(
                        status=Delivery.Status.PENDING, claimed_at=None, claimed_by=None
                    )

        inserter, claimer = Loop(insert), Loop(claim)
        stop_sampling = threading.Event()
        purge_pid: list = []
        locks = {
            "longest_lock_wait_ms": 0.0,
            "most_waiting_at_once": 0,
            "purge_most_locks_held": 0,
            "purge_table_locks_blocking_inserts_seen": 0,
            "samples": 0,
        }
        sampler = threading.Thread(target=lock_sampler, args=(stop_sampling, purge_pid, locks), daemon=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            purge_pid.append(cursor.fetchone()[0])
        for thread in (inserter, claimer, sampler):
            thread.start()
        time.sleep(1)
        log("second run, to the end, with ingest and claims running")
        runs, deleted, start_after, longest_run = 0, 0, None, 0.0
        with TransactionClock(connection) as clock:
            started = run_started = time.monotonic()
            while time.monotonic() < deadline:
                runs += 1
                # As the Celery task runs it: RETENTION_RUN_SECONDS at most, then the next run
                # (published by the task; here, the loop) starts after the organization it stopped on,
                # or, stopped in the cleanup before the organizations, from where this one started.
                run = lifecycle.retention_run(start_after=start_after)
                deleted += run.deleted
                if not run.stopped_in_cleanup:
                    start_after = run.stopped_at
                longest_run = max(longest_run, time.monotonic() - run_started)
                run_started = time.monotonic()
                if run.finished:
                    break
            purge_seconds = time.monotonic() - started
        time.sleep(0.5)
        for loop in (inserter, claimer):
            loop.stop.set()
        stop_sampling.set()
        for thread in (inserter, claimer, sampler):
            thread.join(timeout=30)
        report["purge"] = {
            "runs": runs,
            "seconds": round(purge_seconds, 1),
            "longest_run_seconds": round(longest_run, 1),
            "rows_deleted": deleted,
            "events_per_second": round(deleted / purge_seconds) if purge_seconds else None,
            "transactions": len(clock.spans),
            "longest_transaction_ms": round(max(clock.spans, default=0) * 1000, 1),
            "p99_transaction_ms": round(percentile(clock.spans, 0.99) * 1000, 1),
        }
        report["ingest_insert_during_purge"] = inserter.summary()
        report["delivery_claim_during_purge"] = claimer.summary()
        report["locks_during_purge"] = locks

        # 3. De-duplication after the purge: provider ids of purged events, posted again.
        index, _, organization, source, _ = tenants[0]
        posted = [f"evt_{index}_{g}" for g in range(1, 2001, 40) if g % 20 and g % 1000 not in (7, 8)]
        outcomes = insert_event_batch(
            [
                NewEvent(
                    organization_id=organization.pk,
                    source_id=source.pk,
                    provider_event_id=provider_id,
                    event_type="invoice.paid",
                    body=b"{}",
                    headers={},
                    remote_ip="127.0.0.1",
                )
                for provider_id in posted
            ]
        )
        report["dedupe_after_purge"] = {
            "posted": len(posted),
            "still_stored_before": WebhookEvent.objects.filter(source=source, provider_event_id__in=posted).count(),
            "taken_as_duplicates": sum(1 for o in outcomes if not isinstance(o, Exception) and not o[1]),
            "stored_as_new": sum(1 for o in outcomes if not isinstance(o, Exception) and o[1]),
            "purged_keys": PurgedEventKey.objects.count(),
        }

        # 4. What must stay: expired events still retrying or never processed.
        report["expired_unfinished"] = {"before": unfinished_before, "after": expired_unfinished()}
        report["events_left_per_organization"] = {
            f"retention_{days}_days": WebhookEvent.objects.filter(organization=organization).count()
            for _, days, organization, _, _ in tenants
        }

        # 5. Space: after the purge, after autovacuum (if it came), after as many events again.
        report["after_purge"] = table_sizes()
        waited = time.monotonic()
        while time.monotonic() - waited < args.vacuum_wait and time.monotonic() < deadline:
            sizes = table_sizes()
            if all(sizes[t]["autovacuum_count"] > report["before"][t]["autovacuum_count"] for t in TABLES[:3]):
                break
            time.sleep(5)
        report["autovacuum_wait_seconds"] = round(time.monotonic() - waited)
        report["after_autovacuum_wait"] = sizes = table_sizes()
        with connection.cursor() as cursor:
            cursor.execute("SHOW autovacuum")
            report["autovacuum_setting"] = cursor.fetchone()[0]
            if not all(sizes[t]["autovacuum_count"] > report["before"][t]["autovacuum_count"] for t in TABLES[:3]):
                # Autovacuum did not come (or is off on this server): a plain VACUUM, as it would run
                # (no table lock that blocks inserts), so that the refill shows whether the space is reused.
                vacuum_started = time.monotonic()
                cursor.execute(f"VACUUM {', '.join(TABLES[:3])}")
                report["manual_vacuum_seconds"] = round(time.monotonic() - vacuum_started, 1)
                report["after_manual_vacuum"] = table_sizes()
        refill_index, _, refill_org, refill_source, refill_destination = tenants[0]
        refill = report["killed_run"]["events_deleted"] + deleted
        if time.monotonic() < deadline:
            # As many events again, received now (salted apart from the seed's ids).
            seed(refill_index + 3, refill_org.pk, refill_source.pk, refill_destination.pk, refill)
            report["refilled_events"] = refill
            report["after_refill"] = table_sizes()
        print(json.dumps(report, indent=2))
        return 0
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            recreate_database(admin_url, args.database_name, create=False)


if __name__ == "__main__":
    sys.exit(main())
