"""A destination's custom headers: credentials for a receiver behind an API gateway or basic auth.

Their values are secrets: stored encrypted (Destination.custom_headers), sent with every attempt,
and afterwards shown only as a hint of their last characters, never logged, audited by name only,
and masked in the headers recorded with each attempt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from webhooks.models import Destination

from .secrets import secret_hint
from .text import echoable_text

MAX_CUSTOM_HEADERS = 10
MAX_HEADER_NAME_LENGTH = 100
# Room for a long bearer token (a JWT with many claims), still far below what servers accept in all.
MAX_HEADER_VALUE_LENGTH = 4096

# What an attempt's recorded headers hold in place of a custom header's value, for everyone.
CUSTOM_HEADER_MASKED = "[custom header: hidden]"

# RFC 9110 5.1 / RFC 7230 3.2.6: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A value Hookline sends exactly as given: visible ASCII, spaces and tabs (no CR, LF, NUL or other
# control characters, which would split or cut the header; nothing outside ASCII, whose bytes on
# the wire receivers read in different ways).
_VALUE = re.compile(r"[\t\x20-\x7e]*")

# Headers Hookline sets itself or that describe the connection rather than the event: a value from
# the tenant would break the delivery (a wrong length or host) or its verification.
PLATFORM_HEADERS = {
    "host": "Hookline sets it from the URL",
    "content-length": "Hookline sets it from the body",
    "content-type": "Hookline sends the provider's own content type",
    "content-encoding": "the body is sent as the provider sent it",
    "transfer-encoding": "it belongs to the connection, not the event",
    "connection": "it belongs to the connection, not the event",
    "keep-alive": "it belongs to the connection, not the event",
    "proxy-connection": "it belongs to the connection, not the event",
    "proxy-authorization": "it belongs to the connection, not the event",
    "proxy-authenticate": "it belongs to the connection, not the event",
    "te": "it belongs to the connection, not the event",
    "trailer": "it belongs to the connection, not the event",
    "upgrade": "it belongs to the connection, not the event",
    "expect": "it belongs to the connection, not the event",
    "user-agent": "Hookline identifies itself with it",
}
# Standard Webhooks' headers stay Hookline's (receivers verify them); svix-* are read before them by
# Svix's libraries, so one set here would be checked in their place.
PLATFORM_HEADER_PREFIXES = ("webhook-", "svix-")


class CustomHeaderError(ValueError):
    """Custom headers that cannot be saved as asked (the message names the header, never a value)."""


def _shown_name(name: str) -> str:
    return echoable_text(name)


def check_custom_header_name(name: str) -> str:
    """A header name as given by a person, stripped and checked (CustomHeaderError)."""
    if not isinstance(name, str) or not name.strip():
        raise CustomHeaderError("a custom header needs a name")
    name = name.strip()
    if len(name) > MAX_HEADER_NAME_LENGTH:
        raise CustomHeaderError(
            f"the header name “{_shown_name(name)}” is longer than {MAX_HEADER_NAME_LENGTH} characters"
        )
    if not _TOKEN.fullmatch(name):
        raise CustomHeaderError(
            f"“{_shown_name(name)}” is not a header name: letters, digits and !#$%&'*+-.^_`|~ only, no spaces or colons"
        )
    lowered = name.lower()
    if lowered in PLATFORM_HEADERS:
        raise CustomHeaderError(f"the header “{name}” cannot be set: {PLATFORM_HEADERS[lowered]}")
    if lowered.startswith(PLATFORM_HEADER_PREFIXES):
        raise CustomHeaderError(
            f"the header “{name}” cannot be set: webhook-* and svix-* headers are Hookline's signature "
            "headers, which receivers verify"
        )
    if lowered.startswith("hookline-"):
        # Hookline-Test-Event tells receivers a test from a real event; the rest are Hookline's too.
        raise CustomHeaderError(f"the header “{name}” cannot be set: Hookline-* headers are Hookline's own")
    return name


def check_custom_header_value(name: str, value: str) -> str:
    """A header value, stripped of surrounding spaces (as HTTP reads it) and checked; the message
    names the header, never the value."""
    if not isinstance(value, str):
        raise CustomHeaderError(f"the value of “{name}” must be text")
    value = value.strip(" \t")
    if not value:
        raise CustomHeaderError(f"the header “{name}” needs a value")
    if len(value) > MAX_HEADER_VALUE_LENGTH:
        raise CustomHeaderError(f"the value of “{name}” is longer than {MAX_HEADER_VALUE_LENGTH} characters")
    if any(character in value for character in "\r\n\x00"):
        raise CustomHeaderError(
            f"the value of “{name}” holds a line break or a NUL character, which a header cannot carry"
        )
    if not _VALUE.fullmatch(value):
        raise CustomHeaderError(
            f"the value of “{name}” holds a control character or one outside ASCII: printable ASCII, spaces "
            "and tabs only"
        )
    return value


def check_custom_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A whole set of custom headers, checked (CustomHeaderError) and cleaned. Every entry point
    (dashboard, REST API, admin, create_destination) saves through here."""
    cleaned: dict[str, str] = {}
    seen: dict[str, str] = {}
    for given_name, given_value in headers.items():
        name = check_custom_header_name(given_name)
        if name.lower() in seen:
            raise CustomHeaderError(
                f"the header “{name}” is given twice (as “{seen[name.lower()]}” too): names are case-insensitive"
            )
        seen[name.lower()] = name
        cleaned[name] = check_custom_header_value(name, given_value)
    if len(cleaned) > MAX_CUSTOM_HEADERS:
        raise CustomHeaderError(f"a destination has at most {MAX_CUSTOM_HEADERS} custom headers")
    return cleaned


def merge_custom_headers(current: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``current`` with ``changes`` applied, checked: a value adds the header or replaces the value
    of the one of that name (in any case; the new spelling is kept), None removes it, or does
    nothing if there is none, as in a JSON merge patch (a request sent again, or a tick for a header
    someone else removed meanwhile, then succeeds). Headers not named keep their values, so nobody
    has to type them again."""
    merged = dict(current)
    # The merged names by their lower case: a change finds its header in one look-up, so that a
    # request naming thousands of headers (refused in the end) costs no more than reading them.
    merged_names = {key.lower(): key for key in merged}
    seen: set[str] = set()
    for given_name, value in changes.items():
        name = given_name.strip() if isinstance(given_name, str) else given_name
        if isinstance(name, str) and name.lower() in seen:
            raise CustomHeaderError(f"the header “{_shown_name(name)}” is given twice: names are case-insensitive")
        existing = merged_names.get(name.lower()) if isinstance(name, str) else None
        if value is None:
            if existing is not None:
                del merged[existing], merged_names[existing.lower()]
        else:
            name = check_custom_header_name(name)
            if existing is not None:
                # Replaced where it was, so the order they were added in holds (only a header of
                # ``current`` is replaced: a name given twice is refused above).
                merged = {
                    (name if key == existing else key): (value if key == existing else v) for key, v in merged.items()
                }
            else:
                merged[name] = value
            merged_names[name.lower()] = name
        seen.add(name.lower())
    return check_custom_headers(merged)


def parse_header_lines(text: str) -> dict[str, str]:
    """``Name: value`` lines (a form's text area, a command's --header) as a mapping; CustomHeaderError
    for a line without a colon. Blank lines are skipped."""
    parsed: dict[str, str] = {}
    seen: set[str] = set()  # the names in lower case, each line checked in one look-up
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            # Not quoted back: a line without a name is as likely a pasted token as a mistyped name.
            where = f"line {number}" if len(lines) > 1 else "the header"
            raise CustomHeaderError(f"{where} has no colon: write each header as Name: value")
        name = name.strip()
        if name.lower() in seen:
            raise CustomHeaderError(f"the header “{_shown_name(name)}” is given twice: names are case-insensitive")
        seen.add(name.lower())
        parsed[name] = value
    return parsed


def parse_header_file(text: str) -> dict[str, str]:
    """A header file's ``Name: value`` lines as a mapping, each checked as check_custom_headers does;
    blank lines and lines starting with # are skipped. CustomHeaderError names the line, and the
    header where there is one: never a value, nor a line that has no name."""
    parsed: dict[str, str] = {}
    seen: set[str] = set()  # the names in lower case, each line checked in one look-up
    # Lines end at LF only (CRLF too): a lone CR or another control character inside a value is
    # refused by the value check, not taken as a line break that would cut the value in two.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, value = line.partition(":")
        try:
            if not colon:
                # The whole line may be a pasted value: it is not quoted back.
                raise CustomHeaderError("it has no colon: write each header as Name: value")
            name = check_custom_header_name(name)
            if name.lower() in seen:
                raise CustomHeaderError(f"the header “{name}” is given twice: names are case-insensitive")
            seen.add(name.lower())
            parsed[name] = check_custom_header_value(name, value)
        except CustomHeaderError as exc:
            raise CustomHeaderError(f"line {number}: {exc}") from None
    return parsed


# The hint of a value too short to show any of: a lone "…" read as "(value …)", as if cut off.
SHORT_VALUE_HINT = "hidden"


def custom_header_value_hint(value: str) -> str:
    """The last characters of a value, as for secrets; but none of Basic credentials, whose last
    base64 characters are the end of the password (shown to members and read-only keys), nor of a
    short value, where they would be most of it."""
    # Split at any whitespace, as receivers do that take a tab after the scheme.
    scheme, *credentials = value.split(None, 1)
    if scheme.lower() == "basic" and credentials:
        return f"{scheme} …"
    hint = secret_hint(value)
    return SHORT_VALUE_HINT if hint == "…" else hint


def custom_header_hints(headers: Mapping[str, str]) -> list[dict[str, str]]:
    """What may be shown of them: each name with the hint of its value (its last characters)."""
    return [{"name": name, "hint": custom_header_value_hint(value)} for name, value in headers.items()]


def store_custom_headers(destination: Destination, headers: Mapping[str, str]) -> None:
    """Set (unsaved) the encrypted headers and their hints on ``destination``."""
    destination.custom_headers = json.dumps(list(headers.items())) if headers else ""
    destination.custom_header_hints = custom_header_hints(headers)


def custom_header_changes(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list[str]]:
    """For the audit log: the names added, removed and whose value changed; never a value."""
    before_lower = {name.lower(): value for name, value in before.items()}
    after_lower = {name.lower(): value for name, value in after.items()}
    changes = {
        "added": [name for name in after if name.lower() not in before_lower],
        "removed": [name for name in before if name.lower() not in after_lower],
        "changed": [
            name for name in after if name.lower() in before_lower and before_lower[name.lower()] != after[name]
        ],
    }
    return {kind: names for kind, names in changes.items() if names}


def masked_custom_headers(headers: Mapping[str, str], custom_names: Iterable[str]) -> dict[str, str]:
    """Sent headers as they may be recorded: the values of the destination's custom headers masked."""
    secret = {name.lower() for name in custom_names}
    return {name: (CUSTOM_HEADER_MASKED if name.lower() in secret else value) for name, value in headers.items()}
