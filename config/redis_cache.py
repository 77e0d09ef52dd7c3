"""The Django cache on Redis, skipped for a few seconds after Redis fails to answer.

A Redis that refuses connections fails each cache call at once, and every caller already has its
"cache down" path (counting in memory, the audit log, refusing sign-in, computing instead of
reading). A Redis that does not answer at all (a managed Redis failing over, packets dropped)
makes each call wait for the socket timeouts instead: every request would pay them, some several
times. So once a call fails to reach Redis, this process answers every cache call with the same
error at once for REDIS_SKIP_AFTER_FAILURE_SECONDS, taking those paths without waiting; then one
call tries Redis again (the others keep skipping while it does), and its success ends the skipping.

One breaker per process and Redis address (the cache objects are per thread). Only failures to
reach Redis count: a command Redis refuses (a wrong type, out of memory) leaves it alone.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django_redis.cache import RedisCache
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# Read through this name so that tests can move time instead of sleeping.
clock = time.monotonic

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, socket.timeout, OSError)
# Client methods that never talk to Redis: not skipped.
_LOCAL_METHODS = frozenset(
    {"close", "make_key", "make_pattern", "encode", "decode", "get_client", "get_client_with_index", "connect"}
)


class RedisSkipped(RedisConnectionError):
    """Redis was not asked: it failed to answer less than REDIS_SKIP_AFTER_FAILURE_SECONDS ago."""


class Breaker:
    """Whether a process asks Redis now, after its last failure to reach it."""

    def __init__(self, location: str):
        self.location = location
        self._lock = threading.Lock()
        self._skip_until: float | None = None  # None: Redis answered last time (or was never tried)

    def allow(self) -> bool:
        """True when the caller is to ask Redis: it is not skipped, or this caller is the one that
        tries it again once the interval has passed (the others keep skipping meanwhile)."""
        if self._skip_until is None:  # the usual case, without taking the lock
            return True
        with self._lock:
            if self._skip_until is None:
                return True
            now = clock()
            if now < self._skip_until:
                return False
            self._skip_until = now + settings.REDIS_SKIP_AFTER_FAILURE_SECONDS  # this caller's try
            return True

    def succeeded(self) -> None:
        if self._skip_until is None:  # the usual case, without taking the lock
            return
        with self._lock:
            self._skip_until = None
        logger.warning("the cache answers again at %s", _redacted(self.location))

    def failed(self, exc: BaseException) -> None:
        seconds = settings.REDIS_SKIP_AFTER_FAILURE_SECONDS
        if seconds <= 0:
            return
        with self._lock:
            first = self._skip_until is None
            self._skip_until = clock() + seconds
        if first:
            logger.warning(
                "the cache at %s did not answer (%s): this process skips it, retrying every %s s",
                _redacted(self.location),
                exc,
                seconds,
            )


def _redacted(location: str) -> str:
    # A URL may carry Redis's password: only its scheme, host and port are logged.
    scheme, _, rest = location.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2].partition('/')[0]}"


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(location: str) -> Breaker:
    with _breakers_lock:
        breaker = _breakers.get(location)
        if breaker is None:
            breaker = _breakers[location] = Breaker(location)
        return breaker


def reset_breakers() -> None:
    """Forget every failure (tests)."""
    with _breakers_lock:
        breakers = list(_breakers.values())
    for breaker in breakers:
        with breaker._lock:
            breaker._skip_until = None


def _reached_nothing(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionInterrupted):
        exc = exc.__cause__
    return isinstance(exc, _UNREACHABLE)


class _GuardedClient:
    """The django-redis client, each call to Redis going through the breaker."""

    def __init__(self, client, breaker: Breaker):
        self._client = client
        self._breaker = breaker

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if name.startswith("_") or name in _LOCAL_METHODS or not callable(attribute):
            return attribute
        breaker = self._breaker

        def guarded(*args, **kwargs):
            return _through_breaker(breaker, attribute, *args, **kwargs)

        return guarded


def _through_breaker(breaker: Breaker, call, *args, **kwargs):
    """``call(*args, **kwargs)``, unless the breaker skips Redis; its failure to reach Redis noted."""
    if not breaker.allow():
        skipped = RedisSkipped(
            f"Redis skipped: it failed to answer less than {settings.REDIS_SKIP_AFTER_FAILURE_SECONDS} s ago"
        )
        # As django-redis reports a failure: RedisCache raises its cause (a RedisError).
        raise ConnectionInterrupted(connection=None) from skipped
    try:
        result = call(*args, **kwargs)
    except Exception as exc:
        if _reached_nothing(exc):
            breaker.failed(exc)
        else:
            breaker.succeeded()  # Redis answered, if only with an error
        raise
    breaker.succeeded()
    return result


class SkippingRedisCache(RedisCache):
    """django-redis's cache, skipping Redis for a while after it failed to answer (see the module)."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._breaker = breaker_for(str(server))

    @property
    def client(self):
        return _GuardedClient(super().client, self._breaker)


class ScriptsUnavailable(Exception):
    """The cache is not on Redis (the embedded file cache): it runs no script."""


def run_script(cache, script: str, keys: Sequence[str], args: Sequence = ()) -> Any:
    """Run a Lua script on the cache's Redis, in one round trip (EVALSHA, loading it once per server).

    ``keys`` are named as for the cache (its prefix and version are added). Skipped like any other
    call while SkippingRedisCache skips Redis; raises ScriptsUnavailable for a cache not on Redis,
    and a RedisError (ConnectionInterrupted) when Redis cannot be reached."""
    if not isinstance(cache, RedisCache):
        raise ScriptsUnavailable(f"{type(cache).__name__} runs no script")
    client = RedisCache.client.fget(cache).get_client(write=True)  # the raw client: the breaker is applied here
    call = client.register_script(script)
    full_keys = [cache.make_key(key) for key in keys]
    breaker = getattr(cache, "_breaker", None)
    if breaker is None:
        return call(keys=full_keys, args=list(args))
    return _through_breaker(breaker, call, keys=full_keys, args=list(args))
