"""SendGrid Event Webhook provider, checked against ``sendgrid.EventWebhook`` and its published vector."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from sendgrid import EventWebhook

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.sendgrid import SendGridProvider

FIXTURES = Path(__file__).parent / "fixtures" / "sendgrid"
PROVIDER = SendGridProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}
SIG_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TS_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# providers.md §12: published in sendgrid-python test/unit/test_eventwebhook.py (note the trailing \r\n).
VECTOR_KEY = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
VECTOR_TS = "1600112502"
VECTOR_SIG = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
VECTOR_BODY = (
    b'[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address",'
    b'"sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",'
    b'"sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",'
    b'"smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]\r\n'
)


class Sender:
    """A SendGrid-like signer: our own P-256 key pair; every signature is checked by sendgrid.EventWebhook."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()

    def headers(self, body: bytes, ts: int | str = NOW) -> dict[str, str]:
        signature = base64.b64encode(self.private.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        assert EventWebhook(self.public).verify_signature(body.decode(), signature, str(ts))
        return {SIG_HEADER: signature, TS_HEADER: str(ts)}


SENDER, OTHER = Sender(), Sender()


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def vector_headers(**override: str) -> dict[str, str]:
    return {SIG_HEADER: VECTOR_SIG, TS_HEADER: VECTOR_TS, **override}


def reject(request: InboundRequest, secrets=(VECTOR_KEY,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    return info.value


def test_published_vector_with_the_official_package():
    assert EventWebhook(VECTOR_KEY).verify_signature(VECTOR_BODY.decode(), VECTOR_SIG, VECTOR_TS)
    PROVIDER.verify(req(VECTOR_BODY, vector_headers()), [VECTOR_KEY], OPTIONS, NOW)


def test_published_vector_needs_the_trailing_crlf():
    assert not EventWebhook(VECTOR_KEY).verify_signature(VECTOR_BODY.decode().rstrip(), VECTOR_SIG, VECTOR_TS)
    assert reject(req(VECTOR_BODY.rstrip(), vector_headers())).code == "no_matching_secret"


def test_pem_wrapped_key():
    pem = f"-----BEGIN PUBLIC KEY-----\n{VECTOR_KEY}\n-----END PUBLIC KEY-----\n"
    PROVIDER.verify(req(VECTOR_BODY, vector_headers()), [pem], OPTIONS, NOW)
    # As stored from the form: still the PEM, and it verifies.
    stored = PROVIDER.clean_secret(pem)
    assert stored == pem.strip()
    PROVIDER.verify(req(VECTOR_BODY, vector_headers()), [stored], OPTIONS, NOW)


def test_describe_vector():
    info = PROVIDER.describe(req(VECTOR_BODY), OPTIONS)
    assert (info.event_id, info.event_type) == ("ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA", "dropped")


@pytest.mark.parametrize("name", ["delivered", "bounce", "batch"])
def test_fixtures(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = req(body, SENDER.headers(body))
    PROVIDER.verify(request, [SENDER.public], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert info.event_type == name
    ids = sorted(event["sg_event_id"] for event in json.loads(body))
    expected = ids[0] if len(ids) == 1 else "sha256:" + hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert info.event_id == expected


def test_batch_id_ignores_order_but_not_membership():
    events = json.loads((FIXTURES / "batch.json").read_bytes())
    forward, backward = json.dumps(events).encode(), json.dumps(events[::-1]).encode()
    fewer = json.dumps(events[:2]).encode()
    ids = [PROVIDER.describe(req(body), OPTIONS).event_id for body in (forward, backward, fewer)]
    assert ids[0] == ids[1] != ids[2]
    no_ids = json.dumps([{"event": "open"}, {"event": "open", "sg_event_id": "x"}]).encode()
    info = PROVIDER.describe(req(no_ids), OPTIONS)
    assert (info.event_id, info.event_type) == ("sha256:" + hashlib.sha256(no_ids).hexdigest(), "open")


@pytest.mark.parametrize(
    "body", [b"nope", b"{}", b"[]", b"[1]", b'[{"sg_event_id":"x"}]', b'[{"event":["x"]}]', b'[{"event":""}]']
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_tampered_body():
    body = (FIXTURES / "delivered.json").read_bytes()
    headers = SENDER.headers(body)
    assert reject(req(body.replace(b"ada@", b"adb@"), headers), secrets=(SENDER.public,)).code == "no_matching_secret"


def test_tampered_timestamp():
    headers = vector_headers(**{TS_HEADER: str(int(VECTOR_TS) + 1)})
    assert reject(req(VECTOR_BODY, headers)).code == "no_matching_secret"


@pytest.mark.parametrize("drop", [SIG_HEADER, TS_HEADER])
def test_missing_headers(drop):
    headers = {k: v for k, v in vector_headers().items() if k != drop}
    error = reject(req(VECTOR_BODY, headers))
    assert error.code == "missing_signature" and drop in error.detail


@pytest.mark.parametrize(
    "override",
    [
        {TS_HEADER: "soon"},
        {TS_HEADER: "1600112502.0"},
        {TS_HEADER: "9" * 400},
        {SIG_HEADER: "not base64!"},
        {SIG_HEADER: "A" * 400},
        {SIG_HEADER: "é"},
    ],
)
def test_malformed_headers(override):
    assert reject(req(VECTOR_BODY, vector_headers(**override))).code == "bad_format"


def test_valid_base64_that_is_not_a_der_signature_is_a_non_match():
    assert reject(req(VECTOR_BODY, vector_headers(**{SIG_HEADER: "AAAA"}))).code == "no_matching_secret"


def test_wrong_key():
    assert reject(req(VECTOR_BODY, vector_headers()), secrets=(SENDER.public,)).code == "no_matching_secret"


def test_rotated_keys():
    body = (FIXTURES / "bounce.json").read_bytes()
    PROVIDER.verify(req(body, SENDER.headers(body)), [OTHER.public, SENDER.public], OPTIONS, NOW)
    error = reject(req(body, Sender().headers(body)), secrets=(OTHER.public, SENDER.public))
    assert error.code == "no_matching_secret"


def test_unusable_keys_are_skipped_not_raised():
    PROVIDER.verify(req(VECTOR_BODY, vector_headers()), ["not a key", "", VECTOR_KEY], OPTIONS, NOW)
    error = reject(req(VECTOR_BODY, vector_headers()), secrets=("not a key", "whsec_abc"))
    assert error.code == "no_matching_secret" and "0 usable keys of 2" in error.detail


def test_optional_tolerance():
    body = (FIXTURES / "bounce.json").read_bytes()
    old = req(body, SENDER.headers(body, ts=NOW - 601))
    PROVIDER.verify(old, [SENDER.public], OPTIONS, NOW)  # off by default, like the SDK
    error = reject(old, secrets=(SENDER.public,), options=PROVIDER.clean_options({"tolerance": 600}))
    assert error.code == "timestamp_out_of_tolerance" and "601 s old" in error.detail


def test_sign_is_not_possible():
    with pytest.raises(NotImplementedError):
        PROVIDER.sign(VECTOR_BODY, VECTOR_KEY, OPTIONS, NOW)


def test_clean_secret():
    assert PROVIDER.clean_secret(f"  {VECTOR_KEY}\n") == VECTOR_KEY
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_b64 = base64.b64encode(
        p384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    for bad in ("SG.apikey.value", "whsec_abc", VECTOR_KEY[:-8], p384_b64):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_secret(bad)
    assert PROVIDER.secret_generated_by_us is False
    assert OPTIONS == {"tolerance": 0}


HEADER_NAMES = st.sampled_from([SIG_HEADER.lower(), TS_HEADER.lower()])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(HEADER_NAMES, st.text(st.characters(exclude_categories=()), max_size=120), max_size=2),
)
def test_random_input_raises_only_documented_errors(body, headers):
    request = InboundRequest(body=body, headers=headers)
    try:
        PROVIDER.verify(request, [VECTOR_KEY, SENDER.public], PROVIDER.clean_options({"tolerance": 300}), NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    try:
        PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        pass


@settings(max_examples=200, deadline=None)
@given(body=st.text(min_size=1, max_size=200).map(str.encode), data=st.data())
def test_one_byte_change_is_always_rejected(body, data):
    headers = SENDER.headers(body)
    PROVIDER.verify(req(body, headers), [SENDER.public], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:index] + bytes([(body[index] + data.draw(st.integers(1, 255))) % 256]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(tampered, headers), [SENDER.public], OPTIONS, NOW)
