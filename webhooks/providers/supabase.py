"""Supabase database webhooks: no signature, a shared token in a header the tenant adds to the trigger.

Database webhooks are triggers calling ``supabase_functions.http_request`` (pg_net) with headers you choose,
so authentication is ``Authorization: Bearer <token>`` (or another header) compared in constant time; the
check itself is the shared-token provider's. The payload is
``{type: INSERT|UPDATE|DELETE, table, schema, record, old_record}`` and carries no event id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    MalformedPayload,
    Provider,
    ProviderOption,
)
from .shared_token import SharedTokenProvider

DEFAULT_HEADER = "Authorization"
DEFAULT_PREFIX = "Bearer "
NO_PREFIX = "none"
_TOKEN = SharedTokenProvider()


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _token_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The shared-token options equivalent to these Supabase options (defaults filled in)."""
    header = options.get("header") or DEFAULT_HEADER
    prefix = options.get("scheme_prefix")
    if prefix is None:
        prefix = DEFAULT_PREFIX
    elif isinstance(prefix, str) and prefix.strip().lower() == NO_PREFIX:
        prefix = ""
    return {"header": header, "scheme_prefix": prefix}


class SupabaseProvider(Provider):
    """Supabase (and plain Postgres pg_net) database webhooks on INSERT, UPDATE and DELETE."""

    kind = "supabase"
    label = "Supabase database webhooks"
    secret_help = (
        "A token you choose (Hookline can generate one): Supabase Dashboard → Database → Webhooks → your webhook → "
        "HTTP Headers → add Authorization with the value Bearer <token> (or the header and prefix set in the "
        "options). For Supabase Auth Hooks, which are signed, use the Standard Webhooks provider instead."
    )
    secret_generated_by_us = True
    options = (
        ProviderOption("header", "Token header", "Header carrying the token.", default=DEFAULT_HEADER),
        ProviderOption(
            "scheme_prefix",
            "Scheme prefix",
            "Text before the token (matched case-insensitively; a bare word such as Bearer gets a space). "
            "Enter 'none' when the header holds only the token.",
            default=DEFAULT_PREFIX,
        ),
    )
    docs_verifies = (
        "The configured header (default Authorization) equals scheme prefix (default 'Bearer ') + token, "
        "compared in constant time. Supabase database webhooks are not signed: the body is not protected, so "
        "use HTTPS and rotate the token if it leaks. The token header is never stored."
    )
    event_id_from = "made from the body: Supabase sends none"
    docs_event_id = (
        "derived (Supabase sends none): '<table>:<record id>:<sha256 hex of body>', the id taken from record.id "
        "(old_record.id for DELETE) and left out when there is none, e.g. orders:1042:9f2c…; only identical "
        "bytes count as a redelivery"
    )
    docs_event_type = '"<table>.<type>", e.g. orders.INSERT, profiles.DELETE'

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = super().clean_options(raw)
        prefix = cleaned["scheme_prefix"]
        # Validation and prefix normalisation ("Bearer" means "Bearer <token>") are shared-token's.
        token = _TOKEN.clean_options(_token_options(cleaned))
        cleaned["header"] = token["header"]
        cleaned["scheme_prefix"] = NO_PREFIX if prefix.strip().lower() == NO_PREFIX else token["scheme_prefix"]
        return cleaned

    def secret_header_names(self, options: Mapping[str, Any]) -> set[str]:
        return {_token_options(options)["header"]}

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if the header, minus the scheme prefix, equals any configured token."""
        _TOKEN.verify(request, secrets, _token_options(options), now)

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Type is "<table>.<type>"; the id is derived from table, record id and the body's digest."""
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Supabase database webhook payload")
        table, change = _text(payload.get("table")), payload.get("type")
        if table is None:
            raise MalformedPayload("the payload has no string 'table'")
        if not isinstance(change, str) or not change.strip():
            raise MalformedPayload("the payload has no string 'type' (INSERT, UPDATE or DELETE)")
        record_id = None
        for name in ("record", "old_record"):
            record = payload.get(name)
            if isinstance(record, dict) and (record_id := _text(record.get("id"))):
                break
        parts = [table[:63]]
        if record_id and len(record_id) <= 64:
            parts.append(record_id)
        parts.append(hashlib.sha256(request.body).hexdigest())
        return EventInfo(event_id=":".join(parts), event_type=f"{table}.{change.strip()}")

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
        """The token header, as the trigger sends it; id and type derive from the body."""
        token = _token_options(options)
        prefix = token["scheme_prefix"]
        if prefix.strip().isalpha() and not prefix.endswith(" "):
            prefix = prefix.strip() + " "
        return {token["header"]: f"{prefix}{secret}"}
