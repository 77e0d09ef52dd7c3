"""One tenant's event that processing fails on must not stop the batch every tenant shares."""

import io
import json
import logging
from datetime import UTC, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from organizations.models import MonthlyUsage
from webhooks.models import Delivery, WebhookEvent
from webhooks.services import lifecycle, processing

from .factories import make_destination, make_source

SECRET_HEADER_VALUE = "header-value-that-must-stay-out-of-the-log"


@pytest.fixture(autouse=True)
def _no_dispatch_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def events(organization, other_organization):
    """Four received events of two tenants, oldest first; the second is the one a bug trips on."""
    acme, globex = make_source(organization), make_source(other_organization)
    make_destination(organization, "http://127.0.0.1:19600/acme", sources=[acme])
    make_destination(other_organization, "http://127.0.0.1:19600/globex", sources=[globex])
    start = timezone.now() - timedelta(seconds=5)
    made = []
    for number, source in enumerate([acme, globex, acme, globex]):
        made.append(
            WebhookEvent.objects.create(
                organization=source.organization,
                source=source,
                provider_event_id=f"evt_{number}",
                body=b'{"secret": "body"}',
                headers={"X-Odd": SECRET_HEADER_VALUE},
                received_at=start + timedelta(milliseconds=number),
            )
        )
    return made


FAULT_SQL = "SELECT 1 / 0 FROM webhooks_webhookevent WHERE headers->>'X-Odd' = %s"


class Fault:
    """Makes record_usage fail on one event while ``on``: a database error, so the transaction is
    aborted too (as a bad value in a statement would leave it)."""

    def __init__(self, monkeypatch, *event_ids):
        self.event_ids, self.on, self.hits = set(event_ids), True, 0
        self.header_value = SECRET_HEADER_VALUE
        real = lifecycle.record_usage

        def record_usage(events):
            if self.on and any(event.id in self.event_ids for event in events):
                self.hits += 1
                with connection.cursor() as cursor:
                    cursor.execute(FAULT_SQL, [self.header_value])
            real(events)

        monkeypatch.setattr(processing, "record_usage", record_usage)


def set_aside_fields(event):
    event.refresh_from_db()
    return event.status, event.processing_failures, event.processing_retry_at


def make_due(event):
    WebhookEvent.objects.filter(pk=event.pk).update(processing_retry_at=timezone.now() - timedelta(seconds=1))


def test_one_failing_event_is_set_aside_and_the_rest_of_its_batch_is_processed(
    events, monkeypatch, caplog, organization, other_organization
):
    bad = events[1]
    Fault(monkeypatch, bad.id)
    before = timezone.now()
    with caplog.at_level(logging.WARNING, logger="webhooks.services.processing"):
        assert processing.process_event_batch() == 4
    after = timezone.now()

    for event in events[0:1] + events[2:]:
        event.refresh_from_db()
        assert event.status == WebhookEvent.Status.PROCESSED
        assert Delivery.objects.filter(event=event).count() == 1
    # Counted once each, the bad one not at all (its transaction part was rolled back).
    assert MonthlyUsage.objects.get(organization=organization).events == 2
    assert MonthlyUsage.objects.get(organization=other_organization).events == 1

    bad.refresh_from_db()
    assert bad.status == WebhookEvent.Status.RECEIVED and not Delivery.objects.filter(event=bad).exists()
    assert bad.processing_failures == 1
    assert bad.processing_error.startswith("DataError: division by zero")
    assert before + timedelta(minutes=1) <= bad.processing_retry_at <= after + timedelta(minutes=1)

    failures = [record for record in caplog.records if str(bad.id) in record.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert "DataError" in failures[0].getMessage()
    logged = caplog.text
    assert SECRET_HEADER_VALUE not in logged and '"secret": "body"' not in logged
    assert not any(str(event.id) in logged for event in events if event.pk != bad.pk)


def test_an_error_quoting_what_postgresql_cannot_store_still_sets_the_event_aside(events, monkeypatch):
    # A bug's message may quote a JSON body's "\u0000" or "\ud800": stored as it is, the set-aside
    # UPDATE itself failed, which rolled back the whole batch, every tenant's, again at each run.
    bad = events[1]
    real = lifecycle.record_usage

    def record_usage(claimed):
        if any(event.id == bad.id for event in claimed):
            raise ValueError("unexpected value 'a\x00b\ud800c'")
        real(claimed)

    monkeypatch.setattr(processing, "record_usage", record_usage)
    assert processing.process_event_batch() == 4
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSED).count() == 3
    bad.refresh_from_db()
    assert bad.status == WebhookEvent.Status.RECEIVED and bad.processing_failures == 1
    assert bad.processing_error == "ValueError: unexpected value 'a\ufffdb\ufffdc'"


def test_a_set_aside_event_waits_for_its_time_backs_off_and_is_processed_once_the_fault_is_gone(
    events, monkeypatch, organization
):
    bad = events[1]
    fault = Fault(monkeypatch, bad.id)
    processing.process_event_batch()
    _, _, first_retry_at = set_aside_fields(bad)

    # Not due: the next runs pass it by, and it no longer holds up what arrived after it.
    late = WebhookEvent.objects.create(organization=organization, source=events[0].source, body=b"{}")
    assert processing.process_event_batch() == 1
    late.refresh_from_db()
    assert late.status == WebhookEvent.Status.PROCESSED
    assert processing.process_event_batch() == 0
    assert set_aside_fields(bad) == (WebhookEvent.Status.RECEIVED, 1, first_retry_at)
    assert fault.hits == 2  # the batch, then alone

    # Due, still failing: tried alone, once, and waits twice as long.
    make_due(bad)
    before = timezone.now()
    assert processing.process_event_batch() == 1
    status, failures, retry_at = set_aside_fields(bad)
    assert (status, failures, fault.hits) == (WebhookEvent.Status.RECEIVED, 2, 3)
    assert retry_at >= before + timedelta(minutes=2)
    assert processing.process_event_batch() == 0

    # A fixed deploy: processed at its next try, the failure no longer shown.
    fault.on = False
    make_due(bad)
    assert processing.process_event_batch() == 1
    bad.refresh_from_db()
    assert bad.status == WebhookEvent.Status.PROCESSED and bad.processing_retry_at is None
    assert not bad.is_set_aside and bad.processing_problem() == ""
    assert Delivery.objects.filter(event=bad).count() == 1


def test_the_wait_doubles_from_a_minute_up_to_an_hour():
    waits = [processing.set_aside_wait(failures) for failures in range(1, 10)]
    assert [wait.total_seconds() / 60 for wait in waits] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert processing.set_aside_wait(10_000) == timedelta(hours=1)


def test_the_sweeper_picks_up_a_set_aside_event_when_it_is_due(events, monkeypatch):
    from webhooks import tasks

    published = []
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda *a, **k: published.append(1))
    Fault(monkeypatch, events[1].id)
    processing.process_event_batch()
    _, _, retry_at = set_aside_fields(events[1])
    assert processing.sweep(now=retry_at - timedelta(seconds=1))["events"] == 0  # not stuck, not due
    assert published == []
    assert processing.sweep(now=retry_at + timedelta(seconds=1))["events"] == 1 and published == [1]


def test_its_pages_say_why_it_is_not_processed(events, monkeypatch, client, owner):
    bad = events[1]
    Fault(monkeypatch, bad.id)
    processing.process_event_batch()
    processing.process_event_batch()
    make_due(bad)
    processing.process_event_batch()
    bad.refresh_from_db()
    expected = "could not be processed: DataError: division by zero, 2 tries, next try at "

    out = io.StringIO()
    call_command("show_event", str(bad.id), stdout=out)
    assert expected + bad.processing_retry_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") in out.getvalue()
    out = io.StringIO()
    call_command("show_event", str(bad.id), "--json", stdout=out)
    (story,) = json.loads(out.getvalue())["events"]
    assert story["processing_failure"] == {
        "error": "DataError: division by zero",
        "tries": 2,
        "next_try_at": bad.processing_retry_at.isoformat(),
    }

    admin = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(admin)
    page = client.get(reverse("admin:webhooks_webhookevent_change", args=[bad.pk])).content.decode()
    assert expected in page

    member_of_globex = owner  # owner of acme: globex's event is not theirs
    client.force_login(member_of_globex)
    bad_org = bad.organization
    from organizations.models import Membership

    Membership.objects.create(user=owner, organization=bad_org, role=Membership.Role.MEMBER)
    page = client.get(reverse("dashboard:event_detail", args=[bad_org.slug, bad.pk])).content.decode()
    # The tenant is told where the event stands, not the internals of a platform error.
    assert "Not processed yet: an error in Hookline stopped its processing (2 tries;" in page
    assert "DataError" not in page and "division by zero" not in page


def test_the_claim_walks_an_index_past_however_many_events_are_set_aside(organization):
    source = make_source(organization)
    with connection.cursor() as cursor:
        # 20 000 processed, 5 000 set aside at the head of the queue, 1 000 waiting.
        cursor.execute(
            """
            INSERT INTO webhooks_webhookevent (id, organization_id, source_id, event_type, body, headers, status,
                rejection_code, rejection_detail, duplicate_count, received_at, processing_retry_at)
            SELECT gen_random_uuid(), %s, %s, 't', '', '{}', CASE WHEN n <= 20000 THEN 'processed' ELSE 'received' END,
                '', '', 0, now() - make_interval(secs => 30000 - n),
                CASE WHEN n > 20000 AND n <= 25000 THEN now() + interval '1 hour' END
            FROM generate_series(1, 26000) AS n
            """,
            [organization.pk, source.pk],
        )
        cursor.execute("ANALYZE webhooks_webhookevent")
    with transaction.atomic():
        waiting = WebhookEvent.objects.select_for_update(skip_locked=True, no_key=True).filter(
            status=WebhookEvent.Status.RECEIVED
        )
        head = waiting.filter(processing_retry_at__isnull=True).order_by("received_at").only("id")[:100]
        due = waiting.filter(processing_retry_at__lte=timezone.now()).order_by("processing_retry_at").only("id")[:100]
        head_plan = head.explain(analyze=True)
        due_plan = due.explain(analyze=True)
    assert "Index Scan using event_waiting" in head_plan and "Seq Scan" not in head_plan
    assert "Index Scan using event_set_aside" in due_plan and "Seq Scan" not in due_plan
    # The head query reads only the rows it returns: none of the set-aside ones.
    assert "actual time" in head_plan and "rows=100 " in head_plan.split("Index Scan")[1].split("\n")[0]
    assert processing.process_event_batch() == 100


def test_the_event_table_keeps_no_index_that_nothing_reads(organization):
    # event_unfinished served the release before set-aside events (0026); once that release's
    # workers were gone, it only cost every ingest INSERT one more index entry (0029 drops it).
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'webhooks_webhookevent'")
        names = {row[0] for row in cursor.fetchall()}
    assert "event_unfinished" not in names
    assert {"event_waiting", "event_set_aside"} <= names


def test_set_aside_events_coming_due_together_leave_half_of_each_batch_to_fresh_ones(events, monkeypatch, organization):
    fault = Fault(monkeypatch, *(event.id for event in events[:3]))
    processing.process_event_batch()
    fault.on = False  # the fix is deployed; all three come due at once
    for event in events[:3]:
        make_due(event)
    fresh = [WebhookEvent.objects.create(organization=organization, source=events[0].source, body=b"{}") for _ in "ab"]
    assert processing.process_event_batch(batch_size=4) == 4
    assert WebhookEvent.objects.filter(pk__in=[event.pk for event in fresh], status="processed").count() == 2
    assert WebhookEvent.objects.filter(pk__in=[event.pk for event in events[:3]], status="processed").count() == 2
    assert processing.process_event_batch(batch_size=4) == 1
    assert not WebhookEvent.objects.filter(status="received").exists()


class _UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("the message cannot be built")


def test_an_error_whose_message_cannot_be_built_still_sets_the_event_aside(events, monkeypatch):
    # Building the error text raised in turn, out of the set-aside itself: the whole shared batch
    # failed, every tenant's, again at each run.
    bad = events[1]
    real = lifecycle.record_usage

    def record_usage(claimed):
        if any(event.id == bad.id for event in claimed):
            raise _UnprintableError()
        real(claimed)

    monkeypatch.setattr(processing, "record_usage", record_usage)
    assert processing.process_event_batch() == 4
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSED).count() == 3
    bad.refresh_from_db()
    assert bad.status == WebhookEvent.Status.RECEIVED and bad.processing_failures == 1
    assert bad.processing_error == "_UnprintableError"
