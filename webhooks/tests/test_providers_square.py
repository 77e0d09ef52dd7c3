"""Square provider, checked against squareup's webhooks_helper.verify_signature and the published vectors (§10)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from square.utils.webhooks_helper import verify_signature

from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.square import SquareProvider

FIXTURES = Path(__file__).parent / "fixtures" / "square"
PROVIDER = SquareProvider()
OPTIONS = PROVIDER.clean_options({})
SHA256 = "x-square-hmacsha256-signature"
SHA1 = "x-square-signature"
NOW = 1_700_000_000

# providers.md §10, published in square-python-sdk tests/integration/test_webhooks_helper.py.
KEY = "Ibxx_5AKakO-3qeNVR61Dw"
URL = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9"
BODY = (
    b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":'
    b'"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":'
    b'{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}'
)
SIG = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
KEY2, URL2, BODY2 = "signature-key", "https://webhook.site/webhooks", b'{"data":{"type":"webhooks","id":">id<"}}'
SIG2 = "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U="
INGEST_URL = "https://hookline.test/in/3f9a7c/"


def req(body: bytes, hdrs: dict[str, str] | None = None, url: str = URL) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (hdrs or {}).items()}, url=url)


def official_sha1(key: str, url: str, body: bytes) -> str:
    """Legacy x-square-signature: the same input with SHA-1 (Square's docs; square_legacy is not installed)."""
    return base64.b64encode(hmac.new(key.encode(), url.encode() + body, hashlib.sha1).digest()).decode()


def reference(key: str, url: str, body: bytes) -> str:
    """HMAC-SHA256 as squareup's helper computes it; every use is checked with verify_signature."""
    signature = base64.b64encode(hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()).decode()
    assert verify_signature(
        request_body=body.decode(), signature_header=signature, signature_key=key, notification_url=url
    )
    return signature


def reject(request: InboundRequest, secrets=(KEY,), options=OPTIONS) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, NOW)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


@pytest.mark.parametrize("key, url, body, sig", [(KEY, URL, BODY, SIG), (KEY2, URL2, BODY2, SIG2)])
def test_published_vectors(key, url, body, sig):
    assert verify_signature(request_body=body.decode(), signature_header=sig, signature_key=key, notification_url=url)
    # The URL from the request…
    PROVIDER.verify(req(body, {SHA256: sig}, url=url), [key], OPTIONS, NOW)
    # …or from the notification_url option, whatever URL the request arrived at (a proxy).
    proxied = PROVIDER.clean_options({"notification_url": url})
    PROVIDER.verify(req(body, {SHA256: sig}, url="http://internal:8000/in/x/"), [key], proxied, NOW)


def test_published_vector_describes():
    info = PROVIDER.describe(req(BODY, {SHA256: SIG}), OPTIONS)
    assert (info.event_id, info.event_type) == ("ac3ac95b-f97d-458c-a6e6-18981597e05f", "webhooks.test_notification")


@pytest.mark.parametrize(
    "name, event_id",
    [
        ("payment.created", "13b867cf-db3d-4b1c-90b6-2f32a9d78124"),
        ("order.updated", "4b8e5c91-9f13-400f-b54e-a4c3c6d4d2c0"),
        ("invoice.payment_made", "a3e2e1d4-6a5b-4c0d-9e8f-7a6b5c4d3e2f"),
    ],
)
def test_fixtures_signed_like_squareup(name, event_id):
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = req(body, {SHA256: reference(KEY, INGEST_URL, body)}, url=INGEST_URL)
    PROVIDER.verify(request, [KEY], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (event_id, name)


def test_url_is_part_of_the_signature():
    error = reject(req(BODY, {SHA256: SIG}, url=URL + "/"))
    assert error.code == "no_matching_secret"
    assert URL + "/" in error.detail and "notification_url" in error.detail
    wrong_option = PROVIDER.clean_options({"notification_url": URL2})
    assert reject(req(BODY, {SHA256: SIG}), options=wrong_option).code == "no_matching_secret"


def test_legacy_sha1_only_when_the_sha256_header_is_absent():
    legacy = official_sha1(KEY, URL, BODY)
    PROVIDER.verify(req(BODY, {SHA1: legacy}), [KEY], OPTIONS, NOW)
    # Both present: only SHA-256 counts, so a bad SHA-256 is not rescued by a good SHA-1…
    bad256 = base64.b64encode(b"\0" * 32).decode()
    assert reject(req(BODY, {SHA256: bad256, SHA1: legacy})).code == "no_matching_secret"
    # …and a good SHA-256 is not spoiled by a bad SHA-1.
    PROVIDER.verify(req(BODY, {SHA256: SIG, SHA1: "garbage"}), [KEY], OPTIONS, NOW)
    assert reject(req(BODY + b" ", {SHA1: legacy})).code == "no_matching_secret"


def test_tampered_body():
    assert reject(req(BODY.replace(b"MLEF", b"MLEG"), {SHA256: SIG})).code == "no_matching_secret"


def test_missing_signature():
    error = reject(req(BODY, {}))
    assert error.code == "missing_signature" and SHA256 in error.detail
    assert reject(req(BODY, {SHA256: "  "})).code == "missing_signature"


@pytest.mark.parametrize(
    "hdrs",
    [
        {SHA256: "not base64!"},
        {SHA256: SIG[:-4]},
        {SHA256: base64.b64encode(b"x" * 20).decode()},  # a SHA-1-sized value in the SHA-256 header
        {SHA1: base64.b64encode(b"x" * 32).decode()},
        {SHA256: "é"},
    ],
)
def test_malformed_header(hdrs):
    assert reject(req(BODY, hdrs)).code == "bad_format"


def test_empty_body_is_refused_like_squareup():
    assert not verify_signature(request_body="", signature_header=SIG, signature_key=KEY, notification_url=URL)
    assert reject(req(b"", {SHA256: reference(KEY, URL, b"x")})).code == "bad_format"


def test_wrong_key():
    assert reject(req(BODY, {SHA256: SIG}), secrets=("another-key",)).code == "no_matching_secret"


def test_rotated_keys():
    PROVIDER.verify(req(BODY, {SHA256: SIG}), ["new-key", KEY], OPTIONS, NOW)
    third = reference("third-key", URL, BODY)
    assert reject(req(BODY, {SHA256: third}), secrets=("new-key", KEY)).code == "no_matching_secret"


@pytest.mark.parametrize(
    "body",
    [b"nope", b"\xff", b"[]", b'{"type": "payment.created"}', b'{"event_id": "e1"}', b'{"event_id": 1, "type": "x"}'],
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_sign_uses_the_option_else_the_url_and_is_accepted_by_squareup():
    body = (FIXTURES / "order.updated.json").read_bytes()
    headers = PROVIDER.sign(body, KEY, OPTIONS, NOW, url=INGEST_URL)
    assert set(headers) == {"x-square-hmacsha256-signature"}
    assert verify_signature(
        request_body=body.decode(), signature_header=headers[SHA256], signature_key=KEY, notification_url=INGEST_URL
    )
    proxied = PROVIDER.clean_options({"notification_url": URL})
    assert PROVIDER.sign(BODY, KEY, proxied, NOW, url=INGEST_URL) == {SHA256: SIG}


def test_options():
    assert OPTIONS == {"notification_url": ""}
    assert PROVIDER.clean_options({"notification_url": f"  {URL} "}) == {"notification_url": URL}
    for bad in ("webhook.site/x", "ftp://example.com/x", "https://", "http://[::1"):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_options({"notification_url": bad})
    assert PROVIDER.kind == "square" and PROVIDER.secret_generated_by_us is False


@settings(max_examples=200, deadline=None, database=None)
@given(
    body=st.one_of(st.binary(max_size=300), st.just(BODY)),
    hdrs=st.dictionaries(
        st.sampled_from([SHA256, SHA1, "square-version"]), st.one_of(st.text(max_size=60), st.just(SIG))
    ),
    url=st.one_of(st.text(max_size=60), st.just(URL)),
)
def test_property_garbage_only_raises_the_documented_errors(body, hdrs, url):
    request = req(body, hdrs, url=url)
    try:
        PROVIDER.verify(request, [KEY], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in {"missing_signature", "bad_format", "no_matching_secret"}
    else:
        assert body == BODY and url == URL
    try:
        info = PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and isinstance(info.event_id, str)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.text(min_size=1, max_size=200).map(str.encode), url=st.text(min_size=1, max_size=40), data=st.data())
def test_property_one_byte_change_is_rejected(body, url, data):
    request = req(body, {SHA256: reference(KEY, url, body)}, url=url)  # squareup refuses an empty URL
    PROVIDER.verify(request, [KEY], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(req(changed, dict(request.headers), url=url), [KEY], OPTIONS, NOW)
    assert info.value.code == "no_matching_secret"
