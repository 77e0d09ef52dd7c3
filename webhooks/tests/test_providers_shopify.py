"""Shopify provider, checked against the vector published in shopify-app-js."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from webhooks.providers.base import InboundRequest, VerificationError
from webhooks.providers.shopify import ShopifyProvider

FIXTURES = Path(__file__).parent / "fixtures" / "shopify"
PROVIDER = ShopifyProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000

# providers.md §3: published in shopify-app-js validate.test.ts.
SECRET = "test_secret_key"
BODY = b'{"foo": "bar"}'
HMAC = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def stdlib_hmac(secret: str, body: bytes) -> str:
    """Shopify's documented algorithm, written independently of the provider."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def reject(request: InboundRequest, secrets=(SECRET,)) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), OPTIONS, NOW)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


@pytest.mark.parametrize("header", ["X-Shopify-Hmac-Sha256", "shopify-hmac-sha256"])
def test_published_vector_with_both_header_styles(header):
    PROVIDER.verify(req(BODY, {header: HMAC}), [SECRET], OPTIONS, NOW)


def test_sign_reproduces_the_published_vector():
    assert PROVIDER.sign(BODY, SECRET, OPTIONS, NOW)["X-Shopify-Hmac-Sha256"] == HMAC


def test_tampered_body():
    assert reject(req(b'{"foo": "baz"}', {"X-Shopify-Hmac-Sha256": HMAC})).code == "no_matching_secret"


def test_empty_body_fails():
    error = reject(req(b"", {"X-Shopify-Hmac-Sha256": stdlib_hmac(SECRET, b"")}))
    assert error.code == "bad_format"
    assert "empty" in error.detail


def test_missing_signature():
    assert reject(req(BODY, {"X-Shopify-Topic": "orders/create"})).code == "missing_signature"


@pytest.mark.parametrize(
    "value",
    ["not base64!", HMAC[:-4], base64.b64encode(b"short").decode(), "é" * 44, HMAC.encode().hex()],
)
def test_malformed_header(value):
    assert reject(req(BODY, {"X-Shopify-Hmac-Sha256": value})).code == "bad_format"


def test_wrong_secret():
    assert reject(req(BODY, {"X-Shopify-Hmac-Sha256": HMAC}), secrets=("other_secret",)).code == "no_matching_secret"


def test_rotated_secrets():
    PROVIDER.verify(req(BODY, {"X-Shopify-Hmac-Sha256": HMAC}), ["new_secret", SECRET], OPTIONS, NOW)
    third = stdlib_hmac("third_secret", BODY)
    assert (
        reject(req(BODY, {"X-Shopify-Hmac-Sha256": third}), secrets=("new_secret", SECRET)).code == "no_matching_secret"
    )


@pytest.mark.parametrize(
    "name, topic",
    [
        ("orders_create", "orders/create"),
        ("products_update", "products/update"),
        ("app_uninstalled", "app/uninstalled"),
    ],
)
def test_fixtures_verify_and_describe(name, topic):
    body = (FIXTURES / f"{name}.json").read_bytes()
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    request = req(body, {**headers, "X-Shopify-Hmac-Sha256": stdlib_hmac("shpss_app_secret", body)})
    PROVIDER.verify(request, ["shpss_app_secret"], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (headers["X-Shopify-Event-Id"], topic)


def test_describe_unprefixed_headers_and_fallbacks():
    events_style = {"shopify-topic": "orders/paid", "shopify-event-id": "ev-1", "shopify-webhook-id": "wh-1"}
    assert PROVIDER.describe(req(BODY, events_style), OPTIONS).event_id == "ev-1"
    assert PROVIDER.describe(req(BODY, events_style), OPTIONS).event_type == "orders/paid"
    no_event_id = {"X-Shopify-Topic": "orders/paid", "X-Shopify-Webhook-Id": "wh-2"}
    assert PROVIDER.describe(req(BODY, no_event_id), OPTIONS).event_id == "wh-2"
    bare = PROVIDER.describe(req(b"not json"), OPTIONS)
    assert (bare.event_id, bare.event_type) == (None, "")


def test_sign_round_trips_with_event_headers():
    body = (FIXTURES / "orders_create.json").read_bytes()
    headers = PROVIDER.sign(body, SECRET, OPTIONS, NOW, event_id="e-9", event_type="orders/create")
    assert headers["X-Shopify-Hmac-Sha256"] == stdlib_hmac(SECRET, body)
    assert headers["X-Shopify-Webhook-Id"] and headers["X-Shopify-Triggered-At"]
    # Shop-level headers come from the fixture's sidecar, which sign() must not overwrite.
    assert "X-Shopify-Shop-Domain" not in headers and "X-Shopify-API-Version" not in headers
    assert set(PROVIDER.sign(body, SECRET, OPTIONS, NOW)) == {
        "X-Shopify-Hmac-Sha256",
        "X-Shopify-Webhook-Id",
        "X-Shopify-Triggered-At",
    }
    request = req(body, headers)
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == ("e-9", "orders/create")


def test_metadata():
    assert PROVIDER.secret_generated_by_us is False
    # Off by default: Shopify may send distinct events with byte-identical bodies.
    assert OPTIONS == {"merge_identical_bodies": False}
    assert PROVIDER.signed_content_digest(req(b"{}", {}), OPTIONS) is None
    assert PROVIDER.signed_content_digest(req(b"{}", {}), {"merge_identical_bodies": True}) == (
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
