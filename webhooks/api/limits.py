"""The REST API's two limits: requests per key (API_RATE_LIMIT) and wrong keys per client address
(API_AUTH_FAILURE_LIMIT).

Both are fixed windows counted with one atomic INCR in the cache, so that concurrent requests never
both take the last free slot. While the cache is unreachable they are counted in this process's
memory instead: each process then counts on its own, so a key or an address gets up to the limit
once per process (N processes × the limit) until the cache answers again. A limit that let
everything through for as long as Redis is down would be no limit; one that refused everything
would take the API (which reads and writes PostgreSQL) down with Redis.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_PERIODS = {"s": 1, "m": 60, "h": 3600}
# How often each process says that it counts on its own: a warning per request would bury the log.
OUTAGE_WARNING_INTERVAL_SECONDS = 60
# The windows' clock, read through this name so that tests can hold a window still.
clock = time.time
# The clock of OUTAGE_WARNING_INTERVAL_SECONDS, likewise (a test's requests may outlast a minute).
warning_clock = time.monotonic


def parse_rate(rate: str) -> tuple[int, int]:
    """ "600/min" → (600, 60)."""
    number, _, period = rate.partition("/")
    return int(number), _PERIODS[period.strip()[:1]]


class LocalWindowCounter:
    """Hits per subject in the current fixed window, in this process's memory.

    Only the current window is kept. Past ``max_subjects`` in one window the subject counted
    longest ago is forgotten, so that a flood of addresses cannot grow the process without bound.
    """

    def __init__(self, max_subjects: int = 10_000):
        self.max_subjects = max_subjects
        self._lock = threading.Lock()
        self._window: tuple[int, int] | None = None
        self._counts: dict[str, int] = {}

    def hit(self, subject: str, *, period: int, window: int) -> int:
        with self._lock:
            if self._window != (period, window):
                self._window, self._counts = (period, window), {}
            count = self._counts.pop(subject, 0) + 1
            if len(self._counts) >= self.max_subjects:
                del self._counts[next(iter(self._counts))]
            self._counts[subject] = count  # re-inserted: the dict's order is that of the last hits
            return count

    def clear(self) -> None:
        with self._lock:
            self._window, self._counts = None, {}


_local_counters = {"rate": LocalWindowCounter(), "auth-failures": LocalWindowCounter()}
_warned_at: dict[str, float] = {}
_warned_lock = threading.Lock()


def _warn_counted_locally(scope: str, exc: Exception) -> None:
    now = warning_clock()
    with _warned_lock:
        last = _warned_at.get(scope)
        if last is not None and now - last < OUTAGE_WARNING_INTERVAL_SECONDS:
            return
        _warned_at[scope] = now
    logger.warning(
        "API limit %s counted in this process only while the cache is unavailable "
        "(each process allows the limit; said at most once a minute): %s",
        scope,
        exc,
    )


def _over_limit(scope: str, subject: str, rate: str) -> int | None:
    """Count one hit of ``subject``; the seconds until the window ends when that hit is past the limit, else None."""
    limit, period = parse_rate(rate)
    now = clock()
    window = int(now // period)
    key = f"api:{scope}:{subject}:{period}:{window}"
    try:
        cache.add(key, 0, timeout=period + 1)
        count = cache.incr(key)
    except (ConnectionInterrupted, RedisError, ValueError) as exc:  # ValueError: evicted between add and incr
        _warn_counted_locally(scope, exc)
        count = _local_counters[scope].hit(subject, period=period, window=window)
    if count <= limit:
        return None
    return max(1, math.ceil((window + 1) * period - now))


def api_request_counted(*, api_key_id: int) -> int | None:
    """Count one request made with the key; seconds to wait when it is past API_RATE_LIMIT, else None."""
    return _over_limit("rate", str(api_key_id), settings.API_RATE_LIMIT)


def api_auth_failure_counted(*, address: str | None) -> int | None:
    """Count one wrong or malformed key from ``address``; seconds to wait when it is past
    API_AUTH_FAILURE_LIMIT, else None."""
    return _over_limit("auth-failures", address or "unknown", settings.API_AUTH_FAILURE_LIMIT)


def local_counts_clear() -> None:
    """Forget this process's fallback counts and warnings (for tests)."""
    for counter in _local_counters.values():
        counter.clear()
    with _warned_lock:
        _warned_at.clear()
