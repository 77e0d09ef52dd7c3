"""A managed plan's connection cap reached (Heroku Essential-0: 20 per role): what each process does
when PostgreSQL refuses it a connection ("too many connections for role").

Real PostgreSQL: each test makes a role whose CONNECTION LIMIT is 1, holds that one connection, and
points this thread's database connection at the role, so that its next connect is refused as on a
full plan. The role is dropped afterwards.
"""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis as redis_client
from celery.utils.imports import load_extension_class_names, symbol_by_name
from django.db import connection
from django.test import Client

from config.celery import app as celery_app
from webhooks.models import WebhookEvent
from webhooks.services import processing

from .factories import STRIPE_SECRET, make_source
from .processes import PATIENCE_SECONDS, RedisServer
from .signing import post_stripe

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db(transaction=True)


def _admin_dsn(database: str) -> str:
    given = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        host=given["HOST"] or "localhost",
        port=str(given["PORT"] or 5432),
        user=given["USER"],
        password=given["PASSWORD"] or None,
        dbname=database,
    )


@pytest.fixture
def full_role(transactional_db):
    """A role with CONNECTION LIMIT 1 whose one connection is taken: its next connect is refused."""
    role = f"hookline_test_capped_{os.getpid()}"
    database = connection.settings_dict["NAME"]
    with psycopg.connect(_admin_dsn(database), autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        # Not a superuser: PostgreSQL ignores a superuser's CONNECTION LIMIT.
        admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
        # What the application's role may do, for whatever the test runs once a connection is free.
        admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    holder = psycopg.connect(_admin_dsn(database).replace(f"user={connection.settings_dict['USER']}", f"user={role}"))
    try:
        yield role, holder
    finally:
        holder.close()
        with psycopg.connect(_admin_dsn(database), autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


@contextlib.contextmanager
def connecting_as(role: str):
    """This thread's Django connection connects as ``role`` until the block ends."""
    saved = connection.settings_dict["USER"]
    connection.close()
    connection.settings_dict["USER"] = role
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["USER"] = saved


def test_ingest_refused_a_connection_answers_503_and_logs_why(organization, full_role, settings, caplog):
    settings.INGEST_GROUP_COMMIT = False  # the request's own thread connects (no writer)
    settings.INGEST_WRITER_SOCKET = ""
    source = make_source(organization)
    body = json.dumps({"id": "evt_capped_1", "object": "event", "type": "invoice.paid"})
    role, _ = full_role
    with connecting_as(role), caplog.at_level(logging.INFO):
        answer = post_stripe(Client(raise_request_exception=False), source, body, STRIPE_SECRET)

    assert answer.status_code == 503, answer.content
    assert answer.json()["error"] == "unavailable" and answer["Retry-After"]
    assert not WebhookEvent.objects.exists()
    # Django's own line says "Service Unavailable" only: the operator must read why, and for which source.
    reasons = [r.getMessage() for r in caplog.records if r.name == "webhooks.views.ingest"]
    assert any("too many connections for role" in reason for reason in reasons), caplog.text
    assert any(source.ingest_token[-4:] in reason for reason in reasons)
    assert source.ingest_token not in caplog.text


def _procfile_beat_scheduler():
    """The scheduler class the Procfile's beat line names with -S (an alias such as "django" or a path)."""
    beat = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("beat:"))
    name = beat.split(" -S ", 1)[1].split()[0]
    return symbol_by_name(name, aliases=dict(load_extension_class_names("celery.beat_schedulers")))


def test_beat_started_while_the_database_refuses_it_waits_then_starts(full_role, monkeypatch, caplog):
    # Made as beat makes it: django-celery-beat's scheduler reads its tables right away. Refused a
    # connection there, beat ended (CRITICAL), and the platform's restarts of a crashing process
    # slow down to minutes apart: no sweep ran meanwhile.
    monkeypatch.setattr("config.beat.RETRY_SECONDS", 0.05)
    scheduler_class = _procfile_beat_scheduler()
    role, holder = full_role
    outcome = {}

    def start_beat():
        try:
            with connecting_as(role):
                outcome["scheduler"] = scheduler_class(app=celery_app)
        except Exception as exc:
            outcome["error"] = exc

    starting = threading.Thread(target=start_beat)
    with caplog.at_level(logging.WARNING):
        starting.start()
        deadline = time.monotonic() + PATIENCE_SECONDS
        while starting.is_alive() and "beat waits for the database" not in caplog.text:
            assert time.monotonic() < deadline, "beat neither started nor said it waits"
            time.sleep(0.01)
        holder.close()  # a connection is free again
        starting.join(PATIENCE_SECONDS)

    assert "error" not in outcome, outcome
    assert "too many connections for role" in caplog.text
    assert "hookline-sweep" in outcome["scheduler"].schedule


# Heroku's smallest Redis (Mini) takes 20 clients: web, worker and beat share them with room to scale out.
WORKER_REDIS_CLIENTS_AT_REST = 6


def test_the_procfile_worker_holds_few_redis_clients_at_rest(tmp_path):
    # Celery's gossip, mingle and heartbeat each keep a Redis connection in the worker's main process
    # that Hookline uses nothing of: with them, one idle worker held 11 of a Mini plan's 20 clients,
    # and one worker, one web dyno and beat reached the cap before any scaling out.
    redis = RedisServer()
    redis.start()
    worker = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:"))
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("CELERY_", "WORKER_", "DJANGO_"))
    }
    url = f"redis://127.0.0.1:{redis.port}/0"
    environment.update(REDIS_URL=url, CELERY_QUEUE=f"connection-cap-{redis.port}")
    # `celery` as the platform finds it: on the PATH of the environment the tests run in.
    environment["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environment.get("PATH", "")])
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["sh", "-c", "exec " + worker.split(": ", 1)[1]],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = redis_client.Redis.from_url(url)
    try:
        deadline = time.monotonic() + PATIENCE_SECONDS
        while " ready." not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        # Settled: the same count on three looks in a row (the pool processes connect as they start).
        counts = []
        while len(counts) < 3 or len(set(counts[-3:])) > 1:
            assert time.monotonic() < deadline, counts
            counts.append(len(client.client_list()) - 1)  # not this test's own
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(PATIENCE_SECONDS)
        client.close()
        redis.stop()
    assert counts[-1] <= WORKER_REDIS_CLIENTS_AT_REST, counts


def test_a_sweep_refused_a_connection_says_so_once(full_role, caplog):
    role, _ = full_role
    with connecting_as(role), caplog.at_level(logging.INFO):
        result = processing.sweep()

    # Every step needs the database: none ran, and the next sweep tries them all.
    assert result["failed_steps"] == len(result) - 1, result
    lines = [record for record in caplog.records if record.name == "webhooks.services.processing"]
    assert len(lines) == 1, [record.getMessage() for record in lines]
    assert lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert "too many connections for role" in lines[0].getMessage()
