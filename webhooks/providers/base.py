"""The small interface every provider scheme implements.

Providers are pure: raw bytes, headers, secrets and options in, a verdict out.
They import nothing from Django or from the rest of Hookline, so the same code
verifies ingest requests and signs test requests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from webhooks.services.text import echoable_names


class VerificationError(Exception):
    """The request is not proven to come from the provider.

    ``code`` is machine-readable, ``detail`` helps the tenant fix their setup.
    Neither ever contains a secret or an expected signature.
    """

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """A count and its noun in the right number, for the reasons people read: "1 secret",
    "2 secrets" (not "1 secret(s)"). ``plural`` for a noun that does not take an s."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def signatures_do_not_match(count: int, kind: str) -> str:
    """ "the v1 signature does not match", "none of the 2 v1 signatures matches": the start of a
    reason, followed by what they were checked against."""
    if count == 1:
        return f"the {kind} signature does not match"
    return f"none of the {count} {kind} signatures matches"


def words_list(names: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# The longest secret a provider gives is SendGrid's verification key in PEM, under 200 characters;
# tenant-chosen ones (GitHub, Generic HMAC, a shared token) are some dozens. Anything past this is a
# paste gone wrong (a whole file, a log), which would otherwise be encrypted, stored and keyed into
# every check. Destination secrets, whsec_ and base64, have the same bound.
MAX_SECRET_CHARS = 1024


def secret_too_long(secret: str) -> str | None:
    """Why a secret is refused for its length, or None: the secret itself is never quoted."""
    if len(secret) <= MAX_SECRET_CHARS:
        return None
    return (
        f"the secret is {len(secret):,} characters long; at most {MAX_SECRET_CHARS:,} are accepted "
        "(providers' secrets are far shorter: check what was pasted)"
    )


def headers_missing(names: Sequence[str]) -> str:
    """ "the X header is missing", "the X and Y headers are missing"."""
    if len(names) == 1:
        return f"the {names[0]} header is missing"
    return f"the {words_list(names)} headers are missing"


class MalformedPayload(Exception):
    """The request is authentic but its body cannot be understood (answered 400)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidOptions(Exception):
    """Source options or secret that the provider cannot work with."""


@dataclass(frozen=True)
class InboundRequest:
    """An incoming request as the provider sent it."""

    body: bytes
    headers: Mapping[str, str]  # keys lower-cased
    method: str = "POST"
    url: str = ""  # the public URL the provider called, query string included
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON, or MalformedPayload."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MalformedPayload(f"body is not valid JSON ({exc.__class__.__name__})") from None


@dataclass(frozen=True)
class EventInfo:
    """What Hookline records about an authentic request."""

    event_id: str | None  # the provider's idempotency key; None when the provider has none
    event_type: str


@dataclass(frozen=True)
class HandshakeResponse:
    """A reply the provider requires instead of the normal acknowledgement."""

    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class ProviderOption:
    """One setting a tenant configures on a source of this provider."""

    name: str
    label: str
    help_text: str = ""
    required: bool = False
    default: Any = None
    kind: str = "str"  # str | int | bool | choice
    choices: tuple[str, ...] = ()
    min_value: int | None = None  # for kind "int"

    def clean(self, raw: Any) -> Any:
        if raw is None or raw == "":
            if self.required:
                raise InvalidOptions(f"option '{self.name}' is required")
            return self.default
        if self.kind == "int":
            try:
                number = int(raw)
            except (TypeError, ValueError):
                raise InvalidOptions(f"option '{self.name}' must be an integer") from None
            if self.min_value is not None and number < self.min_value:
                raise InvalidOptions(f"option '{self.name}' must be {self.min_value} or more")
            return number
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise InvalidOptions(f"option '{self.name}' must be true or false")
        text = str(raw)
        if self.kind == "choice" and text not in self.choices:
            raise InvalidOptions(f"option '{self.name}' must be one of: {', '.join(self.choices)}")
        return text


class Provider:
    """One signature scheme. Subclasses set the class attributes and override the hooks."""

    kind: ClassVar[str]
    label: ClassVar[str]
    # Where the tenant finds the secret in the provider's console; shown by forms and docs.
    secret_help: ClassVar[str] = ""
    # True when the tenant chooses the secret (so Hookline may generate one for them).
    secret_generated_by_us: ClassVar[bool] = False
    # False for schemes verified with public certificates only (Apple, Google): no secret is stored.
    uses_secret: ClassVar[bool] = True
    options: ClassVar[tuple[ProviderOption, ...]] = ()
    # Shown in docs/providers.md and the source forms.
    docs_verifies: ClassVar[str] = ""
    # Where the signature's signed time is, for schemes whose signed_time() reads one; empty for the rest.
    docs_signed_time: ClassVar[str] = ""
    # What bounds a resent capture, for schemes without docs_signed_time whose own check bounds it
    # (a short-lived token); docs/providers.md says the general limit when empty.
    docs_replay: ClassVar[str] = ""
    # Where the provider's event id comes from, in a few words: the event page labels the id with it,
    # "Provider event id (X-GitHub-Delivery header)". docs_event_id says it in full.
    event_id_from: ClassVar[str] = ""
    docs_event_id: ClassVar[str] = ""
    docs_event_type: ClassVar[str] = ""
    # True for schemes whose event id comes from a header the signature does not cover (GitHub's
    # X-GitHub-Delivery…): anyone holding one genuine request could send it again under a fresh id,
    # and de-duplication by id alone would store and deliver it again. The ingest service then also
    # takes a request whose signed content (signed_content_digest) equals a stored event's of the
    # source for a duplicate of that event. Only where the provider never sends two distinct events
    # with byte-identical signed content; see docs/providers.md for each.
    dedupes_on_signed_content: ClassVar[bool] = False
    # For schemes that do so only under some options (counts_replays_by_signed_content): when, in a
    # few words after the label ("Shopify with its `merge_identical_bodies` option"), for the docs.
    docs_signed_content_when: ClassVar[str] = ""
    # Where a JSON sample keeps the provider's event id, so the test sender can give each send a
    # new one (keys and list indexes from the top of the payload).
    sample_event_id_path: ClassVar[tuple[str | int, ...]] = ("id",)
    # What a payload typed into the test sender may be: "json", "form" (name=value&…, as the
    # provider also posts) or "any" (schemes that verify any bytes).
    edited_body_formats: ClassVar[tuple[str, ...]] = ("json",)
    # Schemes signed with the provider's own private key: why Hookline cannot sign a test request,
    # and what the tenant can use instead (the test sender shows it).
    cannot_sign_reason: ClassVar[str] = ""
    # The provider's own connection steps, in order: where the ingest URL and the secret go in its
    # console and which comes first (Slack checks the URL the moment it is pasted). Shown on the
    # source form and page and in docs/providers.md; without them those keep a general sentence.
    setup_steps: ClassVar[tuple[str, ...]] = ()
    # Header names as the provider's documentation spells them, where that is not the capitalised
    # words a WSGI server leaves us ("X-GitHub-Delivery", which arrives as HTTP_X_GITHUB_DELIVERY and
    # Django names "X-Github-Delivery"). Stored, shown and forwarded with this spelling.
    header_names: ClassVar[tuple[str, ...]] = ()

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and normalise options; unknown names are refused."""
        if not isinstance(raw, Mapping):  # a JSON list or number typed into the admin's field
            raise InvalidOptions("options must be an object of option names and values, such as {}")
        known = {option.name: option for option in self.options}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            noun = "option" if len(unknown) == 1 else "options"
            # Names as sent, of any length and number: each is quoted cut and escaped, the first few only.
            raise InvalidOptions(f"unknown {noun} for {self.kind}: {echoable_names(unknown)}")
        return {name: option.clean(raw.get(name)) for name, option in known.items()}

    def clean_secret(self, secret: str) -> str:
        """Check a secret's shape before it is stored."""
        if not secret or not secret.strip():
            raise InvalidOptions("a signing secret is required")
        refusal = secret_too_long(secret.strip())
        if refusal:
            raise InvalidOptions(refusal)
        return secret.strip()

    def secret_header_names(self, options: Mapping[str, Any]) -> set[str]:
        """Headers whose value is the secret itself; they are never stored or forwarded."""
        return set()

    def sender_requirement(self, options: Mapping[str, Any]) -> str:
        """What each request must carry under these options, for schemes the tenant configures the
        sender of (a header name, a prefix): the source page and the secret's page show it, since a
        sender set up from a general example ("Authorization: Bearer …") is otherwise refused.
        Empty for providers whose own console decides what is sent."""
        return ""

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Raise VerificationError unless the request is signed by one of ``secrets``."""
        raise NotImplementedError

    def verify_matching_secret(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> int | None:
        """verify(), also telling which secret signed the request: its index in ``secrets``, or None.

        The verdict, and a refusal's reason, are verify()'s with every secret, exactly as without
        this method: a secret tried alone can take another path through a scheme than the secrets
        together (GitLab's auto mode holds a signed request to its whsec_ secret, whatever its
        X-Gitlab-Token says), and a refused request costs one verify(), not one per secret (PayPal's
        fetches a certificate, from a budget of fetches its own requests need). Only a request
        accepted during a rotation (``secrets`` is [current, previous]) is verified again with each
        secret alone, current first, through verify()'s constant-time comparisons and under
        options_signed_by_a_secret(): the first to verify it signed it. None when neither does alone
        (a request signed otherwise, as by PayPal's simulator).
        """
        self.verify(request, secrets, options, now)
        if len(secrets) < 2:
            return 0
        alone = self.options_signed_by_a_secret(options)
        for index, secret in enumerate(secrets):
            try:
                self.verify(request, [secret], alone, now)
            except VerificationError:
                continue
            return index
        return None

    def options_signed_by_a_secret(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """``options`` without what accepts a request signed by none of the secrets (see verify_matching_secret)."""
        return options

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Event id and type of an authentic request (MalformedPayload if unreadable)."""
        raise NotImplementedError

    def signed_content_digest(self, request: InboundRequest, options: Mapping[str, Any]) -> str | None:
        """Hex SHA-256 of what the signature covers, for schemes that de-duplicate on it
        (``dedupes_on_signed_content``), else None.

        The raw body by default: the schemes concerned sign the body alone. Of the content, not of
        the signature, so that a request signed during a secret rotation with the other secret is
        still the same content. Meaningful only for a request that verify() accepted."""
        if not self.dedupes_on_signed_content:
            return None
        return hashlib.sha256(request.body).hexdigest()

    def counts_replays_by_signed_content(self, options: Mapping[str, Any]) -> bool:
        """Whether a source with ``options`` may count a request as a stored event's duplicate by its
        signed content (signed_content_digest) rather than by its id: that request's own id is then
        not kept, and the dashboard says so where a search for it finds nothing. The class's flag by
        default; schemes that do it only under some options say which (docs_signed_content_when)."""
        return self.dedupes_on_signed_content

    def replay_nonce(self, request: InboundRequest, options: Mapping[str, Any]) -> str | None:
        """A signed value that the provider never sends twice with different bodies (a nonce), or None;
        the ingest service refuses a nonce seen before with a different body.

        For schemes whose signature does not cover the whole body (Mailgun, PayPal's CRC-32), so that a
        signature seen once cannot be attached to a forged body. Meaningful only for a request that
        verify() accepted; malformed input gives None, never an exception."""
        return None

    def nonce_signed_at(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        """The signed time (Unix seconds) that goes with replay_nonce(), or None when unreadable.

        The ingest service remembers a nonce only for so long, so it refuses older signatures
        (whatever the source's own tolerance) rather than forget a nonce while it still verifies."""
        return None

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        """The time (Unix seconds) the signature of a verified request covers, or None when it covers none.

        The ingest service refuses a signed time older than the organization's retention: past it the
        stored event may be purged, and a captured request sent again would be taken for a new event.
        Meaningful only for a request that verify() accepted; malformed input gives None, never an
        exception. Schemes whose nonce carries the signed time report it by default."""
        return self.nonce_signed_at(request, options)

    def handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """A verified request that is a provider handshake gets this reply instead."""
        return None

    def acknowledgement(self, request: InboundRequest) -> HandshakeResponse | None:
        """The answer to a stored request, where the provider reads the answer's body and Hookline's
        JSON would mean something else to it (Slack shows a slash command's answer to its user);
        None for Hookline's usual {"id": …, "duplicate": …}. The event id then travels in headers."""
        return None

    def unsigned_handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """A challenge the provider sends without a signature (X's CRC GET, Microsoft Graph's
        validationToken); answered before verification and never stored. Only for challenges
        whose answer proves knowledge of the secret or reveals nothing."""
        return None

    def with_sample_event_id(self, payload: Any, fresh_id: str) -> Any:
        """The decoded sample with a new event id where this provider keeps it.

        Providers whose id is derived from a hash of the body get a ``hookline_sample_id`` field
        instead, which changes that hash just the same.
        """
        *parents, last = self.sample_event_id_path
        target = payload
        for key in parents:
            target = _child(target, key)
        current = _child(target, last)
        if isinstance(current, bool) or not isinstance(current, str | int):
            if isinstance(payload, dict):
                payload["hookline_sample_id"] = fresh_id
            return payload
        if isinstance(current, int):
            target[last] = int(fresh_id[:15], 16)
        else:
            prefix = current.split("_", 1)[0] + "_" if "_" in current else ""
            target[last] = prefix + fresh_id
        return payload

    def prepare_body(self, body: bytes, secret: str, options: Mapping[str, Any], now: float) -> bytes:
        """A sample body as the provider would send it now (for schemes that sign inside the body)."""
        return body

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
        """Headers the provider would send with ``body`` (used by the test sender)."""
        raise NotImplementedError(self.cannot_sign_reason or f"Hookline cannot sign {self.label} requests")


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    """Compare two signatures or tokens without leaking where they differ."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def header_carries_secret(value: str, secret: str) -> bool:
    """Whether a header's value is ``secret`` verbatim (a token scheme), compared in constant time.

    Senders write a token's UTF-8 bytes, and WSGI servers hand header values over decoded as latin-1
    (PEP 3333): a non-ASCII token arrives as other text, whose latin-1 encoding gives those bytes back.
    The value as text is compared too (the test client passes text; ASCII tokens are the same either
    way). Either comparison needs the secret's own characters, so neither accepts what the other refuses
    for want of the secret.
    """
    expected = secret.encode("utf-8", "surrogatepass")
    as_text = hmac.compare_digest(value.encode("utf-8", "surrogatepass"), expected)
    try:
        as_sent = hmac.compare_digest(value.encode("latin-1"), expected)
    except UnicodeEncodeError:  # characters past U+00FF: not from a WSGI server
        as_sent = False
    return as_text or as_sent


def tolerance_seconds(options: Mapping[str, Any], default: int) -> int:
    """The source's ``tolerance`` option in whole seconds (0 turns the check off); ``default`` when unset."""
    value = options.get("tolerance")
    if value is None or value == "":
        return default
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return default


_THOUSANDTH_OF = {"seconds": "milliseconds", "milliseconds": "microseconds"}


def check_timestamp_age(
    timestamp: float, now: float, tolerance: int, what: str = "timestamp", unit: str = "seconds"
) -> None:
    """Refuse a signed time further than ``tolerance`` seconds from now, in either direction (0: no check).

    ``timestamp`` is in seconds already; ``unit`` is the one the sender must use, named when the
    sent value is a time near now in units 1000 times smaller (a sender of our own making, such as
    a generic HMAC one, giving milliseconds): "check the sender's clock" would send them the wrong way.
    """
    if not tolerance:
        return
    age = now - timestamp
    if age > tolerance:
        raise VerificationError("timestamp_out_of_tolerance", f"{what} is {int(age)} s old; tolerance is {tolerance} s")
    if -age > tolerance:
        if abs(now - timestamp / 1000) <= max(tolerance, 86400):
            cause = f"it is in {_THOUSANDTH_OF.get(unit, 'a unit 1000 times smaller')}: send it in {unit}"
        else:
            cause = "check the sender's clock"
        raise VerificationError(
            "timestamp_out_of_tolerance",
            f"{what} is {int(-age)} s in the future; tolerance is {tolerance} s ({cause})",
        )


def header_unix_time(request: InboundRequest, name: str) -> float | None:
    """A header's Unix time in whole seconds, or None when it is missing or not one (for signed_time())."""
    value = (request.header(name) or "").strip()
    return float(value) if value.isascii() and value.isdigit() and len(value) <= 15 else None


def require_header(request: InboundRequest, name: str) -> str:
    value = request.header(name)
    if value is None or value.strip() == "":
        raise VerificationError("missing_signature", f"the {name} header is missing")
    return value.strip()


def json_field(payload: Any, *path: str) -> Any:
    """payload[path[0]][path[1]]…, or None when any step is missing."""
    current = payload
    for key in path:
        if not isinstance(current, dict):
            return None
        current = current.get(key)
    return current


def _child(container: Any, key: str | int) -> Any:
    """container[key] for JSON dicts and lists, None when it is not there."""
    if isinstance(key, int):
        return container[key] if isinstance(container, list) and -len(container) <= key < len(container) else None
    return container.get(key) if isinstance(container, dict) else None
