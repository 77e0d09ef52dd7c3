"""Signing a sample payload exactly as the provider would, and posting it to a source's ingest URL."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl

from webhooks.models import Source
from webhooks.providers.base import MalformedPayload, Provider
from webhooks.providers.registry import get_provider

from .outbound import OutboundResponse, post_to_hookline
from .secrets import unreadable_secrets_found
from .sender_marks import sender_mark_headers
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
            f'no fixture "{name}" for {provider}; available: {", ".join(fixtures_for_provider(provider))}'
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


FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _json_mistake(error: json.JSONDecodeError) -> str:
    """What the parser stopped at, in words for someone who typed the payload (not the parser's own
    "Expecting value: line 1 column 1 (char 0)"): what is wrong there and how JSON writes it."""
    text = error.doc
    here = text[error.pos : error.pos + 1]
    if not text[error.pos :].strip() and error.msg != "Extra data":
        return "the payload ends too early: a value, a closing quote, } or ] is missing"
    if error.msg == "Expecting value":
        if here == "'":
            return 'text is in single quotes: JSON needs double quotes, as in "like this"'
        if here in ("]", "}"):
            return f"a value is missing before this {here}: JSON allows no comma after the last item"
        if here.isalpha():
            return "there is a word without quotes: text goes in double quotes; only true, false and null go without"
        return "a value was expected: an object {…}, a list […], text in double quotes, a number, true, false or null"
    if error.msg == "Expecting property name enclosed in double quotes":
        if here == "}":
            return "there is a comma after the last item, which JSON does not allow"
        if here == "'":
            return 'a name is in single quotes: JSON needs double quotes, as in {"name": "value"}'
        return 'a name in double quotes was expected, as in {"name": "value"}'
    if error.msg == "Expecting ':' delimiter":
        return 'a colon (:) is missing between a name and its value, as in {"name": "value"}'
    if error.msg == "Expecting ',' delimiter":
        if here in ("]", "}"):
            return "a bracket does not match: each { closes with } and each [ with ]"
        return "a comma (,) is missing between two items"
    if error.msg == "Unterminated string starting at":
        return "the text in double quotes that starts here is never closed"
    if error.msg == "Invalid control character at":
        return "text in double quotes cannot hold a line break or tab as such: write \\n or \\t"
    if error.msg.startswith("Invalid \\uXXXX escape"):
        return "\\u must be followed by four hexadecimal digits, as in \\u00e9"
    if error.msg.startswith("Invalid \\escape"):
        return 'a backslash JSON does not know: write \\\\ for a backslash, or \\n, \\t, \\"'
    if error.msg == "Extra data":
        return "something follows the end of the JSON: a payload is a single value, such as one {…}"
    return error.msg[:1].lower() + error.msg[1:]


def _json_error(body: bytes) -> str | None:
    """Why ``body`` is not JSON, with where (line and character, counted from 1), or None."""
    try:
        json.loads(body)
    except RecursionError:
        return "it is nested too deeply"
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"on line {exc.lineno}, at character {exc.colno}, {_json_mistake(exc)}"
    except ValueError as exc:
        return str(exc)
    return None


def _is_form(body: bytes) -> bool:
    try:
        return bool(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        return False


def edited_body_problem(provider_kind: str, body: bytes) -> str | None:
    """Why ``body`` cannot be sent as a payload of this provider (a sentence to show), or None."""
    formats = get_provider(provider_kind).edited_body_formats
    if "any" in formats:
        return None
    error = _json_error(body)
    if error is None:
        return None
    if "form" in formats and _is_form(body):
        return None
    if "form" in formats:
        return f"The payload is neither valid JSON nor a form-encoded body (name=value&name=value). As JSON: {error}."
    return f"The payload is not valid JSON: {error}."


def _merge_headers(headers: dict[str, str], extra: dict[str, str]) -> None:
    """headers.update(extra), an existing header of another spelling being replaced, not doubled."""
    for name, value in extra.items():
        for existing in [key for key in headers if key.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value


def build_test_request(
    *, source: Source, fixture: str | None = None, body: bytes | None = None, fresh_id: bool = False
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a request signed with the source's current secret.

    Without ``body`` the sample ``fixture`` (default: the provider's first) is sent with its recorded
    headers; ``fresh_id`` gives it a new event id (in the body and in the provider's id header), so
    sending it twice makes two events.

    An edited ``body`` is sent exactly as given (only schemes that sign inside the body, Mailgun and
    Linear, add their signature or timestamp to it as the provider does), with the recorded headers of
    the selected sample, which name the event type for providers that keep it in a header (GitHub,
    Shopify...). There ``fresh_id`` gives a new id header only: where the provider takes the event id
    from the body, the same body sent twice is a duplicate, as it would be from the provider; so it is
    where the id header is not signed (GitHub, Bitbucket: Provider.dedupes_on_signed_content).
    """
    provider = get_provider(source.provider)
    unreadable = unreadable_secrets_found(source)
    if provider.uses_secret and unreadable and unreadable.signing_secret:
        # Neither can a test be signed nor, until a new one is set, a request to the source be checked.
        if unreadable.passing:
            raise SampleSenderError(
                "this server cannot read this source's signing secret yet (most likely a new encryption key is "
                "being deployed): send the test again in a few minutes"
            )
        raise SampleSenderError(
            f"this source's {unreadable.named} can no longer be read by the platform: set a new one first"
        )
    if provider.uses_secret and not source.secret:
        raise SampleSenderError("this source has no signing secret yet: set it first, then send a test")
    extra_headers: dict[str, str] = {}
    names = fixtures_for_provider(source.provider)
    edited = body is not None
    if body is None:
        if not names:
            raise SampleSenderError(f"there is no sample payload for {provider.label}")
        body, extra_headers = load_fixture(source.provider, fixture or names[0])
    elif fixture or names:
        _, extra_headers = load_fixture(source.provider, fixture or names[0])
    event_id = None
    if fresh_id and edited:
        event_id = uuid.uuid4().hex
    elif fresh_id:
        body, event_id = with_fresh_id(provider, body)
    url = ingest_url(source)
    headers = {"Content-Type": "application/json", "User-Agent": "Hookline-Test-Sender/1.0"}
    _merge_headers(headers, extra_headers)
    if edited and _json_error(body) is not None:
        formats = provider.edited_body_formats
        content_type = FORM_CONTENT_TYPE if "form" in formats else "text/plain; charset=utf-8"
        _merge_headers(headers, {"Content-Type": content_type})
    now = time.time()
    try:
        body = provider.prepare_body(body, source.secret, source.options, now)
    except MalformedPayload as exc:
        # Schemes that sign inside the body (Mailgun) need it shaped as the provider sends it.
        raise SampleSenderError(f"this payload cannot be signed as {provider.label} signs: {exc}") from None
    try:
        signed = provider.sign(body, source.secret, source.options, now, url=url, event_id=event_id)
    except NotImplementedError as exc:
        # Schemes signed with the provider's private key: only the provider can send a test.
        raise SampleSenderError(str(exc)) from None
    _merge_headers(headers, signed)
    _merge_headers(headers, sender_mark_headers(body, source_id=source.pk, now=now))
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
