"""Properties every registered provider must have (pure: no Django, no database)."""

from __future__ import annotations

import ast
import json
import random
import time
from pathlib import Path

import pytest

from webhooks.providers.base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    VerificationError,
)
from webhooks.providers.registry import PROVIDERS, get_provider

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS_DIR = Path(__file__).parent.parent / "providers"
NOW = 1_700_000_000
# A Standard Webhooks-shaped secret is a valid secret for every provider.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FsdGVkX19hbm90aGVyc2VjcmV0a2V5MTIz"
# Options a tenant must give for the provider to work; everything else is defaulted.
REQUIRED_OPTIONS = {
    "generic_hmac": {"header": "X-Signature", "timestamp_header": "X-Timestamp"},
    "apple_app_store": {
        "bundle_id": "com.example.app",
        "environment": "Sandbox",
        "root_certificates_pem": (FIXTURES / "apple_app_store" / "test-root.pem").read_text(),
    },
    "google_play": {
        "audience": "https://hookline.test/in/x/",
        "service_account_email": "push@example.iam.gserviceaccount.com",
    },
}
KINDS = sorted(PROVIDERS)


def _can_sign(kind: str) -> bool:
    try:
        PROVIDERS[kind].sign(b"{}", SECRET, PROVIDERS[kind].clean_options(REQUIRED_OPTIONS.get(kind, {})), NOW)
    except NotImplementedError:
        return False
    return True


# Schemes verified with the provider's private key (PayPal, Apple, Google) cannot be signed by
# Hookline; their own test modules sign with test certificate chains instead.
SIGNABLE = [kind for kind in KINDS if _can_sign(kind)]
# A token in a header proves the sender, but nothing covers the body.
BODY_NOT_SIGNED = {"shared_token", "supabase"}
# The fixtures record an unsigned id header (GitLab's Idempotency-Key, which sign() does not copy into
# the signed webhook-id without an event id; Twilio's I-Twilio-Idempotency-Token); the event id comes
# from the signed data instead.
ID_FROM_SIGNED_DATA = {"gitlab", "twilio"}


def options_for(kind: str) -> dict:
    return PROVIDERS[kind].clean_options(REQUIRED_OPTIONS.get(kind, {}))


def fixtures_of(kind: str) -> list[Path]:
    return sorted(p for p in (FIXTURES / kind).glob("*.json") if not p.name.endswith(".headers.json"))


def fixture_request(kind: str, path: Path, secret: str = SECRET, now: float = NOW) -> InboundRequest:
    """The fixture as the test sender replays it: sidecar headers, then sign()'s headers on top."""
    body = path.read_bytes()
    sidecar = path.with_name(path.name.removesuffix(".json") + ".headers.json")
    headers = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    body = PROVIDERS[kind].prepare_body(body, secret, options_for(kind), now)
    headers.update(PROVIDERS[kind].sign(body, secret, options_for(kind), now, url="https://hookline.test/in/x/"))
    return InboundRequest(
        body=body, headers={k.lower(): v for k, v in headers.items()}, url="https://hookline.test/in/x/"
    )


ALL_FIXTURES = [(kind, path) for kind in SIGNABLE for path in fixtures_of(kind)]


def test_every_provider_module_is_registered():
    modules = {path.stem for path in PROVIDERS_DIR.glob("*.py")} - {"__init__", "base", "registry"}
    registered = {type(provider).__module__.rsplit(".", 1)[-1] for provider in PROVIDERS.values()}
    assert modules == registered
    for kind, provider in PROVIDERS.items():
        assert isinstance(provider, Provider)
        assert provider.kind == kind and get_provider(kind) is provider


@pytest.mark.parametrize("kind", KINDS)
def test_provider_metadata_is_complete(kind):
    provider = PROVIDERS[kind]
    for attribute in ("label", "secret_help", "docs_verifies", "docs_event_id", "docs_event_type"):
        assert isinstance(getattr(provider, attribute), str) and getattr(provider, attribute).strip(), attribute
    assert isinstance(provider.secret_generated_by_us, bool)
    names = [option.name for option in provider.options]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("kind", KINDS)
def test_every_provider_has_at_least_two_fixtures(kind):
    assert len(fixtures_of(kind)) >= 2, f"add fixtures under webhooks/tests/fixtures/{kind}/"


@pytest.mark.parametrize("kind, path", ALL_FIXTURES, ids=[f"{k}/{p.name}" for k, p in ALL_FIXTURES])
def test_fixture_signed_with_sign_verifies_and_describes(kind, path):
    provider = PROVIDERS[kind]
    json.loads(path.read_bytes())
    request = fixture_request(kind, path)
    provider.verify(request, [SECRET], options_for(kind), NOW)
    provider.verify(request, [OTHER_SECRET, SECRET], options_for(kind), NOW)
    info = provider.describe(request, options_for(kind))
    assert isinstance(info, EventInfo)
    assert isinstance(info.event_type, str) and info.event_type
    # Fixture files are named after the event type (Shopify topics use "_" for "/").
    stem = path.name.removesuffix(".json")
    expected = "/".join(stem.rsplit("_", 1)) if kind == "shopify" else stem
    assert info.event_type == expected
    assert info.event_id is None or (isinstance(info.event_id, str) and info.event_id)
    sidecar = path.with_name(stem + ".headers.json")
    recorded = json.loads(sidecar.read_text()).values() if sidecar.exists() else ()
    if kind in ID_FROM_SIGNED_DATA:  # the recorded id header is unsigned, so the signed id wins
        assert info.event_id not in recorded
    elif sidecar.exists():  # the recorded delivery id survives signing
        assert info.event_id in recorded


# Schemes whose signature does not cover the whole body report a single-use nonce.
WITH_REPLAY_NONCE = {"mailgun", "paypal"}


@pytest.mark.parametrize("kind, path", ALL_FIXTURES, ids=[f"{k}/{p.name}" for k, p in ALL_FIXTURES])
def test_replay_nonce_is_none_unless_the_body_is_not_fully_signed(kind, path):
    request = fixture_request(kind, path)
    nonce = PROVIDERS[kind].replay_nonce(request, options_for(kind))
    assert (nonce is not None) == (kind in WITH_REPLAY_NONCE)


def test_base_replay_nonce_is_none():
    assert Provider.replay_nonce(PROVIDERS["stripe"], InboundRequest(body=b"{}", headers={}), {}) is None
    assert PROVIDERS["stripe"].replay_nonce(fixture_request("stripe", fixtures_of("stripe")[0]), {}) is None


@pytest.mark.parametrize("kind, path", ALL_FIXTURES, ids=[f"{k}/{p.name}" for k, p in ALL_FIXTURES])
def test_fixture_rejected_with_another_secret_or_tampered_body(kind, path):
    provider = PROVIDERS[kind]
    request = fixture_request(kind, path)
    with pytest.raises(VerificationError) as info:
        provider.verify(request, [OTHER_SECRET], options_for(kind), NOW)
    assert info.value.code == "no_matching_secret"
    assert OTHER_SECRET not in info.value.detail and OTHER_SECRET[6:] not in info.value.detail
    if kind not in BODY_NOT_SIGNED:
        tampered = InboundRequest(body=request.body[:-1] + b" ", headers=request.headers)
        with pytest.raises(VerificationError):
            provider.verify(tampered, [SECRET], options_for(kind), NOW)


@pytest.mark.parametrize("kind", SIGNABLE)
def test_no_secrets_means_rejection(kind):
    request = fixture_request(kind, fixtures_of(kind)[0])
    with pytest.raises(VerificationError):
        PROVIDERS[kind].verify(request, [], options_for(kind), NOW)


@pytest.mark.parametrize("kind", SIGNABLE)
def test_rejection_details_never_contain_secret_or_signature(kind):
    provider = PROVIDERS[kind]
    body = fixtures_of(kind)[0].read_bytes()
    good = provider.sign(body, SECRET, options_for(kind), NOW)
    # The request is signed by an attacker; we hold SECRET. Details must not leak what SECRET would produce.
    forged = provider.sign(body, OTHER_SECRET, options_for(kind), NOW)
    request = InboundRequest(body=body, headers={k.lower(): v for k, v in forged.items()})
    with pytest.raises(VerificationError) as info:
        provider.verify(request, [SECRET], options_for(kind), NOW)
    detail = info.value.detail
    assert SECRET not in detail and SECRET[6:] not in detail
    for name, value in good.items():
        if value != forged.get(name):
            for part in (value, value.split("=", 1)[-1], value.split(",")[-1], value.split("v1=")[-1]):
                assert len(part) < 8 or part not in detail


def _headers_read_by(kind: str) -> list[str]:
    signed = PROVIDERS[kind].sign(b"{}", SECRET, options_for(kind), NOW)
    extra = {
        "github": ["x-hub-signature", "x-hub-signature-256", "x-github-event", "x-github-delivery"],
        "shopify": ["shopify-hmac-sha256", "x-shopify-hmac-sha256", "shopify-topic", "shopify-event-id"],
        "standard_webhooks": [f"{f}-{p}" for f in ("svix", "webhook") for p in ("id", "timestamp", "signature")],
        "stripe": ["stripe-signature"],
        "shared_token": ["authorization"],
        "generic_hmac": ["x-signature", "x-timestamp"],
    }
    return sorted({name.lower() for name in signed} | set(extra.get(kind, [])))


GARBAGE_VALUES = [
    "",
    " ",
    "=",
    ",",
    "é\u2603\U0001f600",
    "\x00\x01\x7f",
    "\udcff",  # a lone surrogate
    "9" * 5000,
    "-1",
    "t=,v1=",
    "t=-5,v1=00",
    "t=1e99,v1=zz",
    "sha256=" + "é" * 64,
    "sha1=",
    "v1, v1,, ,v1 v1a,",
    "v1,====",
    "v1," + "A" * 10000,
    "Bearer ",
    "Bearer \udcff",
    "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g",
    "%%%",
    "0x1f",
    "NaN",
    "inf",
]
GARBAGE_BODIES = [
    b"",
    b"\xff\xfe\xfd",
    b"\x00" * 10,
    b'{"id": "\xff"}',
    b"[" * 1000,
    b'{"type": null, "id": null}',
    b"null",
]


@pytest.mark.parametrize("kind", SIGNABLE)
def test_garbage_never_raises_anything_but_verification_error(kind):
    provider = PROVIDERS[kind]
    names = _headers_read_by(kind)
    rng = random.Random(kind)
    valid = provider.sign(b"{}", SECRET, options_for(kind), NOW)
    cases = []
    for name in names:
        for value in GARBAGE_VALUES:
            cases.append({**{k.lower(): v for k, v in valid.items()}, name: value})
    for _ in range(300):
        cases.append({name: rng.choice(GARBAGE_VALUES) for name in names if rng.random() < 0.7})
    for headers in cases:
        for body in (b"{}", rng.choice(GARBAGE_BODIES)):
            request = InboundRequest(body=body, headers=headers)
            for secrets in ([SECRET], ["whsec_!!!", ""], []):
                try:
                    provider.verify(request, secrets, options_for(kind), NOW)
                except VerificationError as exc:
                    assert exc.code in {
                        "missing_signature",
                        "bad_format",
                        "timestamp_out_of_tolerance",
                        "no_matching_secret",
                    }
                    assert isinstance(exc.detail, str) and exc.detail
                else:
                    # Only the genuinely signed request (with garbage in headers that do not matter) may pass.
                    assert SECRET in secrets and (kind in BODY_NOT_SIGNED or body == b"{}")
            try:
                info = provider.describe(request, options_for(kind))
            except MalformedPayload:
                continue
            assert isinstance(info.event_type, str)
            assert info.event_id is None or isinstance(info.event_id, str)


@pytest.mark.parametrize("kind", SIGNABLE)
def test_garbage_is_never_accepted(kind):
    provider = PROVIDERS[kind]
    names = _headers_read_by(kind)
    for value in GARBAGE_VALUES:
        headers = {name: value for name in names}
        for body in GARBAGE_BODIES:
            with pytest.raises(VerificationError):
                provider.verify(InboundRequest(body=body, headers=headers), [SECRET], options_for(kind), NOW)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_options_are_refused(kind):
    from webhooks.providers.base import InvalidOptions

    with pytest.raises(InvalidOptions):
        PROVIDERS[kind].clean_options({**REQUIRED_OPTIONS.get(kind, {}), "no_such_option": "1"})


@pytest.mark.parametrize("kind", KINDS)
def test_blank_secret_is_refused(kind):
    from webhooks.providers.base import InvalidOptions

    with pytest.raises(InvalidOptions):
        PROVIDERS[kind].clean_secret("   ")


@pytest.mark.parametrize("kind", SIGNABLE)
def test_verify_tolerates_options_missing_defaults(kind):
    """Options stored before a new option existed must not break verification."""
    provider = PROVIDERS[kind]
    request = fixture_request(kind, fixtures_of(kind)[0])
    provider.verify(request, [SECRET], dict(REQUIRED_OPTIONS.get(kind, {})), NOW)
    # Read as with every option at its default.
    assert provider.describe(request, dict(REQUIRED_OPTIONS.get(kind, {}))) == provider.describe(
        request, options_for(kind)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_provider_modules_are_pure(kind):
    """Providers import the standard library, `cryptography` and each other only: no Django, no Hookline."""
    import sys

    allowed = set(sys.stdlib_module_names) | {"cryptography"}
    module = type(PROVIDERS[kind]).__module__.rsplit(".", 1)[-1]
    tree = ast.parse((PROVIDERS_DIR / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:  # other provider modules (shared schemes) are fine
            assert node.level == 1 and (PROVIDERS_DIR / f"{node.module}.py").exists(), f"{module} imports {node.module}"
        elif isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in allowed, f"{module} imports {node.module}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in allowed, f"{module} imports {alias.name}"


@pytest.mark.parametrize("kind", SIGNABLE)
def test_fresh_id_samples_are_distinct_events(kind, monkeypatch):
    """The test sender's --fresh-id gives each send a new provider event id, wherever the provider keeps it."""
    from types import SimpleNamespace

    from webhooks.services import sample_sender

    monkeypatch.setattr(sample_sender, "ingest_url", lambda source: "https://hookline.test/in/x/")
    source = SimpleNamespace(pk=1, provider=kind, secret=SECRET, options=options_for(kind))
    provider = PROVIDERS[kind]
    seen = set()
    for _ in range(2):
        body, headers = sample_sender.build_test_request(source=source, fresh_id=True)
        request = InboundRequest(
            body=body, headers={k.lower(): v for k, v in headers.items()}, url="https://hookline.test/in/x/"
        )
        provider.verify(request, [SECRET], options_for(kind), time.time())
        info = provider.describe(request, options_for(kind))
        seen.add(info.event_id)
    assert len(seen) == 2, f"{kind}: both sends carry the event id {seen}"


@pytest.mark.parametrize("kind", [k for k in KINDS if any(o.name == "tolerance" for o in PROVIDERS[k].options)])
def test_a_negative_tolerance_is_refused(kind):
    with pytest.raises(InvalidOptions, match="tolerance"):
        PROVIDERS[kind].clean_options({**REQUIRED_OPTIONS.get(kind, {}), "tolerance": "-1"})


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind not in SIGNABLE])
def test_providers_hookline_cannot_sign_say_what_to_use_instead(kind):
    provider = PROVIDERS[kind]
    assert "Use " in provider.cannot_sign_reason
    with pytest.raises(NotImplementedError) as info:
        provider.sign(b"{}", SECRET, options_for(kind), NOW)
    assert str(info.value) == provider.cannot_sign_reason
