"""Slack provider, checked against slack_sdk's SignatureVerifier and the published vector (providers.md §6)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.signature import Clock, SignatureVerifier

from webhooks.providers.base import (
    HandshakeResponse,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    VerificationError,
)
from webhooks.providers.slack import SlackProvider

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
PROVIDER = SlackProvider()
OPTIONS = PROVIDER.clean_options({})

# providers.md §6, published in slack_sdk's tests/slack_sdk/signature/test_signature_verifier.py.
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TS = 1531420618
BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
NOW = TS + 5


class FixedClock(Clock):
    def __init__(self, now: float):
        self._now = now

    def now(self) -> float:
        return self._now


def official(secret: str, body: bytes, ts: int = TS) -> str:
    """What Slack sends, computed by slack_sdk."""
    return SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)


def headers(signature: str = SIG, ts: int | str = TS) -> dict[str, str]:
    return {"x-slack-signature": signature, "x-slack-request-timestamp": str(ts)}


def req(body: bytes, hdrs: dict[str, str] | None = None, method: str = "POST") -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (hdrs or {}).items()}, method=method)


def signed(body: bytes, secret: str = SECRET, ts: int = TS) -> InboundRequest:
    return req(body, headers(official(secret, body, ts), ts))


def reject(request: InboundRequest, secrets=(SECRET,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def test_published_vector_matches_official_package_and_verifies():
    verifier = SignatureVerifier(SECRET, clock=FixedClock(NOW))
    assert verifier.generate_signature(timestamp=str(TS), body=BODY) == SIG
    assert verifier.is_valid(BODY, str(TS), SIG)
    PROVIDER.verify(req(BODY, headers()), [SECRET], OPTIONS, NOW)


def test_published_vector_is_a_slash_command():
    info = PROVIDER.describe(req(BODY, headers()), OPTIONS)
    assert info.event_type == "slash_command"
    assert info.event_id == "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"


@pytest.mark.parametrize(
    "name, event_id", [("app_mention", "Ev0LAN670R"), ("reaction_added", "Ev08MFMKH6"), ("message", "Ev9UQ52YNA")]
)
def test_fixtures_signed_by_official_package(name, event_id):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = signed(body)
    assert SignatureVerifier(SECRET, clock=FixedClock(NOW)).is_valid_request(body, dict(request.headers))
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    assert PROVIDER.handshake(request, [SECRET], OPTIONS) is None
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (event_id, name)


def _interactivity(payload: dict) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


@pytest.mark.parametrize(
    "payload, event_id, event_type",
    [
        (
            {
                "type": "block_actions",
                "trigger_id": "12466734323.1395872398.8ad1e5e1b1f6c6a4e0c3b1",
                "user": {"id": "U061F7AUR"},
                "actions": [{"action_id": "approve", "block_id": "b1", "type": "button", "value": "yes"}],
            },
            "12466734323.1395872398.8ad1e5e1b1f6c6a4e0c3b1",
            "block_actions",
        ),
        (
            {"type": "shortcut", "callback_id": "open_modal", "trigger_id": "944799105734.773906753841.38b5"},
            "944799105734.773906753841.38b5",
            "shortcut",
        ),
        ({"type": "view_closed", "view": {"id": "V0123"}, "is_cleared": False}, None, "view_closed"),
    ],
)
def test_interactivity_payloads(payload, event_id, event_type):
    body = _interactivity(payload)
    request = signed(body)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert info.event_type == event_type
    assert info.event_id == (event_id or "sha256:" + hashlib.sha256(body).hexdigest())


def test_slash_command_without_trigger_id_gets_a_body_hash():
    body = b"command=%2Fdeploy&text=prod&team_id=T1"
    info = PROVIDER.describe(signed(body), OPTIONS)
    assert info == type(info)(event_id="sha256:" + hashlib.sha256(body).hexdigest(), event_type="slash_command")


def test_envelope_without_event_id():
    body = b'{"token":"x","type":"app_rate_limited","team_id":"T1","minute_rate_limited":1518467820,"api_app_id":"A1"}'
    info = PROVIDER.describe(signed(body), OPTIONS)
    assert info.event_type == "app_rate_limited"
    assert info.event_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_url_verification_handshake_is_answered_after_verification():
    body = b'{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}'
    request = signed(body)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    answer = PROVIDER.handshake(request, [SECRET], OPTIONS)
    assert isinstance(answer, HandshakeResponse)
    assert answer.status == 200 and answer.content_type == "application/json"
    assert json.loads(answer.body) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    # It is not an unsigned handshake: without a signature the challenge is refused by verify().
    assert PROVIDER.unsigned_handshake(req(body), [SECRET], OPTIONS) is None
    assert reject(req(body)).code == "missing_signature"
    assert reject(signed(body, secret="someone-else")).code == "no_matching_secret"


def test_url_verification_without_challenge():
    answer = PROVIDER.handshake(signed(b'{"type":"url_verification"}'), [SECRET], OPTIONS)
    assert answer is not None and answer.status == 400


def test_ssl_check_is_answered_without_a_signature_and_reveals_nothing():
    answer = PROVIDER.unsigned_handshake(req(b"ssl_check=1&token=abc"), [SECRET], OPTIONS)
    assert answer == HandshakeResponse(200, b"", "text/plain")
    # A real command or interaction is never taken for an ssl_check.
    for body in (b"ssl_check=1&command=%2Fx", b"ssl_check=1&payload=%7B%7D", b"ssl_check=0", BODY, b"{}"):
        assert PROVIDER.unsigned_handshake(req(body), [SECRET], OPTIONS) is None
    assert PROVIDER.unsigned_handshake(req(b"ssl_check=1", method="GET"), [SECRET], OPTIONS) is None


def test_tampered_body():
    tampered = BODY.replace(b"text=", b"text=x", 1)
    assert reject(req(tampered, headers())).code == "no_matching_secret"


def test_tampered_timestamp():
    assert reject(req(BODY, headers(ts=TS + 1))).code == "no_matching_secret"


@pytest.mark.parametrize("drop", ["x-slack-signature", "x-slack-request-timestamp"])
def test_missing_headers(drop):
    error = reject(req(BODY, {k: v for k, v in headers().items() if k != drop}))
    assert error.code == "missing_signature"
    assert drop.lower() in error.detail.lower()


@pytest.mark.parametrize(
    "hdrs",
    [
        headers(signature=SIG[3:]),
        headers(signature="v1=" + SIG[3:]),
        headers(signature=SIG + "00"),
        headers(signature="v0=" + "z" * 64),
        headers(signature="v0=é"),
        headers(ts="soon"),
        headers(ts="1531420618.5"),
        headers(ts="-1531420618"),
        headers(ts="9" * 400),
    ],
)
def test_malformed_headers(hdrs):
    assert reject(req(BODY, hdrs)).code == "bad_format"


def test_uppercase_hex_is_accepted():
    PROVIDER.verify(req(BODY, headers(signature="v0=" + SIG[3:].upper())), [SECRET], OPTIONS, NOW)


def test_wrong_secret():
    assert reject(req(BODY, headers()), secrets=("another-signing-secret",)).code == "no_matching_secret"


def test_stale_and_future_timestamps_like_the_sdk():
    old = reject(req(BODY, headers()), now=TS + 301)
    assert old.code == "timestamp_out_of_tolerance" and "301 s old" in old.detail
    new = reject(req(BODY, headers()), now=TS - 301)
    assert new.code == "timestamp_out_of_tolerance" and "301 s in the future" in new.detail
    for now in (TS + 300, TS - 300):
        PROVIDER.verify(req(BODY, headers()), [SECRET], OPTIONS, now)
        assert SignatureVerifier(SECRET, clock=FixedClock(now)).is_valid(BODY, str(TS), SIG)
    assert not SignatureVerifier(SECRET, clock=FixedClock(TS + 301)).is_valid(BODY, str(TS), SIG)
    # The window is checked first, as slack_sdk does.
    assert reject(req(BODY, headers(signature="v0=" + "0" * 64)), now=TS + 10_000).code == "timestamp_out_of_tolerance"


def test_tolerance_option():
    PROVIDER.verify(req(BODY, headers()), [SECRET], PROVIDER.clean_options({"tolerance": 0}), TS + 10**8)
    short = PROVIDER.clean_options({"tolerance": 10})
    assert reject(req(BODY, headers()), options=short, now=TS + 11).code == "timestamp_out_of_tolerance"


def test_rotated_secrets():
    old, new, third = "old-signing-secret", "new-signing-secret", "third-signing-secret"
    PROVIDER.verify(signed(BODY, secret=old), [new, old], OPTIONS, NOW)
    assert reject(signed(BODY, secret=third), secrets=(new, old)).code == "no_matching_secret"
    assert reject(signed(BODY), secrets=()).code == "no_matching_secret"


@pytest.mark.parametrize(
    "body",
    [
        b"not json and no form",
        b"\xff\xfe",
        b"[]",
        b'{"type": 5}',
        b'{"type": "event_callback", "event_id": "Ev1"}',
        b'{"type": "event_callback", "event": {"type": ""}}',
        b"payload=not-json",
        b"payload=%5B%5D",
        b"payload=%7B%22type%22%3A1%7D",
        b"team_id=T1&user_id=U1",
        b"",
    ],
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_sign_round_trips_and_is_accepted_by_the_official_package():
    body = (FIXTURES / "app_mention.json").read_bytes()
    now = 1_700_000_000.7
    signed_headers = PROVIDER.sign(body, SECRET, OPTIONS, now)
    assert set(signed_headers) == {"X-Slack-Signature", "X-Slack-Request-Timestamp"}
    PROVIDER.verify(req(body, signed_headers), [SECRET], OPTIONS, now)
    assert SignatureVerifier(SECRET, clock=FixedClock(now)).is_valid_request(body, signed_headers)


def test_sign_reproduces_the_vector():
    assert PROVIDER.sign(BODY, SECRET, OPTIONS, TS + 0.9) == {
        "X-Slack-Request-Timestamp": str(TS),
        "X-Slack-Signature": SIG,
    }


def test_details_never_contain_the_expected_signature():
    error = reject(req(BODY, headers(signature="v0=" + "a" * 64)))
    assert SIG[3:] not in error.detail


def test_options_and_metadata():
    assert OPTIONS == {"tolerance": 300}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -1})
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"header": "x"})
    assert PROVIDER.kind == "slack" and PROVIDER.secret_generated_by_us is False
    assert PROVIDER.secret_header_names(OPTIONS) == set()


HEADER_NAMES = ["x-slack-signature", "x-slack-request-timestamp", "x-slack-retry-num", "content-type"]


@settings(max_examples=200, deadline=None, database=None)
@given(
    body=st.one_of(st.binary(max_size=300), st.sampled_from([BODY, b"ssl_check=1", b'{"type":"url_verification"}'])),
    hdrs=st.dictionaries(
        st.sampled_from(HEADER_NAMES),
        st.one_of(st.text(max_size=80), st.sampled_from([SIG, str(TS), "v0=", "v0=" + "0" * 64])),
    ),
    method=st.sampled_from(["POST", "GET"]),
)
def test_property_garbage_only_raises_the_documented_errors(body, hdrs, method):
    request = InboundRequest(body=body, headers=hdrs, method=method)
    PROVIDER.unsigned_handshake(request, [SECRET], OPTIONS)
    try:
        PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}
    else:
        assert body == BODY and hdrs["x-slack-request-timestamp"] == str(TS)
    PROVIDER.handshake(request, [SECRET], OPTIONS)
    try:
        info = PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and info.event_type
    assert info.event_id is None or isinstance(info.event_id, str)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.text(min_size=1, max_size=200).map(str.encode), data=st.data())
def test_property_one_byte_change_is_rejected(body, data):
    request = signed(body)  # slack_sdk signs text, so the original body is UTF-8; the change need not be
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(req(changed, dict(request.headers)), [SECRET], OPTIONS, NOW)
    assert info.value.code == "no_matching_secret"
