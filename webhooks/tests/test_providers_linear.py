"""Linear provider, checked against providers.md §12's computed vector and Linear's SDK behaviour."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.linear import LinearProvider

FIXTURES = Path(__file__).parent / "fixtures" / "linear"
PROVIDER = LinearProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}

# providers.md §12, computed vector.
SECRET = "lin_wh_test_secret"
BODY = b'{"action":"create","type":"Issue","webhookTimestamp":1700000000000}'
SIGNATURE = "bc8166452d75bb104f41b0c8b0f168b4d57cd224618779163f15a1f93cc87b30"


def stdlib_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def req(body: bytes, signature: str | None = None, extra: dict[str, str] | None = None) -> InboundRequest:
    headers = {k.lower(): v for k, v in (extra or {}).items()}
    if signature is not None:
        headers["linear-signature"] = signature
    return InboundRequest(body=body, headers=headers)


def reject(request: InboundRequest, secrets=(SECRET,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert not secret or secret not in info.value.detail
    assert SIGNATURE not in info.value.detail
    return info.value


def test_computed_vector():
    assert stdlib_signature(SECRET, BODY) == SIGNATURE
    PROVIDER.verify(req(BODY, SIGNATURE), [SECRET], OPTIONS, NOW)
    PROVIDER.verify(req(BODY, SIGNATURE.upper()), [SECRET], OPTIONS, NOW)
    assert PROVIDER.sign(BODY, SECRET, OPTIONS, NOW) == {"linear-signature": SIGNATURE}
    info = PROVIDER.describe(req(BODY), OPTIONS)
    assert (info.event_id, info.event_type) == ("sha256:" + hashlib.sha256(BODY).hexdigest(), "Issue.create")


@pytest.mark.parametrize("name", ["Issue.create", "Issue.update", "Comment.create"])
def test_fixtures(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    request = req(body, stdlib_signature(SECRET, body), headers)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (headers["Linear-Delivery"], name)


def test_timestamp_window_is_60_seconds_either_way():
    for now in (NOW - 60, NOW + 60):
        PROVIDER.verify(req(BODY, SIGNATURE), [SECRET], OPTIONS, now)
    error = reject(req(BODY, SIGNATURE), now=NOW + 61)
    assert error.code == "timestamp_out_of_tolerance" and "61 s old" in error.detail
    error = reject(req(BODY, SIGNATURE), now=NOW - 61)
    assert error.code == "timestamp_out_of_tolerance" and "in the future" in error.detail


def test_signature_is_checked_before_the_timestamp():
    assert reject(req(BODY, "0" * 64), now=NOW + 9999).code == "no_matching_secret"


def test_tolerance_option():
    PROVIDER.verify(req(BODY, SIGNATURE), [SECRET], PROVIDER.clean_options({"tolerance": 0}), NOW + 10**6)
    PROVIDER.verify(req(BODY, SIGNATURE), [SECRET], PROVIDER.clean_options({"tolerance": 300}), NOW + 300)


@pytest.mark.parametrize(
    "body",
    [
        b'{"action":"create","type":"Issue"}',
        b'{"type":"Issue","webhookTimestamp":"1700000000000"}',
        b'{"type":"Issue","webhookTimestamp":true}',
        b'{"type":"Issue","webhookTimestamp":1e300}',
        b'{"type":"Issue","webhookTimestamp":NaN}',
        b"[1700000000000]",
        b"not json",
    ],
)
def test_signed_body_without_a_usable_timestamp(body):
    error = reject(req(body, stdlib_signature(SECRET, body)))
    assert error.code == "bad_format"
    PROVIDER.verify(req(body, stdlib_signature(SECRET, body)), [SECRET], PROVIDER.clean_options({"tolerance": 0}), NOW)


def test_tampered_body():
    assert reject(req(BODY.replace(b"create", b"remove"), SIGNATURE)).code == "no_matching_secret"


def test_missing_signature():
    error = reject(req(BODY))
    assert error.code == "missing_signature" and "linear-signature" in error.detail


@pytest.mark.parametrize("value", ["sha256=" + SIGNATURE, SIGNATURE[:-1], "z" * 64, "é" * 64, SIGNATURE + "00"])
def test_malformed_signature(value):
    assert reject(req(BODY, value)).code == "bad_format"


def test_wrong_secret():
    assert reject(req(BODY, SIGNATURE), secrets=("lin_wh_other",)).code == "no_matching_secret"


def test_rotated_secrets():
    PROVIDER.verify(req(BODY, stdlib_signature("old", BODY)), ["new", "old"], OPTIONS, NOW)
    assert reject(req(BODY, stdlib_signature("third", BODY)), secrets=("new", "old")).code == "no_matching_secret"


def test_describe_without_action_and_malformed():
    assert PROVIDER.describe(req(b'{"type":"OAuthApp"}'), OPTIONS).event_type == "OAuthApp"
    for bad in (b"nope", b"[]", b'{"action":"create"}', b'{"type":3}'):
        with pytest.raises(MalformedPayload):
            PROVIDER.describe(req(bad), OPTIONS)


def test_sign_headers_and_prepare_body():
    body = (FIXTURES / "Comment.create.json").read_bytes()
    signed = PROVIDER.sign(body, SECRET, OPTIONS, NOW, event_id="d-1", event_type="Comment.create")
    assert signed == {
        "linear-signature": stdlib_signature(SECRET, body),
        "Linear-Delivery": "d-1",
        "Linear-Event": "Comment",
    }
    later = NOW + 86400
    fresh = PROVIDER.prepare_body(body, SECRET, OPTIONS, later)
    assert json.loads(fresh)["webhookTimestamp"] == later * 1000
    PROVIDER.verify(
        req(fresh, PROVIDER.sign(fresh, SECRET, OPTIONS, later)["linear-signature"]), [SECRET], OPTIONS, later
    )
    assert PROVIDER.prepare_body(b"not json", SECRET, OPTIONS, later) == b"not json"


def test_options_and_metadata():
    assert OPTIONS == {"tolerance": 60}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -1})
    assert PROVIDER.secret_generated_by_us is False


HEADER_NAMES = st.sampled_from(["linear-signature", "linear-delivery", "linear-event"])
JSON_BODIES = st.fixed_dictionaries(
    {
        "type": st.one_of(st.text(max_size=10), st.integers()),
        "webhookTimestamp": st.one_of(st.integers(), st.floats(), st.text(max_size=5)),
    },
    optional={"action": st.one_of(st.none(), st.text(max_size=10))},
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(st.binary(max_size=300), JSON_BODIES),
    headers=st.dictionaries(HEADER_NAMES, st.text(st.characters(exclude_categories=()), max_size=80), max_size=3),
    sign=st.booleans(),
)
def test_random_input_raises_only_documented_errors(body, headers, sign):
    if sign:
        headers = {**headers, "linear-signature": stdlib_signature(SECRET, body)}
    request = InboundRequest(body=body, headers=headers)
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
    no_window = PROVIDER.clean_options({"tolerance": 0})
    PROVIDER.verify(req(body, signature), [SECRET], no_window, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:index] + bytes([(body[index] + data.draw(st.integers(1, 255))) % 256]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(tampered, signature), [SECRET], no_window, NOW)
