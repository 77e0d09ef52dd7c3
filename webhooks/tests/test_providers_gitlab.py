"""GitLab provider: X-Gitlab-Token, and the signing-token variant checked with the ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.gitlab import GitLabProvider

FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
PROVIDER = GitLabProvider()
AUTO = PROVIDER.clean_options({})
TOKEN_ONLY = PROVIDER.clean_options({"verification": "secret_token"})
SIGNED_ONLY = PROVIDER.clean_options({"verification": "signing_token"})
TOKEN = "glsecret-4b1d9e0c"
SIGNING = "whsec_" + base64.b64encode(b"gitlab-signing-token-32-bytes!!!").decode()
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}
NAMES = ["push", "merge_request.merge", "pipeline"]


def fixture(name: str) -> tuple[bytes, dict[str, str]]:
    return (FIXTURES / f"{name}.json").read_bytes(), json.loads((FIXTURES / f"{name}.headers.json").read_text())


def official(secret: str, body: bytes, msg_id: str, ts: int = NOW) -> dict[str, str]:
    """The signing-token headers as the standardwebhooks package computes them."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def req(body: bytes, *header_dicts: dict[str, str]) -> InboundRequest:
    headers: dict[str, str] = {}
    for extra in header_dicts:
        headers.update({k.lower(): v for k, v in extra.items()})
    return InboundRequest(body=body, headers=headers)


def reject(request: InboundRequest, secrets=(TOKEN,), options=AUTO, now: float = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, now)
    for secret in secrets:
        assert not secret or secret not in info.value.detail
        assert secret.removeprefix("whsec_") not in info.value.detail
    return info.value


@pytest.mark.parametrize("name", NAMES)
def test_secret_token_fixtures(name):
    body, headers = fixture(name)
    request = req(body, headers, {"X-Gitlab-Token": TOKEN})
    for options in (AUTO, TOKEN_ONLY):
        PROVIDER.verify(request, [TOKEN], options, NOW)
    info = PROVIDER.describe(request, AUTO)
    assert (info.event_id, info.event_type) == (headers["Idempotency-Key"], name)


@pytest.mark.parametrize("name", NAMES)
def test_signing_token_fixtures_signed_by_standardwebhooks(name):
    body, headers = fixture(name)
    signed = official(SIGNING, body, headers["Idempotency-Key"])
    request = req(body, headers, signed)
    for options in (AUTO, SIGNED_ONLY):
        PROVIDER.verify(request, [SIGNING], options, NOW)
    assert PROVIDER.describe(request, AUTO).event_id == headers["Idempotency-Key"]


def test_signing_token_with_both_secrets_configured_in_gitlab():
    # GitLab sends X-Gitlab-Token and the signature when both are set; the stored secret decides.
    body, headers = fixture("push")
    both = req(body, headers, official(SIGNING, body, "id-1"), {"X-Gitlab-Token": TOKEN})
    PROVIDER.verify(both, [SIGNING], AUTO, NOW)
    PROVIDER.verify(both, [TOKEN], AUTO, NOW)  # no whsec_ secret configured: the token is checked
    assert reject(both, secrets=(TOKEN,), options=SIGNED_ONLY).code == "no_matching_secret"


def test_signed_request_with_a_forged_token_fails_when_a_signing_token_is_configured():
    body, headers = fixture("push")
    forged = req(body, headers, official("whsec_" + base64.b64encode(b"x" * 32).decode(), body, "id-1"))
    forged_with_token = req(body, headers, dict(forged.headers), {"X-Gitlab-Token": "guess"})
    assert reject(forged_with_token, secrets=(SIGNING,)).code == "no_matching_secret"


def test_tampered_body_signed_variant():
    body, headers = fixture("pipeline")
    signed = official(SIGNING, body, "id-1")
    tampered = body.replace(b'"duration": 400', b'"duration": 401')
    assert tampered != body
    assert reject(req(tampered, headers, signed), secrets=(SIGNING,)).code == "no_matching_secret"


def test_secret_token_does_not_cover_the_body():
    body, headers = fixture("push")
    PROVIDER.verify(req(body + b" ", headers, {"X-Gitlab-Token": TOKEN}), [TOKEN], AUTO, NOW)


def test_missing_headers():
    body, headers = fixture("push")
    error = reject(req(body, headers))
    assert error.code == "missing_signature" and "X-Gitlab-Token" in error.detail
    error = reject(req(body, headers, {"X-Gitlab-Token": TOKEN}), secrets=(SIGNING,), options=SIGNED_ONLY)
    assert error.code == "missing_signature" and "webhook-" in error.detail


def test_svix_headers_are_not_read_for_gitlab():
    body, headers = fixture("push")
    signed = {k.replace("webhook-", "svix-"): v for k, v in official(SIGNING, body, "id-1").items()}
    assert reject(req(body, headers, signed), secrets=(SIGNING,), options=SIGNED_ONLY).code == "missing_signature"


@pytest.mark.parametrize(
    "signature", ["garbage", "v1a,AAAA", "v1,***", "v1,é", "v2," + base64.b64encode(b"x" * 32).decode()]
)
def test_malformed_signature_header(signature):
    body, headers = fixture("push")
    signed = {**official(SIGNING, body, "id-1"), "webhook-signature": signature}
    assert reject(req(body, headers, signed), secrets=(SIGNING,)).code == "bad_format"


def test_malformed_timestamp():
    body, headers = fixture("push")
    signed = {**official(SIGNING, body, "id-1"), "webhook-timestamp": "soon"}
    assert reject(req(body, headers, signed), secrets=(SIGNING,)).code == "bad_format"


def test_wrong_secret():
    body, headers = fixture("push")
    assert reject(req(body, headers, {"X-Gitlab-Token": "nope"})).code == "no_matching_secret"
    other = "whsec_" + base64.b64encode(b"y" * 32).decode()
    error = reject(req(body, headers, official(other, body, "id-1")), secrets=(SIGNING,))
    assert error.code == "no_matching_secret"


def test_stale_timestamp_on_signed_variant():
    body, headers = fixture("push")
    request = req(body, headers, official(SIGNING, body, "id-1", ts=NOW - 301))
    error = reject(request, secrets=(SIGNING,))
    assert error.code == "timestamp_out_of_tolerance" and "301 s old" in error.detail
    request = req(body, headers, official(SIGNING, body, "id-1", ts=NOW + 301))
    assert reject(request, secrets=(SIGNING,)).code == "timestamp_out_of_tolerance"
    PROVIDER.verify(request, [SIGNING], PROVIDER.clean_options({"tolerance": 0}), NOW)
    PROVIDER.verify(request, [SIGNING], PROVIDER.clean_options({"tolerance": 400}), NOW)


def test_rotated_secrets():
    body, headers = fixture("push")
    PROVIDER.verify(req(body, headers, {"X-Gitlab-Token": "old"}), ["new", "old"], AUTO, NOW)
    assert reject(req(body, headers, {"X-Gitlab-Token": "x"}), secrets=("new", "old")).code == "no_matching_secret"
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    new = "whsec_" + base64.b64encode(b"n" * 32).decode()
    PROVIDER.verify(req(body, headers, official(old, body, "id-1")), [new, old], AUTO, NOW)
    # Rotating from a secret token to a signing token: both stay accepted during the overlap.
    PROVIDER.verify(req(body, headers, {"X-Gitlab-Token": TOKEN}), [SIGNING, TOKEN], AUTO, NOW)
    PROVIDER.verify(req(body, headers, official(SIGNING, body, "id-1")), [SIGNING, TOKEN], AUTO, NOW)


def test_token_header_is_never_stored():
    assert PROVIDER.secret_header_names(AUTO) == {"X-Gitlab-Token"}


def test_describe_types_and_ids():
    body = b'{"object_kind":"issue","object_attributes":{"action":"open"}}'
    assert PROVIDER.describe(req(body), AUTO).event_type == "issue.open"
    body = b'{"event_name":"project_create","name":"x"}'
    assert PROVIDER.describe(req(body), AUTO).event_type == "project_create"
    body = b'{"something":"else"}'
    info = PROVIDER.describe(req(body, {"X-Gitlab-Event": "Push Hook"}), AUTO)
    assert info.event_type == "Push Hook"
    assert info.event_id == "sha256:" + hashlib.sha256(body).hexdigest()
    # X-Gitlab-Event-UUID is shared by hooks fired within one request, so it is not the id.
    info = PROVIDER.describe(req(body, {"X-Gitlab-Event-UUID": "u-1", "webhook-id": "w-1"}), AUTO)
    assert info.event_id == "w-1"
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(b"not json"), AUTO)
    assert PROVIDER.describe(req(b"not json", {"X-Gitlab-Event": "Push Hook"}), AUTO).event_type == "Push Hook"


def test_sign_round_trips_and_is_accepted_by_standardwebhooks():
    body, _ = fixture("merge_request.merge")
    now = time.time()
    signed = PROVIDER.sign(body, SIGNING, AUTO, now, event_id="idem-1")
    assert signed["Idempotency-Key"] == "idem-1" == signed["webhook-id"]
    PROVIDER.verify(req(body, signed), [SIGNING], AUTO, now)
    Webhook(SIGNING).verify(body, {k: v for k, v in signed.items() if k.startswith("webhook-")})
    assert PROVIDER.sign(body, TOKEN, AUTO, NOW) == {"X-Gitlab-Token": TOKEN}
    assert PROVIDER.sign(body, SIGNING, TOKEN_ONLY, NOW, event_id="i") == {
        "X-Gitlab-Token": SIGNING,
        "Idempotency-Key": "i",
    }


def test_options():
    assert AUTO == {"verification": "auto", "tolerance": 300}
    for bad in ({"verification": "hmac"}, {"tolerance": -1}, {"header": "x"}):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_options(bad)
    assert PROVIDER.secret_generated_by_us is True


HEADER_NAMES = st.sampled_from(["x-gitlab-token", "webhook-id", "webhook-timestamp", "webhook-signature"])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(HEADER_NAMES, st.text(st.characters(exclude_categories=()), max_size=60), max_size=4),
    mode=st.sampled_from([AUTO, TOKEN_ONLY, SIGNED_ONLY]),
)
def test_random_input_raises_only_documented_errors(body, headers, mode):
    request = InboundRequest(body=body, headers=headers)
    try:
        PROVIDER.verify(request, [TOKEN, SIGNING], mode, NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    else:
        assert headers.get("x-gitlab-token") in (TOKEN, SIGNING)
    try:
        PROVIDER.describe(request, AUTO)
    except MalformedPayload:
        pass


@settings(max_examples=200, deadline=None)
@given(body=st.text(min_size=1, max_size=200).map(str.encode), data=st.data())
def test_one_byte_change_is_always_rejected_with_the_signing_token(body, data):
    signed = official(SIGNING, body, "msg-1")
    PROVIDER.verify(req(body, signed), [SIGNING], AUTO, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:index] + bytes([(body[index] + data.draw(st.integers(1, 255))) % 256]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(tampered, signed), [SIGNING], AUTO, NOW)


@pytest.mark.parametrize("options", [AUTO, SIGNED_ONLY])
def test_signing_token_replay_with_another_idempotency_key_keeps_the_signed_id(options):
    body, headers = fixture("push")
    signed = official(SIGNING, body, "msg-signed-1")
    original = req(body, signed, {"Idempotency-Key": "msg-signed-1"})
    replay = req(body, signed, {"Idempotency-Key": "anything", "svix-id": "anything-else"})
    for request in (original, replay):
        PROVIDER.verify(request, [SIGNING], options, NOW)
    assert PROVIDER.describe(original, options).event_id == "msg-signed-1"
    assert PROVIDER.describe(replay, options).event_id == "msg-signed-1"


def test_secret_token_mode_still_prefers_idempotency_key():
    # Nothing is signed with the secret token: the token alone authenticates, so GitLab's header is used.
    body, headers = fixture("push")
    request = req(body, headers, {"X-Gitlab-Token": TOKEN, "webhook-id": "w-1"})
    PROVIDER.verify(request, [TOKEN], TOKEN_ONLY, NOW)
    assert PROVIDER.describe(request, TOKEN_ONLY).event_id == headers["Idempotency-Key"]


def test_telling_which_secret_signed_keeps_the_verdict_of_both_together():
    # Rotating from a secret token to a signing token: in auto mode a signed request is held to the
    # whsec_ secret, whatever X-Gitlab-Token says. The secret token tried alone would take the
    # token path instead and accept the request the two together refuse.
    body, headers = fixture("push")
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    badly_signed = req(body, headers, official(other, body, "id-1"), {"X-Gitlab-Token": TOKEN})
    refused = reject(badly_signed, secrets=(SIGNING, TOKEN))
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify_matching_secret(badly_signed, [SIGNING, TOKEN], AUTO, NOW)
    assert (info.value.code, info.value.detail) == (refused.code, refused.detail)
    # Each secret is still told apart on the requests both together accept.
    signed = req(body, headers, official(SIGNING, body, "id-1"), {"X-Gitlab-Token": TOKEN})
    assert PROVIDER.verify_matching_secret(signed, [SIGNING, TOKEN], AUTO, NOW) == 0
    assert (
        PROVIDER.verify_matching_secret(req(body, headers, {"X-Gitlab-Token": TOKEN}), [SIGNING, TOKEN], AUTO, NOW) == 1
    )
