"""Mailgun provider: the signature object in the JSON body, checked against providers.md §12's computed vector."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.mailgun import MailgunProvider

FIXTURES = Path(__file__).parent / "fixtures" / "mailgun"
PROVIDER = MailgunProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}

# providers.md §12, computed vector. The fixtures are signed with the same key.
KEY = "key-test-signing"
VECTOR_TS, VECTOR_TOKEN = "1700000000", "f4a7c1e0b2d9"
VECTOR_SIG = "a72e729f7d12fb4c5170dc2b294d5f03a37d10c991ebff6b2df69498298a1288"


def stdlib_signature(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def body_with(signature: dict | None, event: dict | None = None, **extra) -> bytes:
    payload = {"event-data": event or {"id": "evt-1", "event": "delivered"}, **extra}
    if signature is not None:
        payload["signature"] = signature
    return json.dumps(payload).encode()


def vector_signature(**override) -> dict:
    return {"timestamp": VECTOR_TS, "token": VECTOR_TOKEN, "signature": VECTOR_SIG, **override}


def req(body: bytes) -> InboundRequest:
    return InboundRequest(body=body, headers={"content-type": "application/json"})


def reject(body: bytes, secrets=(KEY,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(req(body), list(secrets), options, now)
    for secret in secrets:
        assert not secret or secret not in info.value.detail
    return info.value


def test_computed_vector():
    assert stdlib_signature(KEY, VECTOR_TS, VECTOR_TOKEN) == VECTOR_SIG
    PROVIDER.verify(req(body_with(vector_signature())), [KEY], OPTIONS, NOW)
    PROVIDER.verify(req(body_with(vector_signature(timestamp=int(VECTOR_TS)))), [KEY], OPTIONS, NOW)
    PROVIDER.verify(req(body_with(vector_signature(signature=VECTOR_SIG.upper()))), [KEY], OPTIONS, NOW)


@pytest.mark.parametrize("name", ["delivered", "failed", "opened"])
def test_fixtures(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    block = json.loads(body)["signature"]
    assert block["signature"] == stdlib_signature(KEY, block["timestamp"], block["token"])
    PROVIDER.verify(req(body), [KEY], OPTIONS, NOW)
    info = PROVIDER.describe(req(body), OPTIONS)
    assert (info.event_id, info.event_type) == (json.loads(body)["event-data"]["id"], name)


def test_tampered_signature_fields():
    for override in ({"token": VECTOR_TOKEN + "x"}, {"timestamp": "1700000001"}, {"signature": "0" * 64}):
        assert reject(body_with(vector_signature(**override))).code == "no_matching_secret"


def test_event_data_is_not_covered_by_the_signature():
    # Mailgun signs timestamp + token only; documented in docs_verifies.
    body = body_with(vector_signature(), {"id": "evt-other", "event": "failed"})
    PROVIDER.verify(req(body), [KEY], OPTIONS, NOW)


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"event-data":{}}', b'{"signature":"abc"}', b'{"signature":null}', b"\xff"],
)
def test_missing_signature(body):
    assert reject(body).code == "missing_signature"


@pytest.mark.parametrize(
    "override",
    [
        {"timestamp": "soon"},
        {"timestamp": -1},
        {"timestamp": True},
        {"timestamp": None},
        {"token": ""},
        {"token": 5},
        {"signature": "xyz"},
        {"signature": VECTOR_SIG[:-1]},
        {"signature": None},
    ],
)
def test_malformed_signature_object(override):
    assert reject(body_with(vector_signature(**override))).code == "bad_format"


def test_wrong_key():
    assert reject(body_with(vector_signature()), secrets=("key-other",)).code == "no_matching_secret"


def test_rotated_keys():
    signature = {"timestamp": VECTOR_TS, "token": "t" * 50, "signature": stdlib_signature("old", VECTOR_TS, "t" * 50)}
    PROVIDER.verify(req(body_with(signature)), ["new", "old"], OPTIONS, NOW)
    assert reject(body_with(signature), secrets=("new", "third")).code == "no_matching_secret"


def test_parent_signature_of_subaccount_events():
    # As Mailgun documents it: a field of the signature object, over the same timestamp + token.
    parent_sig = stdlib_signature("parent", VECTOR_TS, VECTOR_TOKEN)
    body = body_with(vector_signature(**{"parent-signature": parent_sig}))
    for key in (KEY, "parent"):
        PROVIDER.verify(req(body), [key], OPTIONS, NOW)
        assert PROVIDER.replay_nonce(req(body), OPTIONS) == VECTOR_TOKEN
    assert reject(body, secrets=("neither",)).code == "no_matching_secret"
    # A separate parent-signature object is accepted with the signature object's token and timestamp only.
    parent = {"timestamp": VECTOR_TS, "token": VECTOR_TOKEN, "signature": parent_sig}
    body = body_with(vector_signature(), **{"parent-signature": parent})
    for key in (KEY, "parent"):
        PROVIDER.verify(req(body), [key], OPTIONS, NOW)
        assert PROVIDER.replay_nonce(req(body), OPTIONS) == VECTOR_TOKEN
    assert reject(body, secrets=("neither",)).code == "no_matching_secret"


def test_parent_signature_with_its_own_token_cannot_dodge_the_nonce():
    # Otherwise a parent signature seen once could be attached to forged bodies next to fresh
    # signature objects (fresh tokens), each reporting a new nonce.
    seen = {"timestamp": VECTOR_TS, "token": "p" * 50, "signature": stdlib_signature("parent", VECTOR_TS, "p" * 50)}
    fresh = vector_signature(token="f" * 50, signature="0" * 64)
    body = body_with(fresh, {"id": "evt-forged", "event": "delivered"}, **{"parent-signature": seen})
    assert reject(body, secrets=("parent",)).code == "no_matching_secret"


def test_old_parent_signature_cannot_borrow_a_fresh_timestamp():
    # A signature captured days ago (its token long forgotten by the nonce table) moved into a
    # top-level parent-signature object, next to a signature object with the same token, a fresh
    # timestamp and a junk signature: nonce_signed_at() would report the fresh time, so the old
    # signature would sign any body. Both timestamp and token must be the verified ones.
    old_ts = str(NOW - 30 * 86400)
    captured = {"timestamp": old_ts, "token": VECTOR_TOKEN, "signature": stdlib_signature(KEY, old_ts, VECTOR_TOKEN)}
    fresh = vector_signature(signature="0" * 64)
    body = body_with(fresh, {"id": "evt-forged", "event": "delivered"}, **{"parent-signature": captured})
    assert reject(body).code == "no_matching_secret"
    # The same captured signature where it belongs is verified, and reports its own (old) time.
    honest = body_with(captured)
    PROVIDER.verify(req(honest), [KEY], OPTIONS, NOW)
    assert PROVIDER.nonce_signed_at(req(honest), OPTIONS) == float(old_ts)


@pytest.mark.parametrize("name", ["delivered", "failed", "opened"])
def test_replay_nonce_is_the_signed_token(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    PROVIDER.verify(req(body), [KEY], OPTIONS, NOW)
    assert PROVIDER.replay_nonce(req(body), OPTIONS) == json.loads(body)["signature"]["token"]
    # The same signature on another body (what the ingest service refuses) reports the same nonce.
    forged = json.loads(body)
    forged["event-data"] = {"id": "evt-forged", "event": "delivered"}
    forged_body = json.dumps(forged).encode()
    PROVIDER.verify(req(forged_body), [KEY], OPTIONS, NOW)
    assert PROVIDER.replay_nonce(req(forged_body), OPTIONS) == PROVIDER.replay_nonce(req(body), OPTIONS)
    assert PROVIDER.replay_nonce(req(body_with(vector_signature())), OPTIONS) == VECTOR_TOKEN


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff",
        b"[]",
        b"[" * 10_000,
        body_with(None),
        body_with("not an object"),
        body_with(vector_signature(token="")),
        body_with(vector_signature(token=5)),
        body_with(vector_signature(signature="short")),
        body_with(vector_signature(timestamp="soon")),
    ],
)
def test_replay_nonce_of_malformed_bodies_is_none(body):
    assert PROVIDER.replay_nonce(req(body), OPTIONS) is None


def test_freshness_window_is_off_by_default_and_optional():
    body = body_with(vector_signature())
    PROVIDER.verify(req(body), [KEY], OPTIONS, NOW + 10 * 86400)
    window = PROVIDER.clean_options({"tolerance": 3600})
    PROVIDER.verify(req(body), [KEY], window, NOW + 3600)
    error = reject(body, options=window, now=NOW + 3601)
    assert error.code == "timestamp_out_of_tolerance" and "3601 s old" in error.detail
    assert "in the future" in reject(body, options=window, now=NOW - 3601).detail
    # A bad signature is reported as such even when also stale.
    assert reject(body_with(vector_signature(token="x")), options=window, now=NOW + 9999).code == "no_matching_secret"


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        b'{"event-data":{"id":"x"}}',
        b'{"event-data":{"event":"x"}}',
        b'{"event-data":{"id":1,"event":"x"}}',
    ],
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_sign_has_no_headers_and_prepare_body_signs_the_body():
    body = (FIXTURES / "opened.json").read_bytes()
    assert PROVIDER.sign(body, "fresh-key", OPTIONS, NOW) == {}
    prepared = PROVIDER.prepare_body(body, "fresh-key", OPTIONS, NOW + 5)
    block = json.loads(prepared)["signature"]
    assert block["timestamp"] == str(NOW + 5) and len(block["token"]) == 50
    assert block["signature"] == stdlib_signature("fresh-key", block["timestamp"], block["token"])
    PROVIDER.verify(req(prepared), ["fresh-key"], PROVIDER.clean_options({"tolerance": 60}), NOW + 5)
    assert json.loads(prepared)["event-data"] == json.loads(body)["event-data"]
    with pytest.raises(MalformedPayload):
        PROVIDER.prepare_body(b"[]", "k", OPTIONS, NOW)


def test_options_and_metadata():
    assert OPTIONS == {"tolerance": 0}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -1})
    assert PROVIDER.secret_generated_by_us is False


SIGNATURE_VALUES = st.one_of(
    st.none(), st.integers(), st.text(st.characters(exclude_categories=()), max_size=70), st.booleans()
)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=200),
    block=st.one_of(
        st.none(),
        st.text(max_size=10),
        st.fixed_dictionaries({}, optional={k: SIGNATURE_VALUES for k in ("timestamp", "token", "signature")}),
    ),
    use_raw=st.booleans(),
)
def test_random_input_raises_only_documented_errors(raw, block, use_raw):
    body = raw if use_raw else body_with(block)
    try:
        PROVIDER.verify(req(body), [KEY], PROVIDER.clean_options({"tolerance": 60}), NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    try:
        PROVIDER.describe(req(body), OPTIONS)
    except MalformedPayload:
        pass
    nonce = PROVIDER.replay_nonce(req(body), OPTIONS)
    assert nonce is None or (isinstance(nonce, str) and nonce)


@settings(max_examples=200, deadline=None)
@given(
    token=st.text("0123456789abcdef", min_size=1, max_size=50),
    field=st.sampled_from(["timestamp", "token"]),
    data=st.data(),
)
def test_one_byte_change_to_the_signed_fields_is_always_rejected(token, field, data):
    # What Mailgun signs is timestamp + token, so that is where a one-byte change must be caught.
    block = {"timestamp": VECTOR_TS, "token": token, "signature": stdlib_signature(KEY, VECTOR_TS, token)}
    PROVIDER.verify(req(body_with(block)), [KEY], OPTIONS, NOW)
    value = block[field]
    index = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.sampled_from([c for c in "0123456789abcdef" if c != value[index]]))
    changed = {**block, field: value[:index] + replacement + value[index + 1 :]}
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(body_with(changed)), [KEY], OPTIONS, NOW)
