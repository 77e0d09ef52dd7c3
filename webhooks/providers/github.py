"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>``.

Only when that header is absent is the legacy ``X-Hub-Signature: sha1=<hex>`` accepted
(GitHub sends both whenever a secret is set, so the SHA-1 path is for old proxies only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from .base import (
    EventInfo,
    InboundRequest,
    Provider,
    VerificationError,
    constant_time_equal,
    counted,
)

SHA256_HEADER = "X-Hub-Signature-256"
SHA1_HEADER = "X-Hub-Signature"
EVENT_HEADER = "X-GitHub-Event"
UNKNOWN_EVENT = "unknown"  # the event kind of a request that came without X-GitHub-Event
DELIVERY_HEADER = "X-GitHub-Delivery"
# Every header GitHub's documentation names with "GitHub" in it (docs.github.com, "Webhook events and
# payloads", Delivery headers), Enterprise Server's included.
HEADER_NAMES = (
    EVENT_HEADER,
    DELIVERY_HEADER,
    "X-GitHub-Hook-ID",
    "X-GitHub-Hook-Installation-Target-Type",
    "X-GitHub-Hook-Installation-Target-ID",
    "X-GitHub-Enterprise-Version",
    "X-GitHub-Enterprise-Host",
)
_SCHEMES = {SHA256_HEADER: ("sha256", hashlib.sha256, 64), SHA1_HEADER: ("sha1", hashlib.sha1, 40)}
_HEX = re.compile(r"[0-9a-fA-F]+")


def _digest(secret: str, body: bytes, algorithm: Any) -> str:
    return hmac.new(secret.encode("utf-8"), body, algorithm).hexdigest()


def _payload(body: bytes) -> Any:
    """The JSON payload, whether sent as application/json or as form field ``payload``."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested JSON
        pass
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=False)
        return json.loads(form["payload"][0])
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, IndexError):
        return None


class GitHubProvider(Provider):
    """Repository, organization and GitHub App webhooks."""

    kind = "github"
    edited_body_formats = ("json", "form")  # its "application/x-www-form-urlencoded" content type: payload=<JSON>
    label = "GitHub"
    secret_help = (
        "Repository or organization Settings → Webhooks → your webhook → Secret "
        "(or your GitHub App's settings → Webhook secret). You choose it; Hookline can generate one to paste there. "
        "Set Content type to application/json: a form-encoded (application/x-www-form-urlencoded, payload=…) body "
        "is accepted too, but it is forwarded as it is, and receivers that parse the body as JSON cannot read it."
    )
    secret_generated_by_us = True
    header_names = HEADER_NAMES
    docs_verifies = (
        "X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>; the legacy X-Hub-Signature "
        "(sha1=) is used only when the SHA-256 header is absent. There is no timestamp."
    )
    event_id_from = "X-GitHub-Delivery header"
    docs_event_id = (
        "X-GitHub-Delivery header (the same GUID when a delivery is redelivered; GitHub resends the recorded "
        "payload). Not signed: a body equal to a stored event's is its duplicate whatever the header says"
    )
    # The delivery GUID is not signed and no time is: only the body tells a replay from a new event.
    # A redelivery sends the recorded request again (same GUID, same body), and GitHub's payloads name
    # the object and time they are about, so two events do not share a body (two pings of one hook
    # can: they carry nothing else, and merging them loses nothing).
    dedupes_on_signed_content = True
    docs_event_type = (
        'X-GitHub-Event header, plus ".<action>" when the payload has an action (e.g. pull_request.opened); '
        '"unknown.<action>" when the header is missing'
    )

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if any secret's HMAC equals the signature in the strongest header present."""
        header = SHA256_HEADER
        value = request.header(SHA256_HEADER)
        if value is None or not value.strip():
            header = SHA1_HEADER
            value = request.header(SHA1_HEADER)
        if value is None or not value.strip():
            raise VerificationError(
                "missing_signature",
                f"the {SHA256_HEADER} header is missing; set a secret on the GitHub webhook",
            )
        scheme, algorithm, length = _SCHEMES[header]
        given_scheme, sep, signature = value.strip().partition("=")
        if not sep or given_scheme.strip().lower() != scheme:
            raise VerificationError("bad_format", f"the {header} header must look like {scheme}=<hex digest>")
        signature = signature.strip()
        if len(signature) != length or not _HEX.fullmatch(signature):
            raise VerificationError(
                "bad_format", f"the {header} header must carry a {length}-character hex {scheme} digest"
            )
        candidate = signature.lower().encode()
        if not any(
            constant_time_equal(_digest(secret, request.body, algorithm).encode(), candidate)
            for secret in secrets
            if secret
        ):
            raise VerificationError(
                "no_matching_secret",
                f"the {header} signature does not match the webhook secret ({counted(len(secrets), 'secret')} tried); "
                "check the secret and that the raw body is unchanged",
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type come from headers; the payload only adds the action."""
        event = (request.header(EVENT_HEADER) or "").strip()
        delivery = (request.header(DELIVERY_HEADER) or "").strip() or None
        payload = _payload(request.body)
        action = payload.get("action") if isinstance(payload, dict) else None
        if isinstance(action, str) and action:
            # Without the header an action alone ("opened") would pass for a kind of event; GitHub
            # always sends it, so its absence is stated rather than guessed.
            event_type = f"{event or UNKNOWN_EVENT}.{action}"
        else:
            event_type = event
        return EventInfo(event_id=delivery, event_type=event_type)

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
        """Both signature headers, as GitHub sends them, plus the event and delivery headers when given.

        Headers not given are left out so a fixture's recorded headers are not overwritten.
        """
        headers = {
            SHA256_HEADER: "sha256=" + _digest(secret, body, hashlib.sha256),
            SHA1_HEADER: "sha1=" + _digest(secret, body, hashlib.sha1),
        }
        if event_type:
            # Our types are "<event>.<action>"; the header carries only the event name.
            headers[EVENT_HEADER] = event_type.split(".", 1)[0]
        if event_id:
            headers[DELIVERY_HEADER] = event_id
        return headers
