"""A signed request posted again under a fresh, unsigned event id is a duplicate of the event it
repeats, for the providers whose id header is not signed (Provider.dedupes_on_signed_content).

Signatures are GitHub's published vector or HMACs computed as each provider's docs describe (stdlib
hmac), Shopify's published vector, and the standardwebhooks package. Real PostgreSQL, through each
of the three ways a row is stored (writer process, in-process writer, direct INSERT).
"""

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid

import pytest
from django.test import Client

from webhooks.models import WebhookEvent
from webhooks.providers.registry import PROVIDERS
from webhooks.services import ingest_writer
from webhooks.services.ingest_writer import NewEvent, insert_event_batch

from . import test_ingest_races
from .factories import STANDARD_SECRET, STRIPE_SECRET, make_source
from .processes import run_on_embedded_sqlite
from .signing import post_stripe, standard_webhooks_headers
from .test_ingest_races import PATHS
from .test_ingest_writer_process import socket_path  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

# Which of the three ways of storing a row each request takes (writer process, in-process writer,
# direct INSERT): the same fixture as the races' tests.
storage_path = test_ingest_races.storage_path

# GitHub's published example (docs: "Validating webhook deliveries"; providers.md §2).
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = "Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
# Shopify's library's published vector (validate.test.ts; providers.md §3).
SHOPIFY_SECRET = "test_secret_key"
SHOPIFY_BODY = '{"foo": "bar"}'
SHOPIFY_SIGNATURE = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="


def _client() -> Client:
    return Client(raise_request_exception=False)


def _post(client, source, body: str, headers: dict[str, str]):
    return client.generic("POST", f"/in/{source.ingest_token}/", body, content_type="application/json", headers=headers)


def github_headers(delivery: str, body: str = GITHUB_BODY, secret: str = GITHUB_SECRET) -> dict[str, str]:
    # As GitHub's docs compute it: hex HMAC-SHA256 of the raw body, keyed with the secret.
    signature = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": signature, "X-GitHub-Event": "ping", "X-GitHub-Delivery": delivery}


def test_the_published_github_vector_is_what_the_helper_signs():
    assert github_headers("d")["X-Hub-Signature-256"] == GITHUB_SIGNATURE


def test_only_providers_whose_event_id_is_not_signed_dedupe_on_signed_content():
    assert {kind for kind, provider in PROVIDERS.items() if provider.dedupes_on_signed_content} == {
        "github",
        "bitbucket",
        "linear",
    }


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_a_github_delivery_posted_again_under_a_fresh_delivery_id_is_a_duplicate(storage_path, organization):
    source = make_source(organization, provider="github", secret=GITHUB_SECRET)
    client = _client()
    first = _post(client, source, GITHUB_BODY, github_headers("72d3162e-cc78-11e3-81ab-4c9367dc0958"))
    assert first.status_code == 200, first.content
    original = first.json()["id"]

    replay = _post(client, source, GITHUB_BODY, github_headers(str(uuid.uuid4())))
    redelivery = _post(client, source, GITHUB_BODY, github_headers("72d3162e-cc78-11e3-81ab-4c9367dc0958"))

    assert replay.status_code == 200, replay.content
    assert replay.json() == {"id": original, "duplicate": True}
    assert redelivery.json() == {"id": original, "duplicate": True}
    event = WebhookEvent.objects.get()
    assert str(event.id) == original and event.duplicate_count == 2 and event.last_duplicate_at is not None
    assert event.provider_event_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event.signed_content_digest == hashlib.sha256(GITHUB_BODY.encode()).hexdigest()


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_distinct_github_events_are_never_merged(storage_path, organization):
    source = make_source(organization, provider="github", secret=GITHUB_SECRET)
    client = _client()
    bodies = ['{"action":"opened","number":1}', '{"action":"opened","number":2}', '{"action":"closed","number":1}']
    answers = [_post(client, source, body, github_headers(str(uuid.uuid4()), body)) for body in bodies]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.json()["duplicate"] for answer in answers] == [False, False, False]
    assert WebhookEvent.objects.count() == 3
    assert not WebhookEvent.objects.filter(duplicate_count__gt=0).exists()


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_the_same_body_at_another_source_is_its_own_event(storage_path, organization):
    one = make_source(organization, provider="github", secret=GITHUB_SECRET, name="one")
    two = make_source(organization, provider="github", secret=GITHUB_SECRET, name="two")
    client = _client()
    first = _post(client, one, GITHUB_BODY, github_headers(str(uuid.uuid4())))
    second = _post(client, two, GITHUB_BODY, github_headers(str(uuid.uuid4())))
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is False
    assert WebhookEvent.objects.count() == 2


def bitbucket_headers(request_uuid: str, body: str, secret: str) -> dict[str, str]:
    # Bitbucket's X-Hub-Signature carries SHA-256 (providers.md §9).
    signature = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return {"X-Hub-Signature": signature, "X-Event-Key": "repo:push", "X-Request-UUID": request_uuid}


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_a_bitbucket_request_posted_again_under_a_fresh_request_uuid_is_a_duplicate(storage_path, organization):
    source = make_source(organization, provider="bitbucket", secret="bb-secret")
    body = '{"push":{"changes":[{"new":{"target":{"hash":"9fceb02"}}}]}}'
    client = _client()
    first = _post(client, source, body, bitbucket_headers(str(uuid.uuid4()), body, "bb-secret")).json()
    replay = _post(client, source, body, bitbucket_headers(str(uuid.uuid4()), body, "bb-secret"))
    assert replay.json() == {"id": first["id"], "duplicate": True}
    assert WebhookEvent.objects.get().duplicate_count == 1


def linear_headers(delivery: str, body: str, secret: str) -> dict[str, str]:
    # linear-signature: lowercase hex HMAC-SHA256 of the raw body (providers.md §12).
    return {
        "linear-signature": hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest(),
        "Linear-Delivery": delivery,
    }


def linear_body(timestamp_ms: int) -> str:
    return json.dumps({"action": "create", "type": "Issue", "data": {"id": "iss_1"}, "webhookTimestamp": timestamp_ms})


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_linear_replays_within_the_tolerance_are_duplicates_and_a_retry_with_a_new_body_is_too(
    storage_path, organization
):
    source = make_source(organization, provider="linear", secret="lin_wh_secret")
    client = _client()
    body = linear_body(int(time.time() * 1000))
    first = _post(client, source, body, linear_headers("delivery-1", body, "lin_wh_secret")).json()

    replay = _post(client, source, body, linear_headers("forged-fresh-id", body, "lin_wh_secret"))
    # A retry signs a fresh webhookTimestamp: a new body under the same delivery id. The id's index
    # finds it (an INSERT that named only the content index would fail on the id's).
    retry_body = linear_body(int(time.time() * 1000) + 1)
    retry = _post(client, source, retry_body, linear_headers("delivery-1", retry_body, "lin_wh_secret"))

    assert replay.json() == {"id": first["id"], "duplicate": True}
    assert retry.status_code == 200, retry.content
    assert retry.json() == {"id": first["id"], "duplicate": True}
    assert WebhookEvent.objects.get().duplicate_count == 2


def shopify_headers(event_id: str) -> dict[str, str]:
    return {
        "X-Shopify-Hmac-Sha256": SHOPIFY_SIGNATURE,
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Event-Id": event_id,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
    }


def test_the_published_shopify_vector_is_the_hmac_of_its_body():
    digest = hmac.new(SHOPIFY_SECRET.encode(), SHOPIFY_BODY.encode(), hashlib.sha256).digest()
    assert base64.b64encode(digest).decode() == SHOPIFY_SIGNATURE


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_shopify_merges_identical_bodies_only_when_the_tenant_turned_it_on(storage_path, organization):
    merging = make_source(
        organization, provider="shopify", secret=SHOPIFY_SECRET, name="merging", merge_identical_bodies=True
    )
    client = _client()
    first = _post(client, merging, SHOPIFY_BODY, shopify_headers("98880550-7158-44d4-b7cd-2c97c8a091b5")).json()
    retry = _post(client, merging, SHOPIFY_BODY, shopify_headers("98880550-7158-44d4-b7cd-2c97c8a091b5"))
    replay = _post(client, merging, SHOPIFY_BODY, shopify_headers(str(uuid.uuid4())))
    assert retry.json() == {"id": first["id"], "duplicate": True}
    assert replay.json() == {"id": first["id"], "duplicate": True}
    assert WebhookEvent.objects.get(source=merging).duplicate_count == 2

    # Off (the default): Shopify may send distinct events with identical bodies, each its own event.
    default = make_source(organization, provider="shopify", secret=SHOPIFY_SECRET, name="default")
    assert _post(client, default, SHOPIFY_BODY, shopify_headers(str(uuid.uuid4()))).json()["duplicate"] is False
    assert _post(client, default, SHOPIFY_BODY, shopify_headers(str(uuid.uuid4()))).json()["duplicate"] is False
    assert WebhookEvent.objects.filter(source=default, signed_content_digest=None).count() == 2


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_providers_whose_id_is_signed_are_unaffected(storage_path, organization):
    # Standard Webhooks signs its webhook-id: the same body under two signed ids is two events.
    source = make_source(organization, provider="standard_webhooks", secret=STANDARD_SECRET)
    client = _client()
    body = '{"type":"user.created","data":{"id":"u_1"}}'
    for message_id in ("msg_1", "msg_2"):
        answer = client.generic(
            "POST",
            f"/in/{source.ingest_token}/",
            body,
            content_type="application/json",
            **standard_webhooks_headers(body, STANDARD_SECRET, message_id),
        )
        assert answer.json()["duplicate"] is False, answer.content
    stripe = make_source(organization, name="stripe")
    assert post_stripe(client, stripe, '{"id":"evt_1","type":"invoice.paid"}', STRIPE_SECRET).status_code == 200
    assert WebhookEvent.objects.count() == 3
    assert not WebhookEvent.objects.exclude(signed_content_digest=None).exists()


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_concurrent_identical_replays_store_exactly_one_event(storage_path, organization):
    source = make_source(organization, provider="github", secret=GITHUB_SECRET)
    start = threading.Barrier(2)
    answers: list = [None, None]

    def replay(slot: int) -> None:
        client = _client()
        start.wait()
        answers[slot] = _post(client, source, GITHUB_BODY, github_headers(str(uuid.uuid4())))

    threads = [threading.Thread(target=replay, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert [answer.status_code for answer in answers] == [200, 200], [answer.content for answer in answers]
    stored = {answer.json()["id"] for answer in answers}
    assert len(stored) == 1
    assert sorted(answer.json()["duplicate"] for answer in answers) == [False, True]
    event = WebhookEvent.objects.get()
    assert str(event.id) in stored and event.duplicate_count == 1


def _github_row(source, delivery: str | None, body: bytes) -> NewEvent:
    return NewEvent(
        organization_id=source.organization_id,
        source_id=source.pk,
        provider_event_id=delivery,
        event_type="ping",
        body=body,
        headers={},
        remote_ip=None,
        signed_content_digest=hashlib.sha256(body).hexdigest(),
    )


def test_one_batch_mixing_providers_and_repeating_a_content_is_answered_row_by_row(organization):
    github = make_source(organization, provider="github", secret=GITHUB_SECRET)
    stripe = make_source(organization, name="stripe")
    stripe_row = NewEvent(
        organization_id=organization.pk,
        source_id=stripe.pk,
        provider_event_id="evt_1",
        event_type="invoice.paid",
        body=b"{}",
        headers={},
        remote_ip=None,
    )
    batch = [
        _github_row(github, "d-1", b"one"),
        stripe_row,
        _github_row(github, "d-2", b"one"),  # the first posted again in the same batch, a fresh id
        _github_row(github, None, b"two"),
        _github_row(github, "d-1", b"three"),  # the first's id with another body: a duplicate by id
    ]
    outcomes = insert_event_batch(batch)

    assert outcomes == [
        (batch[0].id, True),
        (stripe_row.id, True),
        (batch[0].id, False),
        (batch[3].id, True),
        (batch[0].id, False),
    ]
    assert WebhookEvent.objects.get(pk=batch[0].id).duplicate_count == 2
    assert WebhookEvent.objects.count() == 3
    ingest_writer.writer.stop()


# Run in the embedded mode (SQLite, `make run`) in a process of its own: the pytest database is PostgreSQL.
SIGNED_CONTENT_ON_SQLITE = """
import hashlib, hmac, json
from datetime import timedelta
from django.db import connection
from django.utils import timezone
from django.test import Client
from organizations.services import organization_create
from webhooks.models import WebhookEvent
from webhooks.tests.factories import make_source

secret = "It's a Secret to Everybody"
source = make_source(
    organization_create(name="Acme", slug="acme", owner_email="owner@acme.example"), provider="github", secret=secret
)
client = Client(raise_request_exception=False)


def post(delivery, body):
    signature = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "ping", "X-GitHub-Delivery": delivery}
    response = client.generic(
        "POST", f"/in/{source.ingest_token}/", body, content_type="application/json", headers=headers
    )
    return [response.status_code, response.json().get("duplicate")]


answers = [post("d-1", "Hello, World!"), post("d-1", "Hello, World!"), post("d-2", "Hello, World!")]
# A repeat stamped by a host whose clock is behind the last one's leaves the later time.
ahead = timezone.now() + timedelta(hours=1)
WebhookEvent.objects.update(last_duplicate_at=ahead)
answers += [post("d-1", "Hello, World!"), post("d-3", "Hello, World!")]
counts = list(WebhookEvent.objects.values_list("duplicate_count", flat=True))
kept = list(WebhookEvent.objects.values_list("last_duplicate_at", flat=True)) == [ahead]
print(json.dumps({"vendor": connection.vendor, "answers": answers, "counts": counts, "kept": kept}))
"""


def test_a_redelivery_and_a_replay_are_counted_duplicates_on_sqlite(tmp_path):
    # The embedded mode writes on the request's thread (insert_event): its count of a duplicate
    # must not be PostgreSQL's SQL, or every GitHub redelivery is answered 503 for ever.
    result = run_on_embedded_sqlite(SIGNED_CONTENT_ON_SQLITE, tmp_path)
    assert result == {
        "vendor": "sqlite",
        "answers": [[200, False], [200, True], [200, True], [200, True], [200, True]],
        "counts": [4],
        "kept": True,
    }


GATE_LOCK = 424242
GATE_SQL = f"""
CREATE FUNCTION test_gate_second_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'gated' THEN  -- wait until the test lets both statements go on
        PERFORM pg_advisory_lock_shared({GATE_LOCK});
        PERFORM pg_advisory_unlock_shared({GATE_LOCK});
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_gate_second_rows BEFORE INSERT ON webhooks_webhookevent
    FOR EACH ROW EXECUTE FUNCTION test_gate_second_rows();
"""


def test_two_writers_repeating_each_others_contents_in_crossed_order_both_answer(organization, caplog):
    # Two writers (two hosts' writer processes, or a process's own writer while its writer process
    # restarts) each insert a batch holding both bodies, under fresh ids: each batch's first row
    # takes one content and then waits for the other's, which the other batch took first. The
    # rows are in key order, but a row has two unique keys (its id and its content) and no one
    # order serves both: PostgreSQL fails one statement as a deadlock, and every request of that
    # batch (other tenants' too) was answered 503. Nothing of it was stored: written again, it
    # finds the other batch's rows committed.
    from django.db import connection, connections

    from .test_migrate_lock_timeout import other_connection, wait_until

    source = make_source(organization, provider="github", secret=GITHUB_SECRET)

    def row(delivery: str, body: bytes, event_type: str) -> NewEvent:
        event = _github_row(source, delivery, body)
        event.event_type = event_type
        return event

    batches = [
        [row("a-1", b"first body", "first"), row("a-2", b"second body", "gated")],
        [row("b-1", b"second body", "first"), row("b-2", b"first body", "gated")],
    ]
    outcomes: list = [None, None]

    def write(slot: int) -> None:
        try:
            outcomes[slot] = insert_event_batch(batches[slot])
        except Exception as exc:  # the test asserts on it
            outcomes[slot] = exc
        finally:
            connections.close_all()

    with connection.cursor() as cursor:
        cursor.execute(GATE_SQL)
    try:
        with other_connection(autocommit=True) as gate:
            gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
            writers = [threading.Thread(target=write, args=(slot,), daemon=True) for slot in (0, 1)]
            for writer in writers:
                writer.start()
            try:
                wait_until(
                    lambda: (
                        gate.execute(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())"
                        ).fetchone()[0]
                        == 2
                    ),
                    "both batches at their second row",
                )
            finally:
                gate.execute("SELECT pg_advisory_unlock(%s)", [GATE_LOCK])
                for writer in writers:
                    writer.join(30)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_gate_second_rows ON webhooks_webhookevent")
            cursor.execute("DROP FUNCTION test_gate_second_rows()")

    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes
    assert "deadlock" in caplog.text  # the case this test is about did happen
    stored = {event.pk: bytes(event.body) for event in WebhookEvent.objects.all()}
    assert sorted(stored.values()) == [b"first body", b"second body"]
    for batch, answers in zip(batches, outcomes, strict=True):
        for event, (event_id, inserted) in zip(batch, answers, strict=True):
            assert stored[event_id] == event.body
            assert inserted == (event_id == event.id)
    assert sum(WebhookEvent.objects.values_list("duplicate_count", flat=True)) == 2


# Generic HMAC with an event id header: the header is not signed, so it must not make a replay new.
GENERIC_OPTIONS = {"header": "X-Hub-Signature-256", "prefix": "sha256=", "event_id_header": "X-Delivery"}


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_a_generic_hmac_request_posted_again_under_a_fresh_id_header_is_a_duplicate(storage_path, organization):
    source = make_source(organization, provider="generic_hmac", secret=GITHUB_SECRET, **GENERIC_OPTIONS)
    client = _client()
    signed = {"X-Hub-Signature-256": GITHUB_SIGNATURE}  # GitHub's published vector, as the generic scheme reads it
    first = _post(client, source, GITHUB_BODY, {**signed, "X-Delivery": "delivery-1"})
    assert first.status_code == 200, first.content

    replay = _post(client, source, GITHUB_BODY, {**signed, "X-Delivery": "forged-fresh-id", "X-Event": "other"})
    redelivery = _post(client, source, GITHUB_BODY, {**signed, "X-Delivery": "delivery-1"})

    assert replay.json() == {"id": first.json()["id"], "duplicate": True}
    assert redelivery.json() == {"id": first.json()["id"], "duplicate": True}
    event = WebhookEvent.objects.get()
    assert event.provider_event_id == "delivery-1" and event.duplicate_count == 2


@pytest.mark.parametrize("storage_path", PATHS, indirect=True)
def test_generic_hmac_content_includes_the_signed_timestamp_and_ids_from_the_body_are_unaffected(
    storage_path, organization
):
    # With a timestamp header the signature covers "<t>.<body>": a sender's two sends of one body at
    # two times are two events, a replay of either (under any id header) a duplicate.
    timestamped = make_source(
        organization, provider="generic_hmac", secret="k", name="ts", timestamp_header="X-Timestamp", **GENERIC_OPTIONS
    )
    client = _client()
    body = '{"type":"refresh"}'
    now = int(time.time())

    def headers(t: int, delivery: str) -> dict[str, str]:
        signature = hmac.new(b"k", f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": "sha256=" + signature, "X-Timestamp": str(t), "X-Delivery": delivery}

    one = _post(client, timestamped, body, headers(now, "d-1")).json()
    two = _post(client, timestamped, body, headers(now - 1, "d-2")).json()
    replay = _post(client, timestamped, body, headers(now, "d-3")).json()
    assert one["duplicate"] is False and two["duplicate"] is False and one["id"] != two["id"]
    assert replay == {"id": one["id"], "duplicate": True}

    # An id read from the signed body is the id: the same body under two header ids stays one event
    # by that id, and rows keep no content digest.
    by_field = make_source(
        organization, provider="generic_hmac", secret="k", name="field", event_id_field="id", **GENERIC_OPTIONS
    )
    signed_body = '{"id":"evt_1"}'
    signature = "sha256=" + hmac.new(b"k", signed_body.encode(), hashlib.sha256).hexdigest()
    for delivery in ("d-1", "d-2"):
        _post(client, by_field, signed_body, {"X-Hub-Signature-256": signature, "X-Delivery": delivery})
    event = WebhookEvent.objects.get(source=by_field)
    assert event.provider_event_id == "evt_1" and event.signed_content_digest is None
