"""Ingest for a source whose previous secret (a rotation's overlap) no key of this process decrypts,
its current one reading (a key retired too early, the current secret written later under the new
key). It answered 503 to every request of that source for the whole overlap, also to those signed
with the current secret: providers give up on 503s in the end, and their webhooks were lost."""

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from webhooks.fields import UNKNOWN_KEY
from webhooks.models import Source, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import processing, secret_health
from webhooks.services.ingest import forget_cached_sources
from webhooks.services.secrets import replace_secret

from .factories import STRIPE_SECRET, make_source
from .signing import post_stripe
from .test_providers_gitlab import SIGNING as GITLAB_SIGNING_TOKEN
from .test_providers_gitlab import TOKEN as GITLAB_SECRET_TOKEN
from .test_providers_gitlab import fixture as gitlab_fixture
from .test_providers_gitlab import official as gitlab_signed
from .test_providers_x import CRC_RESPONSE, CRC_TOKEN
from .test_providers_x import SECRET as X_SECRET
from .test_providers_zoom import PLAIN_TOKEN
from .test_providers_zoom import reference as zoom_signature
from .test_secret_unreadable_paths import store_raw
from .test_unreadable_secret_tenant_pages import retired_key_token

pytestmark = pytest.mark.django_db

CURRENT_STRIPE_SECRET = "whsec_" + "c" * 32
GARBAGE_STRIPE_SECRET = "whsec_" + "g" * 32


@pytest.fixture(autouse=True)
def _no_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


def rotated_with_previous_unreadable(organization, provider="stripe", previous=STRIPE_SECRET, current=None):
    """A source rotated an hour's overlap ago from ``previous`` to ``current``, whose previous secret is
    now under a key retired too early (made before this process started), its current one reading."""
    source = make_source(organization, provider=provider, secret=previous)
    with transaction.atomic():
        replace_secret(source, current or CURRENT_STRIPE_SECRET, 3600)
    store_raw(Source, source.pk, retired_key_token(previous), column="previous_secret")
    forget_cached_sources()
    return source


def stripe_body(event_id: str) -> str:
    return json.dumps({"id": event_id, "type": "invoice.paid"})


def test_a_request_signed_with_the_current_secret_is_accepted(client, organization):
    source = rotated_with_previous_unreadable(organization)

    response = post_stripe(client, source, stripe_body("evt_current"), CURRENT_STRIPE_SECRET)

    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get(source=source)
    assert event.provider_event_id == "evt_current" and event.status == WebhookEvent.Status.RECEIVED
    # The previous secret is still one no key decrypts: the operator is told, as for any other.
    assert set(secret_health.shared().counts) == {("ingest", UNKNOWN_KEY)}
    assert client.get("/readyz").json()["status"] == "degraded"


@pytest.mark.parametrize("signed_with", [STRIPE_SECRET, GARBAGE_STRIPE_SECRET], ids=["previous", "garbage"])
def test_a_request_matching_no_readable_secret_during_the_overlap_is_a_503_not_a_refusal(
    client, organization, caplog, signed_with
):
    source = rotated_with_previous_unreadable(organization)
    assert post_stripe(client, source, stripe_body("evt_current"), CURRENT_STRIPE_SECRET).status_code == 200
    failures_when_read = secret_health.shared().counts[("ingest", UNKNOWN_KEY)]

    with caplog.at_level(logging.ERROR, logger="webhooks.services.ingest"):
        first = post_stripe(client, source, stripe_body("evt_other"), signed_with)
        again = post_stripe(client, source, stripe_body("evt_other"), signed_with)

    # It may be signed with the previous secret, which still verifies: not known to be forged, so not
    # refused (a 401 the provider would not retry) nor recorded as refused; the provider retries a 503.
    for response in (first, again):
        assert response.status_code == 503 and response["Retry-After"] == "30"
        assert response.json()["error"] == "unavailable"
        assert (
            "the previous one, which still verifies during the secret's rotation, cannot be read"
            in (response.json()["detail"])
        )
    assert list(WebhookEvent.objects.filter(source=source).values_list("provider_event_id", flat=True)) == [
        "evt_current"
    ]
    # Each counts as a failure, as a request that needed an unreadable secret did before (the source
    # was read, and its read counted, by the first request).
    assert secret_health.shared().counts == {("ingest", UNKNOWN_KEY): failures_when_read + 2}
    assert client.get("/readyz").json()["status"] == "degraded"
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "webhooks.services.ingest" and record.levelno == logging.ERROR
    ]
    assert len(logged) == 2 and all(f"source {source.pk} not verified" in line for line in logged)
    assert not any(STRIPE_SECRET in line or signed_with in line for line in logged)


def test_a_request_no_secret_could_verify_is_still_refused_during_the_overlap(client, organization):
    # No signature at all: no secret, readable or not, would verify it.
    source = rotated_with_previous_unreadable(organization)

    response = client.post(f"/in/{source.ingest_token}/", stripe_body("evt_unsigned"), content_type="application/json")

    assert response.status_code == 401 and response.json()["error"] == "missing_signature"
    assert WebhookEvent.objects.get(source=source).rejection_code == "missing_signature"


def test_once_the_overlap_is_over_a_wrong_signature_is_refused_again(client, organization):
    source = rotated_with_previous_unreadable(organization)
    # Over, and not erased yet (forget_expired_previous_secrets runs now and then): its token stays.
    Source.objects.filter(pk=source.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    forget_cached_sources()

    refused = post_stripe(client, source, stripe_body("evt_forged"), GARBAGE_STRIPE_SECRET)
    assert refused.status_code == 401 and refused.json()["error"] == "no_matching_secret"
    assert WebhookEvent.objects.get(source=source).status == WebhookEvent.Status.REJECTED

    accepted = post_stripe(client, source, stripe_body("evt_current"), CURRENT_STRIPE_SECRET)
    assert accepted.status_code == 200
    assert WebhookEvent.objects.filter(source=source, provider_event_id="evt_current").exists()


def test_handshakes_answer_with_the_current_secret_during_the_overlap(client, organization):
    # Zoom's url_validation hashes its token with the secret that signed the request; X's CRC GET is
    # unsigned and answered with the current secret: neither needs the previous one.
    zoom = rotated_with_previous_unreadable(
        organization, provider="zoom", previous="zoom_previous_secret", current="zoom_current_secret"
    )
    body = json.dumps({"event": "endpoint.url_validation", "payload": {"plainToken": PLAIN_TOKEN}}).encode()
    now = int(time.time())
    answer = client.generic(
        "POST",
        f"/in/{zoom.ingest_token}/",
        body,
        content_type="application/json",
        HTTP_X_ZM_SIGNATURE=zoom_signature("zoom_current_secret", body, now),
        HTTP_X_ZM_REQUEST_TIMESTAMP=str(now),
    )
    assert answer.status_code == 200, answer.content
    expected = hmac.new(b"zoom_current_secret", PLAIN_TOKEN.encode(), hashlib.sha256).hexdigest()
    assert answer.json() == {"plainToken": PLAIN_TOKEN, "encryptedToken": expected}

    x = rotated_with_previous_unreadable(organization, provider="x", previous="x_previous_secret", current=X_SECRET)
    crc = client.get(f"/in/{x.ingest_token}/", {"crc_token": CRC_TOKEN})
    assert crc.status_code == 200 and crc.json() == {"response_token": CRC_RESPONSE}

    # A validation signed with the unreadable previous secret cannot be judged here: a 503.
    answer = client.generic(
        "POST",
        f"/in/{zoom.ingest_token}/",
        body,
        content_type="application/json",
        HTTP_X_ZM_SIGNATURE=zoom_signature("zoom_previous_secret", body, now),
        HTTP_X_ZM_REQUEST_TIMESTAMP=str(now),
    )
    assert answer.status_code == 503


def test_a_gitlab_request_signed_with_an_unreadable_previous_signing_token_is_a_503_not_a_refusal(client, organization):
    # Rotated from a signing token (whsec_) to a secret token: GitLab, still signing with the signing
    # token during the overlap, sends no X-Gitlab-Token. With the previous secret readable it verifies;
    # unreadable here, "X-Gitlab-Token is missing" answered 401, which GitLab does not retry: lost.
    source = rotated_with_previous_unreadable(
        organization, provider="gitlab", previous=GITLAB_SIGNING_TOKEN, current=GITLAB_SECRET_TOKEN
    )
    body, headers = gitlab_fixture("push")
    signed = gitlab_signed(GITLAB_SIGNING_TOKEN, body, "msg_previous", int(time.time()))

    def post(extra):
        sent = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in {**headers, **extra}.items()}
        return client.generic("POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **sent)

    answer = post(signed)
    assert answer.status_code == 503 and answer["Retry-After"] == "30", answer.content
    assert not WebhookEvent.objects.filter(source=source).exists()
    # The current secret token is accepted; a request with no token and no signature is still refused.
    assert post({"X-Gitlab-Token": GITLAB_SECRET_TOKEN}).status_code == 200
    assert post({}).status_code == 401
