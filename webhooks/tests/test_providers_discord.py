"""Discord provider: Ed25519 signatures made with PyNaCl, and providers.md §12's computed vector."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nacl.bindings
import nacl.signing
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.discord import DiscordProvider

FIXTURES = Path(__file__).parent / "fixtures" / "discord"
PROVIDER = DiscordProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}

# providers.md §12, computed vector: seed bytes 00 01 … 1f.
VECTOR_PUBLIC = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
VECTOR_TS = "1700000000"
VECTOR_BODY = b'{"type":1}'
VECTOR_SIG = (
    "c1098e97d711377f30225d53d94b89d43537f92e5b3afaddc590781b1f9f9d4b"
    "2eeab335d370be3b9a090bc61a85b86448bc140dcd195f1569c2bff181257607"
)
KEY = nacl.signing.SigningKey(bytes(range(32)))
PUBLIC = KEY.verify_key.encode().hex()
OTHER = nacl.signing.SigningKey(bytes(range(1, 33)))


def signed(body: bytes, key: nacl.signing.SigningKey = KEY, ts: int | str = NOW) -> dict[str, str]:
    """The headers Discord sends, signed by PyNaCl."""
    return {
        "X-Signature-Ed25519": key.sign(str(ts).encode() + body).signature.hex(),
        "X-Signature-Timestamp": str(ts),
    }


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def reject(request: InboundRequest, secrets=(PUBLIC,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    return info.value


def test_computed_vector():
    assert PUBLIC == VECTOR_PUBLIC
    assert signed(VECTOR_BODY, ts=VECTOR_TS)["X-Signature-Ed25519"] == VECTOR_SIG
    request = req(VECTOR_BODY, {"X-Signature-Ed25519": VECTOR_SIG, "X-Signature-Timestamp": VECTOR_TS})
    PROVIDER.verify(request, [VECTOR_PUBLIC], OPTIONS, NOW)
    PROVIDER.verify(request, [VECTOR_PUBLIC.upper()], OPTIONS, NOW)


def test_ping_is_answered_with_pong_after_verification():
    body = (FIXTURES / "PING.json").read_bytes()
    request = req(body, signed(body))
    PROVIDER.verify(request, [PUBLIC], OPTIONS, NOW)
    reply = PROVIDER.handshake(request, [PUBLIC], OPTIONS)
    assert reply is not None and reply.status == 200 and json.loads(reply.body) == {"type": 1}
    assert reply.content_type == "application/json"
    assert PROVIDER.handshake(req(VECTOR_BODY), [PUBLIC], OPTIONS).body == b'{"type":1}'


def test_webhook_event_ping_gets_204():
    body = b'{"version":1,"application_id":"1234567890123456789","type":0}'
    PROVIDER.verify(req(body, signed(body)), [PUBLIC], OPTIONS, NOW)
    reply = PROVIDER.handshake(req(body), [PUBLIC], OPTIONS)
    assert reply is not None and (reply.status, reply.body) == (204, b"")


@pytest.mark.parametrize("name", ["APPLICATION_COMMAND", "MESSAGE_COMPONENT", "MODAL_SUBMIT", "APPLICATION_AUTHORIZED"])
def test_other_requests_are_no_handshake(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    assert PROVIDER.handshake(req(body), [PUBLIC], OPTIONS) is None


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"type":true}', b'{"type":"1"}', b"{}"])
def test_handshake_ignores_other_bodies(body):
    assert PROVIDER.handshake(req(body), [PUBLIC], OPTIONS) is None


@pytest.mark.parametrize("name", ["PING", "APPLICATION_COMMAND", "MESSAGE_COMPONENT", "MODAL_SUBMIT"])
def test_interaction_fixtures(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = req(body, signed(body))
    PROVIDER.verify(request, [PUBLIC], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (json.loads(body)["id"], name)


def test_webhook_event_fixture():
    body = (FIXTURES / "APPLICATION_AUTHORIZED.json").read_bytes()
    request = req(body, signed(body))
    PROVIDER.verify(request, [PUBLIC], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == ("sha256:" + hashlib.sha256(body).hexdigest(), "APPLICATION_AUTHORIZED")


def test_describe_unknown_type_and_malformed():
    assert PROVIDER.describe(req(b'{"id":"9","type":42}'), OPTIONS).event_type == "type_42"
    assert PROVIDER.describe(req(b'{"id":9,"type":2}'), OPTIONS).event_id == "9"
    for bad in (b"nope", b"[]", b'{"id":"1"}', b'{"id":"1","type":"2"}', b'{"type":2}', b'{"type":1,"event":{}}'):
        with pytest.raises(MalformedPayload):
            PROVIDER.describe(req(bad), OPTIONS)


def test_tampered_body():
    body = (FIXTURES / "APPLICATION_COMMAND.json").read_bytes()
    headers = signed(body)
    assert reject(req(body.replace(b"animal_dog", b"animal_cat"), headers)).code == "no_matching_secret"


def test_tampered_timestamp():
    headers = {**signed(VECTOR_BODY), "X-Signature-Timestamp": str(NOW + 1)}
    assert reject(req(VECTOR_BODY, headers)).code == "no_matching_secret"


@pytest.mark.parametrize("drop", ["X-Signature-Ed25519", "X-Signature-Timestamp"])
def test_missing_headers(drop):
    headers = {k: v for k, v in signed(VECTOR_BODY).items() if k != drop}
    error = reject(req(VECTOR_BODY, headers))
    assert error.code == "missing_signature" and drop in error.detail


@pytest.mark.parametrize(
    "override",
    [
        {"X-Signature-Ed25519": VECTOR_SIG[:-2]},
        {"X-Signature-Ed25519": "z" * 128},
        {"X-Signature-Ed25519": "é" * 128},
        {"X-Signature-Timestamp": "soon"},
        {"X-Signature-Timestamp": "9" * 400},
    ],
)
def test_malformed_headers(override):
    assert reject(req(VECTOR_BODY, {**signed(VECTOR_BODY), **override})).code == "bad_format"


def test_wrong_key_and_unusable_keys():
    assert reject(req(VECTOR_BODY, signed(VECTOR_BODY, OTHER))).code == "no_matching_secret"
    error = reject(req(VECTOR_BODY, signed(VECTOR_BODY)), secrets=("not hex", "00" * 31, ""))
    assert error.code == "no_matching_secret" and "0 usable keys of 3" in error.detail


def test_rotated_keys():
    other_public = OTHER.verify_key.encode().hex()
    PROVIDER.verify(req(VECTOR_BODY, signed(VECTOR_BODY)), [other_public, PUBLIC], OPTIONS, NOW)
    third = nacl.signing.SigningKey(bytes(32))
    assert (
        reject(req(VECTOR_BODY, signed(VECTOR_BODY, third)), secrets=(other_public, PUBLIC)).code
        == "no_matching_secret"
    )


def test_optional_tolerance():
    request = req(VECTOR_BODY, signed(VECTOR_BODY, ts=NOW - 400))
    PROVIDER.verify(request, [PUBLIC], OPTIONS, NOW)  # off by default, like discord-interactions
    error = reject(request, options=PROVIDER.clean_options({"tolerance": 300}))
    assert error.code == "timestamp_out_of_tolerance" and "400 s old" in error.detail


# The Ed25519 points of small order, as public keys: their y coordinate (mod p) is 0, 1, -1 or ±y8
# (libsodium's blocklist), with either sign bit, and the non-canonical spellings y + p of the same y.
_P = 2**255 - 19
_Y8 = int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
SMALL_ORDER_KEYS = [
    (y | sign << 255).to_bytes(32, "little")
    for base in (0, 1, _P - 1, _Y8, _P - _Y8)
    for y in (base, base + _P)
    if y < 2**255
    for sign in (0, 1)
]


def _forged(public: bytes, body: bytes) -> dict[str, str] | None:
    """Headers no private key made (R a small-order point, S = 0) that the key verifies, if one is found."""
    key = Ed25519PublicKey.from_public_bytes(public)
    for ts in range(NOW, NOW + 64):
        for point in SMALL_ORDER_KEYS:
            try:
                key.verify(point + bytes(32), str(ts).encode() + body)
            except InvalidSignature:
                continue
            return {"X-Signature-Ed25519": (point + bytes(32)).hex(), "X-Signature-Timestamp": str(ts)}
    return None


@pytest.mark.parametrize("public", SMALL_ORDER_KEYS, ids=lambda key: key.hex()[:6] + "…" + key.hex()[-4:])
def test_a_public_key_of_small_order_is_refused_as_it_verifies_forged_signatures(public):
    # PyNaCl (libsodium) agrees that these are no usable public key.
    assert not nacl.bindings.crypto_core_ed25519_is_valid_point(public)
    body = b'{"id":"1","type":2,"data":{"name":"forged"}}'
    forged = _forged(public, body)
    assert forged is not None  # the library alone accepts a signature nobody made
    error = reject(req(body, forged), secrets=(public.hex(),))
    assert error.code == "no_matching_secret" and "0 usable keys of 1" in error.detail
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_secret(public.hex())


def test_sign_is_not_possible():
    with pytest.raises(NotImplementedError):
        PROVIDER.sign(VECTOR_BODY, PUBLIC, OPTIONS, NOW)


def test_clean_secret():
    assert PROVIDER.clean_secret(f"  {PUBLIC.upper()} ") == PUBLIC
    for bad in ("Bot abc", PUBLIC[:-2], "z" * 64):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_secret(bad)
    assert PROVIDER.secret_generated_by_us is False
    assert OPTIONS == {"tolerance": 0}


HEADER_NAMES = st.sampled_from(["x-signature-ed25519", "x-signature-timestamp"])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(HEADER_NAMES, st.text(st.characters(exclude_categories=()), max_size=130), max_size=2),
)
def test_random_input_raises_only_documented_errors(body, headers):
    request = InboundRequest(body=body, headers=headers)
    try:
        PROVIDER.verify(request, [PUBLIC], PROVIDER.clean_options({"tolerance": 60}), NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    PROVIDER.handshake(request, [PUBLIC], OPTIONS)
    try:
        PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        pass


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), data=st.data())
def test_one_byte_change_is_always_rejected(body, data):
    headers = signed(body)
    PROVIDER.verify(req(body, headers), [PUBLIC], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:index] + bytes([(body[index] + data.draw(st.integers(1, 255))) % 256]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(tampered, headers), [PUBLIC], OPTIONS, NOW)
