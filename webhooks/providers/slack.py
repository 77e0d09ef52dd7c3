"""Slack: ``X-Slack-Signature: v0=<hex>``, HMAC-SHA256 over ``"v0:<X-Slack-Request-Timestamp>:<raw body>"``.

One scheme covers the Events API (JSON envelopes, with the signed ``url_verification``
handshake) and slash commands / interactivity (form-encoded bodies, verified as received).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from .base import (
    EventInfo,
    HandshakeResponse,
    InboundRequest,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    check_timestamp_age,
    constant_time_equal,
    counted,
    header_unix_time,
    require_header,
    tolerance_seconds,
)

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
DEFAULT_TOLERANCE = 300
_TIMESTAMP = re.compile(r"\d{1,15}")
_SIGNATURE = re.compile(r"v0=([0-9a-fA-F]{64})")


def _signature(secret: str, timestamp: str, body: bytes) -> str:
    """``v0=<hex>`` for a body, as slack_sdk's SignatureVerifier.generate_signature computes it."""
    message = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _body_sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _form(body: bytes) -> dict[str, str] | None:
    """The form fields of a form-encoded body (last value wins), or None if the body is JSON or not text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.lstrip().startswith(("{", "[")):
        return None
    fields = dict(parse_qsl(text, keep_blank_values=True))
    return fields or None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


class SlackProvider(Provider):
    """Slack apps: Events API, slash commands, interactivity and shortcuts."""

    kind = "slack"
    edited_body_formats = ("json", "form")  # slash commands and interactivity are form-encoded
    label = "Slack"
    secret_help = (
        "api.slack.com/apps → your app → Basic Information → App Credentials → Signing Secret "
        "(not the deprecated Verification Token, not a bot token)."
    )
    secret_generated_by_us = False
    # Shown in order on the source form and page. Slack checks the Request URL the moment it is pasted,
    # with a signed url_verification request, so the secret has to be in Hookline before the URL is in Slack.
    setup_steps = (
        "Copy the Signing Secret (api.slack.com/apps → your app → Basic Information → App Credentials) into this "
        "source first: Slack checks the Request URL as soon as you paste it, with a signed url_verification "
        "request that Hookline can answer only once it has the secret.",
        "Event Subscriptions → Enable Events → Request URL: paste the ingest URL; Slack should show Verified. "
        "Subscribe to the bot events you need, then Save Changes.",
        "Slash commands (each command's Request URL) and Interactivity & Shortcuts (Request URL) may use the same "
        "ingest URL; the event type tells them apart (slash_command, block_actions, view_submission…). Hookline "
        "answers them with an empty 200, so Slack shows the user nothing and closes a submitted modal; reply "
        "from your destination through the payload's response_url. Their "
        "bodies reach your destinations form-encoded, as Slack sent them: the standardwebhooks package's "
        "verify() parses JSON after checking the signature, so call it with json_parse=False for these.",
        "If Slack says the URL did not answer the challenge, this source's rejected requests say why; fix it and "
        "press Retry next to the Request URL in Slack.",
    )
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text=(
                "Reject requests whose X-Slack-Request-Timestamp is further than this from now, either way; "
                "0 turns the check off. Slack's SDKs use 300."
            ),
            default=DEFAULT_TOLERANCE,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the X-Slack-Request-Timestamp header"
    docs_verifies = (
        'X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<X-Slack-Request-Timestamp>:<raw body>"> keyed with the '
        "app's Signing Secret; the timestamp must be within `tolerance` seconds of now (past or future). "
        "Form-encoded bodies (slash commands, interactivity) are verified exactly as received. "
        'The Events API url_verification handshake is verified like any request, then answered 200 with {"challenge": …}.'
    )
    sample_event_id_path = ("event_id",)
    event_id_from = "event_id or trigger_id in the body"
    docs_event_id = (
        "Events API: the envelope's `event_id` (Ev…, the same on Slack's retries). Interactivity and slash commands "
        "(Slack does not retry them): the `trigger_id`; otherwise, and for envelopes without event_id, "
        '"sha256:<hex of the raw body>".'
    )
    docs_event_type = (
        "Events API: `event.type` (e.g. app_mention, message); other envelopes: their `type` "
        "(e.g. app_rate_limited). Interactivity: the `type` of the JSON in the form's `payload` field "
        "(e.g. block_actions, view_submission, shortcut); slash commands: slash_command."
    )

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Check the timestamp window first (as slack_sdk does), then the v0 signature against any secret."""
        signature = require_header(request, SIGNATURE_HEADER)
        timestamp = require_header(request, TIMESTAMP_HEADER)
        if not _TIMESTAMP.fullmatch(timestamp):
            raise VerificationError("bad_format", f"the {TIMESTAMP_HEADER} header is not a Unix time in seconds")
        match = _SIGNATURE.fullmatch(signature)
        if match is None:
            raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} header is not v0=<64 hex digits>")
        check_timestamp_age(int(timestamp), now, tolerance_seconds(options, DEFAULT_TOLERANCE))
        if _matching_secret(request, secrets, timestamp, "v0=" + match.group(1).lower()) is None:
            raise VerificationError(
                "no_matching_secret",
                f"the v0 signature does not match the Signing Secret ({counted(len([s for s in secrets if s]), 'secret')} "
                "tried); check the secret and that the raw body is unchanged",
            )

    def acknowledgement(self, request: InboundRequest) -> HandshakeResponse | None:
        """An empty 200 for slash commands and interactivity: Slack posts a non-empty answer to the
        user who typed the command, and reads a modal submission's answer as instructions for the
        modal. The Events API ignores the body, so it keeps Hookline's JSON."""
        form = _form(request.body)
        if form is not None and ("command" in form or "payload" in form):
            return HandshakeResponse(200, b"", content_type="text/plain")
        return None

    def handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """Events API url_verification: echo the challenge (the request was verified before this is called)."""
        payload = _json_object(request.body)
        if payload is None or payload.get("type") != "url_verification":
            return None
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            return HandshakeResponse(
                400,
                json.dumps({"error": "malformed_payload", "detail": "url_verification without a challenge"}).encode(),
            )
        return HandshakeResponse(200, json.dumps({"challenge": challenge}).encode(), "application/json")

    def unsigned_handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """Slack's periodic ``ssl_check=1`` POST to slash-command URLs (Bolt answers it before verifying):
        a bare 200 that reveals nothing; it is never stored."""
        if request.method != "POST":
            return None
        form = _form(request.body)
        if form is None or form.get("ssl_check") != "1" or "command" in form or "payload" in form:
            return None
        return HandshakeResponse(200, b"", "text/plain")

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        return header_unix_time(request, TIMESTAMP_HEADER)

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Events API envelopes carry event_id; form bodies (commands, interactivity) get a derived id."""
        payload = _json_object(request.body)
        if payload is not None:
            return _describe_envelope(payload, request.body)
        form = _form(request.body)
        if form is None:
            raise MalformedPayload("the body is neither a Slack event envelope (JSON) nor a form-encoded request")
        return _describe_form(form, request.body)

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
        """The two headers Slack sends; id and type live in the body, so they are ignored."""
        timestamp = str(int(now))
        return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: _signature(secret, timestamp, body)}


def _matching_secret(request: InboundRequest, secrets: Sequence[str], timestamp: str, candidate: str) -> str | None:
    found = None
    for secret in secrets:
        if secret and constant_time_equal(_signature(secret, timestamp, request.body), candidate) and found is None:
            found = secret
    return found


def _describe_envelope(payload: dict[str, Any], body: bytes) -> EventInfo:
    envelope_type = payload.get("type")
    if not isinstance(envelope_type, str) or not envelope_type:
        raise MalformedPayload("the Slack envelope has no string 'type'")
    event_type = envelope_type
    if envelope_type == "event_callback":
        event = payload.get("event")
        inner = event.get("type") if isinstance(event, dict) else None
        if not isinstance(inner, str) or not inner:
            raise MalformedPayload("the event_callback envelope has no string event.type")
        event_type = inner
    event_id = payload.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        event_id = _body_sha256(body)
    return EventInfo(event_id=event_id, event_type=event_type)


def _describe_form(form: dict[str, str], body: bytes) -> EventInfo:
    if "payload" in form:
        try:
            payload = json.loads(form["payload"])
        except (ValueError, RecursionError):
            raise MalformedPayload("the form's 'payload' field is not JSON") from None
        event_type = payload.get("type") if isinstance(payload, dict) else None
        if not isinstance(event_type, str) or not event_type:
            raise MalformedPayload("the interactivity payload has no string 'type'")
        trigger_id = payload.get("trigger_id")
        event_id = trigger_id if isinstance(trigger_id, str) and trigger_id else _body_sha256(body)
        return EventInfo(event_id=event_id, event_type=event_type)
    if form.get("command"):
        event_id = form.get("trigger_id") or _body_sha256(body)
        return EventInfo(event_id=event_id, event_type="slash_command")
    raise MalformedPayload("the form has neither a 'payload' (interactivity) nor a 'command' (slash command) field")
