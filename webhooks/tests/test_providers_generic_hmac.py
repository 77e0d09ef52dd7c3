"""Generic HMAC provider, checked against GitHub, Paystack, Shopify and Stripe vectors from providers.md."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import pytest
import stripe

from webhooks.providers.base import InboundRequest, InvalidOptions, VerificationError
from webhooks.providers.generic_hmac import GenericHmacProvider

FIXTURES = Path(__file__).parent / "fixtures" / "generic_hmac"
PROVIDER = GenericHmacProvider()
NOW = 1_700_000_000

GITHUB = PROVIDER.clean_options({"header": "X-Hub-Signature-256", "prefix": "sha256="})
GITHUB_SECRET, GITHUB_BODY = "It's a Secret to Everybody", b"Hello, World!"
GITHUB_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
OCTOKIT_SECRET, OCTOKIT_BODY = "mysecret", b'{"foo":"bar"}'
OCTOKIT_SIG = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3"

PAYSTACK = PROVIDER.clean_options(
    {"header": "x-paystack-signature", "algorithm": "sha512", "event_type_field": "event", "event_id_field": "data.id"}
)
PAYSTACK_SECRET, PAYSTACK_BODY = "sk_test_dummy", b'{"event":"charge.success","data":{"id":302961}}'
PAYSTACK_SIG = (
    "86f8f09e20c820d7e43fa5a00016355b237999256680e92523c182bd37a168b1"
    "cb50011a8a55a4b95449da69af06ec905147b67bd1acfd2f0e50df1b9bca0eba"
)

SHOPIFY = PROVIDER.clean_options({"header": "X-Shopify-Hmac-Sha256", "encoding": "base64"})
SHOPIFY_SECRET, SHOPIFY_BODY = "test_secret_key", b'{"foo": "bar"}'
SHOPIFY_SIG = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="

# Stripe's scheme expressed as a generic timestamped HMAC (providers.md §1 computed vector).
TIMESTAMPED = PROVIDER.clean_options({"header": "X-Signature", "timestamp_header": "X-Timestamp"})
STRIPE_SECRET, STRIPE_T = "whsec_test_secret", 1614265330
STRIPE_BODY = b'{"id":"evt_test_webhook","object":"event"}'
STRIPE_SIG = "3c5817089d739023dd6190f70a3757e04f7a2fd8b5dab12c2e000f51970dccff"


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def reject(request: InboundRequest, secrets, options, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def stripe_timestamped(secret: str, body: bytes, t: int) -> dict[str, str]:
    sig = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", secret)
    return {"X-Signature": sig, "X-Timestamp": str(t)}


@pytest.mark.parametrize(
    "options, secret, body, headers",
    [
        (GITHUB, GITHUB_SECRET, GITHUB_BODY, {"X-Hub-Signature-256": GITHUB_SIG}),
        (GITHUB, OCTOKIT_SECRET, OCTOKIT_BODY, {"X-Hub-Signature-256": OCTOKIT_SIG}),
        (GITHUB, GITHUB_SECRET, GITHUB_BODY, {"X-Hub-Signature-256": GITHUB_SIG.upper()}),  # case-insensitive
        (PAYSTACK, PAYSTACK_SECRET, PAYSTACK_BODY, {"x-paystack-signature": PAYSTACK_SIG}),
        (PAYSTACK, PAYSTACK_SECRET, PAYSTACK_BODY, {"x-paystack-signature": PAYSTACK_SIG.upper()}),
        (SHOPIFY, SHOPIFY_SECRET, SHOPIFY_BODY, {"X-Shopify-Hmac-Sha256": SHOPIFY_SIG}),
        (SHOPIFY, SHOPIFY_SECRET, SHOPIFY_BODY, {"X-Shopify-Hmac-Sha256": SHOPIFY_SIG.rstrip("=")}),
        (TIMESTAMPED, STRIPE_SECRET, STRIPE_BODY, {"X-Signature": STRIPE_SIG, "X-Timestamp": str(STRIPE_T)}),
    ],
)
def test_published_vectors_verify(options, secret, body, headers):
    now = STRIPE_T + 1 if options is TIMESTAMPED else NOW
    PROVIDER.verify(req(body, headers), [secret], options, now)


@pytest.mark.parametrize(
    "options, secret, body, header, value, now",
    [
        (GITHUB, GITHUB_SECRET, GITHUB_BODY, "X-Hub-Signature-256", GITHUB_SIG, NOW),
        (PAYSTACK, PAYSTACK_SECRET, PAYSTACK_BODY, "x-paystack-signature", PAYSTACK_SIG, NOW),
        (SHOPIFY, SHOPIFY_SECRET, SHOPIFY_BODY, "X-Shopify-Hmac-Sha256", SHOPIFY_SIG, NOW),
        (TIMESTAMPED, STRIPE_SECRET, STRIPE_BODY, "X-Signature", STRIPE_SIG, STRIPE_T),
    ],
)
def test_sign_reproduces_the_vectors(options, secret, body, header, value, now):
    signed = PROVIDER.sign(body, secret, options, now)
    assert signed[header] == value
    PROVIDER.verify(req(body, signed), [secret], options, now)


def test_tampered_body():
    headers = {"x-paystack-signature": PAYSTACK_SIG}
    tampered = PAYSTACK_BODY.replace(b"302961", b"302962")
    assert reject(req(tampered, headers), [PAYSTACK_SECRET], PAYSTACK).code == "no_matching_secret"


def test_missing_signature():
    error = reject(req(GITHUB_BODY), [GITHUB_SECRET], GITHUB)
    assert error.code == "missing_signature" and "X-Hub-Signature-256" in error.detail
    no_ts = {"X-Signature": STRIPE_SIG}
    assert reject(req(STRIPE_BODY, no_ts), [STRIPE_SECRET], TIMESTAMPED).code == "missing_signature"


@pytest.mark.parametrize(
    "options, headers",
    [
        (GITHUB, {"X-Hub-Signature-256": GITHUB_SIG.removeprefix("sha256=")}),  # prefix missing
        (GITHUB, {"X-Hub-Signature-256": "sha256=" + "0" * 63}),
        (GITHUB, {"X-Hub-Signature-256": "sha256=" + "g" * 64}),
        (GITHUB, {"X-Hub-Signature-256": "sha256=" + PAYSTACK_SIG}),  # sha512-sized
        (SHOPIFY, {"X-Shopify-Hmac-Sha256": "***"}),
        (SHOPIFY, {"X-Shopify-Hmac-Sha256": "é" * 44}),
        (SHOPIFY, {"X-Shopify-Hmac-Sha256": GITHUB_SIG}),
        (TIMESTAMPED, {"X-Signature": STRIPE_SIG, "X-Timestamp": "yesterday"}),
        (TIMESTAMPED, {"X-Signature": STRIPE_SIG, "X-Timestamp": "9" * 5000}),
    ],
)
def test_malformed(options, headers):
    assert reject(req(b"{}", headers), ["s3cret"], options).code == "bad_format"


def test_wrong_secret():
    headers = {"X-Hub-Signature-256": GITHUB_SIG}
    assert reject(req(GITHUB_BODY, headers), ["wrong"], GITHUB).code == "no_matching_secret"


def test_rotated_secrets():
    headers = {"X-Hub-Signature-256": OCTOKIT_SIG}
    PROVIDER.verify(req(OCTOKIT_BODY, headers), ["new-secret", OCTOKIT_SECRET], GITHUB, NOW)
    third = {"X-Hub-Signature-256": GITHUB_SIG}
    assert reject(req(GITHUB_BODY, third), ["new-secret", OCTOKIT_SECRET], GITHUB).code == "no_matching_secret"


def test_a_timestamp_in_milliseconds_is_said_to_be_one_not_a_clock_far_ahead():
    # A sender the tenant writes may well give Date.now(): "check the sender's clock" sent them
    # looking at the wrong thing.
    now = int(time.time())
    headers = stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now * 1000 + 250)
    refused = reject(req(STRIPE_BODY, headers), [STRIPE_SECRET], TIMESTAMPED, now)
    assert refused.code == "timestamp_out_of_tolerance"
    assert refused.detail.endswith("tolerance is 300 s (it is in milliseconds: send it in seconds)"), refused.detail
    # A time in seconds too far ahead is still a clock to check.
    ahead = reject(
        req(STRIPE_BODY, stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now + 400)), [STRIPE_SECRET], TIMESTAMPED, now
    )
    assert ahead.detail.endswith("(check the sender's clock)"), ahead.detail


def test_timestamp_window_both_directions():
    now = int(time.time())
    PROVIDER.verify(
        req(STRIPE_BODY, stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now - 30)), [STRIPE_SECRET], TIMESTAMPED, now
    )
    old = reject(
        req(STRIPE_BODY, stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now - 400)), [STRIPE_SECRET], TIMESTAMPED, now
    )
    assert old.code == "timestamp_out_of_tolerance" and "400 s old; tolerance is 300 s" in old.detail
    new = reject(
        req(STRIPE_BODY, stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now + 400)), [STRIPE_SECRET], TIMESTAMPED, now
    )
    assert new.code == "timestamp_out_of_tolerance" and "in the future" in new.detail
    # A tampered timestamp breaks the signature.
    forged = {**stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now - 400), "X-Timestamp": str(now)}
    assert reject(req(STRIPE_BODY, forged), [STRIPE_SECRET], TIMESTAMPED, now).code == "no_matching_secret"
    off = PROVIDER.clean_options({"header": "X-Signature", "timestamp_header": "X-Timestamp", "tolerance": 0})
    PROVIDER.verify(
        req(STRIPE_BODY, stripe_timestamped(STRIPE_SECRET, STRIPE_BODY, now - 10**6)), [STRIPE_SECRET], off, now
    )


def test_empty_separator_is_kept():
    options = PROVIDER.clean_options({"header": "X-Sig", "timestamp_header": "X-Ts", "timestamp_separator": ""})
    assert options["timestamp_separator"] == ""
    assert PROVIDER.clean_options({"header": "X-Sig"})["timestamp_separator"] == "."
    body = b'{"a":1}'
    sig = hmac.new(b"k", b"1700000000" + body, hashlib.sha256).hexdigest()
    PROVIDER.verify(req(body, {"X-Sig": sig, "X-Ts": "1700000000"}), ["k"], options, NOW)


def test_describe_fields_headers_and_derived_id():
    info = PROVIDER.describe(req(PAYSTACK_BODY), PAYSTACK)
    assert (info.event_id, info.event_type) == ("302961", "charge.success")
    with_headers = PROVIDER.clean_options(
        {"header": "X-Sig", "event_id_header": "X-Delivery", "event_type_header": "X-Event"}
    )
    info = PROVIDER.describe(req(b"{}", {"X-Delivery": "d-1", "X-Event": "thing.happened"}), with_headers)
    assert (info.event_id, info.event_type) == ("d-1", "thing.happened")
    # Header configured but absent: fall back to the body, then to the hash.
    info = PROVIDER.describe(req(b'{"type": "t"}'), with_headers)
    assert info.event_id == "sha256:" + hashlib.sha256(b'{"type": "t"}').hexdigest()
    assert info.event_type == "t"
    # Both configured: the id field is signed with the body, the header is not.
    both = PROVIDER.clean_options({"header": "X-Sig", "event_id_header": "X-Delivery", "event_id_field": "data.id"})
    signed = b'{"data": {"id": "evt-1"}}'
    sig = hmac.new(b"k", signed, hashlib.sha256).hexdigest()
    for delivery in ("d-1", "replayed-with-another-id"):
        request = req(signed, {"X-Sig": sig, "X-Delivery": delivery})
        PROVIDER.verify(request, ["k"], both, NOW)
        assert PROVIDER.describe(request, both).event_id == "evt-1"
    assert PROVIDER.describe(req(b"{}", {"X-Delivery": "d-1"}), both).event_id == "d-1"
    for body in (b"\xff\xfe not json", b"[1, 2]", b'{"type": {"nested": 1}}', b""):
        info = PROVIDER.describe(req(body), GITHUB)
        assert info.event_id == "sha256:" + hashlib.sha256(body).hexdigest()
        assert info.event_type == ""


@pytest.mark.parametrize(
    "name, event_id",
    [
        ("charge.completed", "chg_ZtUtWPdZcm"),
        ("Issue", "2174add1-f7c8-44e3-bbf3-2d60b5ea8bc9"),
        ("order.created", "ord_8842"),
    ],
)
def test_fixtures(name, event_id):
    body = (FIXTURES / f"{name}.json").read_bytes()
    options = PROVIDER.clean_options({"header": "X-Signature", "event_id_field": "data.id"})
    sig = hmac.new(b"fixture-secret", body, hashlib.sha256).hexdigest()
    request = req(body, {"X-Signature": sig})
    PROVIDER.verify(request, ["fixture-secret"], options, NOW)
    info = PROVIDER.describe(request, options)
    assert (info.event_id, info.event_type) == (event_id, name)


def test_sign_with_all_header_options_round_trips():
    options = PROVIDER.clean_options(
        {
            "header": "X-Sig",
            "algorithm": "sha1",
            "encoding": "base64",
            "prefix": "v1=",
            "timestamp_header": "X-Ts",
            "timestamp_separator": ":",
            "event_id_header": "X-Id",
            "event_type_header": "X-Type",
        }
    )
    signed = PROVIDER.sign(b"payload", "k", options, NOW, event_id="e-1", event_type="a.b")
    assert signed["X-Ts"] == str(NOW) and signed["X-Id"] == "e-1" and signed["X-Type"] == "a.b"
    assert signed["X-Sig"].startswith("v1=")
    request = req(b"payload", signed)
    PROVIDER.verify(request, ["k"], options, NOW)
    assert PROVIDER.describe(request, options).event_id == "e-1"


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"header": "   "},
        {"header": "X Sig"},
        {"header": "X-Sig", "algorithm": "md5"},
        {"header": "X-Sig", "encoding": "base32"},
        {"header": "X-Sig", "tolerance": -1},
        {"header": "X-Sig", "event_id_field": "data..id"},
        {"header": "X-Sig", "colour": "blue"},
    ],
)
def test_invalid_options(raw):
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options(raw)


def test_metadata():
    assert PROVIDER.secret_generated_by_us is True


@pytest.mark.parametrize(
    ("separator", "signed_text"), [(".", "the timestamp, then '.', then the raw body"), ("", None)]
)
def test_the_sentence_for_the_sender_describes_a_timestamped_signature_that_verifies(separator, signed_text):
    provider = GenericHmacProvider()
    options = provider.clean_options(
        {"header": "X-Sig", "prefix": "v1=", "timestamp_header": "X-Ts", "timestamp_separator": separator}
    )
    described = provider.sender_requirement(options)
    assert described == (
        "Each request must carry the headers X-Ts: <Unix time in seconds> and "
        f"X-Sig: v1=<hex HMAC-SHA256 of {signed_text or 'the timestamp and the raw body'}>."
    )
    # Made as the sentence says, with the standard library, the request verifies.
    body, now = b'{"type": "ping"}', int(time.time())
    digest = hmac.new(b"s3cret", f"{now}{separator}".encode() + body, hashlib.sha256).hexdigest()
    request = InboundRequest(body=body, headers={"x-sig": f"v1={digest}", "x-ts": str(now)})
    provider.verify(request, ["s3cret"], options, now=now)
