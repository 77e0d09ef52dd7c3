"""A captured genuine request must not become a new event again once its event is purged.

De-duplication recognises a redelivery by the stored event's id, and the retention purge deletes the
event: the purge keeps the event's key (PurgedEventKey) for KEPT_DAYS more, so a redelivery is still a
duplicate, and a signed time older than the retention plus those days is refused at ingest, also for
schemes that check no age by default (Apple, SendGrid, Discord) or whose tolerance the tenant turned
off. Requests are signed by the providers' packages (sendgrid, PyNaCl, PyJWT, stripe) or are their
published vectors (SendGrid's, octokit's for GitHub), and go through POST /in/<token>/ on PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nacl.signing
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from webhooks.models import PurgedEventKey, WebhookEvent
from webhooks.services.lifecycle import purge_expired_events

from .factories import STRIPE_SECRET, make_source
from .signing import stripe_headers
from .test_providers_apple_app_store import PKI_MAIN, body_of, notification, options_for, pyjwt_sign
from .test_providers_discord import signed as discord_headers
from .test_providers_github import OCTOKIT_BODY, OCTOKIT_SECRET, OCTOKIT_SHA256
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
        f"{retention_days} day{'s' if retention_days != 1 else ''}, plus the 7 days their ids are kept after it, "
        "can no longer be told apart from a replay",
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
    response = post(client, source, old, SENDER.headers(old, ts=int(time.time() - 38 * DAY)))
    assert response.status_code == 401 and response.json()["error"] == "signed_before_retention"
    assert "signed 38.0 days ago" in response.json()["detail"]
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


def purge_as_if_received_days_ago(event_id, days: float, *, now=None) -> None:
    """The event delivered and received ``days`` ago, then the retention task run."""
    WebhookEvent.objects.filter(pk=event_id).update(
        status=WebhookEvent.Status.PROCESSED, received_at=timezone.now() - timedelta(days=days)
    )
    assert purge_expired_events(now=now) == 1
    assert not WebhookEvent.objects.filter(pk=event_id).exists()


def test_a_captured_sendgrid_request_resent_after_its_event_was_purged_is_a_duplicate(client, organization):
    source = make_source(organization, provider="sendgrid", secret=SENDER.public)
    body = sendgrid_body("sg-captured")
    headers = SENDER.headers(body, ts=int(time.time() - 2 * DAY))
    first = post(client, source, body, headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    set_retention(organization, 1)
    purge_as_if_received_days_ago(first.json()["id"], 2)

    again = post(client, source, body, headers)
    assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "duplicate": True}
    assert not WebhookEvent.objects.exists()


def test_a_captured_github_request_resent_after_its_event_was_purged_is_a_duplicate_for_seven_days(
    client, organization
):
    # octokit's published vector; GitHub's signature covers no time, so only the kept key recognises it.
    source = make_source(organization, provider="github", secret=OCTOKIT_SECRET)
    headers = {"X-Hub-Signature-256": OCTOKIT_SHA256, "X-GitHub-Delivery": "d-captured", "X-GitHub-Event": "push"}
    first = post(client, source, OCTOKIT_BODY, headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    purge_as_if_received_days_ago(first.json()["id"], 31)
    key = PurgedEventKey.objects.get(source=source)
    assert OCTOKIT_BODY.decode() not in str(key.__dict__) and "d-captured" not in str(key.__dict__)

    for _ in range(2):
        again = post(client, source, OCTOKIT_BODY, headers)
        assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "duplicate": True}
    assert not WebhookEvent.objects.exists()

    # The documented limit: once the key is forgotten, the capture is a new event again.
    purge_expired_events(now=timezone.now() + timedelta(days=PurgedEventKey.KEPT_DAYS, hours=1))
    assert not PurgedEventKey.objects.exists()
    late = post(client, source, OCTOKIT_BODY, headers)
    assert late.status_code == 200 and late.json()["duplicate"] is False


def test_forgotten_keys_are_deleted_in_batches_of_the_purge_size(organization):
    # One run's keys all expire together, KEPT_DAYS later: as many as the events it purged, which the
    # purge itself deletes RETENTION_BATCH_SIZE at a time; so are they, not in one statement.
    source = make_source(organization, provider="github", secret=OCTOKIT_SECRET)
    now = timezone.now()
    PurgedEventKey.objects.bulk_create(
        PurgedEventKey(
            source=source,
            event_id_digest=f"{number:064x}",
            original_id=uuid.uuid4(),
            received_at=now - timedelta(days=40),
            forget_after=now - timedelta(hours=1) if number < 5 else now + timedelta(days=1),
        )
        for number in range(6)
    )
    with CaptureQueriesContext(connection) as queries:
        purge_expired_events(batch_size=2, now=now)
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "webhooks_purgedeventkey"')]
    assert len(deletes) == 3, deletes  # 2 + 2 + 1
    assert list(PurgedEventKey.objects.values_list("event_id_digest", flat=True)) == [f"{5:064x}"]


def test_the_purge_keeps_keys_only_of_events_with_an_id_and_never_of_rejected_requests(client, organization):
    source = make_source(organization, provider="github", secret=OCTOKIT_SECRET)
    signed = {"X-Hub-Signature-256": OCTOKIT_SHA256, "X-GitHub-Event": "push"}
    assert post(client, source, OCTOKIT_BODY, signed).json()["duplicate"] is False  # no delivery id
    assert (
        post(client, source, OCTOKIT_BODY, {**signed, "X-Hub-Signature-256": "sha256=" + "0" * 64}).status_code == 401
    )
    WebhookEvent.objects.update(status=WebhookEvent.Status.PROCESSED, received_at=timezone.now() - timedelta(days=31))
    assert purge_expired_events() == 2
    assert not PurgedEventKey.objects.exists()


def test_the_shortest_retention_still_passes_every_genuine_retry_and_counts_it_once(client, organization):
    # Retention may be 1 day; Apple retries for about 6.5 days and SendGrid for 72 hours. The kept key
    # covers both: a retry passes (a duplicate if its event was stored and purged), an older one is refused.
    set_retention(organization, 1)
    source = make_source(organization, provider="sendgrid", secret=SENDER.public)
    retry = sendgrid_body("sg-retry")
    headers = SENDER.headers(retry, ts=int(time.time() - 3 * DAY))
    first = post(client, source, retry, headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    purge_as_if_received_days_ago(first.json()["id"], 3)
    assert post(client, source, retry, headers).json() == {"id": first.json()["id"], "duplicate": True}

    late = sendgrid_body("sg-late")
    response = post(client, source, late, SENDER.headers(late, ts=int(time.time() - 9 * DAY)))
    assert_refused_for_retention(response, "9.0", 1)


def test_discord_signed_longer_ago_than_retention_is_refused_and_a_fresh_one_passes(client, organization):
    source = make_source(organization, provider="discord", secret=DISCORD_KEY.verify_key.encode().hex())
    body = (FIXTURES / "discord" / "APPLICATION_COMMAND.json").read_bytes()
    fresh = post(client, source, body, discord_headers(body, DISCORD_KEY, ts=int(time.time())))
    assert fresh.status_code == 200, fresh.content
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED).count() == 1

    WebhookEvent.objects.all().delete()  # as the purge would, once past retention
    old = post(client, source, body, discord_headers(body, DISCORD_KEY, ts=int(time.time() - 45 * DAY)))
    assert_refused_for_retention(old, "45.0", 30)


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
        **stripe_headers(body, STRIPE_SECRET, timestamp=int(time.time() - 45 * DAY)),
    )
    assert old.status_code == 401 and old.json()["error"] == "signed_before_retention"


def test_gitlab_signing_token_with_its_tolerance_turned_off_is_still_bounded_by_retention(client, organization):
    # GitLab's signing token signs webhook-timestamp as Standard Webhooks does; with the tenant's tolerance
    # at 0 a captured request resent after its key was forgotten was stored as a new event.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    source = make_source(organization, provider="gitlab", secret=secret, tolerance=0)
    body = json.dumps({"object_kind": "push", "ref": "refs/heads/main"})

    def signed(msg_id: str, signed_at: float) -> dict[str, str]:
        when = datetime.fromtimestamp(int(signed_at), tz=UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(signed_at)),
            "webhook-signature": Webhook(secret).sign(msg_id, when, body),
            "X-Gitlab-Event": "Push Hook",
        }

    old = post(client, source, body, signed("msg_old", time.time() - 45 * DAY))
    assert_refused_for_retention(old, "45.0", 30)
    fresh = post(client, source, body, signed("msg_fresh", time.time() - 3 * DAY))
    assert fresh.status_code == 200, fresh.content
