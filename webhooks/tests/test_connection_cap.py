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

import psycopg
import pytest
from django.db import connection
from django.test import Client

from webhooks.models import WebhookEvent

from .factories import STRIPE_SECRET, make_source
from .signing import post_stripe

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
def full_role():
    """A role with CONNECTION LIMIT 1 whose one connection is taken: its next connect is refused."""
    role = f"hookline_test_capped_{os.getpid()}"
    database = connection.settings_dict["NAME"]
    with psycopg.connect(_admin_dsn(database), autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        # Not a superuser: PostgreSQL ignores a superuser's CONNECTION LIMIT.
        admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    holder = psycopg.connect(_admin_dsn(database).replace(f"user={connection.settings_dict['USER']}", f"user={role}"))
    try:
        yield role
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
    with connecting_as(full_role), caplog.at_level(logging.INFO):
        answer = post_stripe(Client(raise_request_exception=False), source, body, STRIPE_SECRET)

    assert answer.status_code == 503, answer.content
    assert answer.json()["error"] == "unavailable" and answer["Retry-After"]
    assert not WebhookEvent.objects.exists()
    # Django's own line says "Service Unavailable" only: the operator must read why, and for which source.
    reasons = [r.getMessage() for r in caplog.records if r.name == "webhooks.views.ingest"]
    assert any("too many connections for role" in reason for reason in reasons), caplog.text
    assert any(source.ingest_token[-4:] in reason for reason in reasons)
    assert source.ingest_token not in caplog.text
