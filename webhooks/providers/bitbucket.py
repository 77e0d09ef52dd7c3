"""Bitbucket Cloud and Data Center: ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``.

Unlike GitHub's header of the same name, Bitbucket's carries SHA-256. There is no timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    Provider,
    VerificationError,
    constant_time_equal,
    counted,
    require_header,
)

HEADER = "X-Hub-Signature"
EVENT_HEADER = "X-Event-Key"
CLOUD_ID_HEADER = "X-Request-UUID"
DATA_CENTER_ID_HEADER = "X-Request-Id"
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _digest(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8", "surrogatepass"), body, hashlib.sha256).hexdigest()


class BitbucketProvider(Provider):
    """Repository and workspace webhooks from Bitbucket Cloud, and Bitbucket Data Center/Server."""

    kind = "bitbucket"
    label = "Bitbucket"
    secret_help = (
        "Bitbucket Cloud: Repository settings → Webhooks → your webhook → Secret (type one, let Bitbucket "
        "generate it, or paste one Hookline generates). Data Center: Repository settings → Webhooks → your "
        "webhook → Secret."
    )
    secret_generated_by_us = True
    docs_verifies = (
        "X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body> keyed with the webhook secret (SHA-256, "
        "unlike GitHub's header of that name). No timestamp. A webhook without a secret sends no signature and "
        "is refused."
    )
    event_id_from = "X-Request-UUID or X-Request-Id header"
    docs_event_id = (
        "X-Request-UUID (Cloud), else X-Request-Id (Data Center), else sha256:<hex of body>. X-Hook-UUID is not "
        "used: it names the webhook, not the delivery, and pairing it with X-Attempt-Number would give each "
        "retry a new id. Whether Cloud keeps X-Request-UUID across retries is unconfirmed. Not signed: a body "
        "equal to a stored event's is its duplicate whatever the headers say"
    )
    # No header is signed and no time: only the body tells a replay from a new event. A retry (after a
    # 5xx or a timeout, or "Resend request" in the request log) sends the same request again, and each
    # event's payload carries its own commits, dates and ids.
    dedupes_on_signed_content = True
    docs_event_type = (
        "Data Center: the body's eventKey (signed), e.g. repo:refs_changed; Cloud, whose bodies have none: the "
        "X-Event-Key header, e.g. repo:push"
    )

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if any secret's HMAC-SHA256 of the raw body equals the header's digest."""
        value = require_header(request, HEADER)
        scheme, sep, signature = value.partition("=")
        signature = signature.strip()
        if not sep or scheme.strip().lower() != "sha256" or not _HEX.fullmatch(signature):
            raise VerificationError("bad_format", f"the {HEADER} header must look like sha256=<64 hex digits>")
        candidate = signature.lower().encode()
        if not any(constant_time_equal(_digest(s, request.body).encode(), candidate) for s in secrets if s):
            raise VerificationError(
                "no_matching_secret",
                f"the {HEADER} signature does not match the webhook secret ({counted(len(secrets), 'secret')} tried); "
                "check the secret and that the raw body is unchanged",
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id from headers; type from the signed body's eventKey (Data Center), else the X-Event-Key header."""
        event_type = _signed_event_key(request.body) or (request.header(EVENT_HEADER) or "").strip()
        event_id = (request.header(CLOUD_ID_HEADER) or "").strip() or (
            request.header(DATA_CENTER_ID_HEADER) or ""
        ).strip()
        return EventInfo(
            event_id=event_id or "sha256:" + hashlib.sha256(request.body).hexdigest(), event_type=event_type
        )

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
        """The signature, plus X-Event-Key and X-Request-UUID when given (a fixture's recorded headers stay)."""
        headers = {HEADER: "sha256=" + _digest(secret, body)}
        if event_type:
            headers[EVENT_HEADER] = event_type
        if event_id:
            headers[CLOUD_ID_HEADER] = event_id
        return headers


def _signed_event_key(body: bytes) -> str | None:
    """Data Center's ``eventKey`` (inside the signed body, unlike X-Event-Key), or None."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    key = payload.get("eventKey") if isinstance(payload, dict) else None
    return key.strip() if isinstance(key, str) and key.strip() else None
