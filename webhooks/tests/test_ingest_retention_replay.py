"""A captured genuine request must not become a new event again once its event is purged.

De-duplication recognises a redelivery by the stored event's id, and the retention purge deletes the
event: a signed time older than the organization's retention is therefore refused at ingest, also for
schemes that check no age by default (Apple, SendGrid, Discord) or whose tolerance the tenant turned
off. Requests are signed by the providers' packages (sendgrid, PyNaCl, PyJWT, stripe) or are their
published vectors, and go through POST /in/<token>/ on PostgreSQL.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import nacl.signing
import pytest
from django.utils import timezone

from webhooks.models import WebhookEvent
from webhooks.services.lifecycle import purge_expired_events

from .factories import STRIPE_SECRET, make_source
from .signing import stripe_headers
from .test_providers_apple_app_store import PKI_MAIN, body_of, notification, options_for, pyjwt_sign
from .test_providers_discord import signed as discord_headers
from .test_providers_sendgrid import SENDER, VECTOR_BODY, VECTOR_KEY, vector_headers

pytestmark = pytest.mark.django_db

DAY = 86400
FIXTURES = Path(__file__).parent / "fixtures"
DISCORD_KEY = nacl.signing.SigningKey(bytes(range(32)))


def post(client, source, body: bytes | str, headers: dict[str, str]):
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return client.generic("POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **extra)


def set_retention(organization, days: int) -> None:
    organization.retention_days = days
    organization.save()  # also clears the ingest's cached source and organization


def assert_refused_for_retention(response, signed_days: str, retention_days: int) -> None:
    assert response.status_code == 401, response.content
    assert response.json() == {
        "error": "signed_before_retention",
        "detail": f"signed {signed_days} days ago; events older than this organization's retention of "
        f"{retention_days} day{'s' if retention_days != 1 else ''} can no longer be told apart from a replay",
    }
    assert not WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED).exists()
    assert WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED).rejection_code == "signed_before_retention"


def sendgrid_body(event_id: str) -> bytes:
    return json.dumps([{"email": "a@example.com", "event": "delivered", "sg_event_id": event_id}]).encode()


def test_sendgrids_published_vector_signed_years_ago_is_refused_with_the_reason(client, organization):
    # sendgrid-python's own test vector: a genuine signature from 2020, which SendGrid's library (no
    # timestamp check) still accepts today.
    source = make_source(organization, provider="sendgrid", secret=VECTOR_KEY)
    signed_days = f"{(time.time() - int(vector_headers()['X-Twilio-Email-Event-Webhook-Timestamp'])) / DAY:.1f}"
    assert_refused_for_retention(post(client, source, VECTOR_BODY, vector_headers()), signed_days, 30)


def test_sendgrid_within_retention_passes_and_past_it_is_refused(client, organization):
    source = make_source(organization, provider="sendgrid", secret=SENDER.public)
    # SendGrid retries for up to 72 hours: such a retry passes with the default 30 days.
    retry = sendgrid_body("sg-retry")
    answer = post(client, source, retry, SENDER.headers(retry, ts=int(time.time() - 3 * DAY)))
    assert answer.status_code == 200 and answer.json()["duplicate"] is False

    old = sendgrid_body("sg-old")
    response = post(client, source, old, SENDER.headers(old, ts=int(time.time() - 31 * DAY)))
    assert response.status_code == 401 and response.json()["error"] == "signed_before_retention"
    assert "signed 31.0 days ago" in response.json()["detail"]
    assert "retention of 30 days" in response.json()["detail"]


def test_a_looser_tolerance_does_not_widen_the_retention_bound_and_a_stricter_one_wins(client, organization):
    loose = make_source(organization, provider="sendgrid", secret=SENDER.public, tolerance=100 * DAY, name="loose")
    body = sendgrid_body("sg-loose")
    response = post(client, loose, body, SENDER.headers(body, ts=int(time.time() - 40 * DAY)))
    assert response.status_code == 401 and response.json()["error"] == "signed_before_retention"

    strict = make_source(organization, provider="sendgrid", secret=SENDER.public, tolerance=3600, name="strict")
    body = sendgrid_body("sg-strict")
    response = post(client, strict, body, SENDER.headers(body, ts=int(time.time() - 2 * 3600)))
    assert response.status_code == 401 and response.json()["error"] == "timestamp_out_of_tolerance"


def test_a_captured_sendgrid_request_resent_after_its_event_was_purged_is_refused(client, organization):
    source = make_source(organization, provider="sendgrid", secret=SENDER.public)
    body = sendgrid_body("sg-captured")
    headers = SENDER.headers(body, ts=int(time.time() - 2 * DAY))
    first = post(client, source, body, headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    # Received when it was signed, delivered since; then the tenant shortens retention to one day.
    WebhookEvent.objects.filter(pk=first.json()["id"]).update(
        status=WebhookEvent.Status.PROCESSED, received_at=timezone.now() - timedelta(days=2)
    )
    set_retention(organization, 1)
    assert purge_expired_events() == 1

    replay = post(client, source, body, headers)
    assert_refused_for_retention(replay, "2.0", 1)


def test_the_minimum_retention_refuses_a_retry_signed_longer_ago_and_passes_a_recent_one(client, organization):
    # The documented choice: a provider retry signed longer ago than a retention shorter than its retry
    # window is refused (kept as a rejected request), never stored as a possibly second event.
    set_retention(organization, 1)
    source = make_source(organization, provider="sendgrid", secret=SENDER.public)
    recent = sendgrid_body("sg-recent")
    assert post(client, source, recent, SENDER.headers(recent, ts=int(time.time() - 23 * 3600))).status_code == 200
    late = sendgrid_body("sg-late")
    response = post(client, source, late, SENDER.headers(late, ts=int(time.time() - 2 * DAY)))
    assert response.status_code == 401 and response.json()["error"] == "signed_before_retention"


def test_discord_signed_longer_ago_than_retention_is_refused_and_a_fresh_one_passes(client, organization):
    source = make_source(organization, provider="discord", secret=DISCORD_KEY.verify_key.encode().hex())
    body = (FIXTURES / "discord" / "APPLICATION_COMMAND.json").read_bytes()
    fresh = post(client, source, body, discord_headers(body, DISCORD_KEY, ts=int(time.time())))
    assert fresh.status_code == 200, fresh.content
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED).count() == 1

    WebhookEvent.objects.all().delete()  # as the purge would, once past retention
    old = post(client, source, body, discord_headers(body, DISCORD_KEY, ts=int(time.time() - 31 * DAY)))
    assert_refused_for_retention(old, "31.0", 30)


def test_apple_signed_date_within_retention_passes_and_past_it_is_refused(client, organization):
    options = options_for(PKI_MAIN)
    source = make_source(organization, provider="apple_app_store", secret="apple", **options)
    # Apple's last retry comes about 6.5 days after the first attempt (1, 12, 24, 48, 72 h apart).
    retried = body_of(pyjwt_sign(notification(signed_date=int((time.time() - 6.5 * DAY) * 1000)), PKI_MAIN))
    answer = post(client, source, retried, {})
    assert answer.status_code == 200 and answer.json()["duplicate"] is False

    WebhookEvent.objects.all().delete()
    old = body_of(pyjwt_sign(notification(signed_date=int((time.time() - 45 * DAY) * 1000)), PKI_MAIN))
    assert_refused_for_retention(post(client, source, old, {}), "45.0", 30)


def test_stripe_with_its_tolerance_turned_off_is_still_bounded_by_retention(client, organization):
    source = make_source(organization, tolerance=0)
    body = '{"id": "evt_old", "object": "event", "type": "invoice.paid"}'
    old = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, STRIPE_SECRET, timestamp=int(time.time() - 31 * DAY)),
    )
    assert old.status_code == 401 and old.json()["error"] == "signed_before_retention"
