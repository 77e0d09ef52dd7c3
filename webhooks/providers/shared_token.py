"""Shared token: a header whose value is a fixed secret (optionally after a scheme such as ``Bearer``).

For senders that cannot sign, e.g. Supabase database webhooks or Flutterwave v3's ``verif-hash``.
"""

from __future__ import annotations

import hashlib
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
    counted,
    header_carries_secret,
    json_field,
    require_header,
)

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# An authorization scheme word before the token ("Bearer abc", "Token abc"): named in the refusal.
_SCHEME = re.compile(r"(Bearer|Token)\s", re.IGNORECASE)

OPTIONS = (
    ProviderOption("header", "Token header", "Header carrying the token.", default="Authorization"),
    ProviderOption(
        "scheme_prefix",
        "Scheme prefix",
        "Text before the token, e.g. 'Bearer ' (a bare word such as Bearer gets a space; matched case-insensitively).",
        default="",
    ),
    ProviderOption("event_id_header", "Event id header", "Header with the sender's event or delivery id."),
    ProviderOption("event_id_field", "Event id field", "Dotted JSON path to the event id, e.g. record.id."),
    ProviderOption("event_type_header", "Event type header", "Header with the event type."),
    ProviderOption(
        "event_type_field",
        "Event type field",
        "Dotted JSON path to the event type (Supabase: type = INSERT/UPDATE/DELETE).",
        default="type",
    ),
)


def _option(options: Mapping[str, Any], name: str) -> Any:
    if name in options and options[name] is not None:
        return options[name]
    return next(option.default for option in OPTIONS if option.name == name)


def _text(value: Any) -> str | None:
    """A usable id/type value: non-empty strings and integers (not booleans)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class SharedTokenProvider(Provider):
    """Authenticates by a secret token sent verbatim in a header (no signature, no replay protection)."""

    kind = "shared_token"
    edited_body_formats = ("any",)  # verifies any bytes
    label = "Shared token"
    secret_help = (
        "A token the sender puts in a request header, by default Authorization: <token> (for "
        "Authorization: Bearer <token>, set Scheme prefix to Bearer; Supabase database webhooks have a source "
        "type of their own). Hookline can generate one."
    )
    secret_generated_by_us = True
    options = OPTIONS
    docs_verifies = (
        "The configured header (default Authorization) equals scheme prefix + token, compared in constant time. "
        "The body is not signed: use HTTPS and rotate the token if it leaks."
    )
    event_id_from = "the configured header or body field"
    docs_event_id = (
        "the configured event id header, else the configured JSON field, else sha256:<hex of the body> "
        "(identical bytes are treated as a redelivery)"
    )
    docs_event_type = "the configured event type header, else the JSON field (default `type`, e.g. INSERT), else empty"

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = super().clean_options(raw)
        for name in ("header", "event_id_header", "event_type_header"):
            if cleaned[name]:
                cleaned[name] = cleaned[name].strip()
                if not _HEADER_NAME.fullmatch(cleaned[name]):
                    raise InvalidOptions(f"option '{name}' is not a valid header name")
        for name in ("event_id_field", "event_type_field"):
            if cleaned[name]:
                cleaned[name] = cleaned[name].strip()
                if any(not part for part in cleaned[name].split(".")):
                    raise InvalidOptions(f"option '{name}' must be a dotted path such as record.id")
        prefix = cleaned["scheme_prefix"] or ""
        if prefix.strip().isalpha() and not prefix.endswith(" "):
            prefix = prefix.strip() + " "  # "Bearer" means "Bearer <token>"
        cleaned["scheme_prefix"] = prefix
        return cleaned

    def secret_header_names(self, options: Mapping[str, Any]) -> set[str]:
        return {_option(options, "header")}

    def sender_requirement(self, options: Mapping[str, Any]) -> str:
        header = _option(options, "header")
        prefix = _option(options, "scheme_prefix")
        requirement = f"Each request must carry the header {header}: {prefix}<token>"
        if prefix:
            return requirement + "."
        return requirement + f" (the token alone; for {header}: Bearer <token>, set Scheme prefix to Bearer)."

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if the header, minus the scheme prefix, equals any configured token."""
        header = _option(options, "header")
        prefix = _option(options, "scheme_prefix")
        value = require_header(request, header)
        if prefix:
            if value[: len(prefix)].lower() != prefix.lower():
                raise VerificationError("bad_format", f"the {header} header does not start with '{prefix}'")
            value = value[len(prefix) :].strip()
        if not any(header_carries_secret(value, secret) for secret in secrets if secret):
            detail = f"the {header} header does not match the source's token ({counted(len(secrets), 'token')} tried)"
            scheme = _SCHEME.match(value) if not prefix else None
            if scheme:  # "Bearer <token>" sent to a source that expects the token alone
                detail += f"; it starts with '{scheme.group(1)} ': set the source's Scheme prefix to {scheme.group(1)}"
            raise VerificationError("no_matching_secret", detail)

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Header, else JSON field, else (id only) a hash of the body so identical bytes count as a redelivery."""
        payload: Any = None
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested JSON
            pass

        def pick(header_option: str, field_option: str) -> str | None:
            header = _option(options, header_option)
            if header and (value := (request.header(header) or "").strip()):
                return value
            path = _option(options, field_option)
            return _text(json_field(payload, *path.split("."))) if path else None

        event_id = pick("event_id_header", "event_id_field") or "sha256:" + hashlib.sha256(request.body).hexdigest()
        return EventInfo(event_id=event_id, event_type=pick("event_type_header", "event_type_field") or "")

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
        """The token header, plus the id/type headers when configured."""
        headers = {_option(options, "header"): f"{_option(options, 'scheme_prefix')}{secret}"}
        if (id_header := _option(options, "event_id_header")) and event_id:
            headers[id_header] = event_id
        if (type_header := _option(options, "event_type_header")) and event_type:
            headers[type_header] = event_type
        return headers
