"""POST /in/<token>/ end to end through Django, with signatures from the providers' packages."""

import hashlib
import hmac
import json
import secrets
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from organizations.models import Organization
from webhooks.models import Source, WebhookEvent
from webhooks.selectors import events_for_organization
from webhooks.services import ingest
from webhooks.services.sources import source_rotate_secret

from .chunked import wsgi_request_chunked
from .factories import STANDARD_SECRET, STRIPE_SECRET, make_source
from .processes import run_on_embedded_sqlite
from .signing import standard_webhooks_headers, stripe_headers

pytestmark = pytest.mark.django_db

STRIPE_BODY = '{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}'


def post(client, source, body, **headers):
    return client.generic("POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **headers)


def test_valid_stripe_webhook_is_stored_exactly(client, organization):
    source = make_source(organization)
    # Odd spacing and key order: what is stored must be the bytes as sent, not re-serialised JSON.
    body = '{"type":"invoice.paid",   "id":"evt_exact","object":"event"}'
    response = post(client, source, body, REMOTE_ADDR="203.0.113.9", **stripe_headers(body, STRIPE_SECRET))

    assert response.status_code == 200
    answer = response.json()
    assert answer["duplicate"] is False
    event = WebhookEvent.objects.get(pk=answer["id"])
    assert bytes(event.body) == body.encode()
    assert event.provider_event_id == "evt_exact"
    assert event.event_type == "invoice.paid"
    assert event.status == WebhookEvent.Status.RECEIVED
    assert event.organization == organization and event.source == source
    assert event.remote_ip == "203.0.113.9"
    assert event.headers["Stripe-Signature"].startswith("t=")


def test_redelivery_is_a_counted_duplicate_answered_200(client, organization):
    source = make_source(organization)
    first = post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET)).json()
    again = post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET))

    assert again.status_code == 200
    assert again.json() == {"id": first["id"], "duplicate": True}
    event = WebhookEvent.objects.get()
    assert event.duplicate_count == 1
    assert event.last_duplicate_at is not None


def test_same_event_id_on_two_sources_is_two_events(client, organization):
    live = make_source(organization, name="live")
    test = make_source(organization, name="test")
    for source in (live, test):
        assert (
            post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET)).json()["duplicate"] is False
        )
    assert WebhookEvent.objects.count() == 2


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_signature"),
        ({"HTTP_STRIPE_SIGNATURE": "garbage"}, "bad_format"),
        (stripe_headers(STRIPE_BODY, "whsec_wrong"), "no_matching_secret"),
        (stripe_headers(STRIPE_BODY, STRIPE_SECRET, timestamp=int(time.time()) - 3600), "timestamp_out_of_tolerance"),
    ],
)
def test_unverified_requests_are_401_with_a_reason_and_recorded(client, organization, headers, code):
    source = make_source(organization)
    response = post(client, source, STRIPE_BODY, **headers)

    assert response.status_code == 401
    assert response.json()["error"] == code
    assert response.json()["detail"]
    assert STRIPE_SECRET not in response.content.decode()
    rejected = WebhookEvent.objects.get()
    assert rejected.status == WebhookEvent.Status.REJECTED
    assert rejected.rejection_code == code
    assert rejected.provider_event_id is None


def test_tampered_body_is_rejected(client, organization):
    source = make_source(organization)
    headers = stripe_headers(STRIPE_BODY, STRIPE_SECRET)
    response = post(client, source, STRIPE_BODY.replace("invoice.paid", "invoice.PAID"), **headers)
    assert response.status_code == 401
    assert not WebhookEvent.objects.exclude(status=WebhookEvent.Status.REJECTED).exists()


def test_rejected_records_are_bounded(client, organization, settings, monkeypatch):
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 3
    monkeypatch.setattr(ingest, "rejection_clock", lambda: 1_800_000_000.0)  # one minute throughout
    settings.REJECTED_BODY_MAX_BYTES = 10
    source = make_source(organization)
    for _ in range(6):
        assert post(client, source, STRIPE_BODY).status_code == 401
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.REJECTED).count() == 3
    assert all(len(bytes(event.body)) == 10 for event in WebhookEvent.objects.all())


def test_rotated_secret_keeps_working_during_the_window_only(client, organization):
    source = make_source(organization)
    source_rotate_secret(source=source, new_secret="whsec_new_secret", overlap_seconds=3600)

    old = post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET))
    body_two = STRIPE_BODY.replace("evt_1NG8", "evt_2NG8")
    new = post(client, source, body_two, **stripe_headers(body_two, "whsec_new_secret"))
    assert (old.status_code, new.status_code) == (200, 200)

    source.previous_secret_expires_at = timezone.now() - timedelta(seconds=1)
    source.save()
    body_three = STRIPE_BODY.replace("evt_1NG8", "evt_3NG8")
    expired = post(client, source, body_three, **stripe_headers(body_three, STRIPE_SECRET))
    assert expired.status_code == 401
    assert expired.json()["error"] == "no_matching_secret"


def test_unknown_or_inactive_source_is_404(client, organization):
    source = make_source(organization)
    assert client.post("/in/not-a-token/", STRIPE_BODY, content_type="application/json").status_code == 404
    source.is_active = False
    source.save()
    assert post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET)).status_code == 404
    organization.is_active = False
    organization.save()
    source.is_active = True
    source.save()
    assert post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET)).status_code == 404
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize(
    ("model", "closing"),
    [
        (Source, {"is_active": False}),
        (Source, {"is_active": False, "deletion_requested_at": timezone.now()}),
        (Organization, {"is_active": False}),
        (Organization, {"is_active": False, "deletion_requested_at": timezone.now()}),
    ],
    ids=["source turned off", "source being deleted", "organization suspended", "organization being deleted"],
)
def test_a_source_closed_in_another_process_is_404_at_once_and_nothing_is_stored(client, organization, model, closing):
    # Another web process turned the source off or asked for its deletion (or its organization's):
    # this one's copy of the source is still cached (update() sends no signal), and the INSERT itself
    # refuses the row.
    source = make_source(organization)
    first = post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET))
    assert first.status_code == 200
    model.objects.filter(pk=source.pk if model is Source else organization.pk).update(**closing)
    assert ingest._source_cache[source.ingest_token][1] is not None  # the stale copy

    body = '{"id": "evt_after_closing", "object": "event", "type": "invoice.paid"}'
    refused = post(client, source, body, **stripe_headers(body, STRIPE_SECRET))
    again = post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET))

    assert (refused.status_code, again.status_code) == (404, 404)
    assert refused.json()["error"] == again.json()["error"] == "unknown_source"
    assert source.ingest_token not in ingest._source_cache or ingest._source_cache[source.ingest_token][1] is None
    event = WebhookEvent.objects.get()  # only the one stored while it was open, not counted again
    assert str(event.pk) == first.json()["id"] and event.duplicate_count == 0


@pytest.mark.parametrize(
    ("model", "closing"),
    [
        (Source, {"is_active": False}),
        (Source, {"is_active": False, "deletion_requested_at": timezone.now()}),
        (Organization, {"is_active": False}),
        (Organization, {"is_active": False, "deletion_requested_at": timezone.now()}),
    ],
    ids=["source turned off", "source being deleted", "organization suspended", "organization being deleted"],
)
def test_a_badly_signed_request_to_a_source_closed_in_another_process_is_404_and_not_recorded(
    client, organization, model, closing
):
    # As for an accepted event: the cached copy of the source must not have the request recorded as
    # "rejected" against a source its tenant turned off or is deleting.
    source = make_source(organization)
    assert post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET)).status_code == 200
    model.objects.filter(pk=source.pk if model is Source else organization.pk).update(**closing)
    assert ingest._source_cache[source.ingest_token][1] is not None  # the stale copy

    body = '{"id": "evt_badly_signed", "object": "event", "type": "invoice.paid"}'
    refused = post(client, source, body, **stripe_headers(body, "whsec_not_the_secret"))

    assert (refused.status_code, refused.json()["error"]) == (404, "unknown_source")
    assert not WebhookEvent.objects.filter(status=WebhookEvent.Status.REJECTED).exists()
    assert source.ingest_token not in ingest._source_cache or ingest._source_cache[source.ingest_token][1] is None


def test_a_badly_signed_request_to_an_open_source_is_still_recorded_as_rejected(client, organization):
    source = make_source(organization)
    body = '{"id": "evt_badly_signed", "object": "event", "type": "invoice.paid"}'
    refused = post(client, source, body, REMOTE_ADDR="203.0.113.9", **stripe_headers(body, "whsec_not_the_secret"))
    assert refused.status_code == 401
    rejected = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED)
    assert (rejected.organization, rejected.source, rejected.claimed_event_id) == (
        organization,
        source,
        "evt_badly_signed",
    )
    assert (rejected.rejection_code, bytes(rejected.body), rejected.remote_ip) == (
        refused.json()["error"],
        body.encode(),
        "203.0.113.9",
    )
    assert rejected.headers["Content-Type"] == "application/json"
    assert rejected.received_at is not None and rejected.provider_event_id is None


@pytest.mark.parametrize("token", ["%00", "abc%00def", "x" * 65, "%C3%A9t%C3%A9", "a.b", "%20"])
def test_a_token_that_cannot_be_ours_is_404_with_a_reason_not_a_500(client, organization, token):
    # A NUL byte made PostgreSQL refuse the lookup (500) for anyone, without credentials.
    for response in (
        client.post(f"/in/{token}/", STRIPE_BODY, content_type="application/json"),
        client.get(f"/in/{token}/"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]


def test_an_ingest_url_without_its_trailing_slash_is_taken_not_redirected(client, organization):
    # Providers do not follow a redirect with their POST body: a 301 would lose the webhook.
    source = make_source(organization)
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}",
        STRIPE_BODY,
        content_type="application/json",
        **stripe_headers(STRIPE_BODY, STRIPE_SECRET),
    )
    assert response.status_code == 200, response.content
    assert bytes(WebhookEvent.objects.get(pk=response.json()["id"]).body) == STRIPE_BODY.encode()
    assert client.post("/in/not-a-token", STRIPE_BODY, content_type="application/json").status_code == 404


def test_body_over_the_limit_is_413(client, organization, settings):
    settings.INGEST_MAX_BODY_BYTES = 100
    source = make_source(organization)
    body = json.dumps({"id": "evt_big", "type": "x", "pad": "a" * 200})
    response = post(client, source, body, **stripe_headers(body, STRIPE_SECRET))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


@pytest.mark.parametrize("body", ["not json at all", "[1, 2, 3]", '{"object": "event"}', '{"id": 5, "type": null}'])
def test_authentic_but_malformed_body_is_400_never_500(client, organization, body):
    source = make_source(organization)
    response = post(client, source, body, **stripe_headers(body, STRIPE_SECRET))
    assert response.status_code in (400, 401)
    assert response.json()["error"]


def test_standard_webhooks_svix_and_webhook_headers(client, organization):
    source = make_source(organization, provider="standard_webhooks", secret=STANDARD_SECRET)
    body = '{"type": "user.created", "data": {"id": "user_29w83sxmDNGwOuEthce5gg56FcC"}, "object": "event"}'
    for prefix, message_id in (("svix", "msg_svix_1"), ("webhook", "msg_webhook_1")):
        response = post(
            client, source, body, **standard_webhooks_headers(body, STANDARD_SECRET, message_id, prefix=prefix)
        )
        assert response.status_code == 200, response.content
    assert sorted(WebhookEvent.objects.values_list("provider_event_id", flat=True)) == ["msg_svix_1", "msg_webhook_1"]
    assert set(WebhookEvent.objects.values_list("event_type", flat=True)) == {"user.created"}

    stale = standard_webhooks_headers(body, STANDARD_SECRET, "msg_old", timestamp=int(time.time()) - 600)
    assert post(client, source, body, **stale).json()["error"] == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("body", ["plain text, not JSON", '{"data": {"id": 1}}', '{"type": 7}', "[1, 2]"])
def test_standard_webhooks_accepts_a_signed_body_without_a_type(client, organization, body):
    # The spec requires neither JSON nor a `type`; the event id is the signed webhook-id.
    source = make_source(organization, provider="standard_webhooks", secret=STANDARD_SECRET)
    response = post(client, source, body, **standard_webhooks_headers(body, STANDARD_SECRET, "msg_untyped"))
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get(pk=response.json()["id"])
    assert (event.provider_event_id, event.event_type, bytes(event.body)) == ("msg_untyped", "", body.encode())
    assert event.status != WebhookEvent.Status.REJECTED


def test_github_published_vector(client, organization):
    # GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
    source = make_source(organization, provider="github", secret="It's a Secret to Everybody")
    headers = {
        "HTTP_X_HUB_SIGNATURE_256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "HTTP_X_GITHUB_EVENT": "ping",
        "HTTP_X_GITHUB_DELIVERY": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }
    response = post(client, source, "Hello, World!", **headers)
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get()
    assert (event.provider_event_id, event.event_type) == ("72d3162e-cc78-11e3-81ab-4c9367dc0958", "ping")
    assert post(client, source, "Hello, World?", **headers).status_code == 401


def test_shopify_published_vector(client, organization):
    source = make_source(organization, provider="shopify", secret="test_secret_key")
    headers = {
        "HTTP_X_SHOPIFY_HMAC_SHA256": "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=",
        "HTTP_X_SHOPIFY_TOPIC": "orders/create",
        "HTTP_X_SHOPIFY_EVENT_ID": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "HTTP_X_SHOPIFY_WEBHOOK_ID": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    }
    response = post(client, source, '{"foo": "bar"}', **headers)
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get()
    assert (event.provider_event_id, event.event_type) == ("98880550-7158-44d4-b7cd-2c97c8a091b5", "orders/create")


def test_shared_token_secret_is_never_stored(client, organization):
    source = make_source(organization, provider="shared_token", secret="s3cr3t-token-value")
    body = '{"type": "INSERT", "table": "orders", "record": {"id": 1}}'
    response = post(client, source, body, HTTP_AUTHORIZATION="s3cr3t-token-value")
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get()
    assert "s3cr3t-token-value" not in json.dumps(event.headers)
    assert post(client, source, body, HTTP_AUTHORIZATION="wrong").status_code == 401


def test_a_source_secret_sent_in_another_header_is_masked_too(client, organization):
    # While a sender is moved to another header name, or when it sends the token twice, the token
    # arrives in a header the source does not name: kept as it came, members read it on the rejected
    # requests page, and a verified request forwarded it to every destination.
    source = make_source(organization, provider="shared_token", secret="s3cr3t-token-value", header="X-Webhook-Token")
    body = '{"type": "INSERT", "table": "orders", "record": {"id": 1}}'
    refused = post(client, source, body, HTTP_X_OLD_TOKEN="s3cr3t-token-value")
    assert refused.status_code == 401
    accepted = post(
        client, source, body, HTTP_X_WEBHOOK_TOKEN="s3cr3t-token-value", HTTP_X_COPY="Token s3cr3t-token-value"
    )
    assert accepted.status_code == 200, accepted.content
    rejected, stored = WebhookEvent.objects.get(status="rejected"), WebhookEvent.objects.get(status="received")
    assert rejected.headers["X-Old-Token"] == stored.headers["X-Copy"] == stored.headers["X-Webhook-Token"]
    assert "s3cr3t-token-value" not in json.dumps(rejected.headers) + json.dumps(stored.headers)


def test_a_non_ascii_source_secret_in_another_header_is_masked_as_the_server_hands_it_over(client, organization):
    # A WSGI server decodes header bytes as latin-1 (PEP 3333): the UTF-8 token a sender writes arrives
    # as other text, which a comparison with the secret's text does not find.
    token = "s3cr3t-tøken-välue"
    source = make_source(organization, provider="shared_token", secret=token, header="X-Webhook-Token")
    body = '{"type": "INSERT", "table": "orders", "record": {"id": 1}}'
    as_received = token.encode("utf-8").decode("latin-1")
    refused = post(client, source, body, HTTP_X_OLD_TOKEN=as_received)
    assert refused.status_code == 401
    accepted = post(client, source, body, HTTP_X_WEBHOOK_TOKEN=as_received, HTTP_X_COPY=f"Token {as_received}")
    assert accepted.status_code == 200, accepted.content
    rejected, stored = WebhookEvent.objects.get(status="rejected"), WebhookEvent.objects.get(status="received")
    assert rejected.headers["X-Old-Token"] == stored.headers["X-Copy"] == stored.headers["X-Webhook-Token"]
    recorded = json.dumps(rejected.headers, ensure_ascii=False) + json.dumps(stored.headers, ensure_ascii=False)
    assert as_received not in recorded and token not in recorded


def test_a_tenant_never_sees_another_tenants_events(client, organization, other_organization):
    mine = make_source(organization)
    theirs = make_source(other_organization)
    post(client, mine, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET))
    other_body = STRIPE_BODY.replace("evt_1NG8", "evt_9NG8")
    post(client, theirs, other_body, **stripe_headers(other_body, STRIPE_SECRET))

    mine_events = events_for_organization(organization=organization)
    theirs_events = events_for_organization(organization=other_organization)
    assert [e.provider_event_id for e in mine_events] == ["evt_1NG8Du2eZvKYlo2CUI79vXWy"]
    assert [e.provider_event_id for e in theirs_events] == ["evt_9NG8Du2eZvKYlo2CUI79vXWy"]
    # A source's token only ever files events under its own organization.
    assert {e.organization_id for e in WebhookEvent.objects.filter(source=theirs)} == {other_organization.pk}


def test_processing_is_scheduled_after_commit_and_broker_failure_still_answers_200(
    client, organization, monkeypatch, django_capture_on_commit_callbacks
):
    from webhooks import tasks

    published = []
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda *a, **k: published.append(1))
    source = make_source(organization)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert post(client, source, STRIPE_BODY, **stripe_headers(STRIPE_BODY, STRIPE_SECRET)).status_code == 200
    assert len(callbacks) == 1 and published == [1]

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.process_events, "apply_async", broker_down)
    from django.core.cache import cache

    cache.clear()
    body = STRIPE_BODY.replace("evt_1NG8", "evt_4NG8")
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, source, body, **stripe_headers(body, STRIPE_SECRET))
    assert response.status_code == 200
    assert WebhookEvent.objects.filter(provider_event_id="evt_4NG8Du2eZvKYlo2CUI79vXWy").exists()


def test_get_without_a_handshake_is_405_and_not_recorded(client, organization):
    source = make_source(organization)
    response = client.get(f"/in/{source.ingest_token}/")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize("method", ["put", "patch", "delete", "options"])
def test_other_methods_get_the_json_405(client, organization, method):
    source = make_source(organization)
    response = getattr(client, method)(f"/in/{source.ingest_token}/")
    assert response.status_code == 405 and response["Allow"] == "POST, GET"
    assert response.json()["error"] == "method_not_allowed"


def test_a_chunked_webhook_is_read_whole_and_verified(organization, settings):
    source = make_source(organization)
    body = json.dumps({"id": "evt_chunked", "object": "event", "type": "invoice.paid"}).encode()
    headers = {"Stripe-Signature": stripe_headers(body.decode(), STRIPE_SECRET)["HTTP_STRIPE_SIGNATURE"]}
    status, payload = wsgi_request_chunked("POST", f"/in/{source.ingest_token}/", body, headers)
    assert status.startswith("200"), payload
    assert bytes(WebhookEvent.objects.get(pk=payload["id"]).body) == body

    settings.INGEST_MAX_BODY_BYTES = 64
    status, payload = wsgi_request_chunked("POST", f"/in/{source.ingest_token}/", b"x" * 65, headers)
    assert status.startswith("413") and payload["error"] == "body_too_large"


def test_a_chunked_body_the_server_cannot_read_is_a_400(organization):
    class BrokenChunks:
        """Stands in for gunicorn's de-chunking input meeting a bad chunk size."""

        def read(self, size=-1):
            raise ValueError("Invalid chunk size: 'zz'")

        readline = read

    source = make_source(organization)
    status, payload = wsgi_request_chunked("POST", f"/in/{source.ingest_token}/", b"", {}, stream=BrokenChunks())
    assert status.startswith("400") and payload["error"] == "unreadable_body"


def test_long_event_ids_that_share_a_start_are_not_duplicates(client, organization):
    source = make_source(organization)
    long_ids = ["evt_" + "a" * 300 + "1", "evt_" + "a" * 300 + "2"]
    answers = []
    for event_id in long_ids + long_ids[:1]:
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        answers.append(post(client, source, body, **stripe_headers(body, STRIPE_SECRET)).json())
    assert [a["duplicate"] for a in answers] == [False, False, True]
    assert answers[2]["id"] == answers[0]["id"]
    stored = WebhookEvent.objects.get(pk=answers[0]["id"]).provider_event_id
    assert len(stored) == 255 and stored.startswith("evt_aaa")


def mailgun_signature(key: str, token: str, timestamp: int | None = None) -> dict:
    """Mailgun's signature object, made as its documentation says (hex HMAC-SHA256 of timestamp + token)."""
    import hashlib
    import hmac

    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": digest}


def test_a_signature_that_does_not_cover_the_body_is_single_use_per_body(client, organization):
    # Mailgun signs only timestamp + token (providers.md §12); the token binds to the first body
    # it arrives with, so an exact retry passes and a forged body does not.
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    signature = mailgun_signature("key-test-signing", token="f4a7c1e0b2d9")

    def send(event_id):
        body = json.dumps({"signature": signature, "event-data": {"id": event_id, "event": "delivered"}})
        return client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")

    first = send("evt-real")
    assert first.status_code == 200 and first.json()["duplicate"] is False
    retry = send("evt-real")
    assert retry.status_code == 200 and retry.json() == {"id": first.json()["id"], "duplicate": True}
    forged = send("evt-forged")
    assert forged.status_code == 401 and forged.json()["error"] == "replayed_signature"
    assert "key-test-signing" not in forged.content.decode()
    assert WebhookEvent.objects.filter(status="received").count() == 1
    assert WebhookEvent.objects.get(status="rejected").rejection_code == "replayed_signature"


def test_moving_digits_between_mailgun_timestamp_and_token_does_not_make_a_new_nonce(client, organization):
    # Mailgun signs timestamp + token with no separator, so a captured signature also verifies with a
    # digit moved across the boundary: a token the single-use check has not seen. The signed time then
    # moves by a factor of ten, which the retention bound or the nonce's window refuses (regression test, passing).
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    genuine = mailgun_signature("key-test-signing", token="5f4a7c1e0b2d9")

    def send(signature, event_id):
        body = json.dumps({"signature": signature, "event-data": {"id": event_id, "event": "delivered"}})
        return client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")

    assert send(genuine, "evt-real").status_code == 200
    timestamp, token = genuine["timestamp"], genuine["token"]
    earlier = {**genuine, "timestamp": timestamp[:-1], "token": timestamp[-1] + token}
    later = {**genuine, "timestamp": timestamp + token[0], "token": token[1:]}
    # Dated in 1975 (older than any retention) or centuries ahead (past the nonce's window).
    for shifted, refusal in ((earlier, "signed_before_retention"), (later, "timestamp_out_of_tolerance")):
        assert shifted["timestamp"] + shifted["token"] == timestamp + token  # the same signed string
        forged = send(shifted, "evt-forged")
        assert forged.status_code == 401 and forged.json()["error"] == refusal
    assert list(WebhookEvent.objects.filter(status="received").values_list("provider_event_id", flat=True)) == [
        "evt-real"
    ]


def test_a_signature_used_at_one_source_cannot_carry_another_body_to_a_source_sharing_its_key(
    client, organization, other_organization
):
    # Mailgun has one webhook signing key per account, so a tenant's sources for two of its domains
    # share it; the signature object travels in the body that both sources' destinations (and the
    # dashboard) show, so it must not verify a forged body at the sibling source either.
    first_domain = make_source(organization, provider="mailgun", secret="key-test-signing", name="domain one")
    second_domain = make_source(organization, provider="mailgun", secret="key-test-signing", name="domain two")
    elsewhere = make_source(other_organization, provider="mailgun", secret="key-test-signing")
    signature = mailgun_signature("key-test-signing", token="tok-shared-key")

    def send(source, event_id):
        body = json.dumps({"signature": signature, "event-data": {"id": event_id, "event": "delivered"}})
        return client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")

    assert send(first_domain, "evt-real").status_code == 200
    forged = send(second_domain, "evt-forged")
    assert forged.status_code == 401 and forged.json()["error"] == "replayed_signature"
    # The same bytes at the sibling source are the genuine event, as for any scheme with a shared
    # secret; another organization's sources are not consulted.
    assert send(second_domain, "evt-real").status_code == 200
    assert send(elsewhere, "evt-other-tenant").status_code == 200
    assert WebhookEvent.objects.filter(source=second_domain, status="received").count() == 1


def test_a_signed_nonce_that_is_not_valid_unicode_is_bound_like_any_other(client, organization):
    # JSON may carry a lone surrogate ("\ud800"), and the Mailgun provider verifies such a token over its
    # surrogatepass bytes; binding it to its body must not fail to encode it (it was a 500).
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    token = "\ud800f4a7c1e0b2d9"
    timestamp = str(int(time.time()))
    digest = hmac.new(b"key-test-signing", (timestamp + token).encode("utf-8", "surrogatepass"), hashlib.sha256)
    signature = {"timestamp": timestamp, "token": token, "signature": digest.hexdigest()}

    def send(event_id):
        body = json.dumps({"signature": signature, "event-data": {"id": event_id, "event": "delivered"}})
        return client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")

    first = send("evt-real")
    assert first.status_code == 200 and first.json()["duplicate"] is False
    forged = send("evt-forged")
    assert forged.status_code == 401 and forged.json()["error"] == "replayed_signature"


def test_the_binding_of_a_signature_to_its_body_survives_a_cache_flush(client, organization):
    # Kept in PostgreSQL: an evicted or flushed cache must not let a captured signature carry a new body.
    from django.core.cache import cache

    from webhooks.models import SignatureNonce

    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    signature = mailgun_signature("key-test-signing", token="tok-flushed")

    def send(event_id):
        body = json.dumps({"signature": signature, "event-data": {"id": event_id, "event": "delivered"}})
        return client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")

    assert send("evt-first").status_code == 200
    cache.clear()
    forged = send("evt-other")
    assert forged.status_code == 401 and forged.json()["error"] == "replayed_signature"
    binding = SignatureNonce.objects.get(source=source)
    assert "tok-flushed" not in (binding.nonce_digest + binding.body_digest)  # digests only


def test_signature_bindings_are_purged_once_their_signatures_are_refused_anyway(organization):
    from webhooks.models import SignatureNonce
    from webhooks.services.lifecycle import purge_expired_events

    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    now = timezone.now()
    old = SignatureNonce.objects.create(
        source=source,
        nonce_digest="a" * 64,
        body_digest="b" * 64,
        created_at=now - timedelta(seconds=SignatureNonce.KEPT_SECONDS + SignatureNonce.CLOCK_SKEW_SECONDS + 60),
    )
    recent = SignatureNonce.objects.create(source=source, nonce_digest="c" * 64, body_digest="d" * 64)
    purge_expired_events(now=now)
    assert list(SignatureNonce.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not SignatureNonce.objects.filter(pk=old.pk).exists()


def test_a_signature_dated_in_the_future_is_refused_when_its_replay_check_could_not_cover_it(client, organization):
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    ahead = mailgun_signature("key-test-signing", token="tok-future", timestamp=int(time.time()) + 3 * 86400)
    body = json.dumps({"signature": ahead, "event-data": {"id": "evt-future", "event": "delivered"}})
    response = client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")
    assert response.status_code == 401 and response.json()["error"] == "timestamp_out_of_tolerance"
    skewed = mailgun_signature("key-test-signing", token="tok-skew", timestamp=int(time.time()) + 60)
    body = json.dumps({"signature": skewed, "event-data": {"id": "evt-skew", "event": "delivered"}})
    assert client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json").status_code == 200


def test_a_signature_older_than_its_replay_check_is_refused(client, organization):
    # The source has no freshness window (Mailgun's default), but the single-use check of the token
    # lasts four days, so an older signature cannot be trusted to be used once.
    source = make_source(organization, provider="mailgun", secret="key-test-signing")
    signature = mailgun_signature("key-test-signing", token="tok-old", timestamp=int(time.time()) - 5 * 86400)
    body = json.dumps({"signature": signature, "event-data": {"id": "evt-old", "event": "delivered"}})
    response = client.post(f"/in/{source.ingest_token}/", data=body, content_type="application/json")
    assert response.status_code == 401 and response.json()["error"] == "timestamp_out_of_tolerance"


# Run in the embedded mode (SQLite) in a process of its own: the pytest database is PostgreSQL.
CLOSED_SOURCE_ON_SQLITE = """
import json
from django.db import connection
from django.test import Client
from organizations.services import organization_create
from webhooks.models import Source, WebhookEvent
from webhooks.tests.factories import STRIPE_SECRET, make_source
from webhooks.tests.signing import stripe_headers

source = make_source(organization_create(name="Acme", slug="acme", owner_email="owner@acme.example"))
client = Client()


def post(event_id, secret):
    body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
    response = client.generic(
        "POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **stripe_headers(body, secret)
    )
    return response.status_code


answers = [post("evt_open", STRIPE_SECRET), post("evt_rejected_while_open", "whsec_not_the_secret")]
Source.objects.filter(pk=source.pk).update(is_active=False)  # as another process would: the copy stays cached
answers.append(post("evt_rejected_once_closed", "whsec_not_the_secret"))
rows = sorted(WebhookEvent.objects.values_list("status", flat=True))
print(json.dumps({"vendor": connection.vendor, "answers": answers, "rows": rows}))
"""


def test_a_badly_signed_request_to_a_closed_source_is_404_and_not_recorded_on_sqlite(tmp_path):
    result = run_on_embedded_sqlite(CLOSED_SOURCE_ON_SQLITE, tmp_path)
    assert result == {"vendor": "sqlite", "answers": [200, 401, 404], "rows": ["received", "rejected"]}


# --- What a forged request may cost in storage -------------------------------------------------


def test_a_rejected_requests_headers_are_kept_within_their_bound(client, organization, settings):
    # gunicorn lets a request carry 100 headers of 8 KiB each: kept whole, one forged request was
    # 761 KB of headers next to its 16 KiB of body, 60 times a minute per source.
    source = make_source(organization)
    padding = {f"HTTP_X_PAD_{i}": secrets.token_urlsafe(6000) for i in range(20)}
    response = post(
        client,
        source,
        STRIPE_BODY,
        HTTP_STRIPE_SIGNATURE="t=1,v1=00",
        HTTP_USER_AGENT="Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        **padding,
    )

    assert response.status_code == 401
    headers = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED).headers
    kept = sum(len(name.encode()) + len(value.encode()) for name, value in headers.items())
    note = headers.pop(ingest.HEADERS_NOT_KEPT)
    assert note.startswith("1 header cut and ") and "(s)" not in note, note
    assert kept - len(ingest.HEADERS_NOT_KEPT) - len(note.encode()) <= settings.REJECTED_HEADERS_MAX_BYTES
    # The headers a tenant debugs with are whole; the huge ones are what gave way.
    assert headers["Stripe-Signature"] == "t=1,v1=00"
    assert headers["User-Agent"].startswith("Stripe/1.0")
    assert headers["Content-Type"] == "application/json"
    pads = [name for name in headers if name.startswith("X-Pad-")]
    assert 0 < len(pads) < 20
    assert "cut" in note and f"{20 - len(pads)} left out" in note


def test_a_rejected_requests_ordinary_headers_are_kept_as_they_came(client, organization):
    source = make_source(organization)
    assert (
        post(client, source, STRIPE_BODY, HTTP_STRIPE_SIGNATURE="t=1,v1=00", HTTP_X_REQUEST_ID="r-1").status_code == 401
    )
    headers = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED).headers
    assert ingest.HEADERS_NOT_KEPT not in headers
    assert headers["Stripe-Signature"] == "t=1,v1=00" and headers["X-Request-Id"] == "r-1"


def test_with_the_cache_down_rejected_records_are_still_bounded_in_each_process(
    client, organization, settings, monkeypatch, caplog
):
    # Recording every rejected request while Redis is down would let whoever knows an ingest URL
    # fill the database at line rate for as long as the outage lasts.
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.5},
        }
    }
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 3
    monkeypatch.setattr(ingest, "rejection_clock", lambda: 1_800_000_000.0)  # one minute throughout
    ingest.forget_rejection_counts()
    source = make_source(organization)
    try:
        answers = [post(client, source, STRIPE_BODY, HTTP_STRIPE_SIGNATURE="t=1,v1=00").status_code for _ in range(6)]
    finally:
        ingest.forget_rejection_counts()

    assert answers == [401] * 6
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.REJECTED).count() == 3
    warnings = [r for r in caplog.records if "counted in this process only" in r.getMessage()]
    assert len(warnings) == 1  # not one per request
