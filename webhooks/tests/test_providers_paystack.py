"""Paystack provider, checked against the computed vector in providers.md §8 and stdlib HMAC-SHA512."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.paystack import PaystackProvider

FIXTURES = Path(__file__).parent / "fixtures" / "paystack"
PROVIDER = PaystackProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}

# providers.md §8, computed vector.
SECRET = "sk_test_dummy"
BODY = b'{"event":"charge.success","data":{"id":302961}}'
SIGNATURE = (
    "86f8f09e20c820d7e43fa5a00016355b237999256680e92523c182bd37a168b1"
    "cb50011a8a55a4b95449da69af06ec905147b67bd1acfd2f0e50df1b9bca0eba"
)


def stdlib_signature(secret: str, body: bytes) -> str:
    """The algorithm every Paystack implementation uses, written independently of the provider."""
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def req(body: bytes, signature: str | None = None, **extra: str) -> InboundRequest:
    headers = {k.replace("_", "-").lower(): v for k, v in extra.items()}
    if signature is not None:
        headers["x-paystack-signature"] = signature
    return InboundRequest(body=body, headers=headers)


def reject(request: InboundRequest, secrets=(SECRET,)) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), OPTIONS, NOW)
    for secret in secrets:
        assert not secret or secret not in info.value.detail
    assert SIGNATURE not in info.value.detail
    return info.value


def test_computed_vector():
    assert stdlib_signature(SECRET, BODY) == SIGNATURE
    PROVIDER.verify(req(BODY, SIGNATURE), [SECRET], OPTIONS, NOW)
    PROVIDER.verify(req(BODY, SIGNATURE.upper()), [SECRET], OPTIONS, NOW)
    assert PROVIDER.sign(BODY, SECRET, OPTIONS, NOW) == {"x-paystack-signature": SIGNATURE}


@pytest.mark.parametrize("name", ["charge.success", "transfer.success", "subscription.create"])
def test_fixtures_verify_and_describe(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = req(body, stdlib_signature(SECRET, body))
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    data = json.loads(body)["data"]
    assert info.event_type == name
    assert info.event_id == f"{name}:{data['id']}:{hashlib.sha256(body).hexdigest()[:16]}"


def test_describe_vector_and_fallbacks():
    digest = hashlib.sha256(BODY).hexdigest()
    assert PROVIDER.describe(req(BODY), OPTIONS).event_id == f"charge.success:302961:{digest[:16]}"
    body = b'{"event":"charge.success","data":{"reference":"re4lyvq3s3"}}'
    assert PROVIDER.describe(req(body), OPTIONS).event_id.startswith("charge.success:re4lyvq3s3:")
    body = b'{"event":"paymentrequest.pending","data":{}}'
    assert PROVIDER.describe(req(body), OPTIONS).event_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_same_object_in_two_events_gets_two_ids():
    a = b'{"event":"charge.dispute.create","data":{"id":7}}'
    b = b'{"event":"charge.dispute.resolve","data":{"id":7}}'
    c = b'{"event":"charge.dispute.create","data":{"id":7,"status":"x"}}'
    ids = {PROVIDER.describe(req(body), OPTIONS).event_id for body in (a, b, c)}
    assert len(ids) == 3


@pytest.mark.parametrize("body", [b"nope", b"\xff", b"[]", b'{"data":{}}', b'{"event":5}', b'{"event":" "}'])
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_tampered_body():
    assert reject(req(BODY.replace(b"302961", b"302962"), SIGNATURE)).code == "no_matching_secret"


def test_missing_signature():
    error = reject(req(BODY))
    assert error.code == "missing_signature" and "x-paystack-signature" in error.detail
    assert reject(req(BODY, "  ")).code == "missing_signature"


@pytest.mark.parametrize(
    "value",
    ["sha512=" + SIGNATURE, SIGNATURE[:-1], SIGNATURE + "0", "z" * 128, hashlib.sha256(BODY).hexdigest(), "é" * 128],
)
def test_malformed_signature(value):
    assert reject(req(BODY, value)).code == "bad_format"


def test_wrong_secret():
    assert reject(req(BODY, stdlib_signature("sk_test_other", BODY))).code == "no_matching_secret"


def test_rotated_secrets():
    PROVIDER.verify(req(BODY, stdlib_signature("sk_test_old", BODY)), ["sk_test_new", "sk_test_old"], OPTIONS, NOW)
    error = reject(req(BODY, stdlib_signature("sk_test_third", BODY)), secrets=("sk_test_new", "sk_test_old"))
    assert error.code == "no_matching_secret"


def test_no_secret_never_matches():
    assert reject(req(BODY, stdlib_signature("", BODY)), secrets=("",)).code == "no_matching_secret"


def test_secret_shape():
    assert PROVIDER.clean_secret(" sk_live_abc ") == "sk_live_abc"
    for bad in ("pk_live_abc", "whsec_abc", "   "):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_secret(bad)
    assert PROVIDER.secret_generated_by_us is False
    assert OPTIONS == {}


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    signature=st.one_of(
        st.none(), st.text(max_size=140), st.text("0123456789abcdefABCDEF", min_size=128, max_size=128)
    ),
)
def test_random_input_raises_only_documented_errors(body, signature):
    request = req(body, signature)
    try:
        PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    try:
        PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        pass


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), data=st.data())
def test_one_byte_change_is_always_rejected(body, data):
    signature = stdlib_signature(SECRET, body)
    PROVIDER.verify(req(body, signature), [SECRET], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    delta = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([(body[index] + delta) % 256]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(tampered, signature), [SECRET], OPTIONS, NOW)
