"""Zoom provider, checked against the computed vectors in providers.md §12 (Zoom has no official Python package).

Signatures for other bodies are computed here with the stdlib, independently of the provider's code,
following Zoom's webhook-sample (``v0:<ts>:<body>``, hex HMAC-SHA256 keyed with the Secret Token).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import (
    HandshakeResponse,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    VerificationError,
)
from webhooks.providers.zoom import ZoomProvider

FIXTURES = Path(__file__).parent / "fixtures" / "zoom"
PROVIDER = ZoomProvider()
OPTIONS = PROVIDER.clean_options({})

# providers.md §12 (computed vectors).
SECRET = "zoom_secret_token"
TS = 1700000000
BODY = b'{"event":"meeting.started","payload":{"account_id":"abc"},"event_ts":1700000000000}'
SIG = "v0=2d1cc1e93aec239e4b6385fee0380dee3eb697ec172492bff19620cd15e20efc"
PLAIN_TOKEN = "qgg8vlvZRS6UYooatFL8Aw"
ENCRYPTED_TOKEN = "bd48235863f4a6323ccc4963c594908b7c97f88b4a6a95278f4f093690b12726"
NOW = TS + 5


def reference(secret: str, body: bytes, ts: int = TS) -> str:
    """Zoom's sample algorithm, written out independently of the provider."""
    message = b"v0:" + str(ts).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def headers(signature: str = SIG, ts: int | str = TS) -> dict[str, str]:
    return {"x-zm-signature": signature, "x-zm-request-timestamp": str(ts)}


def req(body: bytes, hdrs: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (hdrs or {}).items()})


def signed(body: bytes, secret: str = SECRET, ts: int = TS) -> InboundRequest:
    return req(body, headers(reference(secret, body, ts), ts))


def reject(request: InboundRequest, secrets=(SECRET,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def test_computed_vector_verifies():
    assert reference(SECRET, BODY) == SIG
    PROVIDER.verify(req(BODY, headers()), [SECRET], OPTIONS, NOW)


def test_vector_describes():
    info = PROVIDER.describe(req(BODY, headers()), OPTIONS)
    assert info.event_type == "meeting.started"
    digest = hashlib.sha256(b'{"account_id":"abc"}').hexdigest()[:32]
    assert info.event_id == f"meeting.started:1700000000000:{digest}"


URL_VALIDATION = json.dumps(
    {"payload": {"plainToken": PLAIN_TOKEN}, "event_ts": 1700000000000, "event": "endpoint.url_validation"}
).encode()


def test_url_validation_handshake_matches_the_computed_vector():
    request = signed(URL_VALIDATION)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    answer = PROVIDER.handshake(request, [SECRET], OPTIONS)
    assert isinstance(answer, HandshakeResponse)
    assert answer.status == 200 and answer.content_type == "application/json"
    assert json.loads(answer.body) == {"plainToken": PLAIN_TOKEN, "encryptedToken": ENCRYPTED_TOKEN}
    assert hmac.new(SECRET.encode(), PLAIN_TOKEN.encode(), hashlib.sha256).hexdigest() == ENCRYPTED_TOKEN


def test_url_validation_uses_the_secret_that_signed_it_during_rotation():
    old, new = "old_secret_token", "new_secret_token"
    request = signed(URL_VALIDATION, secret=old)
    PROVIDER.verify(request, [new, old], OPTIONS, NOW)
    answer = PROVIDER.handshake(request, [new, old], OPTIONS)
    expected = hmac.new(old.encode(), PLAIN_TOKEN.encode(), hashlib.sha256).hexdigest()
    assert json.loads(answer.body)["encryptedToken"] == expected


def test_url_validation_must_be_signed():
    assert PROVIDER.unsigned_handshake(req(URL_VALIDATION), [SECRET], OPTIONS) is None
    assert reject(req(URL_VALIDATION)).code == "missing_signature"
    assert reject(signed(URL_VALIDATION, secret="attacker")).code == "no_matching_secret"
    # Even if called without verify(), an unsigned challenge is never answered with an HMAC.
    answer = PROVIDER.handshake(signed(URL_VALIDATION, secret="attacker"), [SECRET], OPTIONS)
    assert answer is not None and answer.status == 401 and ENCRYPTED_TOKEN.encode() not in answer.body


def test_url_validation_without_plain_token():
    answer = PROVIDER.handshake(signed(b'{"event":"endpoint.url_validation","payload":{}}'), [SECRET], OPTIONS)
    assert answer is not None and answer.status == 400


def test_ordinary_events_are_no_handshake():
    assert PROVIDER.handshake(signed(BODY), [SECRET], OPTIONS) is None


@pytest.mark.parametrize("name", ["meeting.started", "meeting.participant_joined", "recording.completed"])
def test_fixtures(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = signed(body, ts=NOW)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    payload = json.loads(body)
    assert info.event_type == name
    assert info.event_id.startswith(f"{name}:{payload['event_ts']}:")
    assert len(info.event_id.rsplit(":", 1)[1]) == 32


def test_derived_id_is_stable_across_serialisations_and_distinguishes_participants():
    one = {
        "event": "meeting.participant_joined",
        "event_ts": 1,
        "payload": {"object": {"id": "9", "participant": {"user_id": "a"}}},
    }
    two = {
        "event": "meeting.participant_joined",
        "event_ts": 1,
        "payload": {"object": {"id": "9", "participant": {"user_id": "b"}}},
    }
    compact = json.dumps(one, separators=(",", ":")).encode()
    pretty = json.dumps(one, indent=4, sort_keys=True).encode()
    ids = [PROVIDER.describe(req(body), OPTIONS).event_id for body in (compact, pretty, json.dumps(two).encode())]
    assert ids[0] == ids[1] != ids[2]


def test_derived_id_falls_back_to_the_body_hash():
    body = b'{"event":"app_deauthorized"}'
    assert PROVIDER.describe(req(body), OPTIONS).event_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_tampered_body():
    assert reject(req(BODY.replace(b"abc", b"abd"), headers())).code == "no_matching_secret"


def test_tampered_timestamp():
    assert reject(req(BODY, headers(ts=TS + 1))).code == "no_matching_secret"


@pytest.mark.parametrize("drop", ["x-zm-signature", "x-zm-request-timestamp"])
def test_missing_headers(drop):
    error = reject(req(BODY, {k: v for k, v in headers().items() if k != drop}))
    assert error.code == "missing_signature" and drop in error.detail


@pytest.mark.parametrize(
    "hdrs",
    [
        headers(signature=SIG[3:]),
        headers(signature="v1=" + SIG[3:]),
        headers(signature=SIG[:-1]),
        headers(signature="v0=" + "g" * 64),
        headers(ts="1700000000000.0"),
        headers(ts="now"),
        headers(ts="9" * 100),
    ],
)
def test_malformed_headers(hdrs):
    assert reject(req(BODY, hdrs)).code == "bad_format"


def test_wrong_secret():
    assert reject(req(BODY, headers()), secrets=("not_the_token",)).code == "no_matching_secret"


def test_stale_and_future_timestamps():
    old = reject(req(BODY, headers()), now=TS + 301)
    assert old.code == "timestamp_out_of_tolerance" and "301 s old" in old.detail
    new = reject(req(BODY, headers()), now=TS - 301)
    assert new.code == "timestamp_out_of_tolerance" and "in the future" in new.detail
    for now in (TS + 300, TS - 300):
        PROVIDER.verify(req(BODY, headers()), [SECRET], OPTIONS, now)
    PROVIDER.verify(req(BODY, headers()), [SECRET], PROVIDER.clean_options({"tolerance": 0}), TS + 10**8)


def test_rotated_secrets():
    PROVIDER.verify(signed(BODY, secret="old_token"), ["new_token", "old_token"], OPTIONS, NOW)
    assert reject(signed(BODY, secret="third_token"), secrets=("new_token", "old_token")).code == "no_matching_secret"


@pytest.mark.parametrize("body", [b"", b"nope", b"\xff", b"[]", b'{"payload": {}}', b'{"event": 3}', b'{"event": ""}'])
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_sign_reproduces_the_vector_and_round_trips():
    assert PROVIDER.sign(BODY, SECRET, OPTIONS, TS + 0.4) == {"x-zm-request-timestamp": str(TS), "x-zm-signature": SIG}
    body = (FIXTURES / "recording.completed.json").read_bytes()
    PROVIDER.verify(req(body, PROVIDER.sign(body, SECRET, OPTIONS, NOW)), [SECRET], OPTIONS, NOW)


def test_details_never_contain_the_expected_signature():
    assert SIG[3:] not in reject(req(BODY, headers(signature="v0=" + "1" * 64))).detail


def test_options_and_metadata():
    assert OPTIONS == {"tolerance": 300}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -3})
    assert PROVIDER.kind == "zoom" and "[UNCONFIRMED" in PROVIDER.docs_verifies


@settings(max_examples=200, deadline=None, database=None)
@given(
    body=st.one_of(st.binary(max_size=300), st.sampled_from([BODY, URL_VALIDATION])),
    hdrs=st.dictionaries(
        st.sampled_from(["x-zm-signature", "x-zm-request-timestamp", "x-zm-trackingid"]),
        st.one_of(st.text(max_size=80), st.sampled_from([SIG, str(TS), "v0="])),
    ),
)
def test_property_garbage_only_raises_the_documented_errors(body, hdrs):
    request = InboundRequest(body=body, headers=hdrs)
    assert PROVIDER.unsigned_handshake(request, [SECRET], OPTIONS) is None
    try:
        PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}
    else:
        assert body == BODY
    answer = PROVIDER.handshake(request, [SECRET], OPTIONS)
    assert answer is None or isinstance(answer, HandshakeResponse)
    try:
        info = PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and info.event_type and isinstance(info.event_id, str)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.binary(min_size=1, max_size=300), data=st.data())
def test_property_one_byte_change_is_rejected(body, data):
    request = signed(body)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(req(changed, dict(request.headers)), [SECRET], OPTIONS, NOW)
    assert info.value.code == "no_matching_secret"
