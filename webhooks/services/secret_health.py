"""Stored secrets that could not be decrypted: counted by where it happened, for operators.

A secret that no key of a process's FIELD_ENCRYPTION_KEYS decrypts makes that process answer 503
(ingest, pages, the API) or put a delivery back unsent: nothing is lost, but nothing works for it
either, and during a rolling deploy of a new key it is expected for a minute. What tells the two
apart is whether it lasts, so each failure is noted twice:

- in this process, for /readyz ("degraded" while this process failed within
  HEALTH_SECRET_UNREADABLE_SECONDS): a process whose keys are wrong says so itself;
- in the cache (Redis), shared by every process: a count per place and reason, which /metrics
  exposes as a counter, and the last failure, which the processing health (admin, /metrics,
  ``processing_health`` command) reports while it is recent.

Nothing here holds a secret or a token: only the place, the reason (fields.UNKNOWN_KEY or
fields.MALFORMED), the time the token says it was made, and which process failed. Never raises:
it runs where a request or a delivery is already failing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache

from webhooks.fields import UNREADABLE_REASONS, Unreadable

logger = logging.getLogger(__name__)

# The places a secret is decrypted at (fields.decrypting_for); "other" for the rest (background
# deletions, alerts, shell sessions).
PLACES = ("ingest", "delivery", "api", "idempotency", "dashboard", "admin", "rotation", "other")

PROCESS_STARTED_AT = time.time()
PROCESS_NAME = f"{socket.gethostname()}:{os.getpid()}"

COUNT_KEY = "health:secret_unreadable:{place}:{reason}"
LAST_KEY = "health:secret_unreadable_last"
# The shared "last failure" is written at most this often per process and place: a burst of
# failing ingest requests costs one write a second, not one each.
LAST_WRITE_EVERY_SECONDS = 1.0

_lock = threading.Lock()
_counts: Counter = Counter()  # (place, reason) -> failures in this process
_unshared: Counter = Counter()  # the part of _counts the cache has not taken yet (it was down)
_last: dict | None = None  # this process's last failure, as LAST_KEY holds one
_last_written: dict[str, float] = {}  # place -> monotonic time of its last LAST_KEY write


def note_unreadable(place: str, unreadable: Unreadable) -> None:
    """Count one secret that could not be decrypted at ``place``. Never raises."""
    global _last
    place = place if place in PLACES else "other"
    now = time.time()
    last = {
        "at": now,
        "place": place,
        "reason": unreadable.reason,
        "encrypted_at": unreadable.encrypted_at,
        "process": PROCESS_NAME,
        "explanation": unreadable.explanation(PROCESS_STARTED_AT),
        "undated_explanation": unreadable.explanation(PROCESS_STARTED_AT, dated=False),
    }
    with _lock:
        _counts[place, unreadable.reason] += 1
        _unshared[place, unreadable.reason] += 1
        _last = last
        write_last = time.monotonic() - _last_written.get(place, float("-inf")) >= LAST_WRITE_EVERY_SECONDS
        if write_last:
            _last_written[place] = time.monotonic()
        pending = dict(_unshared)
        _unshared.clear()
    try:
        for (where, reason), count in pending.items():
            _add(COUNT_KEY.format(place=where, reason=reason), count)
            pending[where, reason] = 0
        if write_last:
            cache.set(LAST_KEY, last, timeout=_window_seconds())
    except Exception as exc:  # Redis down: kept here, and added the next time it answers
        logger.debug("could not share a secret decryption failure: %s", exc)
        with _lock:
            _unshared.update({key: count for key, count in pending.items() if count})


def _add(key: str, count: int) -> None:
    try:
        cache.incr(key, count)
    except ValueError:  # not there yet (or expired)
        if not cache.add(key, count, timeout=None):
            cache.incr(key, count)


def _window_seconds() -> float:
    return settings.HEALTH_SECRET_UNREADABLE_SECONDS


@dataclass
class SecretFailures:
    """Failures to decrypt a stored secret: counts by (place, reason), and the last one if recent."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    last: dict | None = None  # see note_unreadable; None when none within the window

    @property
    def recent(self) -> bool:
        return self.last is not None

    def reason_words(self, now: float | None = None, *, public: bool = False) -> str | None:
        """The health check's reason while the last failure is recent: what, where, when, which process.
        ``public`` (/readyz, which anyone may ask): neither the process's host name nor the token's date."""
        if self.last is None:
            return None
        ago = max((now or time.time()) - float(self.last["at"]), 0.0)
        from webhooks.services.platform_health import duration_in_words

        by = "" if public else f", by process {self.last['process']}"
        explanation = self.last["undated_explanation" if public else "explanation"]
        return (
            f"a stored secret could not be decrypted {duration_in_words(ago)} ago (for {self.last['place']}{by}): "
            f"{explanation}. Until the keys are right, ingest for such a source answers 503 (providers retry), "
            "its deliveries wait unsent, and its pages say so (they open, showing it unreadable)"
        )


def this_process() -> SecretFailures:
    """This process's own figures (for /readyz): its last failure, if within the window."""
    with _lock:
        counts, last = dict(_counts), _last
    if last is not None and time.time() - last["at"] > _window_seconds():
        last = None
    return SecretFailures(counts=counts, last=last)


def shared() -> SecretFailures:
    """Every process's figures, from the cache; raises if the cache does not answer."""
    keys = {
        COUNT_KEY.format(place=place, reason=reason): (place, reason)
        for place in PLACES
        for reason in UNREADABLE_REASONS
    }
    found = cache.get_many([*keys, LAST_KEY])
    last = found.get(LAST_KEY)
    if last is not None and time.time() - float(last.get("at", 0)) > _window_seconds():
        last = None
    return SecretFailures(
        counts={keys[key]: int(value) for key, value in found.items() if key in keys},
        last=last,
    )


def forget_this_process() -> None:
    """Tests: start from no failures."""
    global _last
    with _lock:
        _counts.clear()
        _unshared.clear()
        _last_written.clear()
        _last = None
