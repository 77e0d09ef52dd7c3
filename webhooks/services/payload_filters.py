"""Payload filters of a destination: conditions on an event's JSON body, all of which must hold for
the event to be delivered there (on top of the event-type filters of its subscriptions).

A condition is ``{"path": "data.object.livemode", "op": "equals", "value": true}``. The path is
read into the body part by part: a part names an object's key, or, where the value there is a
list, a position in it (``line_items.0.sku``). A backslash makes the next dot, backslash or space
part of a key (``metadata.plan\\.tier``). Values are compared as JSON, types exactly: the string
"1" is not the number 1, nor ``true`` the number 1; ``1`` and ``1.0`` are the same number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from itertools import islice
from typing import Any

from django.db.models import F, Q

from webhooks.models import Subscription, WebhookEvent

from .text import echoable_text

MAX_PAYLOAD_FILTERS = 10
MAX_PATH_CHARS = 500
MAX_PATH_PARTS = 32
MAX_VALUE_CHARS = 1000  # the value written as JSON
MAX_IN_VALUES = 50
OPERATORS = ("equals", "not_equals", "in", "exists", "not_exists")
TAKES_A_VALUE = frozenset({"equals", "not_equals", "in"})
# How the dashboard's lines write each operator (the API's names are taken there too).
OPERATOR_SYMBOLS = {"equals": "==", "not_equals": "!=", "in": "in", "exists": "exists", "not_exists": "not exists"}
# Bodies read at a time when a batch of events is checked: a body may be up to INGEST_MAX_BODY_BYTES.
BODIES_READ_AT_ONCE = 10


class PayloadFilterError(ValueError):
    """A payload filter that cannot be meant; the message names the condition at fault.

    ``problems`` holds one message per condition (or line) at fault, every one of them: a tenant
    told of one bad line at a time fixed it only to be told of the next. The message joins them."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]

    @classmethod
    def of_all(cls, problems: list[str]) -> PayloadFilterError:
        return cls("; ".join(problems), problems)


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


# What payload_document() gives for a body that holds no JSON.
NOT_JSON = _NotJson()
_MISSING = object()


# --- Paths ---------------------------------------------------------------------------------------


@lru_cache(maxsize=2048)
def path_parts(path: str) -> tuple[str, ...]:
    """The keys and positions a path names, in order; PayloadFilterError (without the condition's
    number) for one that cannot be read."""
    if not path.strip():
        raise PayloadFilterError("the path is empty: give one such as data.object.livemode")
    shown = _shown(path)
    if len(path) > MAX_PATH_CHARS:
        raise PayloadFilterError(f"the path “{shown}” is longer than {MAX_PATH_CHARS} characters")
    parts, current, escaped = [], [], False
    for character in path:
        if escaped:
            # Any blank, as the dashboard's lines write a key's tab or no-break space (_path_in_a_line).
            if character not in ".\\" and not character.isspace():
                raise PayloadFilterError(
                    f"the path “{shown}” has “\\{character}”: a backslash only makes the next dot, backslash or "
                    "space part of a key (\\. \\\\ or “\\ ”)"
                )
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    if escaped:
        raise PayloadFilterError(f"the path “{shown}” ends with a lone backslash")
    parts.append("".join(current))
    if "" in parts:
        raise PayloadFilterError(
            f"the path “{shown}” has an empty part (two dots together, or a dot at an end); "
            "a key holding a dot is written with a backslash: plan\\.tier"
        )
    if len(parts) > MAX_PATH_PARTS:
        raise PayloadFilterError(f"the path “{shown}” has more than {MAX_PATH_PARTS} parts")
    _check_storable(path, "the path")
    return tuple(parts)


def path_text(parts: Iterable[str]) -> str:
    """A path as stored and shown by the API: parts joined by dots, a dot or backslash inside a part
    escaped with a backslash."""
    return ".".join(part.replace("\\", "\\\\").replace(".", "\\.") for part in parts)


def _path_in_a_line(path: str) -> str:
    """The stored path as the dashboard's lines write it, where a space would end it."""
    return re.sub(r"\s", lambda space: "\\" + space.group(), path)


# --- Checking ------------------------------------------------------------------------------------


def check_payload_filters(filters: Any) -> list[dict]:
    """Payload filters as the REST API, the dashboard and the admin give them (a list of
    ``{"path", "op", "value"}``), checked and in their stored form; PayloadFilterError naming the
    condition at fault (``condition 2: …``) otherwise."""
    if filters is None:
        return []
    if not isinstance(filters, list):
        raise PayloadFilterError(
            'payload filters are a list of conditions such as {"path": "ref", "op": "equals", "value": "main"}'
        )
    if len(filters) > MAX_PAYLOAD_FILTERS:
        raise PayloadFilterError(f"at most {MAX_PAYLOAD_FILTERS} payload filters ({len(filters)} given)")
    cleaned, problems = [], []
    for number, condition in enumerate(filters, start=1):
        try:
            cleaned.append(_checked_condition(condition))
        except PayloadFilterError as exc:
            problems.append(f"condition {number}: {exc}")
    if problems:
        raise PayloadFilterError.of_all(problems)
    return cleaned


def _checked_condition(condition: Any) -> dict:
    if not isinstance(condition, dict):
        raise PayloadFilterError('a condition is an object such as {"path": "ref", "op": "equals", "value": "main"}')
    unknown = sorted(set(condition) - {"path", "op", "value"})
    if unknown:
        raise PayloadFilterError(f"unknown field “{_shown(str(unknown[0]))}”: a condition has path, op and value")
    if "path" not in condition:
        raise PayloadFilterError("no path: give one such as data.object.livemode")
    path = condition["path"]
    if not isinstance(path, str):
        raise PayloadFilterError("the path must be text, such as data.object.livemode")
    path = path_text(path_parts(path))
    if len(f".{path}.".splitlines()) > 1:
        # The dashboard's box, one condition a line, could not write it back.
        raise PayloadFilterError(f"the path “{_shown(path)}” holds a line break: a key with one cannot be filtered on")
    op = condition.get("op")
    if op not in OPERATORS:
        raise PayloadFilterError(
            f"unknown operator “{_shown(str(op))}” (path “{_shown(path)}”): use {', '.join(OPERATORS)}"
        )
    if op not in TAKES_A_VALUE:
        if "value" in condition:
            raise PayloadFilterError(f"{op} takes no value (path “{_shown(path)}”)")
        return {"path": path, "op": op}
    if "value" not in condition:
        raise PayloadFilterError(f"{op} needs a value (path “{_shown(path)}”)")
    value = condition["value"]
    if not _is_json(value):
        raise PayloadFilterError(f"the value for path “{_shown(path)}” is not JSON")
    written = json.dumps(value, ensure_ascii=False)
    if len(written) > MAX_VALUE_CHARS:
        raise PayloadFilterError(f"the value for path “{_shown(path)}” is longer than {MAX_VALUE_CHARS} characters")
    for text in _texts_in(value):
        _check_storable(text, f"the value for path “{_shown(path)}”")
    if op == "in" and (not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES):
        raise PayloadFilterError(
            f'in needs a list of 1 to {MAX_IN_VALUES} values, such as ["main", "release"] (path “{_shown(path)}”)'
        )
    return {"path": path, "op": op, "value": value}


def _is_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is what JSON can write: no NaN or infinity, text keys, not too deep."""
    if depth > 20:
        return False
    if value is None or isinstance(value, (bool, str, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item, depth + 1) for key, item in value.items())
    return False


def _texts_in(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _texts_in(item)


def _check_storable(text: str, what: str) -> None:
    # PostgreSQL's jsonb holds no NUL, and psycopg cannot send a lone surrogate ("\ud800" in JSON).
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadFilterError(f"{what} holds a lone surrogate (\\ud800…), which cannot be stored") from None
    if "\x00" in text:
        raise PayloadFilterError(f"{what} holds a NUL character, which cannot be stored")


def _shown(text: str, limit: int = 80) -> str:
    return echoable_text(text, limit)


# --- The dashboard's lines -------------------------------------------------------------------------

# A path: characters up to the first space that no backslash escapes.
_LINE = re.compile(r"\s*(?P<path>(?:\\.|[^\s\\])+)\s*(?P<rest>.*)", re.DOTALL)
_OPERATOR = re.compile(
    r"(?P<op>==|!=|not_equals\b|equals\b|in\b|not_exists\b|not\s+exists\b|exists\b)\s*(?P<value>.*)", re.DOTALL
)
_OPERATOR_NAMES = {"==": "equals", "!=": "not_equals", "not exists": "not_exists"}
LINE_SYNTAX = "PATH == VALUE, PATH != VALUE, PATH in [VALUES], PATH exists or PATH not exists"


def parse_payload_filter_line(line: str) -> dict:
    """One condition written as the dashboard and ``create_destination --payload-filter`` take it:
    ``data.object.livemode == true``, ``ref in ["refs/heads/main"]``, ``data.id exists``. Not yet
    checked as a whole (check_payload_filters does that); PayloadFilterError for a line that
    cannot be read."""
    found = _LINE.fullmatch(line.strip())
    if not found:
        raise PayloadFilterError(f"no path: write {LINE_SYNTAX}")
    path, rest = found["path"], found["rest"].strip()
    operator = _OPERATOR.fullmatch(rest)
    # ref=="main": unless an operator follows, as after a key that holds "==" (base64 ends so).
    for symbol in ("==", "!="):
        if symbol in path and not operator:
            raise PayloadFilterError(f"put a space before “{symbol}”: write {LINE_SYNTAX}")
    if not rest:
        raise PayloadFilterError(f"no operator after “{_shown(path)}”: write {LINE_SYNTAX}")
    if not operator:
        raise PayloadFilterError(
            f"unknown operator “{_shown(rest.split()[0], 20)}”: use == (equals), != (not equals), in, exists or "
            "not exists"
        )
    op = _OPERATOR_NAMES.get(re.sub(r"\s+", " ", operator["op"]), operator["op"])
    written = operator["value"].strip()
    if op not in TAKES_A_VALUE:
        if written:
            raise PayloadFilterError(f"{OPERATOR_SYMBOLS[op]} takes no value: “{_shown(written, 40)}” is left over")
        return {"path": path, "op": op}
    if not written:
        raise PayloadFilterError(f"{OPERATOR_SYMBOLS[op]} needs a value after it, written as JSON")
    try:
        value = json.loads(written, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        example = f'"{_shown(written, 40)}"' if '"' not in written else '"main"'
        raise PayloadFilterError(
            f"the value “{_shown(written, 40)}” is not JSON: text goes in double quotes ({example}); "
            "true, false, null and numbers go without"
        ) from None
    return {"path": path, "op": op, "value": value}


def parse_payload_filter_lines(text: str) -> list[dict]:
    """The dashboard's box: one condition per line (blank lines skipped), checked; a refusal names
    every line at fault (``line 2 (…): …``), each one of its ``problems``."""
    return parse_labelled_payload_filter_lines(
        (f"line {number}", line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()
    )


def parse_labelled_payload_filter_lines(lines: Iterable[tuple[str, str]]) -> list[dict]:
    """Conditions each written as a line of the dashboard's box and named by its label (``line 2``,
    ``--payload-filter 2``), checked; a refusal names every one at fault by its label, each one of
    its ``problems`` (``line 2 (…): …``)."""
    conditions, problems, written = [], [], 0
    for label, line in lines:
        written += 1
        if written > MAX_PAYLOAD_FILTERS:
            continue  # refused by their number alone: a pasted file is not read line by line
        try:
            conditions.append(_checked_condition(parse_payload_filter_line(line)))
        except PayloadFilterError as exc:
            problems.append(f"{label} (“{_shown(line.strip(), 60)}”): {exc}")
    if written > MAX_PAYLOAD_FILTERS:
        problems.append(f"at most {MAX_PAYLOAD_FILTERS} payload filters ({written} given)")
    if problems:
        raise PayloadFilterError.of_all(problems)
    return conditions


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def payload_filter_line(condition: dict) -> str:
    """A stored condition as one line of the dashboard's box (parse_payload_filter_line reads it back)."""
    line = f"{_path_in_a_line(condition['path'])} {OPERATOR_SYMBOLS[condition['op']]}"
    if condition["op"] in TAKES_A_VALUE:
        # JSON leaves these three as they are in text, and each would end the line.
        written = json.dumps(condition["value"], ensure_ascii=False)
        line += " " + written.translate({0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"})
    return line


def payload_filter_lines(conditions: list[dict]) -> str:
    return "\n".join(payload_filter_line(condition) for condition in conditions or ())


def payload_filter_words(condition: dict) -> str:
    """A stored condition in words, as the destination's page says it."""
    path, op = condition["path"], condition["op"]
    value = condition.get("value")
    if op == "equals":
        return f"{path} is {json.dumps(value, ensure_ascii=False)}"
    if op == "not_equals":
        return f"{path} is not {json.dumps(value, ensure_ascii=False)} (or is missing)"
    if op == "in":
        return f"{path} is one of {', '.join(json.dumps(item, ensure_ascii=False) for item in value)}"
    if op == "exists":
        return f"{path} is present (null included)"
    return f"{path} is missing"


# --- Matching ------------------------------------------------------------------------------------


def payload_document(body: bytes) -> Any:
    """The JSON an event's body holds, for payload filters: the body itself when it is JSON, else a
    form-encoded body's ``payload`` field when that is JSON (GitHub's form content type, Slack's
    interactions); NOT_JSON otherwise (Slack's commands, Twilio, XML…)."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    payload = _form_payload(bytes(body))
    if payload is None:
        return NOT_JSON
    try:
        return json.loads(payload, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return NOT_JSON


# A form's payload field, found by one scan of the body: splitting a body into all its fields and
# decoding each (parse_qsl) took seconds and a hundred times the body's size in memory for a body of
# a million short fields or "%" signs, in the batch that every tenant's events share.
_PAYLOAD_FIELD = re.compile(rb"(?:\A|&)payload(?:=([^&]*))?(?=&|\Z)")
_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _form_payload(body: bytes) -> str | None:
    """The value of a form body's first ``payload`` field, decoded as a form's (``+`` a space, ``%XX``
    a byte, then read as UTF-8 with U+FFFD for what is not), or None when the body is not UTF-8 or has
    no such field."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    found = _PAYLOAD_FIELD.search(body)
    if found is None:
        return None
    value = (found[1] or b"").replace(b"+", b" ")
    return _PERCENT_ESCAPE.sub(lambda escape: bytes.fromhex(escape[1].decode()), value).decode("utf-8", "replace")


def _value_at(document: Any, parts: tuple[str, ...]) -> Any:
    current = document
    for part in parts:
        if isinstance(current, dict):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(current):
                return _MISSING
            current = current[int(part)]
        else:
            return _MISSING
    return current


def same_json(left: Any, right: Any) -> bool:
    """Equality of two JSON values, types exactly: Python's own has True == 1 and 1 == 1.0; here only
    the numbers compare across int and float."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, float) or isinstance(right, float):
        # As doubles, as the body's number was read: PostgreSQL keeps a condition's 1e23 as the
        # decimal 100000000000000000000000, which Python would find unequal to the double 1e23.
        try:
            return isinstance(left, (int, float)) and isinstance(right, (int, float)) and float(left) == float(right)
        except OverflowError:  # an int past the largest double
            return False
    if isinstance(left, int) and isinstance(right, int):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(same_json(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_json(left[key], right[key]) for key in left)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return left is None and right is None


def condition_holds(condition: dict, document: Any) -> bool:
    """Whether one stored condition holds for a document (never for NOT_JSON)."""
    return _holds(path_parts(condition["path"]), condition, document)


def _holds(parts: tuple[str, ...], condition: dict, document: Any) -> bool:
    if document is NOT_JSON:
        return False
    found = _value_at(document, parts)
    op = condition["op"]
    if op == "exists":
        return found is not _MISSING
    if op == "not_exists":
        return found is _MISSING
    if op == "in":
        return found is not _MISSING and any(same_json(found, item) for item in condition["value"])
    equal = found is not _MISSING and same_json(found, condition["value"])
    return equal if op == "equals" else not equal


def refusals_in_order(
    checks: Iterable[tuple[Any, list[tuple[int, list[dict]]]]], before_reading: Callable[[list], None] | None = None
) -> Iterator[tuple[Any, set[int]]]:
    """For each event of ``checks`` (its id, and the destinations that look at it: each destination's
    id and conditions), in order: its id and the destinations whose conditions refuse it. Each
    event's body is read from the database and parsed once, whatever the number of destinations
    that look at it, and only as far as the caller goes: processing stops where a batch reaches its
    budget of deliveries, and the bodies after it are never parsed (``checks`` is consumed a few
    events at a time too). ``before_reading`` is given the ids of each few events whose bodies are
    about to be read (at most BODIES_READ_AT_ONCE)."""
    # Each destination's paths are read once here, not once per event: path_parts' cache is bounded
    # and shared, and a tenant with more distinct paths than it holds had every path read again for
    # every event (a second an event with a thousand destinations of ten long paths).
    read: dict[int, list[tuple[tuple[str, ...], dict]]] = {}
    checks = iter(checks)
    # A few bodies at a time, each dropped once judged: a batch of large bodies is never all in memory.
    while chunk := list(islice(checks, BODIES_READ_AT_ONCE)):
        event_ids = [event_id for event_id, _ in chunk]
        if before_reading is not None:
            before_reading(event_ids)
        bodies = dict(WebhookEvent.objects.filter(pk__in=event_ids).values_list("pk", "body"))
        for event_id, destinations in chunk:
            refused = set()
            if event_id in bodies:  # an event gone has nothing to judge (the caller holds them locked)
                document = payload_document(bytes(bodies.pop(event_id)))
                for destination_id, conditions in destinations:
                    if destination_id not in read:
                        read[destination_id] = [(path_parts(condition["path"]), condition) for condition in conditions]
                    if not all(_holds(parts, condition, document) for parts, condition in read[destination_id]):
                        refused.add(destination_id)
            yield event_id, refused


def why_not_taken(conditions: list[dict], document: Any) -> str:
    """Why a destination's payload filters refuse a document, for the event's page; "" if they take it."""
    if document is NOT_JSON:
        return "its body is not JSON, nor a form with a JSON payload field"
    for condition in conditions:
        if not condition_holds(condition, document):
            return f"“{payload_filter_line(condition)}” does not hold"
    return ""


# How many of a destination's event-type patterns a line names; the rest are counted.
PATTERNS_NAMED = 5


def destinations_not_taking(event: WebhookEvent) -> list[dict]:
    """The destinations subscribed to a processed event's source that have no delivery of it because
    their filters, as they are now, refuse it, each with why: ``{"destination_id", "name", "filter",
    "reason"}``, ``filter`` being ``"event_types"`` (the subscription's event-type patterns, then
    also given as ``"event_types"``) or ``"payload_filters"``. Without it a tenant read "no
    destination subscribes" of a destination that does, with a filter that leaves the type out.

    Read now, not when the event was processed: a filter changed since then is judged as it is.
    One query over the source's subscriptions (at most one per destination of the organization,
    MAX_DESTINATIONS_PER_ORGANIZATION), none when no subscription has a filter; the body is parsed
    once, only when a destination's payload filters have to be read."""
    if event.status != WebhookEvent.Status.PROCESSED:
        return []
    candidates = Subscription.objects.filter(source_id=event.source_id, destination__is_active=True)
    if event.processed_at is not None:
        # A destination made after the event was processed was never a candidate: naming it as one
        # its filters left out would send a tenant looking for a fault that is not there.
        candidates = candidates.filter(destination__created_at__lte=event.processed_at)
    subscriptions = list(
        candidates.filter(~Q(destination__payload_filters=[]) | ~Q(event_types=[]))
        .exclude(destination__deliveries__event_id=event.pk)
        .annotate(payload_filters=F("destination__payload_filters"), destination_name=F("destination__name"))
        .order_by("destination__name", "destination_id")
    )
    refusals, document = [], None
    for subscription in subscriptions:
        refusal = {"destination_id": subscription.destination_id, "name": subscription.destination_name}
        if not subscription.matches(event.event_type):
            patterns = list(subscription.event_types)
            refusals.append(
                {
                    **refusal,
                    "filter": "event_types",
                    "event_types": patterns,
                    "reason": _type_not_taken(event, patterns),
                }
            )
            continue
        if not subscription.payload_filters:
            continue
        if document is None:
            document = payload_document(bytes(event.body))
        if reason := why_not_taken(subscription.payload_filters, document):
            refusals.append({**refusal, "filter": "payload_filters", "reason": reason})
    return refusals


def _type_not_taken(event: WebhookEvent, patterns: list[str]) -> str:
    named = ", ".join(patterns[:PATTERNS_NAMED])
    if len(patterns) > PATTERNS_NAMED:
        named += f" and {len(patterns) - PATTERNS_NAMED} more"
    taken = f"by its current filters it takes only {named}"
    return f"{taken}, not {event.event_type}" if event.event_type else f"{taken}, and the event has no type"
