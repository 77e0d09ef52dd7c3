"""Telling Hookline's own test sends apart from the provider's webhooks.

The test sender marks its requests with TEST_EVENT_HEADER, which is forwarded so that a
destination can tell a test apart. That header alone proves nothing: anyone who can sign for a
source could add it. What Hookline leaves out because of it (the monthly usage, which secret the
provider signs with) therefore also needs TEST_MARK_HEADER, an HMAC of the body under SECRET_KEY
that only this deployment can make. The mark is not forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac

TEST_EVENT_HEADER = "Hookline-Test-Event"
TEST_MARK_HEADER = "Hookline-Test-Mark"
_MARK_SALT = "hookline.test-event-mark"


def sender_mark_headers(body: bytes) -> dict[str, str]:
    """The headers that mark ``body``, exactly as it is sent, as a Hookline test."""
    return {TEST_EVENT_HEADER: "true", TEST_MARK_HEADER: _mark(body, settings.SECRET_KEY)}


def is_hookline_test_event(headers: Mapping[str, str], body: bytes) -> bool:
    """Whether this deployment's test sender sent ``body`` with ``headers``.

    The fallbacks keep a test sent just before a SECRET_KEY change recognised after it."""
    mark = next((str(value) for name, value in headers.items() if name.lower() == TEST_MARK_HEADER.lower()), None)
    if not mark:
        return False
    keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    # Every key is compared, so the time taken does not tell which one matched.
    matches = [constant_time_compare(mark, _mark(body, key)) for key in keys]
    return any(matches)


def _mark(body: bytes, key: str) -> str:
    return salted_hmac(_MARK_SALT, bytes(body), secret=key, algorithm="sha256").hexdigest()
