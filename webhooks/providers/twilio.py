"""Twilio: ``X-Twilio-Signature`` = base64 HMAC-SHA1(Auth Token, full URL + sorted form parameters).

Mirrors ``twilio.request_validator.RequestValidator.validate``:

- form bodies: for each parameter name in sorted order, each of its values sorted and
  de-duplicated, ``name + value`` is appended to the URL (so Twilio signs the parameters,
  not the bytes: re-encodings of the same parameters verify alike);
- JSON bodies: the URL carries ``bodySHA256=<hex SHA-256 of the raw body>``, the signature
  covers the URL alone, and the body hash is checked separately;
- the URL is tried as given and, like the SDK, with the default port added (``:443``/``:80``)
  and with any explicit port removed;
- ``X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256`` (SharedKey signing,
  twilio ≥ 9.13) switches the HMAC to SHA-256.
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
from urllib.parse import parse_qs, parse_qsl, urlencode, urlparse, urlsplit, urlunsplit

from .base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    constant_time_equal,
    counted,
    require_header,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
BODY_HASH_PARAM = "bodySHA256"
_ALGORITHMS = {"HMAC_SHA1": (hashlib.sha1, 20), "HMAC_SHA256": (hashlib.sha256, 32)}
_STATUS = re.compile(r"[A-Za-z0-9_-]{1,64}")


def form_params(body: bytes) -> dict[str, list[str]]:
    """Form parameters of a raw body, every value kept (parse_qsl, keep_blank_values).

    Undecodable bytes become lone surrogates instead of U+FFFD, so two different
    invalid bodies do not collapse to the same parameters.
    """
    text = body.decode("utf-8", "surrogateescape")
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, errors="surrogateescape"):
        params.setdefault(name, []).append(value)
    return params


def _data(url: str, params: Mapping[str, Sequence[str]]) -> bytes:
    """What RequestValidator.compute_signature hashes."""
    parts = [url]
    for name in sorted(params):
        for value in sorted(set(params[name])):
            parts.append(name + value)
    return "".join(parts).encode("utf-8", "surrogatepass")


def _url_variants(url: str) -> list[str]:
    """The URL as given, plus the SDK's with-port and without-port spellings (ValueError if unparsable)."""
    parsed = urlparse(url)
    port = parsed.port  # ValueError for a non-numeric or out-of-range port
    if port:
        with_port = parsed.geturl()
        without_port = parsed._replace(netloc=parsed.netloc.split(":")[0]).geturl()
    else:
        default = 443 if parsed.scheme == "https" else 80
        with_port = parsed._replace(netloc=f"{parsed.netloc}:{default}").geturl()
        without_port = parsed.geturl()
    return list(dict.fromkeys([url, without_port, with_port]))


def _body_hash_param(url: str) -> str | None:
    """The bodySHA256 query parameter of ``url``, if any (the JSON-body variant)."""
    values = parse_qs(urlsplit(url).query).get(BODY_HASH_PARAM)
    return values[0] if values else None


def signed_url(request_url: str, options: Mapping[str, Any]) -> str:
    """The URL Twilio signed: the ``public_url`` option, else the URL the request arrived at.

    For JSON bodies Twilio appends ``bodySHA256=…`` to the URL it calls; when ``public_url`` lacks
    it and the request has it, it is appended to ``public_url`` the same way (ValueError if unparsable).
    """
    configured = options.get("public_url")
    if not isinstance(configured, str) or not configured:
        return request_url
    # Twilio drops HTTP auth credentials (https://user:password@host/…) before signing; kept, they would
    # also be shown to whoever posts an unsigned request, in the refusal's detail.
    configured = _without_credentials(configured)
    body_hash = _body_hash_param(request_url) if request_url else None
    if body_hash is not None and _body_hash_param(configured) is None:
        separator = "&" if urlsplit(configured).query else ("" if configured.endswith("?") else "?")
        return f"{configured}{separator}{urlencode({BODY_HASH_PARAM: body_hash})}"
    return configured


def _without_credentials(url: str) -> str:
    """``url`` without the ``user:password@`` of its host (ValueError if unparsable)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def form_encode(fixture: bytes) -> bytes:
    """A JSON object of parameters (how our fixtures store them) as the form body Twilio would POST."""
    payload = json.loads(fixture)
    return urlencode([(str(k), str(v)) for k, v in payload.items()]).encode()


class TwilioProvider(Provider):
    """Twilio Programmable Messaging / Voice webhooks and status callbacks."""

    kind = "twilio"
    edited_body_formats = ("json", "form")  # its parameters are form-encoded
    label = "Twilio"
    secret_help = (
        "Twilio Console → Account → API keys & tokens → Live credentials → Auth Token (add the secondary token as a "
        "previous secret while promoting it). For SharedKey-signed webhooks, the SharedKey secret."
    )
    secret_generated_by_us = False
    setup_steps = (
        "Copy the Auth Token (Twilio Console → Account → API keys & tokens → Live credentials) into this source.",
        "Incoming messages: Phone Numbers → Manage → Active numbers → your number → Messaging Configuration → "
        "A message comes in: Webhook, the ingest URL, HTTP POST.",
        "Delivery status: give the ingest URL as StatusCallback when you send a message through the API, or as "
        "the Delivery Status Callback of your Messaging Service (Messaging → Services → your service → Integration).",
        "Twilio signs the exact URL it calls. If it calls a proxy, tunnel or any other URL that forwards here, "
        "enter that URL as Public URL (Edit); a refused request shows which URL Hookline checked.",
        "Twilio's parameters reach your destinations form-encoded, as Twilio sent them: the standardwebhooks "
        "package's verify() parses JSON after checking the signature, so call it with json_parse=False.",
    )
    options = (
        ProviderOption(
            name="public_url",
            label="Public URL",
            help_text=(
                "The exact URL configured in Twilio (Twilio signs it, query string included). Leave empty when it is "
                "this source's ingest URL as Hookline shows it (optionally with a query string); set it when Twilio "
                "calls a proxy or tunnel that forwards here, or any other spelling of the URL."
            ),
            default="",
        ),
    )
    docs_verifies = (
        "X-Twilio-Signature: base64 HMAC-SHA1 keyed with the Auth Token over the full URL Twilio called followed by "
        "the form parameters (names sorted; each name's values sorted and de-duplicated; name+value, no separators), "
        "parsed from the raw body. The URL is the `public_url` option (plus the bodySHA256 Twilio appends for JSON "
        "bodies), or, when empty, the URL the request arrived at (PUBLIC_BASE_URL + path + query); like Twilio's SDK it is also tried with :443/:80 added and with an explicit "
        "port removed. JSON bodies: the URL carries bodySHA256 (hex SHA-256 of the raw body, checked), and the "
        "signature covers the URL alone. X-Twilio-Webhooks-Signature-Settings algorithm=HMAC_SHA256 (SharedKey) "
        "switches to HMAC-SHA256. Twilio signs the parameters, not the bytes, and has no timestamp: no replay window. "
        "Hookline accepts webhooks by POST only (set the webhook method to HTTP POST)."
    )
    event_id_from = "Sid and a digest of the signed parameters"
    docs_event_id = (
        'derived from exactly what Twilio signed: "<Sid>:<hex SHA-256 of the signed parameter string>" (names '
        "sorted, each name's values sorted and de-duplicated, name+value with no separators; preceded by "
        '"?<query>" when the signed URL has a query string; the Sid is the first '
        'CallSid, MessageSid, SmsMessageSid or SmsSid found in that string), or "sha256:<hex>" of it without '
        "one. Every body that verifies under one signature (re-encoded, repeated values, parameters split "
        "differently or moved into the query string) gets the same id, so a replayed signature is a duplicate; searching events for the Sid alone finds them all. JSON bodies with bodySHA256 (the "
        "signature binds their bytes): CloudEvents' `id` (first event of a batch) [UNCONFIRMED], other objects "
        '"<MessageSid or CallSid>:<hex SHA-256 of the body>". The I-Twilio-Idempotency-Token header is not used: '
        "it is not signed."
    )
    docs_event_type = (
        "message.<MessageStatus or SmsStatus> (e.g. message.delivered, message.received), call.<CallStatus> "
        "(e.g. call.completed), message / call without a status, else webhook; CloudEvents bodies: the event `type`."
    )

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = super().clean_options(raw)
        url = (cleaned["public_url"] or "").strip()
        if url:
            try:
                parts = urlsplit(url)
                _url_variants(url)
            except ValueError:
                raise InvalidOptions("option 'public_url' is not a URL") from None
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise InvalidOptions("option 'public_url' must be a full http(s) URL, as configured in Twilio")
            # Twilio signs the URL without them (signed_url drops them too): a password kept here would
            # only be shown, to members and read-only API keys, on the source's page and in the audit log.
            url = _without_credentials(url)
        cleaned["public_url"] = url
        return cleaned

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Any secret, any of the URL spellings; for JSON bodies the bodySHA256 must match too."""
        value = require_header(request, SIGNATURE_HEADER)
        algorithm_name = _algorithm(request)
        if algorithm_name not in _ALGORITHMS:
            raise VerificationError(
                "bad_format", f"{SETTINGS_HEADER} names an unsupported algorithm (HMAC_SHA1 and HMAC_SHA256 are known)"
            )
        algorithm, size = _ALGORITHMS[algorithm_name]
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} header is not base64") from None
        if len(candidate) != size:
            raise VerificationError(
                "bad_format", f"the {SIGNATURE_HEADER} header does not hold a {algorithm_name} signature ({size} bytes)"
            )
        try:
            url = signed_url(request.url, options)
            variants = _url_variants(url)
            body_hash = _body_hash_param(url)
        except ValueError:
            raise VerificationError("bad_format", "the request URL cannot be parsed (check public_url)") from None

        params = {} if body_hash is not None else form_params(request.body)
        expected = [
            hmac.new(secret.encode("utf-8"), _data(variant, params), algorithm).digest()
            for secret in secrets
            if secret
            for variant in variants
        ]
        if not any(constant_time_equal(e, candidate) for e in expected):
            tried = len([s for s in secrets if s])
            if options.get("public_url"):
                advice = (
                    f"using the source's Public URL ({url[:300]!r}); check the Auth Token, that Public URL is "
                    "exactly the URL configured in Twilio (scheme, host, path and query), and that the body is unchanged"
                )
            else:  # behind a proxy the URL Twilio called differs: show the one that was tried
                advice = (
                    f"using the ingest URL as Hookline sees it ({url[:300]!r}); check the Auth Token and that Twilio "
                    "calls exactly this URL. If Twilio calls a proxy, tunnel or any other URL that forwards here, "
                    "enter that URL as the source's Public URL (public_url)"
                )
            raise VerificationError(
                "no_matching_secret", f"the signature does not match ({counted(tried, 'secret')} tried) {advice}"
            )
        if body_hash is not None:
            actual = hashlib.sha256(request.body).hexdigest()
            if not constant_time_equal(actual, body_hash.strip().lower().encode("utf-8", "surrogatepass")):
                raise VerificationError(
                    "no_matching_secret", f"the body does not match the {BODY_HASH_PARAM} that Twilio signed in the URL"
                )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type from what Twilio signed (see docs_event_id).

        The I-Twilio-Idempotency-Token header is not signed: preferring it let a replay with a new token
        be stored as a new event, so the id comes from the signed parameters or CloudEvent instead.
        """
        payload = _json(request.body)
        body_hash_signed = _signs_body_hash(request.url, options)
        if body_hash_signed and isinstance(payload, list | dict) and _cloud_event(payload) is not None:
            event_id, event_type = _cloud_event(payload)  # type: ignore[misc]
            return EventInfo(event_id=event_id, event_type=event_type)
        if isinstance(payload, dict):
            params = {
                str(k): [str(v)]
                for k, v in payload.items()
                if isinstance(v, str | int | float) and not isinstance(v, bool)
            }
        elif payload is not None:
            raise MalformedPayload("the JSON body is neither an object of parameters nor CloudEvents")
        else:
            params = form_params(request.body)
        if not params:
            raise MalformedPayload("the body has no Twilio parameters")
        event_type = _event_type(params)
        if body_hash_signed:  # the signature binds these exact bytes, so reading them is safe
            sid, digest = _first(params, "MessageSid", "SmsSid", "SmsMessageSid", "CallSid"), _sha256(request.body)
            return EventInfo(event_id=f"{sid[:100]}:{digest}" if sid else f"sha256:{digest}", event_type=event_type)
        # The signature covers form_params(body) joined without separators, not the bytes or the split
        # into parameters: the id must be a function of that string alone (see docs_event_id). The URL's
        # query string is joined to it the same way, so it takes part: parameters moved into it are not new.
        signed = _signed_query(request.url, options) + _data("", form_params(request.body))
        return EventInfo(event_id=_signed_id(signed), event_type=event_type)

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
        """X-Twilio-Signature over the URL (public_url, else ``url``) and the body's form parameters.

        If that URL carries bodySHA256, only the URL is signed (JSON variant; the caller put the hash there).
        With ``event_id`` the I-Twilio-Idempotency-Token header carries it.
        """
        target = signed_url(url, options)
        params = {} if _body_hash_param(target) is not None else form_params(body)
        signature = hmac.new(secret.encode("utf-8"), _data(target, params), hashlib.sha1).digest()
        headers = {SIGNATURE_HEADER: base64.b64encode(signature).decode()}
        if event_id:
            headers[IDEMPOTENCY_HEADER] = event_id
        return headers


def _algorithm(request: InboundRequest) -> str:
    """As twilio.request_validator.get_signature_algorithm: HMAC_SHA1 unless the settings header names one."""
    for part in (request.header(SETTINGS_HEADER) or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def _json(body: bytes) -> Any:
    stripped = body.lstrip()
    if not stripped.startswith((b"{", b"[")):
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _cloud_event(payload: list[Any] | dict[str, Any]) -> tuple[str, str] | None:
    """(id, type) of a CloudEvent, or of the first one of a batch."""
    event = payload[0] if isinstance(payload, list) and payload else payload
    if not isinstance(event, dict) or "specversion" not in event:
        return None
    event_id, event_type = event.get("id"), event.get("type")
    if isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type:
        return event_id, event_type
    return None


def _first(params: Mapping[str, Sequence[str]], *names: str) -> str | None:
    for name in names:
        values = params.get(name)
        if values and values[0]:
            return values[0]
    return None


_SIGNED_SID = re.compile(r"(?:CallSid|MessageSid|SmsMessageSid|SmsSid)([A-Z]{2}[0-9a-fA-F]{32})")


def _signs_body_hash(request_url: str, options: Mapping[str, Any]) -> bool:
    """Whether verify() checked the body against a signed bodySHA256 (so the bytes themselves are bound)."""
    try:
        return _body_hash_param(signed_url(request_url, options)) is not None
    except ValueError:
        return False


def _signed_query(request_url: str, options: Mapping[str, Any]) -> bytes:
    """``?<query>`` of the URL verify() checked, as signed; empty without a query string."""
    try:
        query = urlsplit(signed_url(request_url, options)).query
    except ValueError:
        return b""
    return f"?{query}".encode("utf-8", "surrogatepass") if query else b""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signed_id(signed: bytes) -> str:
    """``<Sid>:<hex SHA-256>`` of a signed string, the Sid read from that string, else ``sha256:<hex>``."""
    digest = _sha256(signed)
    match = _SIGNED_SID.search(signed.decode("utf-8", "replace"))
    return f"{match.group(1)}:{digest}" if match else f"sha256:{digest}"


def _event_type(params: Mapping[str, Sequence[str]]) -> str:
    """message.<status>, call.<status>, message / call without a status, else webhook."""
    if _first(params, "MessageSid", "SmsSid", "SmsMessageSid"):
        kind, status = "message", _first(params, "MessageStatus", "SmsStatus")
    elif _first(params, "CallSid"):
        kind, status = "call", _first(params, "CallStatus")
    else:
        return "webhook"
    status = status.lower() if status and _STATUS.fullmatch(status) else None
    return f"{kind}.{status}" if status else kind
