"""Generic HMAC: one configurable header carrying an HMAC of the raw body (optionally timestamp-prefixed).

Covers the long tail of "hex/base64 HMAC of the body" senders: Paystack (sha512 hex), Linear,
Dropbox, GitHub-style "sha256=" prefixes, Shopify-style base64, and so on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    Provider,
    ProviderOption,
    VerificationError,
    check_timestamp_age,
    constant_time_equal,
    counted,
    header_unix_time,
    json_field,
    require_header,
    tolerance_seconds,
)

ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
DEFAULT_TOLERANCE = 300
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_TIMESTAMP = re.compile(r"\d{1,15}")

OPTIONS = (
    ProviderOption("header", "Signature header", "Header carrying the signature, e.g. X-Signature.", required=True),
    ProviderOption(
        "algorithm", "Hash", "HMAC hash function.", default="sha256", kind="choice", choices=tuple(ALGORITHMS)
    ),
    ProviderOption(
        "encoding", "Encoding", "How the digest is written.", default="hex", kind="choice", choices=("hex", "base64")
    ),
    ProviderOption(
        "prefix", "Signature prefix", "Text before the digest, e.g. sha256= (matched case-insensitively).", default=""
    ),
    ProviderOption(
        "timestamp_header",
        "Timestamp header",
        "If set, the signed message is <timestamp><separator><body> and the timestamp (Unix seconds) must be fresh.",
    ),
    ProviderOption(
        "timestamp_separator",
        "Timestamp separator",
        "Between timestamp and body in the signed message; pass an explicit empty value for none.",
        default=".",
    ),
    ProviderOption(
        "tolerance",
        "Timestamp tolerance (seconds)",
        "Only with a timestamp header: maximum age or lead of the timestamp; 0 turns the check off.",
        default=DEFAULT_TOLERANCE,
        kind="int",
        min_value=0,
    ),
    ProviderOption("event_id_header", "Event id header", "Header with the sender's event or delivery id."),
    ProviderOption("event_id_field", "Event id field", "Dotted JSON path to the event id, e.g. data.id."),
    ProviderOption("event_type_header", "Event type header", "Header with the event type."),
    ProviderOption("event_type_field", "Event type field", "Dotted JSON path to the event type.", default="type"),
)


def _digest(algorithm: str, secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, ALGORITHMS.get(algorithm, hashlib.sha256)).digest()


def _text(value: Any) -> str | None:
    """A usable id/type value: non-empty strings and integers (not booleans)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _option(options: Mapping[str, Any], name: str) -> Any:
    if name in options and options[name] is not None:
        return options[name]
    return next(option.default for option in OPTIONS if option.name == name)


def describe_from_options(request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
    """Id: JSON field, else header, else a hash of the body (identical bytes count as a redelivery). Type:
    header, else JSON field. The signature covers the body but no id header, so a signed id in the body
    wins over an unsigned header that a replay could change."""
    payload: Any = None
    parsed = False

    def field(path: str) -> str | None:
        nonlocal payload, parsed
        if not parsed:
            parsed = True
            try:
                payload = json.loads(request.body)
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested JSON
                payload = None
        return _text(json_field(payload, *path.split(".")))

    def header(option: str) -> str | None:
        name = _option(options, option)
        return (request.header(name) or "").strip() or None if name else None

    def configured_field(option: str) -> str | None:
        path = _option(options, option)
        return field(path) if path else None

    event_id = (
        configured_field("event_id_field")
        or header("event_id_header")
        or "sha256:" + hashlib.sha256(request.body).hexdigest()
    )
    event_type = header("event_type_header") or configured_field("event_type_field") or ""
    return EventInfo(event_id=event_id, event_type=event_type)


def id_from_unsigned_header(request: InboundRequest, options: Mapping[str, Any]) -> bool:
    """Whether describe_from_options() may take the event id from the event id header, which no
    signature covers: the request carries the configured id header and the configured body field
    gives no id. Without the header the id is the field's or the body's hash, both signed, and the
    body is not parsed a second time for nothing (describe_from_options parsed it already)."""
    header_name = _option(options, "event_id_header")
    if not header_name or not (request.header(header_name) or "").strip():
        return False
    path = _option(options, "event_id_field")
    if not path:
        return True
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return True
    return _text(json_field(payload, *path.split("."))) is None


def clean_common_options(cleaned: dict[str, Any]) -> dict[str, Any]:
    """Checks shared by the header/field options."""
    for name in ("header", "timestamp_header", "event_id_header", "event_type_header"):
        if cleaned.get(name):
            cleaned[name] = cleaned[name].strip()
            if not _HEADER_NAME.fullmatch(cleaned[name]):
                raise InvalidOptions(f"option '{name}' is not a valid header name")
    for name in ("event_id_field", "event_type_field"):
        if cleaned.get(name):
            cleaned[name] = cleaned[name].strip()
            if any(not part for part in cleaned[name].split(".")):
                raise InvalidOptions(f"option '{name}' must be a dotted path such as data.id")
    return cleaned


class GenericHmacProvider(Provider):
    """Any sender that puts an HMAC of the raw body in one header."""

    kind = "generic_hmac"
    edited_body_formats = ("any",)  # verifies any bytes
    label = "Generic HMAC"
    secret_help = (
        "The signing secret configured in (or shown by) the sender's webhook settings. "
        "If the sender lets you choose it, Hookline can generate one."
    )
    secret_generated_by_us = True
    options = OPTIONS
    docs_signed_time = "the `timestamp_header`, when one is set (without it no time is signed)"
    docs_verifies = (
        "The configured header: prefix + hex or base64 HMAC (sha1/sha256/sha512) of the raw body, or of "
        '"<timestamp><separator><body>" when a timestamp header is set (then the timestamp must be fresh, both ways).'
    )
    event_id_from = "the configured body field or header"
    docs_event_id = (
        "the configured JSON field (signed), else the configured event id header (not signed), else "
        "sha256:<hex of the body> (identical bytes are treated as a redelivery). An id from the header is "
        "not trusted alone: a request whose signed content (the timestamp, separator and body, or the body) "
        "equals a stored event's is its duplicate whatever the header says"
    )
    docs_signed_content_when = "with an event id header configured"
    docs_event_type = "the configured event type header, else the JSON field (default `type`), else empty"

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = clean_common_options(super().clean_options(raw))
        # ProviderOption.clean turns "" into the default, but "no separator" is a real scheme
        # (e.g. timestamp + body), so an explicit empty value is kept.
        if raw.get("timestamp_separator") == "":
            cleaned["timestamp_separator"] = ""
        return cleaned

    def sender_requirement(self, options: Mapping[str, Any]) -> str:
        header = _option(options, "header")
        if not header:
            return ""
        digest = f"{_option(options, 'encoding')} HMAC-{_option(options, 'algorithm').upper()}"
        timestamp_header = _option(options, "timestamp_header")
        if not timestamp_header:
            return (
                f"Each request must carry the header {header}: {_option(options, 'prefix')}<{digest} of the raw body>."
            )
        separator = str(_option(options, "timestamp_separator"))
        signed = (
            f"the timestamp, then {separator!r}, then the raw body" if separator else "the timestamp and the raw body"
        )
        return (
            f"Each request must carry the headers {timestamp_header}: <Unix time in seconds> and "
            f"{header}: {_option(options, 'prefix')}<{digest} of {signed}>."
        )

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if the header's digest equals the HMAC under any secret; then check the timestamp if configured."""
        header = _option(options, "header")
        if not header:
            raise VerificationError("bad_format", "the source has no signature header configured")
        algorithm = _option(options, "algorithm")
        encoding = _option(options, "encoding")
        prefix = _option(options, "prefix")
        value = require_header(request, header)
        if prefix:
            if value[: len(prefix)].lower() != prefix.lower():
                raise VerificationError("bad_format", f"the {header} header does not start with '{prefix}'")
            value = value[len(prefix) :].strip()
        candidate = _decode(value, encoding, ALGORITHMS.get(algorithm, hashlib.sha256)().digest_size)
        if candidate is None:
            raise VerificationError("bad_format", f"the {header} header is not a {encoding} {algorithm} digest")

        message = request.body
        timestamp_header = _option(options, "timestamp_header")
        timestamp = None
        if timestamp_header:
            timestamp_text = require_header(request, timestamp_header)
            if not _TIMESTAMP.fullmatch(timestamp_text):
                raise VerificationError("bad_format", f"the {timestamp_header} header is not a Unix time in seconds")
            timestamp = int(timestamp_text)
            separator = str(_option(options, "timestamp_separator"))
            message = f"{timestamp_text}{separator}".encode("utf-8", "surrogatepass") + request.body

        if not any(constant_time_equal(_digest(algorithm, s, message), candidate) for s in secrets if s):
            raise VerificationError(
                "no_matching_secret",
                f"the {header} signature does not match the signing secret ({counted(len(secrets), 'secret')} tried); "
                "check the secret, algorithm, encoding and prefix",
            )

        if timestamp is not None:
            check_timestamp_age(timestamp, now, tolerance_seconds(options, DEFAULT_TOLERANCE))

    def counts_replays_by_signed_content(self, options: Mapping[str, Any]) -> bool:
        # With an event id header configured: a request whose body gives no id takes it from there.
        return bool(_option(options, "event_id_header"))

    def signed_content_digest(self, request: InboundRequest, options: Mapping[str, Any]) -> str | None:
        """Hex SHA-256 of the signed message when the event id may come from the unsigned id header, else None.

        A captured request posted again under a fresh id header would otherwise be stored and delivered
        again (and under another event type header too). The message includes the signed timestamp, so a
        sender's two sends of one body at two times stay two events; a genuine retry keeps its id header
        and is found by it whatever its timestamp."""
        if not id_from_unsigned_header(request, options):
            return None
        message = request.body
        timestamp_header = _option(options, "timestamp_header")
        if timestamp_header:
            timestamp = (request.header(timestamp_header) or "").strip()
            separator = str(_option(options, "timestamp_separator"))
            message = f"{timestamp}{separator}".encode("utf-8", "surrogatepass") + request.body
        return hashlib.sha256(message).hexdigest()

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        timestamp_header = _option(options, "timestamp_header")
        return header_unix_time(request, timestamp_header) if timestamp_header else None

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type from the configured headers or JSON fields; never fails."""
        return describe_from_options(request, options)

    def sign(
        self,
        body: bytes,
        secret: str,
        options: Mapping[str, Any],
        now: float,
        *,
        url: str = "",
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        """The configured signature header, the timestamp header if configured, and id/type headers when configured and given."""
        algorithm = _option(options, "algorithm")
        headers: dict[str, str] = {}
        message = body
        if timestamp_header := _option(options, "timestamp_header"):
            timestamp = str(int(now))
            headers[timestamp_header] = timestamp
            message = f"{timestamp}{_option(options, 'timestamp_separator')}".encode() + body
        digest = _digest(algorithm, secret, message)
        encoded = digest.hex() if _option(options, "encoding") == "hex" else base64.b64encode(digest).decode()
        headers[_option(options, "header")] = f"{_option(options, 'prefix')}{encoded}"
        if (id_header := _option(options, "event_id_header")) and event_id:
            headers[id_header] = event_id
        if (type_header := _option(options, "event_type_header")) and event_type:
            headers[type_header] = event_type
        return headers


def _decode(value: str, encoding: str, size: int) -> bytes | None:
    """The digest bytes, or None when ``value`` is not a digest of the right size."""
    try:
        if encoding == "base64":
            text = value.rstrip("=")
            digest = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        else:
            if not _HEX.fullmatch(value):
                return None
            digest = bytes.fromhex(value)  # case-insensitive by construction
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == size else None
