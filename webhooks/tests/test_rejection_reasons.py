"""A rejected request's reason in real sentences: "1 secret tried", "2 secrets tried", never
"secret(s)" or "signature(s)"; the reason codes stay as they were, and the API, the admin and the
dashboard show the same words."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from webhooks.models import WebhookEvent
from webhooks.providers.base import InboundRequest, VerificationError, counted, headers_missing
from webhooks.providers.registry import PROVIDERS

from .api_helpers import make_key
from .factories import make_source
from .signing import stripe_headers
from .test_providers import NOW, OTHER_SECRET, SECRET, SIGNABLE, fixtures_of, options_for

SECOND_SECRET = "whsec_c2Vjb25kc2VjcmV0a2V5Zm9ydGVzdHMxMjM0NTY="
NOUNS = r"(?:v1 )?(?:usable )?(?:secret hash|secret|key|token|signature|webhook id)"
# "1 secrets", "2 secret", "none of the 1 …": a count and its noun that disagree.
WRONG_NUMBER = re.compile(rf"(?<![\w-])(?:1 {NOUNS}(?:s|es)\b|(?:[02-9]|\d\d+) {NOUNS}(?!\w| hash))|none of the 1 ")


def forged_request(kind: str) -> InboundRequest:
    """A request the provider's scheme signed, with a secret the source does not hold."""
    provider = PROVIDERS[kind]
    body = provider.prepare_body(fixtures_of(kind)[0].read_bytes(), OTHER_SECRET, options_for(kind), NOW)
    signed = provider.sign(body, OTHER_SECRET, options_for(kind), NOW, url="https://hookline.test/in/x/")
    return InboundRequest(
        body=body, headers={k.lower(): v for k, v in signed.items()}, url="https://hookline.test/in/x/"
    )


@pytest.mark.parametrize("kind", SIGNABLE)
@pytest.mark.parametrize("secrets", [[SECRET], [SECRET, SECOND_SECRET]], ids=["one secret", "two secrets"])
def test_a_refused_signature_is_said_with_its_counts_in_the_right_number(kind, secrets):
    with pytest.raises(VerificationError) as refused:
        PROVIDERS[kind].verify(forged_request(kind), secrets, options_for(kind), NOW)
    detail = refused.value.detail
    assert refused.value.code == "no_matching_secret"  # the code is unchanged
    assert "(s)" not in detail and "(es)" not in detail, detail
    assert not WRONG_NUMBER.search(detail), detail


@pytest.mark.parametrize(
    "secrets, words",
    [([SECRET], "(1 secret tried)"), ([SECRET, SECOND_SECRET], "(2 secrets tried)")],
)
def test_stripe_says_the_signature_and_the_secrets_it_tried_in_words(secrets, words):
    body = '{"id": "evt_1", "object": "event", "type": "invoice.paid"}'
    header = stripe_headers(body, OTHER_SECRET, timestamp=NOW)["HTTP_STRIPE_SIGNATURE"]
    request = InboundRequest(body=body.encode(), headers={"stripe-signature": header})
    with pytest.raises(VerificationError) as refused:
        PROVIDERS["stripe"].verify(request, secrets, {}, NOW)
    assert refused.value.detail.startswith(f"the v1 signature does not match the endpoint's signing secret {words};")
    # Two v1 signatures (Stripe signs with both secrets while one is rolled).
    second = stripe_headers(body, "whsec_yet_another", timestamp=NOW)["HTTP_STRIPE_SIGNATURE"].split(",")[1]
    request = InboundRequest(body=body.encode(), headers={"stripe-signature": f"{header},{second}"})
    with pytest.raises(VerificationError) as refused:
        PROVIDERS["stripe"].verify(request, secrets, {}, NOW)
    assert refused.value.detail.startswith("none of the 2 v1 signatures matches the endpoint's signing secret")


@pytest.mark.parametrize("kind", ["discord", "sendgrid", "standard_webhooks"])
def test_missing_headers_are_named_in_a_sentence(kind):
    provider = PROVIDERS[kind]
    with pytest.raises(VerificationError) as refused:
        provider.verify(InboundRequest(body=b"{}", headers={}), [SECRET], options_for(kind), NOW)
    detail = refused.value.detail
    assert refused.value.code == "missing_signature"
    assert "(s)" not in detail and re.match(r"the [\w-]+(?:, [\w-]+)* and [\w-]+ headers are missing", detail), detail


def test_counts_and_header_lists_read_as_words():
    assert [counted(n, "secret") for n in (0, 1, 2)] == ["0 secrets", "1 secret", "2 secrets"]
    assert counted(3, "secret hash", "secret hashes") == "3 secret hashes"
    assert headers_missing(["X-A"]) == "the X-A header is missing"
    assert headers_missing(["X-A", "X-B", "X-C"]) == "the X-A, X-B and X-C headers are missing"


@pytest.mark.django_db
def test_the_api_the_admin_and_the_dashboard_give_the_same_words(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    body = json.dumps({"id": "evt_forged", "object": "event", "type": "invoice.paid"})
    refused = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, "whsec_not_the_right_one"),
    )
    assert refused.status_code == 401
    event = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED)
    words = "the v1 signature does not match the endpoint's signing secret (1 secret tried)"
    assert event.rejection_code == "no_matching_secret" and event.rejection_detail.startswith(words)

    _, key = make_key(organization)
    api = client.get(f"/api/v1/events/{event.pk}", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert api["rejection_detail"] == event.rejection_detail

    client.force_login(owner)
    for url in (
        reverse("dashboard:event_detail", args=["acme", event.pk]),
        reverse("dashboard:source_rejected", args=["acme", source.pk]),
        reverse("dashboard:source_detail", args=["acme", source.pk]),
    ):
        assert event.rejection_detail in html.unescape(client.get(url).content.decode()), url

    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    for url in (
        reverse("admin:webhooks_webhookevent_changelist") + "?status__exact=rejected",
        reverse("admin:webhooks_webhookevent_change", args=[event.pk]),
    ):
        assert event.rejection_detail in html.unescape(client.get(url).content.decode()), url
