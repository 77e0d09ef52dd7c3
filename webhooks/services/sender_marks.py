"""Telling Hookline's own test sends apart from the provider's webhooks.

The test sender marks its requests with TEST_EVENT_HEADER, which is forwarded so that a
destination can tell a test apart. That header alone proves nothing: anyone who can sign for a
source could add it. What Hookline leaves out because of it (the monthly usage, which secret the
provider signs with) therefore also needs TEST_MARK_HEADER: when it was made, and an HMAC under
SECRET_KEY of that time, the source and the body, which only this deployment can make. Bound to
the source and to MARK_VALID_SECONDS, a mark copied from a test cannot keep other requests out of
the usage. The mark is not forwarded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from django.conf import settings
from django.db.models import QuerySet
from django.utils.crypto import constant_time_compare, salted_hmac

TEST_EVENT_HEADER = "Hookline-Test-Event"
TEST_MARK_HEADER = "Hookline-Test-Mark"
# A test is received within seconds of being made; the rest is room for clocks and a slow answer.
MARK_VALID_SECONDS = 300
_MARK_SALT = "hookline.test-event-mark"


def sender_mark_headers(body: bytes, *, source_id: int, now: float | None = None) -> dict[str, str]:
    """The headers that mark ``body``, exactly as it is sent to the source, as a Hookline test."""
    made_at = int(time.time() if now is None else now)
    return {
        TEST_EVENT_HEADER: "true",
        TEST_MARK_HEADER: f"{made_at}.{_mark(body, source_id, made_at, settings.SECRET_KEY)}",
    }


def is_hookline_test_event(headers: Mapping[str, str], body: bytes, *, source_id: int, received_at: float) -> bool:
    """Whether this deployment's test sender sent ``body`` with ``headers`` to the source, at most
    MARK_VALID_SECONDS from ``received_at`` (a Unix time).

    The fallbacks keep a test sent just before a SECRET_KEY change recognised after it."""
    mark = next((str(value) for name, value in headers.items() if name.lower() == TEST_MARK_HEADER.lower()), "")
    made_at, _, digest = mark.partition(".")
    # ASCII digits, and few: str.isdigit() also takes "²", and int() refuses it and strings of over
    # 4300 digits. The mark is any sender's header, read while a batch of every tenant's events is
    # processed: an exception there would stop all processing, not refuse one mark.
    if not (made_at.isascii() and made_at.isdigit() and len(made_at) <= 15) or not digest:
        return False
    if abs(received_at - int(made_at)) > MARK_VALID_SECONDS:
        return False
    keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    # Every key is compared, so the time taken does not tell which one matched.
    matches = [constant_time_compare(digest, _mark(body, source_id, int(made_at), key)) for key in keys]
    return any(matches)


def hookline_test_events(events: QuerySet, *fields: str) -> list[dict]:
    """The rows of ``events`` (a WebhookEvent query) that Hookline's test sender sent, as dicts of
    ``fields``. Only the rows carrying a mark are read, bodies included; the mark is checked, not trusted."""
    needed = ["headers", "body", "source_id", "received_at"]
    rows = events.filter(headers__has_key=TEST_MARK_HEADER).values(*needed, *(f for f in fields if f not in needed))
    return [
        row
        for row in rows
        if is_hookline_test_event(
            row["headers"], row["body"], source_id=row["source_id"], received_at=row["received_at"].timestamp()
        )
    ]


def _mark(body: bytes, source_id: int, made_at: int, key: str) -> str:
    signed = f"{source_id}.{made_at}.".encode() + bytes(body)
    return salted_hmac(_MARK_SALT, signed, secret=key, algorithm="sha256").hexdigest()
