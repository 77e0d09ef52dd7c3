"""X (Twitter) provider, checked against the computed CRC vector in providers.md's appendix.

Delivery signatures for fixtures are computed here with the stdlib, independently of the provider's
code (sha256= + base64 HMAC-SHA256 keyed with the consumer secret over the raw body).
"""

from __future__ import annotations

import base64
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
from webhooks.providers.twitter import XProvider, crc_response_token

FIXTURES = Path(__file__).parent / "fixtures" / "x"
PROVIDER = XProvider()
OPTIONS = PROVIDER.clean_options({})

# providers.md appendix (computed vector).
SECRET = "consumer_secret"
CRC_TOKEN = "challenge_string"
CRC_RESPONSE = "sha256=v1WdiCVwy17uGTMWveHGlqQXN/qW1bQraNXXByRO2YA="
HEADER = "x-twitter-webhooks-signature"
NOW = 1_700_000_000


def reference(secret: str, message: bytes) -> str:
    return "sha256=" + base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def req(body: bytes, hdrs: dict[str, str] | None = None, **kwargs) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (hdrs or {}).items()}, **kwargs)


def signed(body: bytes, secret: str = SECRET) -> InboundRequest:
    return req(body, {HEADER: reference(secret, body)})


def reject(request: InboundRequest, secrets=(SECRET,)) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), OPTIONS, NOW)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def crc(token: str | None = CRC_TOKEN, *, via: str = "query", method: str = "GET", secrets=(SECRET,)):
    if via == "query":
        request = req(b"", method=method, query={"crc_token": [token]} if token is not None else {})
    else:
        request = req(b"", method=method, url=f"https://hookline.test/in/abc/?crc_token={token}&nonce=1")
    return PROVIDER.unsigned_handshake(request, list(secrets), OPTIONS)


def test_crc_vector():
    assert reference(SECRET, CRC_TOKEN.encode()) == CRC_RESPONSE
    assert crc_response_token(SECRET, CRC_TOKEN) == CRC_RESPONSE
    for via in ("query", "url"):
        answer = crc(via=via)
        assert isinstance(answer, HandshakeResponse)
        assert answer.status == 200 and answer.content_type == "application/json"
        assert json.loads(answer.body) == {"response_token": CRC_RESPONSE}


def test_crc_uses_the_current_secret_during_rotation():
    answer = crc(secrets=("", SECRET, "previous_secret"))
    assert json.loads(answer.body) == {"response_token": CRC_RESPONSE}
    assert crc(secrets=()).status == 503


def test_crc_only_for_get_with_a_token():
    assert crc(method="POST") is None
    assert crc(None) is None
    assert PROVIDER.unsigned_handshake(req(b"", method="GET"), [SECRET], OPTIONS) is None


@pytest.mark.parametrize(
    "token",
    ["", '{"for_user_id":"1","tweet_create_events":[]}', "a b", "x" * 257, '"quoted"', "é", "\udcff", "[1]"],
)
def test_crc_refuses_tokens_that_could_be_a_delivery_body(token):
    """The answer is HMAC(secret, token) = the delivery signature of a body equal to token (X's design)."""
    answer = crc(token)
    assert answer is not None and answer.status == 400
    assert b"response_token" not in answer.body


def test_crc_answer_cannot_be_replayed_as_a_delivery_signature():
    token = "eyJmb3JfdXNlcl9pZCI6IjEifQ"
    answer = json.loads(crc(token).body)["response_token"]
    PROVIDER.verify(req(token.encode(), {HEADER: answer}), [SECRET], OPTIONS, NOW)  # the HMAC does match…
    with pytest.raises(MalformedPayload):  # …but such a body is never a deliverable event
        PROVIDER.describe(req(token.encode()), OPTIONS)


@pytest.mark.parametrize(
    "name, event_id",
    [
        ("tweet_create_events", "2244994945:tweet_create_events:1825932132847362048"),
        ("favorite_events", "2244994945:favorite_events:a7ba59eab0bfcba386f7acedac279542"),
        ("direct_message_events", "2244994945:direct_message_events:1825933000000000001"),
    ],
)
def test_fixtures(name, event_id):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = signed(body)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (event_id, name)


def test_events_without_ids_get_a_body_hash():
    body = b'{"for_user_id":"2244994945","follow_events":[{"type":"follow","created_timestamp":"1517588749178"}]}'
    info = PROVIDER.describe(signed(body), OPTIONS)
    assert info.event_type == "follow_events"
    assert info.event_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_user_event_revocation():
    body = b'{"user_event":{"revoke":{"date_time":"2018-05-24T09:48:12+00:00","target":{"app_id":"13090192"}}}}'
    assert PROVIDER.describe(signed(body), OPTIONS).event_type == "user_event"


def test_first_events_key_wins():
    body = b'{"for_user_id":"1","users":{},"tweet_delete_events":[{"status":{"id":"5"}}],"favorite_events":[]}'
    assert PROVIDER.describe(signed(body), OPTIONS).event_type == "tweet_delete_events"


def test_tampered_body():
    body = (FIXTURES / "tweet_create_events.json").read_bytes()
    request = signed(body)
    assert reject(req(body.replace(b"Testing", b"Tasting"), dict(request.headers))).code == "no_matching_secret"


def test_missing_header():
    error = reject(req(b"{}"))
    assert error.code == "missing_signature" and HEADER in error.detail


@pytest.mark.parametrize(
    "value",
    [CRC_RESPONSE.split("=", 1)[1], "sha1=" + CRC_RESPONSE.split("=", 1)[1], "sha256=***", "sha256=é", "sha256"],
)
def test_malformed_header(value):
    assert reject(req(b"{}", {HEADER: value})).code == "bad_format"


def test_header_prefix_is_case_insensitive():
    body = b'{"for_user_id":"1","favorite_events":[]}'
    PROVIDER.verify(req(body, {HEADER: reference(SECRET, body).replace("sha256", "SHA256")}), [SECRET], OPTIONS, NOW)


def test_wrong_secret():
    assert reject(signed(b"{}", secret="other_secret")).code == "no_matching_secret"


def test_rotated_secrets():
    PROVIDER.verify(signed(b"{}", secret="old"), ["new", "old"], OPTIONS, NOW)
    assert reject(signed(b"{}", secret="third"), secrets=("new", "old")).code == "no_matching_secret"


@pytest.mark.parametrize(
    "body", [b"", b"nope", b"\xff", b"[]", b'{"for_user_id":"1"}', b'{"users": {}}', b"5", b'"tweet_create_events"']
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_sign_round_trips():
    body = (FIXTURES / "favorite_events.json").read_bytes()
    headers = PROVIDER.sign(body, SECRET, OPTIONS, NOW)
    assert headers == {HEADER: reference(SECRET, body)}
    PROVIDER.verify(req(body, headers), [SECRET], OPTIONS, NOW)


def test_options_and_metadata():
    assert OPTIONS == {}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": 1})
    assert PROVIDER.kind == "x" and PROVIDER.secret_header_names(OPTIONS) == set()


@settings(max_examples=200, deadline=None, database=None)
@given(
    body=st.binary(max_size=300),
    value=st.one_of(st.none(), st.text(max_size=80), st.sampled_from([CRC_RESPONSE, "sha256=", "sha256=AAAA"])),
    token=st.one_of(st.none(), st.text(max_size=300)),
    method=st.sampled_from(["GET", "POST"]),
)
def test_property_garbage_only_raises_the_documented_errors(body, value, token, method):
    request = req(
        body,
        {HEADER: value} if value is not None else {},
        method=method,
        query={"crc_token": [token]} if token is not None else {},
    )
    answer = PROVIDER.unsigned_handshake(request, [SECRET], OPTIONS)
    assert answer is None or answer.status in {200, 400}
    try:
        PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in {"missing_signature", "bad_format", "no_matching_secret"}
    else:
        assert value is not None and body == CRC_TOKEN.encode()
    try:
        info = PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and isinstance(info.event_id, str)


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
