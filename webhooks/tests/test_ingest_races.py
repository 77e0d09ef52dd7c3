"""A source deleted while its request is on the way, and other refusals by the database: a clear 4xx,
or a 503 the provider retries, never a 500, and the same answer whichever path stores the row.

Real PostgreSQL throughout: the source is deleted by a real DELETE in another connection, at the
moment each test names.
"""

import json
import logging
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import Client

from webhooks.models import SignatureNonce, Source, WebhookEvent
from webhooks.services import ingest, ingest_writer
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion

from .factories import STRIPE_SECRET, make_source
from .processes import PATIENCE_SECONDS, wait_until
from .signing import post_stripe
from .test_ingest import mailgun_signature
from .test_ingest_writer_process import ServerThread, socket_path  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

PATHS = ["writer_process", "in_process_writer", "direct_insert"]


@pytest.fixture
def storage_path(request, settings, socket_path):  # noqa: F811
    """Which of the three ways of storing a row the request takes (see ingest_writer.store_event)."""
    settings.INGEST_WRITER_SOCKET = ""
    settings.INGEST_GROUP_COMMIT = request.param != "direct_insert"
    server = None
    if request.param == "writer_process":
        server = ServerThread(socket_path)
        settings.INGEST_WRITER_SOCKET = socket_path
    yield request.param
    if server is not None:
        server.stop()
    ingest_writer.writer.stop()


def _client() -> Client:
    # A 500 must show as one, not as an exception raised into the test.
    return Client(raise_request_exception=False)


class DeletedDuringTheInsert:
    """Deletes the source in a connection of its own once the ingest INSERT is about to run, and
    commits that only once the INSERT waits for it: the INSERT saw the source, and its foreign key
    check then finds it gone (what a deletion committing at that very moment does)."""

    def __init__(self, source_id: int):
        self.source_id = source_id
        self.deleted = threading.Event()
        self.saw_the_insert_wait = False
        self.error: BaseException | None = None

    def before_insert(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.deleted.wait(PATIENCE_SECONDS)

    def _run(self) -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(f"DELETE FROM {Source._meta.db_table} WHERE id = %s", [self.source_id])
                self.deleted.set()
                # The INSERT's foreign key check waits for this transaction's lock on the source row.
                self.saw_the_insert_wait = wait_until(self._an_insert_waits, PATIENCE_SECONDS, interval=0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.deleted.set()
        finally:
            connection.close()

    @staticmethod
    def _an_insert_waits() -> bool:
        # Its statement may show as the INSERT or as the COMMIT that runs the deferred check.
        with connection.cursor() as cursor:
            # Within a transaction the activity view is read once and kept: read it anew each time.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0] > 0

    def finish(self) -> None:
        self.thread.join(PATIENCE_SECONDS)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        assert self.saw_the_insert_wait


def _delete_at_the_insert(monkeypatch, source) -> DeletedDuringTheInsert:
    race = DeletedDuringTheInsert(source.pk)
    real_store_event = ingest.store_event

    def store_event(event):  # the direct INSERT, when this returns None, comes right after it
        race.before_insert()
        return real_store_event(event)

    monkeypatch.setattr(ingest, "store_event", store_event)
    return race


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_a_source_deleted_while_its_event_is_inserted_is_an_unknown_source(
    storage_path, organization, monkeypatch, caplog
):
    source = make_source(organization)
    race = _delete_at_the_insert(monkeypatch, source)
    body = '{"id":"evt_raced","object":"event","type":"invoice.paid"}'
    with caplog.at_level(logging.INFO):
        answer = post_stripe(_client(), source, body, STRIPE_SECRET)
    race.finish()

    assert answer.status_code == 404, answer.content
    assert answer.json()["error"] == "unknown_source"
    assert not Source.objects.filter(pk=source.pk).exists()
    assert not WebhookEvent.objects.exists()
    assert source.ingest_token not in ingest._source_cache  # the stale copy is dropped at once
    assert "evt_raced" not in caplog.text and STRIPE_SECRET not in caplog.text


@pytest.fixture
def refused_event_type():
    """A rule the table gained mid-deploy that the running code does not know: rows of this event
    type are refused by the database (a check constraint, so neither a connection failure nor a
    missing source)."""
    table = WebhookEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT test_refused_event_type "
            "CHECK (event_type <> 'refused.by.the.database') NOT VALID"
        )
    yield "refused.by.the.database"
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS test_refused_event_type")


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_a_row_the_database_refuses_for_another_reason_is_a_503_logged_once_without_the_body(
    storage_path, organization, refused_event_type, caplog
):
    source = make_source(organization)
    body = json.dumps({"id": "evt_body_marker_7c1", "object": "event", "type": refused_event_type})
    with caplog.at_level(logging.INFO):
        answer = post_stripe(_client(), source, body, STRIPE_SECRET)

    assert answer.status_code == 503, answer.content
    assert answer.json()["error"] == "unavailable" and answer.json()["detail"]
    assert answer["Retry-After"]
    assert not WebhookEvent.objects.exists()
    logged = [record for record in caplog.records if "test_refused_event_type" in record.getMessage()]
    assert len(logged) == 1, [record.getMessage() for record in caplog.records]
    assert logged[0].levelno == logging.ERROR
    assert "evt_body_marker_7c1" not in caplog.text and STRIPE_SECRET not in caplog.text


def _mailgun_body(token: str, event_id: str) -> str:
    signature = mailgun_signature("key-test-signing", token=token)
    return json.dumps({"signature": signature, "event-data": {"id": event_id, "event": "delivered"}})


@pytest.mark.parametrize("storage_path", ["in_process_writer"], indirect=True)
def test_a_signature_nonce_for_a_source_whose_deletion_just_finished_is_an_unknown_source(storage_path, organization):
    # Another web process finished deleting the source; this one still has its copy (cached for
    # INGEST_SOURCE_CACHE_SECONDS). The nonce must not be bound to a source that is gone.
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    url = f"/in/{source.ingest_token}/"
    first = _client().post(url, data=_mailgun_body("tok-before", "evt-before"), content_type="application/json")
    assert first.status_code == 200
    stale_copy = ingest._source_cache[source.ingest_token]

    assert source_request_deletion(source=source)
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not source_deletion_run(source_id=source.pk).finished:
        assert time.monotonic() < deadline
    assert not Source.objects.filter(pk=source.pk).exists()
    ingest._source_cache[source.ingest_token] = stale_copy  # the other process's copy

    answer = _client().post(url, data=_mailgun_body("tok-after", "evt-after"), content_type="application/json")
    assert answer.status_code == 404, answer.content
    assert answer.json()["error"] == "unknown_source"
    assert not SignatureNonce.objects.exists() and not WebhookEvent.objects.exists()
    assert source.ingest_token not in ingest._source_cache


@pytest.mark.parametrize("storage_path", ["in_process_writer"], indirect=True)
def test_a_signature_nonce_bound_while_its_source_is_deleted_is_an_unknown_source(
    storage_path, organization, monkeypatch
):
    # The source's deletion commits while the nonce's INSERT runs: the INSERT saw the source.
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    race = DeletedDuringTheInsert(source.pk)
    real_nonce_fits_body = ingest._nonce_fits_body

    def nonce_fits_body(*args, **kwargs):
        race.before_insert()
        return real_nonce_fits_body(*args, **kwargs)

    monkeypatch.setattr(ingest, "_nonce_fits_body", nonce_fits_body)
    url = f"/in/{source.ingest_token}/"
    answer = _client().post(url, data=_mailgun_body("tok-raced", "evt-raced"), content_type="application/json")
    race.finish()
    assert answer.status_code == 404, answer.content
    assert answer.json()["error"] == "unknown_source"
    assert not SignatureNonce.objects.exists() and not WebhookEvent.objects.exists()


@pytest.mark.parametrize("storage_path", ["in_process_writer"], indirect=True)
def test_a_refused_request_whose_source_is_deleted_while_its_record_is_inserted_is_an_unknown_source(
    storage_path, organization, monkeypatch
):
    # The record of a refused request is inserted by the web process itself, whichever writer.
    source = make_source(organization)
    race = DeletedDuringTheInsert(source.pk)
    real_may_record = ingest._may_record_rejection

    def may_record_rejection(source_id):
        race.before_insert()
        return real_may_record(source_id)

    monkeypatch.setattr(ingest, "_may_record_rejection", may_record_rejection)
    body = '{"id":"evt_badly_signed","object":"event","type":"invoice.paid"}'
    answer = post_stripe(_client(), source, body, "whsec_not_the_secret")
    race.finish()
    assert answer.status_code == 404, answer.content
    assert answer.json()["error"] == "unknown_source"
    assert not WebhookEvent.objects.exists()


@pytest.fixture
def value_refusing_trigger():
    """A trigger a deploy added that takes a header's value as a number: PostgreSQL refuses the row
    with a DataError whose message quotes that value ('invalid input syntax for type integer: "…"'),
    and whose CONTEXT quotes more of the row."""
    table = WebhookEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_header_as_number() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.headers ? 'X-Quantity' THEN PERFORM (NEW.headers->>'X-Quantity')::integer; END IF; "
            "RETURN NEW; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_header_as_number BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_header_as_number()"
        )
    yield "X-Quantity"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER IF EXISTS test_header_as_number ON {table}")
        cursor.execute("DROP FUNCTION IF EXISTS test_header_as_number()")


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_a_value_the_database_refuses_is_logged_by_its_kind_not_with_the_value(
    storage_path, organization, value_refusing_trigger, caplog
):
    # A DataError's message quotes the value it refused (and its CONTEXT more of the row): a
    # webhook's headers and body are the tenant's data, never written to the operator's logs.
    source = make_source(organization)
    body = '{"id":"evt_value_marker_51d","object":"event","type":"invoice.paid"}'
    with caplog.at_level(logging.INFO):
        answer = post_stripe(_client(), source, body, STRIPE_SECRET, HTTP_X_QUANTITY="hdr_marker_e93")

    assert answer.status_code == 400, answer.content
    assert answer.json()["error"] == "unstorable_request"
    assert not WebhookEvent.objects.exists()
    logged = [record.getMessage() for record in caplog.records if "cannot be stored" in record.getMessage()]
    assert len(logged) == 1, [record.getMessage() for record in caplog.records]
    assert "InvalidTextRepresentation (22P02)" in logged[0]  # still says why
    assert "hdr_marker_e93" not in caplog.text and "evt_value_marker_51d" not in caplog.text


@pytest.mark.parametrize("storage_path", ["direct_insert"], indirect=True)
def test_a_refused_requests_record_the_database_refuses_still_answers_the_refusal(
    storage_path, organization, value_refusing_trigger, caplog
):
    # The record is kept for the tenant to see why; a value the database refuses in it must not
    # turn the sender's 401 into a 500, nor put the value in the logs.
    source = make_source(organization)
    body = '{"id":"evt_badly_signed_4e0","object":"event","type":"invoice.paid"}'
    with caplog.at_level(logging.INFO):
        answer = post_stripe(_client(), source, body, "whsec_not_the_secret", HTTP_X_QUANTITY="hdr_marker_0b7")
    assert answer.status_code == 401, answer.content
    assert answer.json()["error"] == "no_matching_secret"
    assert not WebhookEvent.objects.exists()
    assert "InvalidTextRepresentation (22P02)" in caplog.text
    assert "hdr_marker_0b7" not in caplog.text
