"""At most BODY_SEARCH_CONCURRENCY body searches of one organization at a time.

A body search reads up to BODY_SEARCH_WINDOW bodies, for up to BODY_SEARCH_TIMEOUT_SECONDS per
statement, holding a web worker and a database connection meanwhile: without a bound, one member
or one read-only key could keep many of them busy for everyone. Each search holds one of the
organization's slots, a cache key taken with an atomic add (SET NX in Redis) and deleted in a
``finally``. The key expires shortly after the search's own time limit, so that a worker killed
mid-search frees its slot by itself.

While the cache is unavailable the bound is kept per process instead: each process lets at most
BODY_SEARCH_CONCURRENCY searches of one organization run at once (so the organization may run that
many in each web process). Refusing every search would make Redis a dependency of reading events,
and letting them all run would leave the workers to whoever searches most.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

# A search runs a few statements under its timeout, but only the one that reads bodies is slow:
# the others walk an index. This covers them and the rows' loading.
SLOT_MARGIN_SECONDS = 5.0
# One warning per process this often while the cache is down; one per search would flood the log.
FAILURE_WARNING_SECONDS = 60.0
_failure_warned_at: float | None = None

# The body searches running in this process, per organization id: every one, whether it holds a
# slot in the cache or not, so that the bound kept here while the cache is down also counts the
# searches that took their slots before it went down. An organization with none has no entry.
_running: dict[int, int] = {}
_running_lock = threading.Lock()


class BodySearchBusy(Exception):
    """The organization already runs BODY_SEARCH_CONCURRENCY body searches."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many body searches at once; try again in {retry_after} s")
        self.retry_after = retry_after


def _slot_key(organization_id: int, slot: int) -> str:
    return f"body-search:{organization_id}:{slot}"


@contextmanager
def body_search_slot(*, organization_id: int) -> Iterator[None]:
    """Hold one of the organization's body-search slots for the block; raises BodySearchBusy at
    once when they are all taken (in this process, while the cache is unavailable)."""
    token = secrets.token_hex(8)
    ttl = settings.BODY_SEARCH_TIMEOUT_SECONDS + SLOT_MARGIN_SECONDS
    held = None
    try:
        for slot in range(settings.BODY_SEARCH_CONCURRENCY):
            if cache.add(_slot_key(organization_id, slot), token, timeout=ttl):
                held = _slot_key(organization_id, slot)
                break
        else:
            raise _busy()
    except BodySearchBusy:
        raise
    except Exception as exc:
        _warn_bounded_locally(exc)
        if not _start(organization_id, limit=settings.BODY_SEARCH_CONCURRENCY):
            raise _busy() from None
    else:
        _start(organization_id, limit=None)
    try:
        yield
    finally:
        _end(organization_id)
        if held is not None:
            _release(held, token)


def _busy() -> BodySearchBusy:
    # By then a running search has ended, one way or another.
    return BodySearchBusy(retry_after=max(1, math.ceil(settings.BODY_SEARCH_TIMEOUT_SECONDS)))


def _start(organization_id: int, *, limit: int | None) -> bool:
    """Count a search of the organization as running in this process, unless ``limit`` already are."""
    with _running_lock:
        running = _running.get(organization_id, 0)
        if limit is not None and running >= limit:
            return False
        _running[organization_id] = running + 1
        return True


def _end(organization_id: int) -> None:
    with _running_lock:
        running = _running[organization_id] - 1
        if running:
            _running[organization_id] = running
        else:
            del _running[organization_id]


def _release(key: str, token: str) -> None:
    try:
        # Only our own: a search that outlived its key must not free the slot another one took
        # since. (Not atomic, but the window is a search outliving its expiry by microseconds.)
        if cache.get(key) == token:
            cache.delete(key)
    except Exception as exc:
        logger.warning("cache unavailable while releasing %s; it expires by itself: %s", key, exc)


def _warn_bounded_locally(exc: Exception) -> None:
    global _failure_warned_at
    now = time.monotonic()
    if _failure_warned_at is not None and now - _failure_warned_at < FAILURE_WARNING_SECONDS:
        logger.debug("cache unavailable: body search bounded in this process only: %s", exc)
        return
    _failure_warned_at = now
    logger.warning(
        "cache unavailable: BODY_SEARCH_CONCURRENCY is kept per process, not across processes"
        " (said once per %g s while it lasts): %s",
        FAILURE_WARNING_SECONDS,
        exc,
    )
