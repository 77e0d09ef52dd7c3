"""Standard Webhooks provider, checked against the ``standardwebhooks`` package and the published v1 vector."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from webhooks.providers.base import EventInfo, InboundRequest, InvalidOptions, VerificationError
from webhooks.providers.standard_webhooks import StandardWebhooksProvider

FIXTURES = Path(__file__).parent / "fixtures" / "standard_webhooks"
PROVIDER = StandardWebhooksProvider()
OPTIONS = PROVIDER.clean_options({})

# providers.md §5: published by standard-webhooks, svix and svix-server.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NOW = TS + 5


def req(body: bytes, headers: dict[str, str]) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in headers.items()})


def headers(signature: str = SIG, msg_id: str = MSG_ID, ts: int | str = TS, family: str = "webhook") -> dict[str, str]:
    return {f"{family}-id": msg_id, f"{family}-timestamp": str(ts), f"{family}-signature": signature}


def official(secret: str, body: bytes, msg_id: str = MSG_ID, ts: int = TS) -> str:
    # The package signs the bytes as given (from 1.3), so bodies that are not UTF-8 are signed too.
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body)


def reject(request: InboundRequest, secrets=(SECRET,), options=OPTIONS, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert secret not in info.value.detail
        assert secret.removeprefix("whsec_") not in info.value.detail
    return info.value


def test_published_vector_matches_official_package():
    assert official(SECRET, BODY) == SIG


@pytest.mark.parametrize("family", ["webhook", "svix"])
def test_published_vector_verifies_with_both_header_families(family):
    PROVIDER.verify(req(BODY, headers(family=family)), [SECRET], OPTIONS, NOW)


@pytest.mark.parametrize("secret", [SECRET.removeprefix("whsec_"), "v1," + SECRET, SECRET + "=="])
def test_secret_spellings(secret):
    PROVIDER.verify(req(BODY, headers()), [secret], OPTIONS, NOW)
    # As stored from the form, the spelling still verifies.
    PROVIDER.verify(req(BODY, headers()), [PROVIDER.clean_secret(secret)], OPTIONS, NOW)


def test_unpadded_secret():
    padded = "whsec_" + base64.b64encode(b"k" * 25).decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    PROVIDER.verify(req(BODY, headers(official(padded, BODY))), [unpadded], OPTIONS, NOW)
    assert PROVIDER.clean_secret(unpadded) == unpadded


def test_svix_headers_take_precedence_like_the_svix_library():
    both = {**headers(family="svix"), **headers(msg_id="msg_other", family="webhook")}
    PROVIDER.verify(req(BODY, both), [SECRET], OPTIONS, NOW)
    assert PROVIDER.describe(req(b'{"type": "x"}', both), OPTIONS).event_id == MSG_ID
    # An incomplete svix family falls back to a complete webhook family.
    partial = {"svix-id": "msg_other", **headers()}
    PROVIDER.verify(req(BODY, partial), [SECRET], OPTIONS, NOW)


@pytest.mark.parametrize(
    "unsigned",
    [{"svix-id": "anything"}, {"svix-id": "anything", "svix-timestamp": str(TS)}, {"svix-signature": "v1,AAAA"}],
)
def test_replay_with_an_added_unsigned_svix_header_keeps_the_signed_id(unsigned):
    body = b'{"type": "user.created"}'
    signed = {"webhook-id": MSG_ID, "webhook-timestamp": str(TS), "webhook-signature": official(SECRET, body)}
    replay = {**signed, **unsigned}
    PROVIDER.verify(req(body, replay), [SECRET], OPTIONS, NOW)
    original = PROVIDER.describe(req(body, signed), OPTIONS).event_id
    assert original == MSG_ID
    assert PROVIDER.describe(req(body, replay), OPTIONS).event_id == original


def test_replay_with_an_added_unsigned_webhook_id_keeps_the_signed_svix_id():
    body = b'{"type": "user.created"}'
    signed = {"svix-id": MSG_ID, "svix-timestamp": str(TS), "svix-signature": official(SECRET, body)}
    replay = {**signed, "webhook-id": "anything"}
    PROVIDER.verify(req(body, replay), [SECRET], OPTIONS, NOW)
    assert PROVIDER.describe(req(body, replay), OPTIONS).event_id == MSG_ID


def test_tampered_body():
    assert reject(req(b'{"test": 2432232315}', headers())).code == "no_matching_secret"


def test_tampered_id_or_timestamp():
    assert reject(req(BODY, headers(msg_id="msg_other"))).code == "no_matching_secret"
    assert reject(req(BODY, headers(ts=TS + 1))).code == "no_matching_secret"


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers(drop):
    partial = {k: v for k, v in headers().items() if k != drop}
    error = reject(req(BODY, partial))
    assert error.code == "missing_signature"
    assert drop in error.detail


def test_missing_svix_header_is_named():
    partial = {k: v for k, v in headers(family="svix").items() if k != "svix-signature"}
    assert "svix-signature" in reject(req(BODY, partial)).detail


@pytest.mark.parametrize(
    "hdrs",
    [
        headers(ts="soon"),
        headers(ts="1614265330.5"),
        headers(ts="9" * 400),
        headers(signature="g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),  # no version
        headers(
            signature="v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg=="
        ),
        headers(signature="v1,***"),
        headers(signature="v1,é"),
    ],
)
def test_malformed_headers(hdrs):
    assert reject(req(BODY, hdrs)).code == "bad_format"


def test_wrong_secret():
    other = "whsec_" + base64.b64encode(b"x" * 24).decode()
    assert reject(req(BODY, headers()), secrets=(other,)).code == "no_matching_secret"


def test_stale_and_future_timestamps():
    old = reject(req(BODY, headers()), now=TS + 301)
    assert old.code == "timestamp_out_of_tolerance" and "301 s old" in old.detail
    new = reject(req(BODY, headers()), now=TS - 301)
    assert new.code == "timestamp_out_of_tolerance" and "301 s in the future" in new.detail
    # Tolerance is checked before the signature, as in the libraries.
    assert reject(req(BODY, headers(signature="v1,AAAA")), now=TS + 10_000).code == "timestamp_out_of_tolerance"
    for now in (TS + 300, TS - 300):
        PROVIDER.verify(req(BODY, headers()), [SECRET], OPTIONS, now)


@pytest.mark.parametrize("family", ["webhook", "svix"])
def test_a_timestamp_in_milliseconds_is_refused_with_a_hint(family):
    now = time.time()
    millis = int(now * 1000)
    request = req(BODY, headers(official(SECRET, BODY, ts=int(now)), ts=millis, family=family))
    error = reject(request, now=now)
    assert error.code == "timestamp_out_of_tolerance"
    assert "milliseconds" in error.detail and f"{family}-timestamp" in error.detail
    assert "in seconds" in error.detail


def test_tolerance_zero_disables_the_window():
    PROVIDER.verify(req(BODY, headers()), [SECRET], PROVIDER.clean_options({"tolerance": 0}), time.time())


def test_rotated_secrets():
    old, new, third = (("whsec_" + base64.b64encode(bytes([n]) * 32).decode()) for n in (1, 2, 3))
    PROVIDER.verify(req(BODY, headers(official(old, BODY))), [new, old], OPTIONS, NOW)
    assert reject(req(BODY, headers(official(third, BODY))), secrets=(new, old)).code == "no_matching_secret"


def test_several_signatures_and_malformed_entries():
    other = official("whsec_" + base64.b64encode(b"z" * 32).decode(), BODY)
    for signature in (
        f"{other} {SIG}",
        f"v1a,AAAA {SIG}",
        f"garbage {SIG}",
        f"v1,!!notbase64 {SIG}",
        f"v1,a,b  {SIG} ",
        f"{SIG} {other}",
    ):
        PROVIDER.verify(req(BODY, headers(signature)), [SECRET], OPTIONS, NOW)


def test_unverifiable_secrets_are_skipped_not_raised():
    PROVIDER.verify(req(BODY, headers()), ["whsec_!!!", SECRET], OPTIONS, NOW)
    assert reject(req(BODY, headers()), secrets=("whsec_!!!",)).code == "no_matching_secret"


@pytest.mark.parametrize("name", ["user.created", "user.deleted", "email.delivered"])
def test_fixtures_signed_by_official_package(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    now = int(time.time())
    signature = official(SECRET, body, msg_id="msg_2abc", ts=now)
    request = req(body, headers(signature, msg_id="msg_2abc", ts=now, family="svix"))  # Clerk sends svix-*
    PROVIDER.verify(request, [SECRET], OPTIONS, now)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == ("msg_2abc", name)


@pytest.mark.parametrize("body", [b"not json", b"\xff", b"", b"[]", b'{"data": {}}', b'{"type": 7}', b'{"type": ""}'])
def test_any_signed_body_is_described_with_an_empty_type_when_it_has_no_string_type(body):
    # The spec prescribes no payload structure, not even JSON: a signed body is an event, typed "" when
    # it names no type. The id is the signed header's, as always.
    now = int(time.time())
    request = req(body, headers(official(SECRET, body, ts=now), ts=now))
    PROVIDER.verify(request, [SECRET], OPTIONS, now)
    assert PROVIDER.describe(request, OPTIONS) == EventInfo(event_id=MSG_ID, event_type="")


def test_sign_round_trips_and_is_accepted_by_the_official_package():
    body = (FIXTURES / "user.created.json").read_bytes()
    now = time.time()
    signed = PROVIDER.sign(body, SECRET, OPTIONS, now, event_id="msg_sender_1")
    assert set(signed) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    PROVIDER.verify(req(body, signed), [SECRET], OPTIONS, now)
    assert Webhook(SECRET).verify(body, signed)["type"] == "user.created"
    assert PROVIDER.describe(req(body, signed), OPTIONS).event_id == "msg_sender_1"


def test_sign_reproduces_the_vector():
    assert PROVIDER.sign(BODY, SECRET, OPTIONS, TS, event_id=MSG_ID) == headers()


def test_clean_secret_rejects_undecodable():
    for bad in ("whsec_!!!not-base64", "whsec_", "whsec_====", "not base64 at all"):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_secret(bad)


def test_options():
    assert OPTIONS == {"tolerance": 300}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -5})
    assert PROVIDER.secret_generated_by_us is False
