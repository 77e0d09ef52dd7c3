"""Publishing one Celery message for a burst of work, guarded by a short-lived cache flag.

While the flag exists a task is queued or running and will find new work
itself, so callers skip publishing. The task clears the flag before its last
look for work: anything committed before the clear is found by that look,
anything committed after it publishes a new task. The flag's TTL covers a task
that died. Every failure here only delays work: the beat sweeper schedules
again, and PostgreSQL holds the work itself.

A hot caller (ingest) may also trust, for ``trust_seen_seconds``, a flag it saw
set, and skip even the cache round trip: a busy web process then asks Redis a
few times a second instead of once per commit. This stays safe because a task
using it waits that long between clearing its flag and its last look
(``wait_before_last_look``): work committed while a caller still trusted an
old sighting was committed before that look.
"""

from __future__ import annotations

import logging
import multiprocessing
import time

from django.core.cache import cache

logger = logging.getLogger(__name__)

# flag key -> monotonic time just before this process last saw it set (or set it).
_flag_seen_at: dict[str, float] = {}
# While the broker or Redis is down every webhook fails to schedule: one warning per task and
# process this often says so, where one per webhook would flood the log for the whole outage.
FAILURE_WARNING_SECONDS = 30.0
_failure_warned_at: dict[str, float] = {}

# Set in a Celery worker's main process when its warm shutdown begins (webhooks.tasks connects
# it), and shared with its pool processes: their long loops (a dispatcher runs up to
# DISPATCHER_MAX_SECONDS under a steady stream) then end early and leave the rest to the next
# worker, instead of outlasting the platform's grace period and being killed mid-send, which sends
# those deliveries twice. Made when the worker starts, before its pool forks (worker_init); other
# processes (web, beat, tests calling the services) have none and are never "stopping".
_worker_stopping = None


def prepare_for_worker_shutdown() -> None:
    global _worker_stopping
    if _worker_stopping is not None:
        return
    # Plain shared bytes with no lock, as config/celery.py's shutdown flags: note_worker_stopping runs
    # in the main process's signal handler (Celery sends worker_shutting_down from it). With a
    # multiprocessing.Event, a cold shutdown's signal arriving while the warm one's set() held the
    # Event's lock waited for that lock in the same thread forever, and the dispatcher, asking
    # worker_is_stopping(), waited behind it: the worker hung instead of ending.
    try:
        _worker_stopping = multiprocessing.RawValue("b", 0)
    except OSError:
        # No shared memory (some containers): the main process's own loops still wind up; pool
        # processes then run to their deadline, as before this existed.
        logger.warning("no shared memory: pool processes will not learn of a warm shutdown early")
        _worker_stopping = _ProcessLocalFlag()


class _ProcessLocalFlag:
    value = 0


def note_worker_stopping() -> None:
    if _worker_stopping is not None:
        _worker_stopping.value = 1


def worker_is_stopping() -> bool:
    return _worker_stopping is not None and bool(_worker_stopping.value)


def schedule_once(flag_key: str, ttl: int, task, *, trust_seen_seconds: float = 0.0) -> bool:
    """Publish ``task`` unless one is already scheduled; True if it did. Never raises.

    With ``trust_seen_seconds``, a flag this process saw set less than that long
    ago counts as still set, without asking the cache (see the module's text).
    """
    if trust_seen_seconds > 0:
        seen_at = _flag_seen_at.get(flag_key)
        if seen_at is not None and time.monotonic() - seen_at < trust_seen_seconds:
            return False
    # Taken before asking: the sighting must not be dated later than the cache saw the flag set.
    asked_at = time.monotonic()
    try:
        published = cache.add(flag_key, 1, timeout=ttl)
    except Exception as exc:
        _warn_failure(task.name, exc)
        return False
    if published:
        try:
            task.apply_async(retry=False)
        except Exception as exc:
            # Nothing is queued: a flag left for its whole TTL (15 s for a dispatcher) had every
            # caller, the sweeper too, skip publishing that long after the broker took clients
            # again (a Redis full at its plan's client cap). Kept a second, so that a burst of
            # callers does not try the refusing broker once each. Should the message have gone out
            # after all, a second task only finds no work (claims skip what another holds).
            _shorten_flag(flag_key)
            _warn_failure(task.name, exc)
            return False
    if trust_seen_seconds > 0:
        _flag_seen_at[flag_key] = asked_at
    return bool(published)


FAILED_PUBLISH_FLAG_SECONDS = 1


def _shorten_flag(flag_key: str) -> None:
    try:
        cache.set(flag_key, 1, timeout=FAILED_PUBLISH_FLAG_SECONDS)
    except Exception:
        logger.debug("could not clear %s; it expires with its TTL", flag_key)


def forget_seen_flags() -> None:
    """Drop this process's sightings (tests; a caller that must ask the cache again)."""
    _flag_seen_at.clear()


def wait_before_last_look(trust_seen_seconds: float) -> None:
    """After clearing a flag that callers may trust: let every sighting of it expire first."""
    if trust_seen_seconds <= 0:
        return
    # A small margin for clocks of different processes that tick at slightly different rates.
    time.sleep(trust_seen_seconds * 1.05 + 0.001)


def set_flag(flag_key: str, ttl: int) -> None:
    try:
        cache.set(flag_key, 1, timeout=ttl)
    except Exception as exc:
        logger.warning("cache unavailable while setting %s: %s", flag_key, exc)


def clear_flag(flag_key: str) -> None:
    try:
        cache.delete(flag_key)
    except Exception as exc:
        logger.warning("cache unavailable while clearing %s: %s", flag_key, exc)


def _warn_failure(task_name: str, exc: Exception) -> None:
    now = time.monotonic()
    if now - _failure_warned_at.get(task_name, -FAILURE_WARNING_SECONDS) < FAILURE_WARNING_SECONDS:
        logger.debug("could not schedule %s; the sweeper will: %s", task_name, exc)
        return
    _failure_warned_at[task_name] = now
    logger.warning(
        "could not schedule %s; the sweeper will (said once per %g s while it lasts): %s",
        task_name,
        FAILURE_WARNING_SECONDS,
        exc,
    )
