"""Hypothesis properties of the six original providers (stripe, github, shopify, standard_webhooks,
generic_hmac, shared_token):

* random bodies and headers never raise anything but VerificationError (with a documented code) from
  verify(), or MalformedPayload from describe();
* a one-byte change to a correctly signed body is always rejected (for shared_token, whose body is not
  signed, a one-character change to the token).

Correct signatures come from the providers' packages (stripe, standardwebhooks) or from stdlib HMAC
written here, never from the providers' own sign().
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from webhooks.providers.base import InboundRequest, MalformedPayload, Provider, VerificationError
from webhooks.providers.generic_hmac import GenericHmacProvider
from webhooks.providers.github import GitHubProvider
from webhooks.providers.shared_token import SharedTokenProvider
from webhooks.providers.shopify import ShopifyProvider
from webhooks.providers.standard_webhooks import StandardWebhooksProvider
from webhooks.providers.stripe import StripeProvider

NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}
STRIPE_SECRET = "whsec_test_secret"
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_SECRET = "It's a Secret to Everybody"
TOKEN = "tok_4f9d1c2b8e7a6"
# 50 drawn examples a run (the edges are tried every run, below: test_edge_values_raise_only_documented_errors).
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GENERIC_HEX = GenericHmacProvider().clean_options({"header": "X-Signature", "prefix": "sha256="})
GENERIC_TIMED = GenericHmacProvider().clean_options(
    {"header": "X-Signature", "algorithm": "sha512", "encoding": "base64", "timestamp_header": "X-Timestamp"}
)


def _hex_hmac(secret: str, message: bytes, algorithm=hashlib.sha256) -> str:
    return hmac.new(secret.encode(), message, algorithm).hexdigest()


def _stripe(body: bytes) -> dict[str, str]:
    # stripe's SDK signs text; bodies here are valid UTF-8 (see SIGNED_BODIES).
    signature = stripe.WebhookSignature._compute_signature(f"{NOW}.{body.decode()}", STRIPE_SECRET)
    return {"stripe-signature": f"t={NOW},v1={signature}"}


def _github(body: bytes) -> dict[str, str]:
    return {"x-hub-signature-256": "sha256=" + _hex_hmac(HMAC_SECRET, body)}


def _shopify(body: bytes) -> dict[str, str]:
    digest = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).digest()
    return {"x-shopify-hmac-sha256": base64.b64encode(digest).decode()}


def _standard(body: bytes) -> dict[str, str]:
    signature = Webhook(SW_SECRET).sign("msg_fuzz", datetime.fromtimestamp(NOW, tz=UTC), body.decode())
    return {"webhook-id": "msg_fuzz", "webhook-timestamp": str(NOW), "webhook-signature": signature}


def _generic_hex(body: bytes) -> dict[str, str]:
    return {"x-signature": "sha256=" + _hex_hmac(HMAC_SECRET, body)}


def _generic_timed(body: bytes) -> dict[str, str]:
    digest = hmac.new(HMAC_SECRET.encode(), f"{NOW}.".encode() + body, hashlib.sha512).digest()
    return {"x-signature": base64.b64encode(digest).decode(), "x-timestamp": str(NOW)}


# name → (provider, options, secret, signer of a correct request, header names the provider reads)
CASES: dict[str, tuple[Provider, dict, str, Callable[[bytes], dict[str, str]], list[str]]] = {
    "stripe": (StripeProvider(), StripeProvider().clean_options({}), STRIPE_SECRET, _stripe, ["stripe-signature"]),
    "github": (
        GitHubProvider(),
        {},
        HMAC_SECRET,
        _github,
        ["x-hub-signature-256", "x-hub-signature", "x-github-event", "x-github-delivery"],
    ),
    "shopify": (
        ShopifyProvider(),
        {},
        HMAC_SECRET,
        _shopify,
        ["x-shopify-hmac-sha256", "shopify-hmac-sha256", "x-shopify-topic", "x-shopify-event-id"],
    ),
    "standard_webhooks": (
        StandardWebhooksProvider(),
        StandardWebhooksProvider().clean_options({}),
        SW_SECRET,
        _standard,
        [f"{family}-{part}" for family in ("svix", "webhook") for part in ("id", "timestamp", "signature")],
    ),
    "generic_hmac_hex": (GenericHmacProvider(), GENERIC_HEX, HMAC_SECRET, _generic_hex, ["x-signature"]),
    "generic_hmac_timed": (
        GenericHmacProvider(),
        GENERIC_TIMED,
        HMAC_SECRET,
        _generic_timed,
        ["x-signature", "x-timestamp"],
    ),
    "shared_token": (
        SharedTokenProvider(),
        SharedTokenProvider().clean_options({"scheme_prefix": "Bearer"}),
        TOKEN,
        lambda body: {"authorization": f"Bearer {TOKEN}"},
        ["authorization"],
    ),
}
NAMES = sorted(CASES)

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=120)
# Values shaped like real ones, so parsing gets past the first checks more often.
LOOKALIKE = st.one_of(
    st.builds(lambda t, s: f"t={t},v1={s}", st.integers(-(10**20), 10**20), st.text("0123456789abcdef", max_size=70)),
    st.builds(lambda s: f"sha256={s}", st.text("0123456789abcdefABCDEF", max_size=70)),
    st.builds(lambda s: f"sha1={s}", st.text("0123456789abcdef", max_size=45)),
    st.builds(lambda v, s: f"{v},{s}", st.sampled_from(["v1", "v1a", "v2", ""]), st.text(max_size=50)),
    st.builds(lambda s: f"Bearer {s}", ANY_TEXT),
    st.integers(-(10**20), 10**20).map(str),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
)
HEADER_VALUES = st.one_of(ANY_TEXT, LOOKALIKE)
BODIES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"{}", b"[]", b"null", b'{"id": 1, "type": ["x"]}', b"[" * 500, b'{"a":' * 300]),
)
# Signed bodies are UTF-8 text because stripe's package signs str (standardwebhooks signs bytes too, from 1.3).
SIGNED_BODIES = st.text(min_size=1, max_size=300).map(str.encode)


def _mutate(body: bytes, index: int, delta: int) -> bytes:
    return body[:index] + bytes([(body[index] + delta) % 256]) + body[index + 1 :]


@pytest.mark.parametrize("name", NAMES)
def test_correct_signatures_from_the_oracles_verify(name):
    provider, options, secret, signer, _ = CASES[name]
    for body in (b"{}", b'{"id": "evt_1", "type": "x.y"}', "é\u2603".encode()):
        provider.verify(InboundRequest(body=body, headers=signer(body)), [secret], options, NOW)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_random_input_raises_only_documented_errors(name, data):
    provider, options, secret, signer, header_names = CASES[name]
    body = data.draw(BODIES, label="body")
    headers = data.draw(st.dictionaries(st.sampled_from(header_names), HEADER_VALUES, max_size=len(header_names)))
    if data.draw(st.booleans(), label="start from a valid request"):
        valid_body = data.draw(SIGNED_BODIES, label="valid body")
        headers = {**signer(valid_body), **headers}
    secrets = data.draw(st.sampled_from(_secret_lists(secret)), label="secrets")
    _raises_only_documented_errors(provider, options, InboundRequest(body=body, headers=headers), secrets)


def _secret_lists(secret: str) -> list[list[str]]:
    return [[secret], [secret, "other"], [], ["", "whsec_!!!"]]


def _raises_only_documented_errors(provider: Provider, options: dict, request: InboundRequest, secrets) -> None:
    try:
        provider.verify(request, secrets, options, NOW)
    except VerificationError as exc:
        assert exc.code in CODES
        assert isinstance(exc.detail, str) and exc.detail
        assert all(not s or s not in exc.detail for s in secrets)
    try:
        info = provider.describe(request, options)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str)
    assert info.event_id is None or isinstance(info.event_id, str)


# Values at the edges of what the providers parse, and the bodies BODIES samples from (and more):
# every header a provider reads gets each value, alone and in a correctly signed request, whatever
# the drawn examples of a run are.
EDGE_BODIES = [b"", b"{}", b"[]", b"null", b'{"id": 1, "type": ["x"]}', b"[" * 500, b'{"a":' * 300, b"\xff\xfe"]
EDGE_HEADER_VALUES = [
    "",
    " ",
    "\x00",
    "\ud800",
    "caf\u00e9 \U0001f600",
    "t=",
    "t=,v1=",
    f"t={NOW},v1=",
    f"t={NOW},v1={'0' * 64}",
    f"t={NOW},v0={'0' * 64}",
    "t=99999999999999999999,v1=00",
    "t=-99999999999999999999,v1=00",
    "t=1.5,v1=ab",
    "v1=abc,t=",
    "sha256=",
    "sha256=zz",
    "sha256=" + "0" * 63,
    "sha256=" + "0" * 64,
    "SHA256=" + "A" * 64,
    "sha1=",
    "sha1=" + "0" * 40,
    "v1,",
    "v1,!!!",
    "v1a,AAAA",
    "v1,AAAA v1,====",
    ",",
    "Bearer",
    "Bearer ",
    "Bearer \x00",
    "bearer tok",
    "-1",
    "0",
    "1e9",
    str(NOW),
    "99999999999999999999",
    "AAAA",
    "====",
    "A" * 2000,
]


def _is_text(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_edge_values_raise_only_documented_errors(name):
    provider, options, secret, signer, header_names = CASES[name]
    for body, header, value in itertools.product(EDGE_BODIES, header_names, EDGE_HEADER_VALUES):
        # The packages sign text: a body that is not UTF-8 comes with another body's signature.
        signed = signer(body if _is_text(body) else b"{}")
        # Each body with the secret and another; each value with the other lists of secrets too.
        every_list = body == b"{}"
        for headers in ({header: value}, {**signed, header: value}):
            for secrets in _secret_lists(secret) if every_list else [[secret, "other"]]:
                _raises_only_documented_errors(provider, options, InboundRequest(body=body, headers=headers), secrets)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "shared_token"])
@FUZZ
@given(data=st.data())
def test_one_byte_change_to_a_signed_body_is_always_rejected(name, data):
    provider, options, secret, signer, _ = CASES[name]
    body = data.draw(SIGNED_BODIES, label="body")
    headers = signer(body)
    provider.verify(InboundRequest(body=body, headers=headers), [secret], options, NOW)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    tampered = _mutate(body, index, data.draw(st.integers(1, 255), label="delta"))
    with pytest.raises(VerificationError) as info:
        provider.verify(InboundRequest(body=tampered, headers=headers), [secret], options, NOW)
    assert info.value.code in {"no_matching_secret", "bad_format"}


@FUZZ
@given(token=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40), data=st.data())
def test_shared_token_one_character_change_is_always_rejected(token, data):
    provider, options, _, _, _ = CASES["shared_token"]
    provider.verify(InboundRequest(body=b"{}", headers={"authorization": f"Bearer {token}"}), [token], options, NOW)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(min_codepoint=33, max_codepoint=126).filter(lambda c: c != token[index]))
    changed = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(VerificationError):
        provider.verify(
            InboundRequest(body=b"{}", headers={"authorization": f"Bearer {changed}"}), [token], options, NOW
        )


@pytest.mark.parametrize("name", [n for n in NAMES if n != "shared_token"])
def test_every_one_byte_change_to_a_signed_body_is_rejected(name):
    # The edges the drawn examples may miss in a run: the first and last byte, the smallest and
    # largest change, and the high bit.
    provider, options, secret, signer, _ = CASES[name]
    body = '{"id": "evt_1", "type": "x.y", "é": "\u2603"}'.encode()
    headers = signer(body)
    for index, delta in itertools.product(range(len(body)), (1, 128, 255)):
        with pytest.raises(VerificationError) as info:
            provider.verify(InboundRequest(body=_mutate(body, index, delta), headers=headers), [secret], options, NOW)
        assert info.value.code in {"no_matching_secret", "bad_format"}


def test_every_one_character_change_to_a_shared_token_is_rejected():
    provider, options, _, _, _ = CASES["shared_token"]
    token = TOKEN + "!~"
    for index, replacement in itertools.product(range(len(token)), ("!", "~", "a", "0")):
        changed = token[:index] + replacement + token[index + 1 :]
        if changed == token:
            continue
        with pytest.raises(VerificationError):
            provider.verify(
                InboundRequest(body=b"{}", headers={"authorization": f"Bearer {changed}"}), [token], options, NOW
            )
