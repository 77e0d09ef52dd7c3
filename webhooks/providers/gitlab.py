"""GitLab: ``X-Gitlab-Token`` (the secret token verbatim), or the newer signing token (Standard Webhooks).

The signing token (GitLab MR !230944, feature flag ``webhook_signing_token``) sends ``webhook-id`` (the
Idempotency-Key), ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``"<id>.<timestamp>.<body>"`` keyed with the base64-decoded ``whsec_`` token; that check is delegated to
the Standard Webhooks provider.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    counted,
    header_carries_secret,
    header_unix_time,
    require_header,
    tolerance_seconds,
)
from .standard_webhooks import DEFAULT_TOLERANCE, StandardWebhooksProvider

TOKEN_HEADER = "X-Gitlab-Token"
EVENT_HEADER = "X-Gitlab-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MODES = ("auto", "secret_token", "signing_token")
_STANDARD = StandardWebhooksProvider()


def _mode(options: Mapping[str, Any]) -> str:
    value = options.get("verification")
    return value if value in MODES else "auto"


def _is_signing_token(secret: str) -> bool:
    return secret.strip().startswith("whsec_")


def _signed_mode(request: InboundRequest, options: Mapping[str, Any]) -> bool:
    """Whether verify() checks the signing token. In auto mode it also needs a whsec_ secret, which describe()
    cannot see; without one the token alone authenticates, and webhook-id is as good an id as any header."""
    mode = _mode(options)
    return mode == "signing_token" or (mode == "auto" and bool((request.header("webhook-signature") or "").strip()))


class GitLabProvider(Provider):
    """Project, group and system hooks from GitLab.com, Dedicated and self-managed instances."""

    kind = "gitlab"
    label = "GitLab"
    secret_help = (
        "Project or group → Settings → Webhooks → your webhook: the Secret token you typed there (Hookline can "
        "generate one to paste), or, where your instance offers it, the Signing token (starts with whsec_)."
    )
    secret_generated_by_us = True
    options = (
        ProviderOption(
            name="verification",
            label="Verification",
            help_text=(
                "auto: the signing token when the request carries webhook-signature and a whsec_ secret is "
                "configured, else X-Gitlab-Token. secret_token / signing_token: only that one."
            ),
            default="auto",
            kind="choice",
            choices=MODES,
        ),
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text="Signing token only: reject webhook-timestamp further than this from now; 0 turns it off.",
            default=DEFAULT_TOLERANCE,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the webhook-timestamp header, with the signing token (the secret token signs no time)"
    docs_verifies = (
        "Secret token: X-Gitlab-Token equals the token (constant time; the body is not signed). Signing token "
        "(GitLab's Standard Webhooks variant, behind a feature flag): webhook-signature v1,<base64 HMAC-SHA256> "
        'of "<webhook-id>.<webhook-timestamp>.<raw body>" keyed with the base64-decoded whsec_ token, timestamp '
        "within `tolerance` seconds. Option `verification` picks one or (auto) chooses by the headers present. "
        "X-Gitlab-Token is never stored."
    )
    event_id_from = "Idempotency-Key or webhook-id header"
    docs_event_id = (
        "signing token: the signed webhook-id header (an unsigned Idempotency-Key is ignored); secret token: "
        "Idempotency-Key header (the same on every retry), else webhook-id; else sha256:<hex of body>. "
        "X-Gitlab-Event-UUID is not used: GitLab gives every hook fired while handling one request the same "
        "value (recursion detection), so distinct events would collapse."
    )
    docs_event_type = (
        'payload `object_kind` (system hooks: `event_name`), plus ".<object_attributes.action>" when there is '
        "one (e.g. merge_request.merge, push); the X-Gitlab-Event header (e.g. Push Hook) when the payload has "
        "neither"
    )

    def secret_header_names(self, options: Mapping[str, Any]) -> set[str]:
        return {TOKEN_HEADER}

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Signing token or secret token, as chosen by the option (auto: by the headers present)."""
        mode = _mode(options)
        signed = bool((request.header("webhook-signature") or "").strip())
        signing_secrets = [s for s in secrets if s and _is_signing_token(s)]
        if mode == "signing_token" or (mode == "auto" and signed and signing_secrets):
            self._verify_signed(request, secrets if mode == "signing_token" else signing_secrets, options, now)
            return
        if mode == "auto" and signed and not (request.header(TOKEN_HEADER) or "").strip():
            # Signed with a signing token, none of which is among ``secrets``: a signature that no secret
            # tried matches (ingest answers 503 for it while a previous secret it cannot read still
            # verifies: a rotation from a signing token to a secret token), not an unsigned request.
            raise VerificationError(
                "no_matching_secret",
                f"the request is signed with a signing token (webhook-signature), and none is set "
                f"({counted(len(secrets), 'token')} tried, no whsec_ one); nor does it carry {TOKEN_HEADER}",
            )
        value = require_header(request, TOKEN_HEADER)
        if not any(header_carries_secret(value, s) for s in secrets if s):
            raise VerificationError(
                "no_matching_secret",
                f"the {TOKEN_HEADER} header does not match the webhook's secret token ({counted(len(secrets), 'token')} tried)",
            )

    def _verify_signed(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any], now: float
    ) -> None:
        # Only GitLab's webhook-* headers count: svix-* headers, which the Standard Webhooks provider
        # prefers, are not something GitLab sends.
        signed_only = InboundRequest(
            body=request.body,
            headers={name: value for name, value in request.headers.items() if name in SIGNED_HEADERS},
            method=request.method,
            url=request.url,
            query=request.query,
        )
        _STANDARD.verify(signed_only, secrets, {"tolerance": tolerance_seconds(options, DEFAULT_TOLERANCE)}, now)

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        """webhook-timestamp when the signing token was checked: it is signed with the id and body, so the
        retention bound holds also with ``tolerance`` 0. The secret token signs no time (None). In auto mode
        the header is read whenever webhook-signature is present, as describe() reads webhook-id: a request
        the secret token verified can then only be refused sooner, never accepted for longer."""
        if not _signed_mode(request, options):
            return None
        return header_unix_time(request, "webhook-timestamp")

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Type from the payload (object_kind + action); id from the signed webhook-id, else Idempotency-Key."""
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            payload = None
        header_type = (request.header(EVENT_HEADER) or "").strip()
        if not isinstance(payload, dict) and not header_type:
            raise MalformedPayload("the body is not a GitLab event object and there is no X-Gitlab-Event header")
        event_type = header_type
        if isinstance(payload, dict):
            kind = payload.get("object_kind") or payload.get("event_name")
            if isinstance(kind, str) and kind.strip():
                event_type = kind.strip()
                attributes = payload.get("object_attributes")
                action = attributes.get("action") if isinstance(attributes, dict) else None
                if isinstance(action, str) and action.strip():
                    event_type = f"{event_type}.{action.strip()}"
        signed_id = (request.header("webhook-id") or "").strip()
        if _signed_mode(request, options):
            # webhook-id is covered by the signature; Idempotency-Key is not, so a replay with a new
            # Idempotency-Key must not become a new event.
            event_id = signed_id
        else:
            event_id = (request.header(IDEMPOTENCY_HEADER) or "").strip() or signed_id
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
        """Signing-token headers for a whsec_ secret (or verification=signing_token), else X-Gitlab-Token.

        The id goes into Idempotency-Key (and webhook-id) only when given, so a fixture's recorded headers stay.
        """
        mode = _mode(options)
        if mode == "signing_token" or (mode == "auto" and _is_signing_token(secret)):
            headers = _STANDARD.sign(body, secret, {}, now, event_id=event_id)
            if event_id:
                headers[IDEMPOTENCY_HEADER] = event_id
            return headers
        headers = {TOKEN_HEADER: secret}
        if event_id:
            headers[IDEMPOTENCY_HEADER] = event_id
        return headers
