"""Group commit on the ingest path: rows of concurrent requests share one INSERT, each request
is answered only after its row is committed, and one failure never takes others with it."""

import contextlib
import dataclasses
import hashlib
import http.client
import json
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
from django.db import DataError, OperationalError, connection, transaction
from django.utils import timezone

from organizations.models import Organization
from webhooks.models import PurgedEventKey, Source, WebhookEvent
from webhooks.services import ingest_writer
from webhooks.services.ingest_writer import (
    IngestWriter,
    NewEvent,
    SourceClosed,
    event_id_digest,
    insert_event_batch,
    store_event,
)

from .factories import STRIPE_SECRET, make_source
from .signing import post_stripe, stripe_headers


def new_event(source, provider_event_id="evt_1", event_type="invoice.paid", body=b"{}"):
    return NewEvent(
        organization_id=source.organization_id,
        source_id=source.pk,
        provider_event_id=provider_event_id,
        event_type=event_type,
        body=body,
        headers={"Content-Type": "application/json"},
        remote_ip="203.0.113.7",
    )


class GatedBatches:
    """Stands in for insert_event_batch: records batch sizes and holds the first batch until opened,
    so that the rows arriving meanwhile are queued and form the next batch."""

    def __init__(self):
        self.sizes: list[int] = []
        self.first_started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, events):
        self.sizes.append(len(events))
        if len(self.sizes) == 1:
            self.first_started.set()
            assert self.gate.wait(10)
        return insert_event_batch(events)


@pytest.fixture
def stripe_source(organization):
    return make_source(organization)


# --- the batch statement (runs inside the test's transaction) ---------------------------------------


@pytest.mark.django_db
def test_batch_inserts_new_rows_and_counts_duplicates_of_stored_and_of_each_other(stripe_source):
    stored = new_event(stripe_source, "evt_stored")
    [(stored_id, inserted)] = insert_event_batch([stored])
    assert inserted and stored_id == stored.id

    batch = [
        new_event(stripe_source, "evt_new"),
        new_event(stripe_source, "evt_stored"),  # a redelivery of a stored event
        new_event(stripe_source, "evt_twice"),
        new_event(stripe_source, "evt_twice"),  # the same event twice in one batch
        new_event(stripe_source, None),  # providers without ids are never duplicates
        new_event(stripe_source, None),
    ]
    outcomes = insert_event_batch(batch)

    assert outcomes[0] == (batch[0].id, True)
    assert outcomes[1] == (stored.id, False)
    assert outcomes[2] == (batch[2].id, True)
    assert outcomes[3] == (batch[2].id, False)
    assert outcomes[4] == (batch[4].id, True) and outcomes[5] == (batch[5].id, True)
    assert WebhookEvent.objects.get(pk=stored.id).duplicate_count == 1
    twice = WebhookEvent.objects.get(pk=batch[2].id)
    assert twice.duplicate_count == 1 and twice.last_duplicate_at is not None
    assert WebhookEvent.objects.count() == 5


def _insert_by_the_request(events):
    from webhooks.services.ingest import insert_event

    return [insert_event(event) for event in events]


@pytest.mark.django_db
@pytest.mark.parametrize("insert", [insert_event_batch, _insert_by_the_request], ids=["writer", "request"])
@pytest.mark.parametrize("signed_content", [False, True], ids=["by-event-id", "by-content"])
def test_a_repeat_received_by_a_host_whose_clock_is_behind_leaves_the_last_duplicate_time(
    stripe_source, insert, signed_content
):
    # Web hosts' clocks differ by a little: a repeat stamped earlier than the last one counted
    # moved last_duplicate_at back, and "when did it last come?" answered with the older time.
    source = make_source(stripe_source.organization, provider="github", name="github", secret="s")

    def row(delivery):
        return _signed_content_row(source, delivery, b"one") if signed_content else new_event(source, "evt_1")

    [(original_id, inserted)] = insert([row("d-1")])
    assert inserted
    latest = timezone.now()
    insert([dataclasses.replace(row("d-2"), received_at=latest)])
    behind = dataclasses.replace(row("d-3"), received_at=latest - timedelta(seconds=3))

    [(counted_on, inserted)] = insert([behind])

    assert (counted_on, inserted) == (original_id, False)
    event = WebhookEvent.objects.get(pk=original_id)
    assert event.duplicate_count == 2 and event.last_duplicate_at == latest


@pytest.mark.django_db
def test_batch_stores_every_column_as_given(stripe_source):
    event = new_event(stripe_source, "evt_cols", "customer.created", body=b'{"odd":  "spacing"}\x00\xff')
    insert_event_batch([event])

    row = WebhookEvent.objects.get(pk=event.id)
    assert bytes(row.body) == b'{"odd":  "spacing"}\x00\xff'
    assert row.headers == {"Content-Type": "application/json"}
    assert row.remote_ip == "203.0.113.7"
    assert row.event_type == "customer.created"
    assert row.status == WebhookEvent.Status.RECEIVED
    assert row.received_at == event.received_at
    assert (row.organization_id, row.source_id) == (stripe_source.organization_id, stripe_source.pk)
    # A batch of one takes the single-row statement: a redelivery is counted the same way.
    assert insert_event_batch([new_event(stripe_source, "evt_cols")]) == [(event.id, False)]
    assert WebhookEvent.objects.get(pk=event.id).duplicate_count == 1


@pytest.mark.django_db
def test_a_redelivery_of_a_purged_event_is_counted_as_its_duplicate_by_both_statements(
    stripe_source, other_organization
):
    # The retention purge keeps the key of an event it deleted (PurgedEventKey); the batch and the
    # single-row statements answer a redelivery with the purged event's id and insert nothing.
    purged_id = uuid.uuid4()
    PurgedEventKey.objects.create(
        source=stripe_source,
        event_id_digest=event_id_digest("evt_purged"),
        original_id=purged_id,
        received_at=timezone.now() - timedelta(days=31),
        forget_after=timezone.now() + timedelta(days=7),
    )
    elsewhere = make_source(other_organization)

    assert insert_event_batch([new_event(stripe_source, "evt_purged")]) == [(purged_id, False)]
    batch = [
        new_event(stripe_source, "evt_fresh"),
        new_event(stripe_source, "evt_purged"),
        new_event(elsewhere, "evt_purged"),  # the key is the source's only
        new_event(stripe_source, None),
    ]
    outcomes = insert_event_batch(batch)
    assert outcomes == [(batch[0].id, True), (purged_id, False), (batch[2].id, True), (batch[3].id, True)]
    assert not WebhookEvent.objects.filter(pk=purged_id).exists()
    assert WebhookEvent.objects.filter(provider_event_id="evt_purged").get().source_id == elsewhere.pk


SOURCE_CLOSINGS = {
    "turned off": {"is_active": False},
    "being deleted": {"is_active": False, "deletion_requested_at": timezone.now()},
    # Not reachable through the services (asking for deletion turns a source off too); the mark alone
    # must be enough.
    "marked for deletion only": {"deletion_requested_at": timezone.now()},
    "organization suspended": {"organization": {"is_active": False}},
}


def close(source, closing: dict) -> None:
    """Close ``source`` behind every process's cache (update() sends no signal)."""
    if "organization" in closing:
        Organization.objects.filter(pk=source.organization_id).update(**closing["organization"])
    else:
        Source.objects.filter(pk=source.pk).update(**closing)


@pytest.mark.parametrize("closing", list(SOURCE_CLOSINGS.values()), ids=list(SOURCE_CLOSINGS))
@pytest.mark.django_db
def test_rows_of_a_source_that_no_longer_takes_webhooks_are_refused_by_both_statements(
    stripe_source, other_organization, closing
):
    # A web process may still hold a copy of the source from before it was closed: the INSERT
    # itself refuses the rows, neither stored nor counted as duplicates, whatever their batch.
    [(stored_id, _)] = insert_event_batch([new_event(stripe_source, "evt_before")])
    open_source = make_source(other_organization)
    close(stripe_source, closing)

    [alone] = insert_event_batch([new_event(stripe_source, "evt_after")])
    assert isinstance(alone, SourceClosed)
    batch = [
        new_event(open_source, "evt_open"),
        new_event(stripe_source, "evt_after_2"),
        new_event(stripe_source, "evt_before"),  # a redelivery of an event stored while it was open
        new_event(stripe_source, None),
    ]
    outcomes = insert_event_batch(batch)
    assert outcomes[0] == (batch[0].id, True)
    assert all(isinstance(outcome, SourceClosed) for outcome in outcomes[1:]), outcomes
    assert list(WebhookEvent.objects.filter(source=stripe_source).values_list("pk", flat=True)) == [stored_id]
    assert WebhookEvent.objects.get(pk=stored_id).duplicate_count == 0


@pytest.mark.django_db
def test_a_redelivery_of_a_purged_event_of_a_closed_source_is_refused_not_a_duplicate(stripe_source):
    PurgedEventKey.objects.create(
        source=stripe_source,
        event_id_digest=event_id_digest("evt_purged"),
        original_id=uuid.uuid4(),
        received_at=timezone.now() - timedelta(days=31),
        forget_after=timezone.now() + timedelta(days=7),
    )
    Source.objects.filter(pk=stripe_source.pk).update(is_active=False)
    for batch in ([new_event(stripe_source, "evt_purged")], [new_event(stripe_source, "evt_purged")] * 2):
        assert all(isinstance(outcome, SourceClosed) for outcome in insert_event_batch(batch))


@pytest.mark.django_db
def test_a_row_left_out_while_its_source_is_open_again_is_to_be_retried_not_answered(stripe_source):
    # The INSERT ran while the source was off, and it was turned on again before the rows it left
    # out were looked at: nothing was stored, and the provider is asked to try again (503).
    [outcome] = ingest_writer._not_inserted(connection.cursor(), [new_event(stripe_source, "evt_reopened")])
    assert isinstance(outcome, OperationalError)


@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_answers_a_row_of_a_closed_source_with_source_closed(stripe_source, other_organization):
    writer = IngestWriter()
    open_source = make_source(other_organization)
    try:
        assert writer.write(new_event(stripe_source, "evt_open"), 10)[1] is True
        Source.objects.filter(pk=stripe_source.pk).update(is_active=False, deletion_requested_at=timezone.now())
        with pytest.raises(SourceClosed):
            writer.write(new_event(stripe_source, "evt_closed"), 10)
        with pytest.raises(SourceClosed):
            writer.write(new_event(stripe_source, "evt_open"), 10)  # not a duplicate of the stored one
        assert writer.write(new_event(open_source, "evt_elsewhere"), 10)[1] is True
    finally:
        writer.stop()
    assert WebhookEvent.objects.filter(source=stripe_source).count() == 1
    assert WebhookEvent.objects.get(provider_event_id="evt_open").duplicate_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_closed_source_in_a_shared_batch_fails_only_its_own_requests(stripe_source, other_organization, gated_writer):
    writer, gate = gated_writer
    open_source = make_source(other_organization)
    Source.objects.filter(pk=stripe_source.pk).update(is_active=False)
    events = [new_event(open_source, "evt_gate"), new_event(open_source, "evt_a"), new_event(stripe_source, "evt_b")]
    events.append(new_event(open_source, "evt_c"))
    with ThreadPoolExecutor(len(events)) as pool:
        first = pool.submit(writer.write, events[0], 10)
        assert gate.first_started.wait(10)
        rest = [pool.submit(writer.write, event, 10) for event in events[1:]]
        time.sleep(0.3)  # queued behind the held batch: the next batch holds all three
        gate.gate.set()
        assert first.result(10)[1] is True
        assert rest[0].result(10)[1] is True and rest[2].result(10)[1] is True
        with pytest.raises(SourceClosed):
            rest[1].result(10)
    assert gate.sizes == [1, 3]
    assert not WebhookEvent.objects.filter(source=stripe_source).exists()


@pytest.mark.django_db(transaction=True)
def test_the_writer_prepares_its_two_statements_once_with_a_generic_plan_and_nothing_else(stripe_source):
    # Django's connections prepare nothing (prepare_threshold None): prepare=True alone did nothing,
    # and every batch was parsed and planned again.
    connection.close()  # a session of its own: earlier tests' statements are not counted
    for n in range(6):
        insert_event_batch([new_event(stripe_source, f"evt_one_{n}")])
        insert_event_batch([new_event(stripe_source, f"evt_two_{n}"), new_event(stripe_source, None)])
        WebhookEvent.objects.filter(source=stripe_source).count()  # ORM queries on the same connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()
    assert len(prepared) == 2, prepared
    assert all(statement.strip().startswith("INSERT INTO") for statement, _, _ in prepared)
    assert [(generic, custom) for _, generic, custom in prepared] == [(6, 0), (6, 0)]


@pytest.mark.django_db
def test_inside_a_transaction_the_caller_inserts_the_row_itself(stripe_source):
    # A row committed on the writer's own connection would escape the caller's rollback.
    with transaction.atomic():
        assert store_event(new_event(stripe_source)) is None


# --- the writer thread (commits on its own connection) ----------------------------------------------


@pytest.fixture
def gated_writer(monkeypatch):
    gate = GatedBatches()
    monkeypatch.setattr(ingest_writer, "insert_event_batch", gate)
    writer = IngestWriter(linger_seconds=0)
    yield writer, gate
    gate.gate.set()
    writer.stop()


@pytest.mark.django_db(transaction=True)
def test_rows_waiting_together_share_one_commit_and_each_gets_its_own_answer(stripe_source, gated_writer):
    writer, gate = gated_writer
    events = [new_event(stripe_source, f"evt_{n}") for n in range(6)] + [new_event(stripe_source, "evt_3")]
    with ThreadPoolExecutor(len(events)) as pool:
        first = pool.submit(writer.write, events[0], 10)
        assert gate.first_started.wait(10)
        rest = [pool.submit(writer.write, event, 10) for event in events[1:]]
        _wait_until_queued(writer, len(rest))  # every other row is queued behind the held batch
        assert not any(future.done() for future in rest), "nothing is answered before its commit"
        gate.gate.set()
        outcomes = [first.result(10)] + [future.result(10) for future in rest]

    assert gate.sizes == [1, 6]
    assert [inserted for _, inserted in outcomes] == [True] * 6 + [False]
    assert outcomes[6][0] == events[3].id  # the redelivery is answered with the stored event's id
    assert WebhookEvent.objects.count() == 6
    assert WebhookEvent.objects.get(pk=events[3].id).duplicate_count == 1


@pytest.mark.django_db(transaction=True)
def test_a_batch_waits_briefly_for_requests_of_its_process_still_verifying(stripe_source, monkeypatch):
    sizes = []
    monkeypatch.setattr(
        ingest_writer,
        "insert_event_batch",
        lambda events: sizes.append(len(events)) or [(event.id, True) for event in events],
    )
    writer = IngestWriter(linger_seconds=5)
    second_may_write = threading.Event()

    def request(event, wait_for=None):
        with writer.request():
            if wait_for is not None:
                assert wait_for.wait(10)
            return writer.write(event, 10)

    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(request, new_event(stripe_source, "evt_slow"), second_may_write)
            time.sleep(0.1)  # both requests are in flight; only the fast one has its row ready
            fast = pool.submit(request, new_event(stripe_source, "evt_fast"))
            time.sleep(0.3)
            second_may_write.set()
            fast.result(10), slow.result(10)
    finally:
        writer.stop()
    assert sizes == [2]


@pytest.mark.parametrize(
    "unstorable_type",
    ["nul\x00inside", "odd\ud800"],  # NUL: PostgreSQL refuses it; a lone surrogate: psycopg cannot encode it
    ids=["refused by PostgreSQL", "not encodable by psycopg"],
)
@pytest.mark.django_db(transaction=True)
def test_an_unstorable_row_fails_alone_and_its_batch_neighbours_are_committed(
    stripe_source, gated_writer, unstorable_type
):
    writer, gate = gated_writer
    good = [new_event(stripe_source, f"evt_ok_{n}") for n in range(3)]
    bad = new_event(stripe_source, "evt_bad", event_type=unstorable_type)  # bypasses storable_text on purpose
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(writer.write, good[0], 10)
        assert gate.first_started.wait(10)
        futures = [pool.submit(writer.write, event, 10) for event in (good[1], bad, good[2])]
        _wait_until_queued(writer, len(futures))  # so that the bad row and its neighbours share a batch
        gate.gate.set()
        assert first.result(10)[1] is True
        assert futures[0].result(10)[1] is True and futures[2].result(10)[1] is True
        with pytest.raises(DataError):
            futures[1].result(10)
    assert set(WebhookEvent.objects.values_list("provider_event_id", flat=True)) == {"evt_ok_0", "evt_ok_1", "evt_ok_2"}
    assert gate.sizes[:2] == [1, 3]  # the bad row was in its neighbours' batch


@pytest.mark.parametrize(
    "failure",
    [OperationalError("connection refused"), RuntimeError("a bug")],
    ids=["database unreachable: the next batch reconnects", "a bug fails its requests, not the thread"],
)
@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_fails_its_requests_and_the_next_batch_is_written(stripe_source, monkeypatch, failure):
    calls = []

    def failing_once(events):
        calls.append(len(events))
        if len(calls) == 1:
            raise failure
        return insert_event_batch(events)

    monkeypatch.setattr(ingest_writer, "insert_event_batch", failing_once)
    writer = IngestWriter()
    try:
        with pytest.raises(OperationalError):  # a bug too: the view answers 503, not 500
            writer.write(new_event(stripe_source, "evt_a"), 10)
        assert writer.write(new_event(stripe_source, "evt_a"), 10)[1] is True
    finally:
        writer.stop()
    assert WebhookEvent.objects.filter(provider_event_id="evt_a").count() == 1


# --- through the endpoint -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_commit_not_confirmed_in_time_answers_503_and_the_retry_is_a_counted_duplicate(
    client, stripe_source, monkeypatch, settings
):
    settings.INGEST_COMMIT_TIMEOUT_SECONDS = 0.3
    held = threading.Event()

    def slow(events):
        assert held.wait(10)
        return insert_event_batch(events)

    monkeypatch.setattr(ingest_writer, "insert_event_batch", slow)
    body = json.dumps({"id": "evt_slow_db", "object": "event", "type": "invoice.paid"})
    response = post_stripe(client, stripe_source, body, STRIPE_SECRET)
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable" and response["Retry-After"]

    held.set()  # the database answers after all: the row is committed late
    deadline = time.monotonic() + 10
    while not WebhookEvent.objects.filter(provider_event_id="evt_slow_db").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    retry = post_stripe(client, stripe_source, body, STRIPE_SECRET)
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert WebhookEvent.objects.get(provider_event_id="evt_slow_db").duplicate_count == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_webhooks_over_http_are_each_committed_once(live_server, stripe_source):
    """A real threaded HTTP server: 40 webhooks at once, 10 of them redeliveries of one event."""
    address = urllib.parse.urlsplit(live_server.url)
    path = f"/in/{stripe_source.ingest_token}/"
    bodies = [json.dumps({"id": f"evt_http_{n}", "object": "event", "type": "invoice.paid"}) for n in range(30)]
    bodies += [json.dumps({"id": "evt_http_again", "object": "event", "type": "invoice.paid"})] * 10

    def post(body):
        headers = {"Content-Type": "application/json"}
        headers.update({"Stripe-Signature": stripe_headers(body, STRIPE_SECRET)["HTTP_STRIPE_SIGNATURE"]})
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, bodies))

    assert all(status == 200 for status, _ in answers)
    assert WebhookEvent.objects.count() == 31
    stored = {str(pk): event_id for pk, event_id in WebhookEvent.objects.values_list("id", "provider_event_id")}
    for body, (_, answer) in zip(bodies, answers, strict=True):
        assert stored[answer["id"]] == json.loads(body)["id"]  # each answer names the row holding its event
    again = [answer for _, answer in answers[30:]]
    assert sum(not answer["duplicate"] for answer in again) == 1
    assert WebhookEvent.objects.get(provider_event_id="evt_http_again").duplicate_count == 9


@pytest.mark.django_db
def test_event_id_with_a_nul_character_is_stored_not_a_500(client, stripe_source):
    body = '{"id": "evt_\\u0000nul", "object": "event", "type": "invoice.\\u0000paid"}'
    response = post_stripe(client, stripe_source, body, STRIPE_SECRET)
    assert response.status_code == 200
    event = WebhookEvent.objects.get(pk=response.json()["id"])
    assert event.provider_event_id == "evt_\ufffdnul" and event.event_type == "invoice.\ufffdpaid"


@pytest.mark.django_db(transaction=True)
def test_a_writer_whose_thread_ended_starts_a_new_one(stripe_source):
    writer = IngestWriter()
    try:
        assert writer.write(new_event(stripe_source, "evt_before"), 10)[1] is True
        ended = writer._thread
        writer._queue.put(None)  # the thread ends behind the writer's back
        ended.join(5)
        assert not ended.is_alive()
        assert writer.write(new_event(stripe_source, "evt_after"), 10)[1] is True
    finally:
        writer.stop()


@pytest.mark.django_db(transaction=True)
def test_a_nul_in_a_header_is_stored_not_a_500(client, stripe_source):
    body = json.dumps({"id": "evt_nul_header", "object": "event", "type": "invoice.paid"})
    response = post_stripe(client, stripe_source, body, STRIPE_SECRET, HTTP_X_ODD="a\x00b")
    assert response.status_code == 200
    assert WebhookEvent.objects.get(pk=response.json()["id"]).headers["X-Odd"] == "a\ufffdb"


@pytest.mark.django_db(transaction=True)
def test_a_value_the_database_refuses_is_a_400_not_a_500(client, stripe_source, monkeypatch):
    def refuse(events):
        raise DataError("invalid input")

    monkeypatch.setattr(ingest_writer, "insert_event_batch", refuse)
    body = json.dumps({"id": "evt_refused", "object": "event", "type": "invoice.paid"})
    response = post_stripe(client, stripe_source, body, STRIPE_SECRET)
    assert response.status_code == 400
    assert response.json()["error"] == "unstorable_request"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("inline insert", marks=pytest.mark.django_db),
        pytest.param("group-commit writer", marks=pytest.mark.django_db(transaction=True)),
    ],
)
def test_event_id_with_a_lone_surrogate_is_stored_not_a_500(client, stripe_source, path):
    # JSON allows "\ud800"; psycopg cannot encode it, so it must be replaced before the INSERT.
    body = '{"id": "evt_\\ud800lone", "object": "event", "type": "invoice.\\udfffpaid"}'
    response = post_stripe(client, stripe_source, body, STRIPE_SECRET)
    assert response.status_code == 200
    event = WebhookEvent.objects.get(pk=response.json()["id"])
    assert event.provider_event_id == "evt_\ufffdlone" and event.event_type == "invoice.\ufffdpaid"
    assert bytes(event.body) == body.encode()  # the body itself is kept exactly


@pytest.mark.django_db(transaction=True)
def test_rows_committed_before_a_later_round_failed_are_answered_as_stored_not_written_again(stripe_source):
    # Two rows with one provider id go in two rounds (two commits); when the second round is
    # refused, the first round's rows are already stored: they must not be inserted or counted again.
    first = new_event(stripe_source, "evt_two_rounds")
    without_id = new_event(stripe_source, None)
    refused = new_event(stripe_source, "evt_two_rounds", event_type="invoice\x00paid")  # NUL: refused as text
    batch = [ingest_writer._PendingWrite(event) for event in (first, without_id, refused)]

    assert ingest_writer.commit_batch(batch, schedule=False) is True

    assert batch[0].outcome == (first.id, True) and batch[0].error is None
    assert batch[1].outcome == (without_id.id, True) and batch[1].error is None
    assert isinstance(batch[2].error, DataError) and batch[2].outcome is None
    assert all(pending.done.is_set() for pending in batch)
    assert WebhookEvent.objects.get(pk=first.id).duplicate_count == 0
    assert WebhookEvent.objects.filter(source=stripe_source).count() == 2


def _a_bug_after_the_commit(monkeypatch):
    """The first INSERT is committed (autocommit), then reading its returned rows raises: a bug
    in the code after the statement, which must not have the committed rows written again."""
    real_execute = ingest_writer._execute_prepared
    failures = []

    class RowsLostAfterTheCommit:
        def __init__(self, cursor):
            self.cursor = cursor

        def fetchall(self):
            raise RuntimeError("a bug after the commit")

        def __getattr__(self, name):
            return getattr(self.cursor, name)

    def execute_then_fail_once(sql, params):
        cursor = real_execute(sql, params)
        if failures:
            return cursor
        failures.append(sql)
        return RowsLostAfterTheCommit(cursor)

    monkeypatch.setattr(ingest_writer, "_execute_prepared", execute_then_fail_once)
    return failures


@pytest.mark.parametrize("alone", [False, True], ids=["in a batch", "alone"])
@pytest.mark.django_db(transaction=True)
def test_rows_committed_before_a_bug_are_answered_as_stored_not_written_again(stripe_source, monkeypatch, alone):
    # Written again, a row without a provider id was stored twice or refused (its id is taken)
    # and answered as an error, so that the provider's retry stored it once more; a row with
    # one was answered as a duplicate of itself, and its processing was not scheduled.
    (earlier_id, _), *_ = insert_event_batch([new_event(stripe_source, "evt_earlier")])
    without_id = new_event(stripe_source, None)
    if alone:
        events, expected = [without_id], [(without_id.id, True)]
    else:
        keyed, redelivery = new_event(stripe_source, "evt_new"), new_event(stripe_source, "evt_earlier")
        events = [keyed, without_id, redelivery]
        expected = [(keyed.id, True), (without_id.id, True), (earlier_id, False)]
    batch = [ingest_writer._PendingWrite(event) for event in events]
    failures = _a_bug_after_the_commit(monkeypatch)

    assert ingest_writer.commit_batch(batch, schedule=False) is True

    assert failures  # the bug happened, after the commit
    assert [pending.error for pending in batch] == [None] * len(batch)
    assert [pending.outcome for pending in batch] == expected
    assert WebhookEvent.objects.filter(source=stripe_source).count() == 1 + (1 if alone else 2)
    assert WebhookEvent.objects.get(pk=earlier_id).duplicate_count == (0 if alone else 1)  # counted once


@pytest.mark.django_db(transaction=True)
def test_rows_committed_before_a_bug_whose_outcome_cannot_be_read_back_are_not_written_again(
    stripe_source, monkeypatch
):
    # Stored or not is unknown: each request is answered 503 (the provider's retry of an event
    # with an id is then a counted duplicate), never written again to be stored twice.
    events = [new_event(stripe_source, "evt_new"), new_event(stripe_source, None)]
    batch = [ingest_writer._PendingWrite(event) for event in events]
    _a_bug_after_the_commit(monkeypatch)

    def nothing_can_be_read(execute, sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    with connection.execute_wrapper(nothing_can_be_read):
        ingest_writer.commit_batch(batch, schedule=False)

    assert all(isinstance(pending.error, OperationalError) for pending in batch)  # 503
    assert [pending.outcome for pending in batch] == [None, None]
    assert WebhookEvent.objects.filter(source=stripe_source).count() == 2
    assert WebhookEvent.objects.get(provider_event_id="evt_new").duplicate_count == 0


def _signed_content_row(source, delivery: str, body: bytes) -> NewEvent:
    """A row of a provider whose event id is not signed (GitHub): a duplicate by its content too."""
    event = new_event(source, delivery, event_type="ping", body=body)
    event.signed_content_digest = hashlib.sha256(body).hexdigest()
    return event


def _after_the_duplicate_count(monkeypatch, then) -> list:
    """Runs ``then(cursor)`` once, right after the statement that counts the duplicates of a signed
    content has been committed (autocommit), on the writer's cursor."""
    real_execute = ingest_writer._execute_prepared
    counted = []

    class CountThenFail:
        def __init__(self, cursor):
            self.cursor = cursor

        def execute(self, sql, params=None, **kwargs):
            result = self.cursor.execute(sql, params, **kwargs)
            if "duplicate_count = stored.duplicate_count + hits.repeats" in sql and not counted:
                counted.append(sql)
                then(self.cursor)
            return result

        def __getattr__(self, name):
            return getattr(self.cursor, name)

    monkeypatch.setattr(
        ingest_writer, "_execute_prepared", lambda sql, params: CountThenFail(real_execute(sql, params))
    )
    return counted


@pytest.mark.django_db(transaction=True)
def test_duplicates_counted_before_the_answer_was_lost_are_not_written_and_counted_again(stripe_source, monkeypatch):
    # The count was committed, its answer lost (the connection itself still usable for the read-back):
    # written again with the batch's rows that were not stored, the duplicate was counted twice.
    github = make_source(stripe_source.organization, provider="github", name="github", secret="s")
    [(original_id, _)] = insert_event_batch([_signed_content_row(github, "d-1", b"one")])
    new, again = _signed_content_row(github, "d-2", b"two"), _signed_content_row(github, "d-3", b"one")
    batch = [ingest_writer._PendingWrite(new), ingest_writer._PendingWrite(again)]

    def answer_lost(cursor):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    counted = _after_the_duplicate_count(monkeypatch, answer_lost)

    assert ingest_writer.commit_batch(batch, schedule=False) is True

    assert counted
    assert WebhookEvent.objects.get(pk=original_id).duplicate_count == 1
    assert batch[0].outcome == (new.id, True) and batch[0].error is None  # stored: read back
    assert isinstance(batch[1].error, OperationalError)  # counted or not unknown here: the provider retries
    assert WebhookEvent.objects.filter(source=github).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_connection_dropped_after_the_duplicate_count_leaves_it_counted_once(stripe_source, monkeypatch):
    # The server ends the writer's connection right after the count's commit: the count and what the
    # batch's answers need were read in that one statement, so every row is answered as it is.
    github = make_source(stripe_source.organization, provider="github", name="github", secret="s")
    closed = make_source(stripe_source.organization, provider="github", name="closed", secret="s")
    [(original_id, _)] = insert_event_batch([_signed_content_row(github, "d-1", b"one")])
    Source.objects.filter(pk=closed.pk).update(is_active=False)
    rows = [
        _signed_content_row(github, "d-2", b"two"),
        _signed_content_row(github, "d-3", b"one"),
        _signed_content_row(closed, "d-4", b"four"),
    ]
    batch = [ingest_writer._PendingWrite(row) for row in rows]

    def drop_the_connection(cursor):
        with contextlib.suppress(psycopg.OperationalError):
            cursor.connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert cursor.connection.closed

    counted = _after_the_duplicate_count(monkeypatch, drop_the_connection)

    assert ingest_writer.commit_batch(batch, schedule=False) is True

    assert counted
    assert [pending.error for pending in batch[:2]] == [None, None]
    assert [pending.outcome for pending in batch[:2]] == [(rows[0].id, True), (original_id, False)]
    assert isinstance(batch[2].error, SourceClosed)
    connection.close()  # the writer's connection (this thread's) was ended: the next query connects again
    assert WebhookEvent.objects.get(pk=original_id).duplicate_count == 1


def _wait_until_queued(writer: IngestWriter, rows: int, timeout: float = 10.0) -> None:
    """Until ``rows`` rows wait in the writer's queue (a sleep would race a slow thread start on a busy host)."""
    deadline = time.monotonic() + timeout
    while writer._queue.qsize() < rows:
        if time.monotonic() >= deadline:
            raise AssertionError(f"{writer._queue.qsize()} of {rows} rows were queued")
        time.sleep(0.005)


def _old_finished_event(source, provider_event_id: str) -> uuid.UUID:
    [(stored_id, inserted)] = insert_event_batch([new_event(source, provider_event_id)])
    assert inserted
    WebhookEvent.objects.filter(pk=stored_id).update(
        status=WebhookEvent.Status.PROCESSED, received_at=timezone.now() - timedelta(days=40)
    )
    return stored_id


def _in_a_thread(work) -> None:
    from django.db import connection

    try:
        work()
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_redelivery_racing_the_purge_of_its_event_is_still_a_duplicate(stripe_source, monkeypatch):
    # The redelivery's INSERT takes its snapshot before the purge's keys are committed (no key in it)
    # and waits on the event's row, locked by the purge. The purge deletes the event only once that
    # statement has ended: it found the event still stored, a duplicate.
    from django.db import connection as main

    from webhooks.services import lifecycle

    stored_id = _old_finished_event(stripe_source, "evt_raced")
    outcome, threads = [], []
    keep_keys = lifecycle._keep_keys

    def keep_keys_while_a_redelivery_waits(events, *, forget_after):
        kept = keep_keys(events, forget_after=forget_after)
        redelivery = threading.Thread(
            target=_in_a_thread,
            args=(lambda: outcome.extend(insert_event_batch([new_event(stripe_source, "evt_raced")])),),
        )
        redelivery.start()
        threads.append(redelivery)
        assert main.vendor == "postgresql"
        _wait_for_a_backend_waiting_on_a_lock(main)  # the redelivery's INSERT, on the purge's row lock
        assert not outcome
        return kept

    monkeypatch.setattr(lifecycle, "_keep_keys", keep_keys_while_a_redelivery_waits)
    assert lifecycle.purge_expired_events() == 1
    threads[0].join(10)
    assert outcome == [(stored_id, False)]
    assert not WebhookEvent.objects.exists()
    assert PurgedEventKey.objects.get().original_id == stored_id


@pytest.mark.django_db(transaction=True)
def test_the_purge_deletes_no_event_before_a_statement_that_missed_its_key_has_ended(stripe_source, monkeypatch):
    # A batch INSERT takes its snapshot before the purge's keys are committed, then waits on an earlier
    # row of its batch (locked here) and reaches the purged event's row only later. Had the purge
    # deleted the event meanwhile, that row would find neither the event nor a key in its snapshot,
    # and be stored as a new event: the purge waits for the statement to end before deleting.
    # (A batch takes its rows in key order: "evt_first_in_batch" < "evt_later_in_batch".)
    from django.db import connection as main

    from webhooks.services import lifecycle

    stored_id = _old_finished_event(stripe_source, "evt_later_in_batch")
    [(recent_id, _)] = insert_event_batch([new_event(stripe_source, "evt_first_in_batch")])
    outcome, purged, waiting = [], [], threading.Event()
    wait = lifecycle._older_statements_ended

    def noted_wait(timeout):
        waiting.set()
        return wait(timeout)

    monkeypatch.setattr(lifecycle, "_older_statements_ended", noted_wait)
    batch = [new_event(stripe_source, "evt_first_in_batch"), new_event(stripe_source, "evt_later_in_batch")]
    redelivery = threading.Thread(target=_in_a_thread, args=(lambda: outcome.extend(insert_event_batch(batch)),))
    purge = threading.Thread(target=_in_a_thread, args=(lambda: purged.append(lifecycle.purge_expired_events()),))
    with transaction.atomic():
        list(WebhookEvent.objects.select_for_update().filter(pk=recent_id))
        redelivery.start()
        _wait_for_a_backend_waiting_on_a_lock(main)  # the redelivery, on its first row
        purge.start()
        assert waiting.wait(10)
        purge.join(0.5)  # a purge that did not wait would have deleted the event by now
        assert purge.is_alive() and not purged
        assert WebhookEvent.objects.filter(pk=stored_id).exists()
    redelivery.join(10)
    purge.join(10)
    assert outcome == [(recent_id, False), (stored_id, False)]
    assert purged == [1]
    assert list(WebhookEvent.objects.values_list("pk", flat=True)) == [recent_id]


@pytest.mark.django_db(transaction=True)
def test_a_redelivery_between_the_purge_keeping_the_key_and_deleting_the_event_is_a_duplicate(
    stripe_source, monkeypatch
):
    # The key is committed, the event still stored: both ingest paths answer with the stored event.
    from webhooks.services import lifecycle
    from webhooks.services.ingest import insert_event

    stored_id = _old_finished_event(stripe_source, "evt_between")
    answers = []
    wait = lifecycle._older_statements_ended

    def redeliver_then_wait(timeout):
        assert WebhookEvent.objects.filter(pk=stored_id).exists()
        answers.extend(insert_event_batch([new_event(stripe_source, "evt_between")]))
        answers.append(insert_event(new_event(stripe_source, "evt_between")))
        return wait(timeout)

    monkeypatch.setattr(lifecycle, "_older_statements_ended", redeliver_then_wait)
    assert lifecycle.purge_expired_events() == 1
    assert answers == [(stored_id, False), (stored_id, False)]
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_redelivery_stored_without_the_writer_while_the_purge_runs_is_still_a_duplicate(stripe_source):
    # The path without the writer (SQLite, a caller's transaction) looks for the key in its INSERT, not
    # in a statement before it: here the whole purge runs just before that INSERT, and the wait
    # cannot see a request between two statements.
    from django.db import connection

    from webhooks.services import lifecycle
    from webhooks.services.ingest import insert_event

    stored_id = _old_finished_event(stripe_source, "evt_no_writer")
    purged = []

    def purge_before_the_insert(execute, sql, params, many, context):
        if sql.startswith(f"INSERT INTO {WebhookEvent._meta.db_table}") and not purged:
            purge = threading.Thread(
                target=_in_a_thread, args=(lambda: purged.append(lifecycle.purge_expired_events()),)
            )
            purge.start()
            purge.join(10)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(purge_before_the_insert):
        assert insert_event(new_event(stripe_source, "evt_no_writer")) == (stored_id, False)
    assert purged == [1]
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_purge_leaves_a_batch_to_the_next_run_while_a_statement_older_than_its_keys_runs(
    stripe_source, settings, monkeypatch
):
    # A statement that started before the keys were committed may be a redelivery that missed them:
    # past the wait, the batch is not deleted (its key stays); the next run deletes it.
    from django.db import connection as main

    from webhooks.services import lifecycle

    settings.RETENTION_PURGE_WAIT_SECONDS = 0.3
    stored_id = _old_finished_event(stripe_source, "evt_waited")
    waits = []
    real_wait = lifecycle._older_statements_ended

    def noted_wait(timeout):
        ended = real_wait(timeout)
        waits.append((timeout, ended))
        return ended

    monkeypatch.setattr(lifecycle, "_older_statements_ended", noted_wait)

    def long_statement():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")

    sleeper = threading.Thread(target=_in_a_thread, args=(long_statement,))
    sleeper.start()
    try:
        _wait_for_a_statement(main, "SELECT pg_sleep(2)")
        assert lifecycle.purge_expired_events() == 0
        # It waited its setting, found the older statement still running, and did not wait it out.
        assert waits == [(0.3, False)]
        assert sleeper.is_alive()
        assert WebhookEvent.objects.filter(pk=stored_id).exists()
        first_key = PurgedEventKey.objects.get()
        assert first_key.original_id == stored_id
        # A redelivery meanwhile is a duplicate of the event still stored.
        assert insert_event_batch([new_event(stripe_source, "evt_waited")]) == [(stored_id, False)]
    finally:
        sleeper.join(10)
    assert lifecycle.purge_expired_events() == 1
    assert not WebhookEvent.objects.exists()
    key = PurgedEventKey.objects.get()
    # The key counts from the run that deleted the event.
    assert key.original_id == stored_id and key.forget_after > first_key.forget_after


def _wait_for_a_statement(connection, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' "
                "AND datname = current_database() AND query = %s",
                [text],
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError(f"no backend ran {text!r}")


def _wait_for_a_backend_waiting_on_a_lock(connection, timeout: float = 10.0) -> None:
    """Until another backend of this database waits on a lock (a sleep would race a slow thread start on a
    busy host); not of another one: `make test`'s other process runs its tests on its own database."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            # Backend states are read once per transaction unless the snapshot is cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no backend waited on a lock")


@pytest.mark.django_db(transaction=True)
def test_the_prepared_statements_survive_a_migration_that_changes_a_returned_columns_type(stripe_source):
    # A migration run from another host while this process's writer keeps its prepared statements:
    # PostgreSQL refuses them from then on ("cached plan must not change result type"), on every
    # execution of the session. The writer's next batch prepares them again, rather than failing
    # every request until the process is restarted.
    insert_event_batch([new_event(stripe_source, "evt_before_1")])
    insert_event_batch([new_event(stripe_source, "evt_before_2"), new_event(stripe_source, "evt_before_3")])
    table = WebhookEvent._meta.db_table

    def alter(column_type: str) -> None:
        db = connection.settings_dict
        with psycopg.connect(
            dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"], port=db["PORT"] or None
        ) as other:
            other.execute(f"ALTER TABLE {table} ALTER COLUMN provider_event_id TYPE {column_type}")

    alter("varchar(300)")
    try:
        [alone] = insert_event_batch([new_event(stripe_source, "evt_after_1")])
        pair = insert_event_batch([new_event(stripe_source, "evt_after_2"), new_event(stripe_source, "evt_after_3")])
    finally:
        alter("varchar(255)")
    assert alone[1] is True
    assert [inserted for _, inserted in pair] == [True, True]
    assert WebhookEvent.objects.filter(source=stripe_source).count() == 6


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_the_same_new_events_wait_for_each_other_and_never_deadlock(stripe_source):
    # Two writers (the writer processes of two web hosts, or one and a web process writing in-process
    # while it restarts) may hold the same events in different orders: a provider retries an event
    # whose first request is still waiting in a slow batch. Each row's INSERT waits for an
    # uncommitted row of its key; taken in different orders, each batch held a key the other waited
    # for, and PostgreSQL failed one of them, whole (every tenant's row in it a 503). In key order,
    # a batch waits before it holds anything the other needs.
    other_writer_holds_evt_a = threading.Event()
    batch_waits = threading.Event()
    other_writer_outcomes, other_writer_errors = [], []

    def other_writer():
        try:
            with transaction.atomic():  # a batch statement still running: its rows not committed yet
                other_writer_outcomes.extend(insert_event_batch([new_event(stripe_source, "evt_a")]))
                other_writer_holds_evt_a.set()
                assert batch_waits.wait(10)
                other_writer_outcomes.extend(insert_event_batch([new_event(stripe_source, "evt_b")]))
        except Exception as exc:
            other_writer_errors.append(exc)
        finally:
            other_writer_holds_evt_a.set()

    other = threading.Thread(target=_in_a_thread, args=(other_writer,))
    other.start()
    assert other_writer_holds_evt_a.wait(10)
    batch = [new_event(stripe_source, "evt_b"), new_event(stripe_source, "evt_a")]
    with ThreadPoolExecutor(1) as pool:
        outcomes = pool.submit(_in_a_thread_returning, lambda: insert_event_batch(batch))
        _wait_for_a_backend_waiting_on_a_lock(connection)  # the batch, on the other writer's evt_a
        batch_waits.set()
        other.join(10)
        result = outcomes.result(10)

    assert other_writer_errors == []
    assert [inserted for _, inserted in other_writer_outcomes] == [True, True]
    assert result == [(stored_id, False) for stored_id, _ in reversed(other_writer_outcomes)]
    assert WebhookEvent.objects.get(provider_event_id="evt_a").duplicate_count == 1


def _in_a_thread_returning(work):
    try:
        return work()
    finally:
        connection.close()
