"""Processing health: the verdict and its reasons from real rows, /metrics, the admin card, the command."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import django_celery_beat.schedulers
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from kombu import Connection

import config.celery
from config.celery import app as celery_app
from conftest import REDIS_DOWN_CACHES
from webhooks import tasks
from webhooks.models import Delivery, DeliveryAttempt, Destination, ProcessMark, WebhookEvent
from webhooks.services import platform_health
from webhooks.services.platform_health import processing_health

from .api_helpers import make_delivery, make_event
from .factories import make_destination, make_source
from .ports import free_port

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def beat_and_worker_running():
    """The periodic tasks as the release phase installs them, just sent by beat; a worker just ran one."""
    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    beat_sent(seconds_ago=20)
    worker_ran(seconds_ago=3)


def beat_sent(seconds_ago: float) -> None:
    """Beat tried the periodic tasks ``seconds_ago``, and the broker took them (its mark just after)."""
    tried = timezone.now() - timedelta(seconds=seconds_ago)
    PeriodicTask.objects.update(last_run_at=tried)
    ProcessMark.objects.update_or_create(
        name=platform_health.BEAT_SENT_MARK, defaults={"at": tried + timedelta(milliseconds=5)}
    )


def worker_ran(seconds_ago: float) -> None:
    cache.set(platform_health.WORKER_MARK_KEY, timezone.now().timestamp() - seconds_ago)


@pytest.fixture
def source(organization):
    return make_source(organization)


@pytest.fixture
def destination(organization, source):
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    return destination


def due_delivery(source, destination, *, overdue: timedelta) -> Delivery:
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - overdue)
    return delivery


def test_a_platform_that_keeps_up_is_ok(beat_and_worker_running, source, destination):
    make_event(source, status=WebhookEvent.Status.RECEIVED)  # just received: nothing late
    due_delivery(source, destination, overdue=timedelta(seconds=5))
    health = processing_health()
    assert (health.verdict, health.reasons, health.unmeasured) == ("ok", [], [])
    assert (health.events_waiting.count, health.deliveries_due.count) == (1, 1)
    assert health.worker_signal == "mark" and health.redis_up is True


def test_webhooks_waiting_long_make_it_degraded_then_stalled(beat_and_worker_running, source):
    make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(minutes=2))
    health = processing_health()
    assert health.verdict == "degraded"
    assert health.reasons == ["1 webhook waits to be processed, the oldest received 2 min ago: processing is behind"]

    make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(minutes=7))
    health = processing_health()
    assert health.verdict == "stalled"
    assert health.reasons == ["2 webhooks wait to be processed, the oldest received 7 min ago: are workers running?"]
    assert health.events_waiting.count == 2 and 420 <= health.events_waiting.oldest_seconds < 430


def test_overdue_deliveries_with_no_worker_running_are_stalled(beat_and_worker_running, source, destination):
    due_delivery(source, destination, overdue=timedelta(minutes=7))
    worker_ran(seconds_ago=600)
    health = processing_health()
    assert health.verdict == "stalled"
    assert "the oldest due delivery is 7 min overdue (1 due): are workers running?" in health.reasons
    assert "no worker has run a task for 10 min, though beat sends the sweep every 5 s: are workers running?" in (
        health.reasons
    )


def test_workers_that_stopped_just_after_an_attempt_are_stalled_while_beat_runs(
    beat_and_worker_running, source, destination
):
    # A process stamps its mark at most every 5 s: the last attempt before the workers stopped is
    # often newer than the last mark, which is still in the cache. Nothing is due: the workers' own
    # sign has to say it.
    worker_ran(seconds_ago=600)
    make_delivery(make_event(source), destination, status=Delivery.Status.SUCCEEDED, attempts=1)
    DeliveryAttempt.objects.update(started_at=timezone.now() - timedelta(seconds=598))
    health = processing_health()
    assert (health.verdict, health.worker_signal) == ("stalled", "mark")
    assert health.worker_ran_at == DeliveryAttempt.objects.get().started_at
    assert "no worker has run a task for 9 min, though beat sends the sweep every 5 s: are workers running?" in (
        health.reasons
    )
    assert len(health.reasons) == 1


def test_overdue_deliveries_while_workers_run_are_only_degraded(beat_and_worker_running, source, destination):
    # A destination's concurrency or rate limit can hold its backlog for hours: late, not stopped.
    due_delivery(source, destination, overdue=timedelta(minutes=7))
    health = processing_health()
    assert health.verdict == "degraded"
    assert health.reasons == [
        "the oldest due delivery is 7 min overdue (1 due), though a worker ran 3 s ago: too few workers, "
        "or a slow or rate-limited destination holds its backlog"
    ]


def test_a_paused_destinations_backlog_is_not_overdue(beat_and_worker_running, source, destination):
    due_delivery(source, destination, overdue=timedelta(hours=3))
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    health = processing_health()
    assert health.verdict == "ok"
    assert (health.deliveries_due.count, health.deliveries_due.oldest_seconds) == (0, 0.0)
    assert health.deliveries_pending == 1  # still counted among the pending


def test_beat_that_stopped_sending_is_stalled(beat_and_worker_running):
    PeriodicTask.objects.update(last_run_at=timezone.now() - timedelta(minutes=12))
    health = processing_health()
    assert health.verdict == "stalled"
    assert health.reasons == [
        "beat looks stopped: no periodic task sent for 12 min; retries and lost work wait for its sweep"
    ]

    PeriodicTask.objects.update(last_run_at=None)
    assert processing_health().reasons == ["beat has never sent a periodic task: is beat running?"]

    PeriodicTask.objects.update(enabled=False)
    assert processing_health().reasons == ["no periodic task is installed and enabled: run install_periodic_tasks"]


def test_beat_records_each_task_it_sends_at_once_so_a_fresh_deploy_does_not_look_stalled(beat_process):
    """django-celery-beat writes last_run_at only when it syncs, by default 3 minutes after its
    first pass: right after every deploy the card said "beat has never sent a periodic task" for
    3 minutes while beat was sending the sweep every few seconds."""
    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    worker_ran(seconds_ago=1)
    scheduler = DatabaseScheduler(app=celery_app)
    scheduler._do_sync()  # as beat's loop does after its first pass, before anything is due

    with celery_app.producer_or_acquire() as producer:  # the tests' Redis, the broker
        beat_sends(scheduler, "hookline-sweep", producer)

    assert PeriodicTask.objects.get(name="hookline-sweep").last_run_at is not None
    health = processing_health()
    assert (health.verdict, health.reasons) == ("ok", [])
    assert health.beat_sent_at >= health.beat_last_run_at


def test_beat_sends_the_broker_refuses_do_not_count_as_sent(beat_process, admin_client, monkeypatch):
    """django-celery-beat writes last_run_at before the send, and keeps it when the send fails: with
    the broker down the card and the command read "Beat last sent a task: 2 s ago", and nothing
    said that beat's sweeps went nowhere."""
    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    worker_ran(seconds_ago=1)
    scheduler = DatabaseScheduler(app=celery_app)
    with celery_app.producer_or_acquire() as producer:
        beat_sends(scheduler, "hookline-sweep", producer)
    sent_at = processing_health().beat_sent_at

    with Connection(f"redis://127.0.0.1:{free_port()}/0", transport_options={"socket_connect_timeout": 1}) as down:
        beat_sends(scheduler, "hookline-sweep", celery_app.amqp.Producer(down, auto_declare=False))

    health = processing_health()
    tried_at = PeriodicTask.objects.get(name="hookline-sweep").last_run_at
    assert (health.beat_sent_at, health.beat_last_run_at) == (sent_at, tried_at) and tried_at > sent_at
    assert health.beat_sends_fail and health.verdict == "degraded"
    # The same, some seconds on: ages that read the same however slow this machine (the health
    # check's clock stopped at the moment the ages are set from: the command and the page each
    # take their own time, a second or more on a loaded machine).
    checked_at = timezone.now()
    PeriodicTask.objects.filter(name="hookline-sweep").update(last_run_at=checked_at - timedelta(seconds=10))
    ProcessMark.objects.update(at=checked_at - timedelta(seconds=40))
    with monkeypatch.context() as clock:
        clock.setattr(platform_health, "timezone", SimpleNamespace(now=lambda: checked_at))
        health = processing_health()
        assert [reason for reason in health.reasons if "beat" in reason] == [
            "beat's sends do not reach the broker: its newest try, 10 s ago, failed; the last that did was sent "
            "40 s ago. Is the broker (CELERY_BROKER_URL) up?"
        ]
        text = run_command()[1]
        assert "Beat last sent a task: 40 s ago" in text
        assert "Beat last tried to send one (it failed): 10 s ago" in text
        card = processing_card(admin_client)
    assert re.search(r"Beat last sent a task</a></td>\s*<td>40 s ago <small>tried 10 s ago: failed</small>", card)

    # Failing for longer than beat looks stopped after: stalled, as a stopped beat is.
    ProcessMark.objects.update(at=timezone.now() - timedelta(minutes=6))
    assert "beat's sends do not reach the broker: its newest try, " in processing_health().reasons[0]
    assert processing_health().verdict == "stalled"

    # The broker back: the next send reaches it, and the reason goes.
    with celery_app.producer_or_acquire() as producer:
        beat_sends(scheduler, "hookline-sweep", producer)
    health = processing_health()
    assert (health.verdict, health.beat_sends_fail) == ("ok", False)


def test_a_beat_that_cannot_reach_the_broker_at_all_says_so_at_once(beat_process, monkeypatch):
    """Beat connects to the broker before it reserves a task, and retries there: started with the
    broker down (or a wrong CELERY_BROKER_URL), no last_run_at moved, and the health read beat as
    sending fine until HEALTH_BEAT_STALE_SECONDS had passed."""
    import kombu.exceptions
    import kombu.utils.functional

    import config.beat

    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    beat_sent(seconds_ago=20)  # the beat before this one
    worker_ran(seconds_ago=1)
    assert processing_health().verdict == "ok"

    scheduler = config.beat.DatabaseScheduler(app=celery_app)
    scheduler.connection = Connection(
        f"redis://127.0.0.1:{free_port()}/0", transport_options={"socket_connect_timeout": 1}
    )
    monkeypatch.setitem(celery_app.conf, "broker_connection_max_retries", 1)
    monkeypatch.setattr(kombu.utils.functional, "sleep", lambda seconds: None)  # kombu's wait between tries
    with pytest.raises(kombu.exceptions.OperationalError):
        _ = scheduler.producer  # as beat's first tick asks for it

    health = processing_health()
    assert health.beat_sends_fail and health.verdict == "degraded"
    [reason] = [reason for reason in health.reasons if "beat" in reason]
    assert reason.startswith("beat's sends do not reach the broker: its newest try, ")
    assert "Is the broker (CELERY_BROKER_URL) up?" in reason

    # The broker reachable again: the next send reaches it, and the reason goes.
    with celery_app.producer_or_acquire() as producer:
        beat_sends(scheduler, "hookline-sweep", producer)
    assert (processing_health().verdict, processing_health().beat_sends_fail) == ("ok", False)


def test_a_beat_that_never_reached_the_broker_since_install_is_not_called_missing(beat_process, monkeypatch):
    """A fresh install whose beat starts with the broker down: no periodic task has a last_run_at yet,
    and its failed tries to connect were left out, so the health said "is beat running?" of a beat
    that runs and marks each try."""
    import kombu.exceptions
    import kombu.utils.functional

    import config.beat

    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    worker_ran(seconds_ago=1)
    scheduler = config.beat.DatabaseScheduler(app=celery_app)
    scheduler.connection = Connection(
        f"redis://127.0.0.1:{free_port()}/0", transport_options={"socket_connect_timeout": 1}
    )
    monkeypatch.setitem(celery_app.conf, "broker_connection_max_retries", 1)
    monkeypatch.setattr(kombu.utils.functional, "sleep", lambda seconds: None)
    with pytest.raises(kombu.exceptions.OperationalError):
        _ = scheduler.producer

    health = processing_health()
    [reason] = [reason for reason in health.reasons if "beat" in reason]
    assert reason.startswith("beat's sends do not reach the broker: its newest try, "), reason
    assert "none has reached it yet" in reason

    with celery_app.producer_or_acquire() as producer:
        beat_sends(scheduler, "hookline-sweep", producer)
    assert processing_health().beat_sends_fail is False


@pytest.fixture
def beat_process(monkeypatch):
    """This process as beat (the beat_init signal sent); its sends to the tests' broker purged afterwards."""
    monkeypatch.setattr(config.celery, "_in_beat", True)
    # The scheduler closes the connection it thinks is stale, which would end this test's transaction.
    monkeypatch.setattr(django_celery_beat.schedulers, "close_old_connections", lambda: None)
    yield
    with celery_app.connection_for_write() as connection_:
        connection_.default_channel.queue_purge(celery_app.conf.task_default_queue)


def beat_sends(scheduler: DatabaseScheduler, name: str, producer) -> None:
    """As beat's tick sends a due entry: reserve it (its last_run_at moves on), then send it."""
    entry = scheduler.schedule[name]
    scheduler.reserve(entry)
    scheduler.apply_entry(entry, producer=producer)


def beat_starts(monkeypatch) -> DatabaseScheduler:
    """Beat's start-up, against this test's database: its scheduler installs the schedule it runs."""
    # The scheduler closes the connection it thinks is stale, which would end this test's transaction.
    monkeypatch.setattr(django_celery_beat.schedulers, "close_old_connections", lambda: None)
    return DatabaseScheduler(app=celery_app)


def test_beat_lists_only_hooklines_periodic_tasks_not_celerys_result_cleanup(monkeypatch, settings):
    """With Celery's default result_expires, beat added `celery.backend_cleanup`, which cleans a result
    backend Hookline does not have: the health check listed it as "last sent never" until 04:00."""
    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    beat_starts(monkeypatch)
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == set(settings.CELERY_BEAT_SCHEDULE)
    assert "backend_cleanup" not in run_command()[1]


def test_installing_the_periodic_tasks_removes_the_cleanup_an_earlier_beat_installed(monkeypatch):
    # As a beat started before result_expires was unset did (Celery's default: one day).
    monkeypatch.setitem(celery_app.conf, "result_expires", timedelta(days=1))
    beat_starts(monkeypatch)
    assert PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()
    monkeypatch.undo()

    out = StringIO()
    call_command("install_periodic_tasks", stdout=out)
    assert not PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()
    assert "celery.backend_cleanup: removed" in out.getvalue()
    assert "backend_cleanup" not in run_command()[1]


def test_a_disabled_tasks_old_run_does_not_hide_a_stopped_beat(beat_and_worker_running):
    PeriodicTask.objects.update(last_run_at=timezone.now() - timedelta(minutes=30))
    PeriodicTask.objects.filter(name="hookline-retention").update(enabled=False, last_run_at=timezone.now())
    assert processing_health().verdict == "stalled"


def test_the_workers_tasks_leave_the_mark_the_check_reads(monkeypatch, beat_and_worker_running, source, destination):
    cache.delete(platform_health.WORKER_MARK_KEY)
    monkeypatch.setattr(platform_health, "_worker_marked_at", None)
    health = processing_health()
    assert (health.verdict, health.worker_signal) == ("degraded", "none")
    assert health.reasons == ["no worker has run a task since the cache was last emptied: are workers running?"]

    make_delivery(make_event(source), destination, status=Delivery.Status.SUCCEEDED, attempts=1)
    DeliveryAttempt.objects.update(started_at=timezone.now() - timedelta(minutes=8))
    health = processing_health()
    assert (health.verdict, health.worker_signal) == ("degraded", "attempt")
    assert health.reasons == [
        "no worker has left its mark in the cache, and the newest delivery attempt is 8 min old: are workers running?"
    ]

    tasks.sweep()  # what a worker runs every SWEEP_INTERVAL_SECONDS
    health = processing_health()
    assert (health.verdict, health.worker_signal) == ("ok", "mark")


def test_with_redis_down_workers_are_unknown_unless_an_attempt_shows_them(
    settings, beat_and_worker_running, source, destination
):
    settings.CACHES = REDIS_DOWN_CACHES
    health = processing_health()
    assert (health.verdict, health.redis_up, health.worker_signal) == ("degraded", False, "unknown")
    assert health.reasons == ["Redis does not answer: whether workers run is unknown, and processing waits for Redis"]

    make_delivery(make_event(source), destination, status=Delivery.Status.SUCCEEDED, attempts=1)
    health = processing_health()
    assert health.worker_signal == "attempt"
    assert health.worker_ran_at == DeliveryAttempt.objects.get().started_at
    # Workers seen at work just before Redis went away do not make the verdict OK: nothing new is
    # processed or sent until it answers again.
    assert health.verdict == "degraded"
    assert health.reasons == [
        "Redis does not answer: webhooks are stored, but processing and deliveries wait for Redis"
    ]


def test_a_claim_the_sweeper_should_have_released_is_reported(beat_and_worker_running, source, destination):
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.IN_FLIGHT, attempts=1)
    Delivery.objects.filter(pk=delivery.pk).update(claimed_at=timezone.now() - timedelta(minutes=20))
    health = processing_health()
    assert health.verdict == "degraded"
    assert health.reasons == [
        "a delivery has been in flight for 20 min: the sweeper should have released it by now; is beat running?"
    ]
    assert health.deliveries_in_flight.count == 1


def test_dead_deliveries_of_the_last_day_are_counted(beat_and_worker_running, source, destination):
    recent = make_delivery(make_event(source), destination, status=Delivery.Status.DEAD)
    older = make_delivery(make_event(source), destination, status=Delivery.Status.DEAD)
    Delivery.objects.filter(pk=recent.pk).update(completed_at=timezone.now() - timedelta(hours=2))
    Delivery.objects.filter(pk=older.pk).update(completed_at=timezone.now() - timedelta(hours=30))
    health = processing_health()
    assert (health.deliveries_dead_24h, health.deliveries_dead) == (1, 2)
    assert health.verdict == "ok"  # receivers failing is the tenants' matter, not processing's


def test_dead_deliveries_of_the_last_day_are_read_by_their_completion_time_not_every_dead_one(
    beat_and_worker_running,
):
    # Read on every admin page view and scrape: with years of retention, walking every dead
    # delivery to look at its completion time read the whole table (3 million rows: 0.4 s). With
    # no sort and no whole scan allowed, the plan shows an index that gives the last day's dead
    # deliveries in the order the query asks for (that order keeps the planner off a whole scan
    # that it expects the cap to cut short; an empty test table cannot show its choice).
    with CaptureQueriesContext(connection) as queries:
        platform_health._deliveries_dead_24h(timezone.now())
    (query,) = queries.captured_queries
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + query["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Only Scan using delivery_dead_completed" in plan, plan
    assert re.search(r"Index Cond: \(completed_at >=", plan), plan
    assert "Sort" not in plan, plan
    assert 'ORDER BY "webhooks_delivery"."completed_at" ASC' in query["sql"]


def test_counts_stop_at_the_cap_and_every_count_is_limited(monkeypatch, beat_and_worker_running, source):
    monkeypatch.setattr(platform_health, "COUNT_CAP", 3)
    for _ in range(5):
        make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(minutes=10))
    with CaptureQueriesContext(connection) as queries:
        health = processing_health()
    assert health.events_waiting.count == 3 and health.events_waiting.capped
    assert health.reasons[0].startswith("3+ webhooks wait to be processed")
    counts = [query["sql"] for query in queries if "COUNT(" in query["sql"].upper()]
    # waiting, set aside, in flight, pending, dead, dead in 24 h, held by the platform (one per cause),
    # paused destinations; nothing due: not counted
    assert len(counts) == 9
    assert [sql for sql in counts if not re.search(r"LIMIT 3\b", sql)] == []


def test_a_failing_query_leaves_its_figure_out_and_the_rest_stands(monkeypatch, beat_and_worker_running, source):
    def broken(now):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(platform_health, "_deliveries_due", broken)
    make_event(source, status=WebhookEvent.Status.RECEIVED)
    health = processing_health()
    assert health.unmeasured == ["deliveries_due"] and health.deliveries_due is None
    assert health.events_waiting.count == 1  # queries after the failure still ran
    assert (health.verdict, health.reasons) == ("degraded", ["could not measure deliveries due (the query failed)"])


# --- /metrics ------------------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[tuple[str, tuple], float]:
    """Samples of the text exposition format: {(name, ((label, value), ...)): value}. Strict enough
    to refuse what a Prometheus server would: each sample's family declared by # TYPE before it."""
    samples, typed = {}, set()
    sample_line = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter")
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = sample_line.match(line)
        assert match, line
        name, labels, value = match.groups()
        assert name in typed, name
        pairs = tuple(label.findall(labels or ""))
        assert ",".join(f'{k}="{v}"' for k, v in pairs) == (labels or ""), line
        samples[(name, pairs)] = float(value)
    return samples


def test_metrics_is_not_found_without_a_token_configured(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 404
    # The same page as any unknown path, which names the path it was asked for.
    unknown = client.get("/no-such-page").content.replace(b"/no-such-page", b"/metrics")
    assert response.content == unknown


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer wrong"]
)
def test_metrics_refuses_a_wrong_or_missing_token(client, settings, authorization):
    settings.METRICS_TOKEN = TOKEN
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"hookline_" not in response.content
    # The same clear words for a missing token as for a wrong one, saying what to send.
    assert response.content.decode() == "401 Unauthorized: send the header Authorization: Bearer <METRICS_TOKEN>\n"


def test_metrics_answers_the_figures_in_prometheus_text(client, settings, beat_and_worker_running, source, destination):
    settings.METRICS_TOKEN = TOKEN
    due_delivery(source, destination, overdue=timedelta(minutes=7))
    make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(minutes=2))
    make_delivery(make_event(source), destination, status=Delivery.Status.DEAD)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_prometheus(response.content.decode())
    assert samples[("hookline_health_up", ())] == 1
    assert samples[("hookline_health_verdict", ())] == 1  # degraded: workers run, so only late
    assert samples[("hookline_events_waiting", ())] == 1
    assert 120 <= samples[("hookline_events_waiting_oldest_age_seconds", ())] < 130
    assert samples[("hookline_deliveries_due", ())] == 1
    assert 420 <= samples[("hookline_deliveries_due_oldest_overdue_seconds", ())] < 430
    assert samples[("hookline_deliveries", (("status", "pending"),))] == 1
    assert samples[("hookline_deliveries", (("status", "dead"),))] == 1
    assert samples[("hookline_deliveries", (("status", "in_flight"),))] == 0
    assert samples[("hookline_deliveries_dead_24h", ())] == 1
    assert samples[("hookline_redis_up", ())] == 1
    sweep_sent = PeriodicTask.objects.get(name="hookline-sweep").last_run_at.timestamp()
    assert samples[("hookline_periodic_task_last_run_timestamp_seconds", (("task", "hookline-sweep"),))] == sweep_sent
    assert samples[("hookline_beat_last_run_timestamp_seconds", ())] == sweep_sent
    assert all(value == 1 for (name, _), value in samples.items() if name == "hookline_health_measure_up")


def test_metrics_leaves_out_what_failed_and_does_not_fail(client, settings, monkeypatch, beat_and_worker_running):
    settings.METRICS_TOKEN = TOKEN
    settings.CACHES = REDIS_DOWN_CACHES

    def broken(now):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(platform_health, "_deliveries_due", broken)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    samples = parse_prometheus(response.content.decode())
    assert samples[("hookline_health_measure_up", (("measure", "deliveries_due"),))] == 0
    assert samples[("hookline_health_measure_up", (("measure", "events_waiting"),))] == 1
    assert samples[("hookline_redis_up", ())] == 0
    assert not [name for name, _ in samples if name.startswith("hookline_deliveries_due")]
    assert ("hookline_worker_last_run_timestamp_seconds", ()) not in samples

    def check_fails(now=None):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(platform_health, "processing_health", check_fails)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert parse_prometheus(response.content.decode()) == {("hookline_health_up", ()): 0}


# --- the admin card and the command --------------------------------------------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return client


def processing_card(client) -> str:
    html = client.get("/admin/").content.decode()
    return re.search(r'<div class="hookline-card[^"]*" id="overview-processing">.*?</table>', html, re.S).group(0)


def test_the_admin_card_is_red_and_says_why_when_stalled(admin_client, beat_and_worker_running, source, destination):
    assert 'class="hookline-card hookline-processing-ok"' in processing_card(admin_client)

    make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(minutes=9))
    card = processing_card(admin_client)
    assert 'class="hookline-card hookline-processing-stalled"' in card and "Stalled" in card
    assert "1 webhook waits to be processed, the oldest received 9 min ago: are workers running?" in card
    assert '/admin/webhooks/webhookevent/?processing=waiting">Waiting to be processed</a>' in card
    assert '/admin/webhooks/delivery/?status__exact=pending"' in card
    assert '/admin/webhooks/delivery/?status__exact=in_flight"' in card
    assert '/admin/django_celery_beat/periodictask/"' in card
    assert "oldest 9 min ago" in card


def test_the_admin_card_is_not_shown_to_staff_without_the_view_permissions(client):
    staff = get_user_model().objects.create_user("staff@hookline.example", "correct horse battery", is_staff=True)
    client.force_login(staff)
    assert "overview-processing" not in client.get("/admin/").content.decode()


def run_command(*args) -> tuple[int, str]:
    from io import StringIO

    out = StringIO()
    try:
        call_command("platform_health", *args, stdout=out)
    except SystemExit as exit:
        return exit.code, out.getvalue()
    return 0, out.getvalue()


def test_the_command_exits_with_the_verdict(beat_and_worker_running, source, destination):
    code, text = run_command()
    assert code == 0 and text.startswith("Processing: OK\n")

    make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(minutes=2))
    code, text = run_command()
    assert code == 1 and text.startswith("Processing: DEGRADED\n  - 1 webhook waits to be processed")

    PeriodicTask.objects.update(last_run_at=timezone.now() - timedelta(hours=1))
    code, output = run_command("--json")
    report = json.loads(output)
    assert code == 2 and report["verdict"] == "stalled"
    assert (
        report["reasons"][0]
        == "beat looks stopped: no periodic task sent for 60 min; retries and lost work wait for its sweep"
    )
    assert report["events_waiting"] == {"count": 1, "oldest_seconds": pytest.approx(120, abs=10), "capped": False}
    assert {task["name"] for task in report["periodic_tasks"]} >= {"hookline-sweep", "hookline-retention"}


def test_the_commands_json_gives_times_in_iso_8601_as_the_other_commands_do(beat_and_worker_running):
    """They came out as str() of a datetime, "2026-12-06 12:44:24.156241+00:00", which jq's
    fromdateiso8601 and many parsers refuse; list_events and show_event write ISO 8601."""
    _, output = run_command("--json")
    report = json.loads(output)
    times = [report["checked_at"], report["beat_last_run_at"], report["worker_ran_at"]]
    times += [task["last_run_at"] for task in report["periodic_tasks"]]
    for moment in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", moment), moment


def set_aside_event(source, *, next_try_in: timedelta) -> WebhookEvent:
    event = make_event(source, status=WebhookEvent.Status.RECEIVED, received_at=timezone.now() - timedelta(hours=2))
    WebhookEvent.objects.filter(pk=event.pk).update(
        processing_failures=3,
        processing_error="ZeroDivisionError: division by zero",
        processing_retry_at=timezone.now() + next_try_in,
    )
    return event


def test_set_aside_webhooks_are_counted_apart_and_make_it_degraded(beat_and_worker_running, source):
    set_aside_event(source, next_try_in=timedelta(minutes=3))
    make_event(source, status=WebhookEvent.Status.RECEIVED)  # just received: on time
    health = processing_health()
    # The set-aside one was received 2 h ago, but it is not late in the queue: it waits for its try.
    assert (health.events_waiting.count, health.events_set_aside.count) == (1, 1)
    assert health.events_set_aside.oldest_seconds == 0  # its next try is not due yet
    assert health.verdict == "degraded"
    assert health.reasons == [
        "1 webhook could not be processed and is set aside; their pages say why; once fixed, the events "
        "list's action processes them now"
    ]


def test_set_aside_webhooks_long_overdue_for_their_try_are_stalled(beat_and_worker_running, source):
    set_aside_event(source, next_try_in=-timedelta(minutes=7))
    health = processing_health()
    assert health.verdict == "stalled"
    assert health.reasons == [
        "1 webhook could not be processed and is set aside; their pages say why, and the first next try is "
        "7 min overdue: are workers running?"
    ]


def test_metrics_and_the_admin_card_show_the_set_aside_webhooks(client, settings, beat_and_worker_running, source):
    set_aside_event(source, next_try_in=timedelta(minutes=3))
    settings.METRICS_TOKEN = TOKEN
    metrics = parse_prometheus(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    assert metrics[("hookline_events_set_aside", ())] == 1
    assert metrics[("hookline_events_waiting", ())] == 0
    user = get_user_model().objects.create_superuser(email="root@hookline.example", password="pw-for-tests-only")
    client.force_login(user)
    card = processing_card(client)
    assert "Set aside (could not be processed)" in card and "?processing=set_aside" in card


def test_the_admin_lists_set_aside_webhooks_and_processes_the_chosen_ones_now(client, source):
    from webhooks.services.processing import process_event_batch

    set_aside = set_aside_event(source, next_try_in=timedelta(minutes=30))
    waiting = make_event(source, status=WebhookEvent.Status.RECEIVED)
    user = get_user_model().objects.create_superuser(email="root@hookline.example", password="pw-for-tests-only")
    client.force_login(user)
    listed = client.get("/admin/webhooks/webhookevent/?processing=set_aside").content.decode()
    assert str(set_aside.pk) in listed and str(waiting.pk) not in listed
    listed = client.get("/admin/webhooks/webhookevent/?processing=waiting").content.decode()
    assert str(waiting.pk) in listed and str(set_aside.pk) not in listed

    answer = client.post(
        "/admin/webhooks/webhookevent/",
        {"action": "process_set_aside_now", "_selected_action": [str(set_aside.pk), str(waiting.pk)]},
        follow=True,
    )
    assert (
        "1 set-aside event will be processed now; 1 selected event was not set aside, or already due."
        in answer.content.decode()
    )
    assert process_event_batch() == 2  # the fault is gone: both are processed in this run
    set_aside.refresh_from_db()
    assert set_aside.status == WebhookEvent.Status.PROCESSED and set_aside.processing_retry_at is None


def test_a_beat_of_the_release_before_the_marks_reads_degraded_not_stalled():
    """During a rolling upgrade from a release before webhooks migration 0036, the previous release's
    beat (which marks no send) keeps sending beside the new web for a while: its tries are recent and
    no send was ever marked. With Redis answering, that is no broker outage: the upgrade trial's
    platform_health read "STALLED: … Is the broker (CELERY_BROKER_URL) up?" until beat restarted."""
    call_command("install_periodic_tasks", stdout=open("/dev/null", "w"))
    PeriodicTask.objects.update(last_run_at=timezone.now() - timedelta(seconds=2))
    worker_ran(seconds_ago=1)
    assert not ProcessMark.objects.filter(name=platform_health.BEAT_SENT_MARK).exists()

    health = processing_health()
    assert health.verdict == "degraded"
    assert [reason for reason in health.reasons if "beat" in reason] == [
        "beat tried a send 2 s ago, but none is marked as having reached the broker: a beat started before "
        "this release (which does not mark its sends) still runs, or the broker (CELERY_BROKER_URL) refuses "
        "them. Restart beat with the release"
    ]
