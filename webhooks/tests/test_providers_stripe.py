"""Stripe provider, checked against the official ``stripe`` package and the providers.md vector."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import stripe

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.stripe import StripeProvider

FIXTURES = Path(__file__).parent / "fixtures" / "stripe"
PROVIDER = StripeProvider()
SECRET = "whsec_test_secret"
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000

# providers.md §1, computed vector (accepted by stripe.WebhookSignature.verify_header).
VECTOR_T = 1614265330
VECTOR_BODY = b'{"id":"evt_test_webhook","object":"event"}'
VECTOR_V1 = "3c5817089d739023dd6190f70a3757e04f7a2fd8b5dab12c2e000f51970dccff"


def req(body: bytes, **headers: str) -> InboundRequest:
    return InboundRequest(body=body, headers={k.replace("_", "-").lower(): v for k, v in headers.items()})


def official_header(body: bytes, secret: str, t: int) -> str:
    """What Stripe sends, computed by the stripe package."""
    return f"t={t},v1={stripe.WebhookSignature._compute_signature(f'{t}.{body.decode()}', secret)}"


def reject(request: InboundRequest, secrets=(SECRET,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def test_published_vector_matches_official_package_and_verifies():
    assert stripe.WebhookSignature._compute_signature(f"{VECTOR_T}.{VECTOR_BODY.decode()}", SECRET) == VECTOR_V1
    header = f"t={VECTOR_T},v1={VECTOR_V1}"
    PROVIDER.verify(req(VECTOR_BODY, stripe_signature=header), [SECRET], {"tolerance": 0}, time.time())


def test_published_vector_is_stale_with_default_tolerance():
    header = f"t={VECTOR_T},v1={VECTOR_V1}"
    error = reject(req(VECTOR_BODY, stripe_signature=header), now=VECTOR_T + 912)
    assert error.code == "timestamp_out_of_tolerance"
    assert error.detail == "timestamp is 912 s old; tolerance is 300 s"


def test_valid_signature_from_official_package():
    body = (FIXTURES / "invoice.paid.json").read_bytes()
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET, timestamp=NOW - 10)
    PROVIDER.verify(req(body, stripe_signature=header), [SECRET], OPTIONS, NOW)


def test_tampered_body_is_rejected():
    body = (FIXTURES / "invoice.paid.json").read_bytes()
    header = official_header(body, SECRET, NOW)
    tampered = body.replace(b"1500", b"1501", 1)
    assert tampered != body
    assert reject(req(tampered, stripe_signature=header)).code == "no_matching_secret"


def test_missing_header():
    error = reject(req(VECTOR_BODY))
    assert error.code == "missing_signature"
    assert "Stripe-Signature" in error.detail


@pytest.mark.parametrize(
    "header, detail_part",
    [
        ("garbage", "no t= timestamp"),
        (f"v1={VECTOR_V1}", "no t= timestamp"),
        (f"t=abc,v1={VECTOR_V1}", "not a Unix time"),
        (f"t={'9' * 5000},v1={VECTOR_V1}", "not a Unix time"),
        (f"t={NOW}", "no v1= signature"),
        (f"t={NOW},v0={VECTOR_V1}", "no v1= signature"),
        (f"t={NOW},v2=abc", "no v1= signature"),
    ],
)
def test_malformed_header(header, detail_part):
    error = reject(req(VECTOR_BODY, stripe_signature=header))
    assert error.code == "bad_format"
    assert detail_part in error.detail


def test_wrong_secret():
    header = official_header(VECTOR_BODY, "whsec_someone_else", NOW)
    assert reject(req(VECTOR_BODY, stripe_signature=header)).code == "no_matching_secret"


def test_non_hex_v1_is_just_a_non_match():
    assert reject(req(VECTOR_BODY, stripe_signature=f"t={NOW},v1=zzzz,v1=é")).code == "no_matching_secret"


def test_stale_timestamp_rejected_after_the_signature_check():
    t = NOW - 301
    ok = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, SECRET, t))
    error = reject(ok)
    assert error.code == "timestamp_out_of_tolerance"
    assert "301 s old" in error.detail
    # Like the SDK, a bad signature is reported as such even when also stale.
    bad = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, "whsec_other", t))
    assert reject(bad).code == "no_matching_secret"


def test_timestamp_within_tolerance_and_future_accepted_like_the_sdk():
    for t in (NOW - 300, NOW + 3600):
        PROVIDER.verify(
            req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, SECRET, t)), [SECRET], OPTIONS, NOW
        )


def test_tolerance_zero_disables_the_age_check():
    header = official_header(VECTOR_BODY, SECRET, NOW - 10 * 365 * 86400)
    PROVIDER.verify(req(VECTOR_BODY, stripe_signature=header), [SECRET], PROVIDER.clean_options({"tolerance": 0}), NOW)


def test_rotated_secrets():
    old, new, third = "whsec_old_secret", "whsec_new_secret", "whsec_third_secret"
    signed_old = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, old, NOW))
    PROVIDER.verify(signed_old, [new, old], OPTIONS, NOW)
    signed_third = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, third, NOW))
    error = reject(signed_third, secrets=(new, old))
    assert error.code == "no_matching_secret"


def test_several_v1_signatures_any_may_match():
    good = official_header(VECTOR_BODY, SECRET, NOW)
    bad_sig = "0" * 64
    # stripe-python's own test appends a bad v1 to a valid header.
    for header in (f"{good},v1={bad_sig}", f"t={NOW},v1={bad_sig},{good.split(',')[1]}", f"{good},v0={bad_sig}"):
        PROVIDER.verify(req(VECTOR_BODY, stripe_signature=header), [SECRET], OPTIONS, NOW)
    # During a Stripe-side roll, two v1 signatures from two secrets, one of which we know.
    rolled = f"{good},v1={official_header(VECTOR_BODY, 'whsec_next', NOW).split('v1=')[1]}"
    PROVIDER.verify(req(VECTOR_BODY, stripe_signature=rolled), ["whsec_next"], OPTIONS, NOW)


def test_whitespace_around_items_is_tolerated():
    header = official_header(VECTOR_BODY, SECRET, NOW).replace(",", ", ")
    PROVIDER.verify(req(VECTOR_BODY, stripe_signature=header), [SECRET], OPTIONS, NOW)


@pytest.mark.parametrize(
    "name, event_id",
    [
        ("invoice.paid", "evt_1PqJBqLkdIwHu7ixsW4mT7cD"),
        ("payment_intent.succeeded", "evt_3PqJ8fLkdIwHu7ix0ZbQ1xGh"),
        ("customer.subscription.deleted", "evt_1PqJFfLkdIwHu7ixc8QeY3Zr"),
    ],
)
def test_describe_fixtures(name, event_id):
    body = (FIXTURES / f"{name}.json").read_bytes()
    info = PROVIDER.describe(req(body), OPTIONS)
    assert (info.event_id, info.event_type) == (event_id, name)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[]", b'{"type": "invoice.paid"}', b'{"id": "evt_1"}', b'{"id": 5, "type": "x"}'],
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_sign_round_trips_and_is_accepted_by_the_official_package():
    body = (FIXTURES / "payment_intent.succeeded.json").read_bytes()
    now = time.time()
    headers = PROVIDER.sign(body, SECRET, OPTIONS, now)
    assert set(headers) == {"Stripe-Signature"}
    PROVIDER.verify(req(body, **{k: v for k, v in headers.items()}), [SECRET], OPTIONS, now)
    assert stripe.WebhookSignature.verify_header(body.decode(), headers["Stripe-Signature"], SECRET, tolerance=300)
    event = stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], SECRET)
    assert event.id == json.loads(body)["id"]


def test_sign_reproduces_the_vector():
    assert PROVIDER.sign(VECTOR_BODY, SECRET, OPTIONS, VECTOR_T + 0.9) == {
        "Stripe-Signature": f"t={VECTOR_T},v1={VECTOR_V1}"
    }


def test_details_never_contain_secret_or_expected_signature():
    header = f"t={VECTOR_T},v1={'a' * 64}"
    error = reject(req(VECTOR_BODY, stripe_signature=header), now=VECTOR_T)
    assert VECTOR_V1 not in error.detail and SECRET not in error.detail


def test_options_and_secret():
    assert PROVIDER.clean_options({}) == {"tolerance": 300}
    assert PROVIDER.clean_options({"tolerance": "60"}) == {"tolerance": 60}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -1})
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": "soon"})
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"header": "x"})
    assert PROVIDER.clean_secret("  whsec_abc  ") == "whsec_abc"
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_secret("sk_live_123")
    assert PROVIDER.secret_generated_by_us is False


# --- Which secret signed: a rotation's [current, previous] -------------------------------------

NEW_SECRET = "whsec_test_secret_after_rotation"


def test_the_matching_secret_is_told_for_requests_signed_with_the_new_or_the_previous_secret():
    rotation = [NEW_SECRET, SECRET]
    new = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, NEW_SECRET, NOW - 5))
    previous = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, SECRET, NOW - 5))
    assert PROVIDER.verify_matching_secret(new, rotation, OPTIONS, NOW) == 0
    assert PROVIDER.verify_matching_secret(previous, rotation, OPTIONS, NOW) == 1
    # Without a rotation there is one secret, verified as before.
    assert PROVIDER.verify_matching_secret(previous, [SECRET], OPTIONS, NOW) == 0


def test_a_stripe_header_signed_with_both_secrets_counts_as_the_new_one():
    # While Stripe rolls a secret it signs with the old and the new one: Hookline then no longer needs the old.
    both = official_header(VECTOR_BODY, SECRET, NOW) + "," + official_header(VECTOR_BODY, NEW_SECRET, NOW).split(",")[1]
    assert (
        PROVIDER.verify_matching_secret(req(VECTOR_BODY, stripe_signature=both), [NEW_SECRET, SECRET], OPTIONS, NOW)
        == 0
    )


def test_a_request_neither_secret_signed_is_refused_with_the_reason_for_both_together():
    forged = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, "whsec_someone_else", NOW))
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify_matching_secret(forged, [NEW_SECRET, SECRET], OPTIONS, NOW)
    assert info.value.code == "no_matching_secret" and "(2 secrets tried)" in info.value.detail
    # A previous secret's signature past the tolerance is refused for its age, as verify() says.
    stale = req(VECTOR_BODY, stripe_signature=official_header(VECTOR_BODY, SECRET, NOW - 3600))
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify_matching_secret(stale, [NEW_SECRET, SECRET], OPTIONS, NOW)
    assert info.value.code == "timestamp_out_of_tolerance"
