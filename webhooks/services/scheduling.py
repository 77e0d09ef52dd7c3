"""Publishing one Celery message for a burst of work, guarded by a short-lived cache flag.

While the flag exists a task is queued or running and will find new work
itself, so callers skip publishing. The task clears the flag before its last
look for work: anything committed before the clear is found by that look,
anything committed after it publishes a new task. The flag's TTL covers a task
that died. Every failure here only delays work: the beat sweeper schedules
again, and PostgreSQL holds the work itself.
"""

from __future__ import annotations

import logging

from django.core.cache import cache

logger = logging.getLogger(__name__)


def schedule_once(flag_key: str, ttl: int, task) -> None:
    """Publish ``task`` unless one is already scheduled. Never raises."""
    try:
        if cache.add(flag_key, 1, timeout=ttl):
            task.apply_async(retry=False)
    except Exception as exc:
        logger.warning("could not schedule %s; the sweeper will: %s", task.name, exc)


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
