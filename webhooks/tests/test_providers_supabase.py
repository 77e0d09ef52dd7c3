"""Supabase database webhooks: a shared token header (default Authorization: Bearer <token>)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.supabase import SupabaseProvider

FIXTURES = Path(__file__).parent / "fixtures" / "supabase"
PROVIDER = SupabaseProvider()
OPTIONS = PROVIDER.clean_options({})
CUSTOM = PROVIDER.clean_options({"header": "X-Webhook-Token", "scheme_prefix": "none"})
TOKEN = "sb_tok_5d1c9a7e3b"
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reject(request: InboundRequest, secrets=(TOKEN,), options=OPTIONS) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, NOW)
    for secret in secrets:
        assert not secret or secret not in info.value.detail
    return info.value


@pytest.mark.parametrize(
    "name, record_id", [("orders.INSERT", "1042"), ("orders.UPDATE", "1042"), ("profiles.DELETE", None)]
)
def test_fixtures(name, record_id):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = req(body, bearer())
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    table = name.split(".")[0]
    record_id = record_id or json.loads(body)["old_record"]["id"]
    assert info.event_type == name
    assert info.event_id == f"{table}:{record_id}:{hashlib.sha256(body).hexdigest()}"


def test_same_row_changed_twice_gets_two_ids():
    a = json.dumps({"type": "UPDATE", "table": "t", "record": {"id": 1, "v": 1}}).encode()
    b = json.dumps({"type": "UPDATE", "table": "t", "record": {"id": 1, "v": 2}}).encode()
    assert PROVIDER.describe(req(a), OPTIONS).event_id != PROVIDER.describe(req(b), OPTIONS).event_id


def test_ids_without_a_usable_record_id():
    body = b'{"type":"INSERT","table":"events","record":{"uuid":"x"}}'
    assert PROVIDER.describe(req(body), OPTIONS).event_id == "events:" + hashlib.sha256(body).hexdigest()
    long_id = json.dumps({"type": "INSERT", "table": "t" * 300, "record": {"id": "x" * 300}}).encode()
    info = PROVIDER.describe(req(long_id), OPTIONS)
    assert len(info.event_id) <= 255 and info.event_id.endswith(hashlib.sha256(long_id).hexdigest())


@pytest.mark.parametrize(
    "body",
    [b"nope", b"[]", b'{"type":"INSERT"}', b'{"table":"t"}', b'{"type":1,"table":"t"}', b'{"type":"X","table":""}'],
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_scheme_is_case_insensitive_and_custom_header_works():
    PROVIDER.verify(req(b"{}", {"Authorization": f"bearer {TOKEN}"}), [TOKEN], OPTIONS, NOW)
    PROVIDER.verify(req(b"{}", {"X-Webhook-Token": TOKEN}), [TOKEN], CUSTOM, NOW)
    assert reject(req(b"{}", {"X-Webhook-Token": f"Bearer {TOKEN}"}), options=CUSTOM).code == "no_matching_secret"


def test_body_is_not_signed():
    PROVIDER.verify(req(b"\xff anything", bearer()), [TOKEN], OPTIONS, NOW)


def test_missing_header():
    error = reject(req(b"{}"))
    assert error.code == "missing_signature" and "Authorization" in error.detail
    assert reject(req(b"{}", bearer()), options=CUSTOM).code == "missing_signature"


@pytest.mark.parametrize("value", [TOKEN, f"Basic {TOKEN}", f"Token {TOKEN}"])
def test_wrong_scheme(value):
    assert reject(req(b"{}", {"Authorization": value})).code == "bad_format"


def test_wrong_token():
    assert reject(req(b"{}", bearer("nope"))).code == "no_matching_secret"
    assert reject(req(b"{}", bearer(TOKEN + "x"))).code == "no_matching_secret"
    assert reject(req(b"{}", bearer("\udcff"))).code == "no_matching_secret"


def test_rotated_tokens():
    PROVIDER.verify(req(b"{}", bearer("old")), ["new", "old"], OPTIONS, NOW)
    assert reject(req(b"{}", bearer("third")), secrets=("new", "old")).code == "no_matching_secret"


def test_options_missing_defaults_still_mean_bearer_authorization():
    PROVIDER.verify(req(b"{}", bearer()), [TOKEN], {}, NOW)
    assert PROVIDER.secret_header_names({}) == {"Authorization"}


def test_token_header_is_never_stored():
    assert PROVIDER.secret_header_names(OPTIONS) == {"Authorization"}
    assert PROVIDER.secret_header_names(CUSTOM) == {"X-Webhook-Token"}


def test_sign_round_trips():
    body = (FIXTURES / "orders.UPDATE.json").read_bytes()
    assert PROVIDER.sign(body, TOKEN, OPTIONS, NOW) == bearer()
    assert PROVIDER.sign(body, TOKEN, CUSTOM, NOW) == {"X-Webhook-Token": TOKEN}
    assert PROVIDER.sign(body, TOKEN, {"scheme_prefix": "Bearer"}, NOW) == bearer()
    PROVIDER.verify(req(body, PROVIDER.sign(body, TOKEN, CUSTOM, NOW)), [TOKEN], CUSTOM, NOW)


def test_options():
    assert OPTIONS == {"header": "Authorization", "scheme_prefix": "Bearer "}
    assert CUSTOM == {"header": "X-Webhook-Token", "scheme_prefix": "none"}
    assert PROVIDER.clean_options({"scheme_prefix": "Bearer"})["scheme_prefix"] == "Bearer "
    assert PROVIDER.clean_options({"scheme_prefix": "NONE"})["scheme_prefix"] == "none"
    for bad in ({"header": "Bad Header"}, {"event_id_field": "x"}):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_options(bad)
    assert PROVIDER.secret_generated_by_us is True
    assert PROVIDER.clean_secret(" tok ") == "tok"


HEADER_NAMES = st.sampled_from(["authorization", "x-webhook-token"])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(HEADER_NAMES, st.text(st.characters(exclude_categories=()), max_size=40), max_size=2),
    custom=st.booleans(),
)
def test_random_input_raises_only_documented_errors(body, headers, custom):
    request = InboundRequest(body=body, headers=headers)
    try:
        PROVIDER.verify(request, [TOKEN], CUSTOM if custom else OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    try:
        PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        pass


@settings(max_examples=200, deadline=None)
@given(token=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40), data=st.data())
def test_one_byte_change_to_the_token_is_always_rejected(token, data):
    # The body is not signed (documented), so the property holds for the token instead.
    PROVIDER.verify(req(b"{}", bearer(token)), [token], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(min_codepoint=33, max_codepoint=126).filter(lambda c: c != token[index]))
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(b"{}", bearer(token[:index] + replacement + token[index + 1 :])), [token], OPTIONS, NOW)
