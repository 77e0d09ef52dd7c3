"""Signing a sample payload exactly as the provider would, and posting it to a source's ingest URL."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from webhooks.models import Source
from webhooks.providers.base import MalformedPayload, Provider
from webhooks.providers.registry import get_provider

from .outbound import OutboundResponse, post_to_hookline
from .sources import ingest_url

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


class SampleSenderError(ValueError):
    """The test request cannot be built (message is safe to show)."""


# Samples whose names say they undo something come last: the first one is what the test sender
# and `make run` send unless told otherwise, and it really reaches the tenant's destinations.
_UNDOING_WORDS = ("delete", "remove", "cancel", "refund", "dispute", "fail", "uninstall", "revoke", "expire")


def fixtures_for_provider(provider: str) -> list[str]:
    """Fixture names available for a provider (file names without .json), harmless-sounding ones first."""
    folder = FIXTURES_DIR / provider
    if not folder.is_dir():
        return []
    names = [path.stem for path in folder.glob("*.json") if not path.name.endswith(".headers.json")]
    return sorted(names, key=lambda name: (any(word in name.lower() for word in _UNDOING_WORDS), name))


def load_fixture(provider: str, name: str) -> tuple[bytes, dict[str, str]]:
    """The fixture body as bytes and the extra headers the provider sends with it."""
    if name not in fixtures_for_provider(provider):
        raise SampleSenderError(
            f"no fixture '{name}' for {provider}; available: {', '.join(fixtures_for_provider(provider))}"
        )
    folder = FIXTURES_DIR / provider
    body = (folder / f"{name}.json").read_bytes().strip()
    headers_file = folder / f"{name}.headers.json"
    headers = json.loads(headers_file.read_text()) if headers_file.exists() else {}
    return body, headers


def with_fresh_id(provider: Provider, body: bytes) -> tuple[bytes, str]:
    """A copy of a JSON sample with a new provider event id, so it is not taken for a redelivery."""
    fresh_id = uuid.uuid4().hex
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return body, fresh_id
    return json.dumps(provider.with_sample_event_id(payload, fresh_id), indent=2).encode(), fresh_id


def build_test_request(
    *, source: Source, fixture: str | None = None, body: bytes | None = None, fresh_id: bool = False
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a request signed with the source's current secret.

    With ``fresh_id`` the sample gets a new event id (in the body and in the
    provider's id header), so sending it twice makes two events.
    """
    provider = get_provider(source.provider)
    if provider.uses_secret and not source.secret:
        raise SampleSenderError("this source has no signing secret yet: set it first, then send a test")
    extra_headers: dict[str, str] = {}
    if body is None:
        names = fixtures_for_provider(source.provider)
        if not names:
            raise SampleSenderError(f"there is no sample payload for {provider.label}")
        body, extra_headers = load_fixture(source.provider, fixture or names[0])
    event_id = None
    if fresh_id:
        body, event_id = with_fresh_id(provider, body)
    url = ingest_url(source)
    headers = {"Content-Type": "application/json", "User-Agent": "Hookline-Test-Sender/1.0", **extra_headers}
    now = time.time()
    try:
        body = provider.prepare_body(body, source.secret, source.options, now)
    except MalformedPayload as exc:
        # Schemes that sign inside the body (Mailgun) need it shaped as the provider sends it.
        raise SampleSenderError(f"this payload cannot be signed as {provider.label} signs: {exc}") from None
    try:
        headers.update(provider.sign(body, source.secret, source.options, now, url=url, event_id=event_id))
    except NotImplementedError as exc:
        # Schemes signed with the provider's private key: only the provider can send a test.
        raise SampleSenderError(str(exc)) from None
    return body, headers


def send_test_webhook(
    *,
    source: Source,
    fixture: str | None = None,
    body: bytes | None = None,
    url: str | None = None,
    fresh_id: bool = False,
) -> OutboundResponse:
    """Sign and POST a sample to the source's ingest URL; returns Hookline's answer."""
    body, headers = build_test_request(source=source, fixture=fixture, body=body, fresh_id=fresh_id)
    return post_to_hookline(url or ingest_url(source), body=body, headers=headers)
