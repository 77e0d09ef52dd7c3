"""Shared-token provider (Supabase database webhooks, Flutterwave verif-hash…)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from webhooks.providers.base import InboundRequest, InvalidOptions, VerificationError
from webhooks.providers.shared_token import SharedTokenProvider

FIXTURES = Path(__file__).parent / "fixtures" / "shared_token"
PROVIDER = SharedTokenProvider()
BEARER = PROVIDER.clean_options({"scheme_prefix": "Bearer "})
RAW = PROVIDER.clean_options({"header": "verif-hash"})
TOKEN = "tok_4f9d1c2b8e7a6"
NOW = 1_700_000_000


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def reject(request: InboundRequest, secrets=(TOKEN,), options=BEARER) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, NOW)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def test_valid_bearer_and_raw_header():
    PROVIDER.verify(req(b"{}", {"Authorization": f"Bearer {TOKEN}"}), [TOKEN], BEARER, NOW)
    PROVIDER.verify(req(b"{}", {"Authorization": f"bearer {TOKEN}"}), [TOKEN], BEARER, NOW)
    PROVIDER.verify(req(b"{}", {"verif-hash": TOKEN}), [TOKEN], RAW, NOW)


def test_bare_scheme_word_gets_a_space():
    assert PROVIDER.clean_options({"scheme_prefix": "Bearer"})["scheme_prefix"] == "Bearer "
    assert PROVIDER.clean_options({"scheme_prefix": "token="})["scheme_prefix"] == "token="


def test_body_is_not_signed_so_any_body_passes():
    PROVIDER.verify(req(b"\xff anything", {"Authorization": f"Bearer {TOKEN}"}), [TOKEN], BEARER, NOW)


def test_missing_header():
    error = reject(req(b"{}"))
    assert error.code == "missing_signature" and "Authorization" in error.detail


@pytest.mark.parametrize("value", [TOKEN, f"Basic {TOKEN}", "Bearer"])
def test_wrong_scheme(value):
    assert reject(req(b"{}", {"Authorization": value})).code in {"bad_format", "missing_signature"}


def test_wrong_token():
    assert reject(req(b"{}", {"Authorization": "Bearer tok_nope"})).code == "no_matching_secret"
    assert reject(req(b"{}", {"Authorization": f"Bearer {TOKEN}x"})).code == "no_matching_secret"
    assert reject(req(b"{}", {"Authorization": "Bearer é\u2603"})).code == "no_matching_secret"


def test_rotated_tokens():
    PROVIDER.verify(req(b"{}", {"Authorization": "Bearer old"}), ["new", "old"], BEARER, NOW)
    assert reject(req(b"{}", {"Authorization": "Bearer third"}), secrets=("new", "old")).code == "no_matching_secret"


def test_token_header_is_never_stored():
    assert PROVIDER.secret_header_names(BEARER) == {"Authorization"}
    assert PROVIDER.secret_header_names(RAW) == {"verif-hash"}


@pytest.mark.parametrize("name", ["INSERT", "UPDATE", "DELETE"])
def test_supabase_fixtures(name):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = req(body, {"Authorization": f"Bearer {TOKEN}"})
    PROVIDER.verify(request, [TOKEN], BEARER, NOW)
    info = PROVIDER.describe(request, BEARER)
    assert info.event_type == name
    assert info.event_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_describe_with_configured_fields_and_headers():
    options = PROVIDER.clean_options({"event_id_field": "record.id", "event_type_field": "table"})
    body = (FIXTURES / "INSERT.json").read_bytes()
    info = PROVIDER.describe(req(body), options)
    assert (info.event_id, info.event_type) == ("1042", "orders")
    options = PROVIDER.clean_options({"event_id_header": "X-Request-Id", "event_type_header": "X-Event"})
    info = PROVIDER.describe(req(b"not json", {"X-Request-Id": "r-1", "X-Event": "e"}), options)
    assert (info.event_id, info.event_type) == ("r-1", "e")
    info = PROVIDER.describe(req(b"not json"), options)
    assert info.event_type == "" and info.event_id.startswith("sha256:")


def test_sign_round_trips():
    body = (FIXTURES / "UPDATE.json").read_bytes()
    options = PROVIDER.clean_options({"scheme_prefix": "Bearer", "event_id_header": "X-Id"})
    signed = PROVIDER.sign(body, TOKEN, options, NOW, event_id="x-1")
    assert signed == {"Authorization": f"Bearer {TOKEN}", "X-Id": "x-1"}
    PROVIDER.verify(req(body, signed), [TOKEN], options, NOW)


@pytest.mark.parametrize("raw", [{"header": "Bad Header"}, {"event_type_field": "a..b"}, {"secret": "x"}])
def test_invalid_options(raw):
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options(raw)


def test_metadata():
    assert PROVIDER.secret_generated_by_us is True
    assert PROVIDER.clean_secret("  abc ") == "abc"
