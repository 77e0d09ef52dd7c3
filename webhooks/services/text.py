"""Making arbitrary text storable in PostgreSQL text and jsonb columns, and bodies readable."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

REPLACEMENT = "\ufffd"


def storable_text(value: str) -> str:
    """``value`` with what PostgreSQL refuses replaced by U+FFFD.

    PostgreSQL text and jsonb cannot hold NUL, and psycopg cannot encode a lone
    surrogate; both reach us from JSON bodies (``"\\u0000"``, ``"\\ud800"``) and
    from receivers' responses. Refusing the value would lose the webhook or the
    record of an attempt, so it is kept with the offending characters replaced.
    """
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join(REPLACEMENT if "\ud800" <= char <= "\udfff" else char for char in value)
    return value


# What a log line quotes of a sender's text (a provider's event id or type): enough to grep for, and
# never long enough to flood a log line.
LOGGED_TEXT_MAX_CHARS = 100


def loggable_text(value: str | None) -> str:
    """``value`` quoted for a log line, its control characters escaped: an event id or type comes
    from the sender, and one holding a line break would otherwise write a line of its own choosing
    into the log (a refused request's claimed id is unverified). Cut to LOGGED_TEXT_MAX_CHARS."""
    if value is None:
        return "-"
    if len(value) > LOGGED_TEXT_MAX_CHARS:
        value = value[: LOGGED_TEXT_MAX_CHARS - 1] + "…"
    return repr(value)


# What an error message quotes of a name the caller gave (an option, a field, a header name, a
# pattern): enough to recognise it, never the whole of a key of any length sent back.
ECHOED_TEXT_MAX_CHARS = 60


def echoable_text(value: str, limit: int = ECHOED_TEXT_MAX_CHARS) -> str:
    """``value`` as an error message may quote it back: control characters (line breaks, escape
    sequences, U+2028) escaped as repr() writes them, so that it reads as one line in a terminal,
    a log or a page, and at most ``limit`` characters as written, an ellipsis ending one cut short
    (never inside an escape)."""
    shown, length = [], 0
    for position, char in enumerate(value):
        written = char if char.isprintable() else repr(char)[1:-1]
        last = position == len(value) - 1
        if length + len(written) > (limit if last else limit - 1):
            shown.append("…")
            break
        shown.append(written)
        length += len(written)
    return "".join(shown)


# What a terminal acts on rather than shows: C0 controls (escape sequences start with ESC, a carriage
# return rewrites the line), DEL, C1 controls (U+009B is a one-character CSI) and the line separators
# and bidirectional controls that make text read differently from what it is.
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = re.compile(r"[\n\r]")


def terminal_text(text: str, *, keep_lines: bool = True) -> str:
    """``text`` as an operator command prints it: each character a terminal would act on written
    as repr() escapes it (ESC as \\x1b). A sender's event type, a receiver's answer or a body
    could otherwise set the terminal's title or clipboard, clear the screen or overwrite a line.
    Line breaks and tabs stay with ``keep_lines``; without it a value keeps to its one line."""
    pattern = _TERMINAL_CONTROLS if keep_lines else _NOT_ON_ONE_LINE
    return pattern.sub(lambda match: repr(match.group())[1:-1], text)


_NOT_ON_ONE_LINE = re.compile(f"{_TERMINAL_CONTROLS.pattern}|{_LINE_BREAKS.pattern}")


def visible_text(text: str) -> str:
    """A sender's short value (an event type, a provider's event id) as a page shows it: each control
    character written as terminal_text writes it, on one line. Escaped rather than isolated (<bdi>):
    inside an isolate a right-to-left override still reverses what follows it, so "\u202egpj.exe" would
    still read "exe.jpg"; escaped, the page shows which characters are there. Only the display: the
    stored value, what a filter or the API matches, stays exact."""
    return terminal_text(text, keep_lines=False)


# How many of the names a caller gave that a message lists: a request naming thousands (a body of
# a few hundred KB) must not get back an answer several times its size.
ECHOED_NAMES_MAX = 10


def echoable_names(names: Sequence) -> str:
    """``names`` as a message lists them: each cut and escaped as echoable_text does, between
    quotation marks (an empty name, or one of spaces, showed as nothing at all), the first
    ECHOED_NAMES_MAX only, then how many more there are."""
    shown = ", ".join(f"“{echoable_text(str(name))}”" for name in names[:ECHOED_NAMES_MAX])
    more = len(names) - ECHOED_NAMES_MAX
    return f"{shown} and {more} more" if more > 0 else shown


# A form-encoded body escapes spaces, quotes and angle brackets; its field names are plain.
_NOT_IN_A_FORM_BODY = re.compile(r"[\s<>\"']")
_FIELD_NAME = re.compile(r"[\w.\[\]-]+")


@dataclass(frozen=True)
class ReadableBody:
    raw: str  # the bytes as received, decoded for display
    formatted: str | None  # an easier reading, when the body has a known shape
    shape: str  # what `formatted` is, for its heading


def readable_body(body: bytes) -> ReadableBody:
    """A webhook body for people: JSON indented; a form-encoded body (GitHub's "payload=…", Slack,
    Twilio) as one field per line, a field holding JSON indented in place."""
    raw = bytes(body).decode("utf-8", errors="replace")
    if (indented := _indented_json(raw)) is not None:
        return ReadableBody(raw, indented, "Formatted JSON")
    fields = []
    if "=" in raw and not _NOT_IN_A_FORM_BODY.search(raw):  # XML or prose with "=" is no form
        try:
            fields = parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            pass
    if not all(_FIELD_NAME.fullmatch(name) for name, _ in fields):
        fields = []
    if not fields:
        return ReadableBody(raw, None, "")
    lines = []
    for name, value in fields:
        indented = _indented_json(value)
        lines.append(f"{name} = {indented}" if indented is not None else f"{name} = {value}")
    return ReadableBody(raw, "\n".join(lines), "Form fields, decoded")


def _indented_json(text: str) -> str | None:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's parser goes
        return None
    if not isinstance(parsed, dict | list):
        return None  # a bare number or string reads as well as it is
    return json.dumps(parsed, indent=2, ensure_ascii=False, sort_keys=False)


def duration_words(seconds: float) -> str:
    """A span of time for people, to the two largest units: "45 s", "1 min 30 s", "6 h", "1 day 6 h"."""
    remaining = round(seconds)
    parts = []
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min"), (1, "s")):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}")
    return " ".join(parts[:2]) or "0 s"
