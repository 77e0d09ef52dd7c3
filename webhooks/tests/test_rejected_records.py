"""How many rejected requests a source keeps (per minute and per hour), and how many it did not:
counted in Redis by ingest, added to the source by the sweeper, or by each process while Redis is down."""

import threading
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from config.redis_cache import reset_breakers
from conftest import REDIS_DOWN_CACHES
from organizations.models import ApiKey
from webhooks.models import Source, WebhookEvent
from webhooks.services import ingest, rejected_records
from webhooks.services.processing import sweep

from .api_helpers import api_get, make_key
from .factories import make_source

pytestmark = pytest.mark.django_db

# The start of an hour (1_800_000_000 is 20 minutes into one): minutes and hours are counted on it.
HOUR_START = 1_800_000_000.0 - 1_200.0
BODY = '{"id": "evt_forged", "type": "invoice.paid"}'


class Clock:
    """rejection_clock, moved by the test rather than by time."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    moved = Clock(HOUR_START)
    monkeypatch.setattr(ingest, "rejection_clock", moved)
    return moved


def forge(client, source, count: int) -> list[int]:
    """``count`` requests with a bad signature; their status codes."""
    return [
        client.generic(
            "POST",
            f"/in/{source.ingest_token}/",
            BODY,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE="t=1,v1=00",
        ).status_code
        for _ in range(count)
    ]


def kept(source) -> int:
    return WebhookEvent.objects.filter(source=source, status=WebhookEvent.Status.REJECTED).count()


def test_rejected_requests_past_the_minute_are_answered_alike_and_counted_on_the_source(
    client, organization, settings, clock
):
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 3
    source = make_source(organization)
    other = make_source(organization, name="other")
    clock.now = HOUR_START + 30

    assert forge(client, source, 8) == [401] * 8
    assert forge(client, other, 2) == [401] * 2
    assert kept(source) == 3 and kept(other) == 2

    assert sweep()["rejected_not_kept"] == 1  # only the source that had some
    source.refresh_from_db()
    other.refresh_from_db()
    assert source.rejected_not_kept_count == 5
    assert source.rejected_not_kept_last_at == datetime.fromtimestamp(HOUR_START + 30, tz=UTC)
    assert (other.rejected_not_kept_count, other.rejected_not_kept_last_at) == (0, None)

    # The next sweep adds only what came since: the counts were taken from Redis.
    clock.now = HOUR_START + 50
    forge(client, source, 2)
    sweep()
    source.refresh_from_db()
    assert source.rejected_not_kept_count == 7
    assert source.rejected_not_kept_last_at == datetime.fromtimestamp(HOUR_START + 50, tz=UTC)


def test_a_request_not_kept_writes_nothing_to_the_database(client, organization, settings, clock):
    # A flood is answered at line rate: a request not kept must cost Redis only (one script), no
    # UPDATE of its source per request.
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 1
    source = make_source(organization)
    forge(client, source, 1)
    with CaptureQueriesContext(connection) as queries:
        assert forge(client, source, 5) == [401] * 5
    writes = [query["sql"] for query in queries if not query["sql"].lstrip().upper().startswith("SELECT")]
    assert writes == []
    assert kept(source) == 1


def test_the_hour_bounds_what_is_kept_and_the_rest_is_counted(client, organization, settings, clock):
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 3
    settings.INGEST_REJECTED_RECORDS_PER_HOUR = 5
    source = make_source(organization)

    forge(client, source, 4)  # minute 0: 3 kept, 1 past the minute
    clock.now = HOUR_START + 60
    forge(client, source, 4)  # minute 1: 2 kept (5 this hour), 2 past the hour
    clock.now = HOUR_START + 120
    forge(client, source, 3)  # minute 2: the hour is used up
    assert kept(source) == 5

    clock.now = HOUR_START + 3600  # the next hour keeps again
    forge(client, source, 4)
    assert kept(source) == 8

    sweep()
    source.refresh_from_db()
    assert source.rejected_not_kept_count == 1 + 2 + 3 + 1
    assert source.rejected_not_kept_last_at == datetime.fromtimestamp(HOUR_START + 3600, tz=UTC)


def test_a_minute_past_its_limit_does_not_use_up_the_hour(client, organization, settings, clock):
    # Only the requests kept count toward the hour: a flood of 10 a minute against a limit of 3 a
    # minute still gets 3 kept every minute until the hour's 6 are kept.
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 3
    settings.INGEST_REJECTED_RECORDS_PER_HOUR = 6
    source = make_source(organization)
    forge(client, source, 10)
    clock.now = HOUR_START + 60
    forge(client, source, 10)
    assert kept(source) == 6


def test_counts_a_failed_sweep_could_not_write_are_written_by_the_next(
    client, organization, settings, clock, monkeypatch
):
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 1
    source = make_source(organization)
    forge(client, source, 4)

    def database_down(counts):
        raise DatabaseError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(rejected_records, "add_not_kept_to_sources", database_down)
        assert sweep()["failed_steps"] == 1
    forge(client, source, 1)  # counted meanwhile: added to what was put back
    sweep()
    source.refresh_from_db()
    assert source.rejected_not_kept_count == 4


def test_counts_neither_the_database_nor_redis_took_back_are_held_by_the_process(
    client, organization, settings, clock, monkeypatch
):
    # The sweeper's host cut off after taking the counts (a partition, Redis failing over): the
    # UPDATE fails, and so does putting the counts back. They were in no other place: the process
    # holds them and writes them itself, as it does its own while Redis is down.
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 1
    source = make_source(organization)
    forge(client, source, 4)

    def database_and_redis_down(counts):
        caches["default"]._breaker.failed(ConnectionError("Redis went away too"))
        raise DatabaseError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(rejected_records, "add_not_kept_to_sources", database_and_redis_down)
        assert sweep()["failed_steps"] == 1
    reset_breakers()  # both answer again

    assert rejected_records.write_local_not_kept_counts() == 1
    assert sweep()["rejected_not_kept"] == 0  # written once, not twice
    source.refresh_from_db()
    assert source.rejected_not_kept_count == 3


def test_with_redis_down_each_process_bounds_the_hour_and_writes_its_counts_itself(
    client, organization, settings, clock, monkeypatch
):
    settings.CACHES = REDIS_DOWN_CACHES
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 3
    settings.INGEST_REJECTED_RECORDS_PER_HOUR = 4
    # The process's own writer is a timer thread (conftest puts it an hour away), with a connection
    # of its own that would not see this test's transaction: the test writes instead (the timer
    # itself: the next test).
    source = make_source(organization)

    assert forge(client, source, 5) == [401] * 5  # 3 kept, 2 past the minute
    clock.now = HOUR_START + 60
    forge(client, source, 3)  # 1 kept, 2 past the hour
    assert kept(source) == 4

    assert rejected_records.write_local_not_kept_counts() == 1
    source.refresh_from_db()
    assert source.rejected_not_kept_count == 4
    assert source.rejected_not_kept_last_at == datetime.fromtimestamp(HOUR_START + 60, tz=UTC)
    assert rejected_records.write_local_not_kept_counts() == 0  # written once


@pytest.mark.django_db(transaction=True)
def test_with_redis_down_the_process_writes_its_counts_within_the_interval(client, organization, settings, clock):
    settings.CACHES = REDIS_DOWN_CACHES
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 1
    source = make_source(organization)

    forge(client, source, 3)
    timer = rejected_records._local_writer
    assert timer is not None and timer.interval == rejected_records.LOCAL_WRITE_INTERVAL_SECONDS
    forge(client, source, 2)
    assert rejected_records._local_writer is timer  # one timer for the process at a time
    # What the timer runs, in a thread of its own (with its own connection), now rather than in an hour.
    timer.cancel()
    thread = threading.Thread(target=timer.function)
    thread.start()
    thread.join(timeout=30)

    source.refresh_from_db()
    assert source.rejected_not_kept_count == 4
    assert rejected_records._local_writer is None  # nothing left: no timer started again


def test_a_source_deleted_meanwhile_is_passed_by(client, organization, settings, clock):
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 0
    source = make_source(organization)
    gone = make_source(organization, name="gone")
    forge(client, source, 1)
    forge(client, gone, 1)
    Source.objects.filter(pk=gone.pk).delete()
    assert sweep()["failed_steps"] == 0
    source.refresh_from_db()
    assert source.rejected_not_kept_count == 1


@pytest.fixture
def flooded(client, organization, settings, clock):
    """A source that kept 2 rejected requests of 7 (its provider sends with a wrong secret)."""
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 2
    settings.INGEST_REJECTED_RECORDS_PER_HOUR = 600
    clock.now = HOUR_START + 30
    source = make_source(organization, name="Billing live")
    forge(client, source, 7)
    sweep()
    source.refresh_from_db()
    return source


def test_the_source_pages_say_how_many_rejected_requests_were_not_kept(client, member, flooded):
    client.force_login(member)  # a member debugs the provider too
    for name in ("dashboard:source_detail", "dashboard:source_rejected"):
        text = client.get(reverse(name, args=["acme", flooded.pk])).content.decode()
        assert "5 more rejected requests not kept" in text, name
        assert "Past 2 a minute or 600 an hour" in text
        assert datetime.fromtimestamp(HOUR_START + 30, tz=UTC).isoformat(timespec="milliseconds")[:19] in text


def test_a_source_with_none_not_kept_says_nothing_of_it(client, member, organization, settings, clock):
    source = make_source(organization)
    forge(client, source, 1)
    sweep()
    client.force_login(member)
    for name in ("dashboard:source_detail", "dashboard:source_rejected"):
        assert "not kept" not in client.get(reverse(name, args=["acme", source.pk])).content.decode()


def test_the_api_gives_a_source_its_rejected_requests_not_kept(client, organization, flooded):
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    shown = api_get(client, key, f"/api/v1/sources/{flooded.pk}").json()
    assert shown["rejected_not_kept_count"] == 5
    assert shown["rejected_not_kept_last_at"] == "2027-01-15T07:40:30Z"
    listed = api_get(client, key, "/api/v1/sources").json()["results"]
    assert [(row["id"], row["rejected_not_kept_count"]) for row in listed] == [(flooded.pk, 5)]


def test_the_admin_shows_a_source_its_rejected_requests_not_kept(client, flooded):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    text = client.get(reverse("admin:webhooks_source_change", args=[flooded.pk])).content.decode()
    assert "Rejected requests not kept" in text and "5 more rejected requests not kept" in text


def test_a_database_outage_is_logged_once_a_minute_not_at_each_try(organization, monkeypatch, caplog):
    # The counts are tried again every second while the database is down, by every web process.
    source = make_source(organization)
    monotonic = [5000.0]
    monkeypatch.setattr(rejected_records.time, "monotonic", lambda: monotonic[0])
    monkeypatch.setattr(rejected_records, "LOCAL_WRITE_INTERVAL_SECONDS", 3600)  # the test does the tries

    def database_down(counts):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(rejected_records, "add_not_kept_to_sources", database_down)
    try:
        with caplog.at_level("ERROR", logger="webhooks.services.rejected_records"):
            rejected_records._note_not_kept_locally({source.pk: (3, 1.0)})
            for _ in range(5):
                assert rejected_records.write_local_not_kept_counts() == 0
                monotonic[0] += 1
            monotonic[0] += 60
            assert rejected_records.write_local_not_kept_counts() == 0
        failures = [r for r in caplog.records if r.name == "webhooks.services.rejected_records"]
        assert len(failures) == 2 and all(r.exc_info for r in failures)
        assert rejected_records._local_not_kept[source.pk][0] == 3  # kept for the next try, not lost
    finally:
        rejected_records.forget_local_counts()
