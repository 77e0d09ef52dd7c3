"""How many of a source's rejected requests are kept, and how many of them were not.

A rejected request is kept (a row with its reason and a bounded body and headers, see
ingest._reject) while its source has had at most INGEST_REJECTED_RECORDS_PER_MINUTE rejected
requests this minute and kept at most INGEST_REJECTED_RECORDS_PER_HOUR this hour. Past either it
is answered the same, and only counted: the source's rejected_not_kept_count and
rejected_not_kept_last_at say how many were not kept and when the last came, so that a tenant
whose provider is misconfigured sees how many requests it really sends.

The counts live in Redis: one script, one round trip, per rejected request (none for an accepted
one). The sweeper adds the counts not yet written to their sources (one UPDATE per source that had
any, per sweep): ingest never writes a count itself. While Redis cannot be reached (and in the
embedded mode, which has no Redis) each process counts in its own memory instead: it then keeps up
to the limits on its own, and writes its own counts not kept, at most once a
LOCAL_WRITE_INTERVAL_SECONDS.

What can be lost is a count, never an event: the counts taken by a sweep whose process dies
before its UPDATE commits, or those a process held in memory (at most a second's) when it stops.
A sweep whose UPDATE fails puts its counts back in Redis, or, when Redis cannot be reached
either, holds them in its process, which writes them as it writes its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import caches
from django.db import connection, transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Coalesce, Greatest

from config.redis_cache import ScriptsUnavailable, run_script
from webhooks.api.limits import LocalWindowCounter
from webhooks.models import Source

logger = logging.getLogger(__name__)

MINUTE_KEY = "ingest:rejected:{source_id}:{minute}"  # every rejected request of the minute
HOUR_KEY = "ingest:rejected-kept:{source_id}:{hour}"  # those of the hour that were kept
# Not yet written to the sources: per source id, how many were not kept, and when the last came.
NOT_KEPT_COUNTS_KEY = "ingest:rejected-not-kept:counts"
NOT_KEPT_TIMES_KEY = "ingest:rejected-not-kept:times"

# The hour is counted only for requests the minute lets through, so that a flood's minutes past
# their limit do not use up the hour's records: 60 a minute still gets 600 kept in the hour.
_COUNT_SCRIPT = """
local minute = redis.call('INCR', KEYS[1])
if minute == 1 then redis.call('EXPIRE', KEYS[1], 120) end
if minute <= tonumber(ARGV[1]) then
  local hour = redis.call('INCR', KEYS[2])
  if hour == 1 then redis.call('EXPIRE', KEYS[2], 7200) end
  if hour <= tonumber(ARGV[2]) then return 1 end
end
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
local last = tonumber(redis.call('HGET', KEYS[4], ARGV[3]))
if last == nil or tonumber(ARGV[4]) > last then redis.call('HSET', KEYS[4], ARGV[3], ARGV[4]) end
return 0
"""

# Both hashes taken and emptied at once: a request counted meanwhile is in the next sweep's.
_TAKE_SCRIPT = """
local counts = redis.call('HGETALL', KEYS[1])
local times = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return {counts, times}
"""

# ARGV: source id, count, time, for each source whose counts go back.
_PUT_BACK_SCRIPT = """
for i = 1, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  local last = tonumber(redis.call('HGET', KEYS[2], ARGV[i]))
  if last == nil or tonumber(ARGV[i + 2]) > last then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2]) end
end
return 0
"""

# source id -> (requests not kept, Unix time of the last one)
NotKept = dict[int, tuple[int, float]]


def may_keep_rejection(source_id: int, now: float) -> bool:
    """Whether to keep this rejected request of the source, received at ``now`` (Unix seconds);
    when not, it is counted as not kept."""
    minute, hour = int(now // 60), int(now // 3600)
    cache = caches["default"]
    try:
        kept = run_script(
            cache,
            _COUNT_SCRIPT,
            keys=[
                MINUTE_KEY.format(source_id=source_id, minute=minute),
                HOUR_KEY.format(source_id=source_id, hour=hour),
                NOT_KEPT_COUNTS_KEY,
                NOT_KEPT_TIMES_KEY,
            ],
            args=[
                settings.INGEST_REJECTED_RECORDS_PER_MINUTE,
                settings.INGEST_REJECTED_RECORDS_PER_HOUR,
                source_id,
                repr(now),
            ],
        )
        return bool(kept)
    except ScriptsUnavailable:  # the embedded mode: one process, no Redis
        pass
    except Exception as exc:  # unreachable, or skipped (config.redis_cache)
        _warn_counted_locally(exc)
    return _may_keep_counting_locally(source_id, minute, hour, now)


# --- While Redis cannot be reached ---------------------------------------------------------

_counted_this_minute = LocalWindowCounter()
_kept_this_hour = LocalWindowCounter()
# Counts not kept that this process has not written yet, and the timer that writes them.
_local_lock = threading.Lock()
_local_not_kept: NotKept = {}
_local_writer: threading.Timer | None = None
# At most one UPDATE per source and this interval from each process while Redis is down; the
# counts of a second's flood wait that long, and are lost if the process stops meanwhile.
LOCAL_WRITE_INTERVAL_SECONDS = 1.0

_OUTAGE_WARNING_SECONDS = 60
# What was last logged of an outage, and when (time.monotonic()): see _said_again.
_said_at: dict[str, float] = {}


def _may_keep_counting_locally(source_id: int, minute: int, hour: int, now: float) -> bool:
    subject = str(source_id)
    if (
        _counted_this_minute.hit(subject, period=60, window=minute) <= settings.INGEST_REJECTED_RECORDS_PER_MINUTE
        and _kept_this_hour.hit(subject, period=3600, window=hour) <= settings.INGEST_REJECTED_RECORDS_PER_HOUR
    ):
        return True
    _note_not_kept_locally({source_id: (1, now)})
    return False


def _note_not_kept_locally(counts: NotKept) -> None:
    global _local_writer
    with _local_lock:
        _merge(_local_not_kept, counts)
        if _local_writer is None:
            _local_writer = threading.Timer(LOCAL_WRITE_INTERVAL_SECONDS, _write_from_timer)
            _local_writer.daemon = True
            _local_writer.start()


def _merge(into: NotKept, counts: NotKept) -> None:
    for source_id, (count, last_at) in counts.items():
        had_count, had_last_at = into.get(source_id, (0, last_at))
        into[source_id] = (had_count + count, max(had_last_at, last_at))


def write_local_not_kept_counts() -> int:
    """Add this process's counts not kept to their sources now; how many sources had some (0 on a
    database error: they are kept, and written again a LOCAL_WRITE_INTERVAL_SECONDS later)."""
    with _local_lock:
        taken = dict(_local_not_kept)
        _local_not_kept.clear()
    if not taken:
        return 0
    try:
        add_not_kept_to_sources(taken)
    except Exception:
        _log_write_failure()
        _note_not_kept_locally(taken)
        return 0
    return len(taken)


def _log_write_failure() -> None:
    # Once a minute per process, with the traceback: the counts are tried again every second while
    # the database is down, and a traceback a second from every web process would flood the log.
    if not _said_again("write_failure"):
        return
    logger.exception(
        "could not write the counts of rejected requests not kept; trying again every %s s (said at most "
        "once a minute)",
        LOCAL_WRITE_INTERVAL_SECONDS,
    )


def _write_from_timer() -> None:
    global _local_writer
    with _local_lock:
        _local_writer = None
    try:
        write_local_not_kept_counts()
    finally:
        connection.close()  # this thread's own connection, opened for the write


def _said_again(what: str) -> bool:
    """Whether ``what`` may be logged now: at most once per _OUTAGE_WARNING_SECONDS in this process."""
    now = time.monotonic()
    said_at = _said_at.get(what)
    if said_at is not None and now - said_at < _OUTAGE_WARNING_SECONDS:
        return False
    _said_at[what] = now
    return True


def _warn_counted_locally(exc: Exception) -> None:
    # Once a minute per process: a warning per refused request would flood the log at the request rate.
    if not _said_again("counted_locally"):
        return
    logger.warning(
        "rejected-request records counted in this process only while the cache is unavailable "
        "(each process keeps up to the limit; said at most once a minute): %s",
        exc,
    )


def forget_local_counts() -> None:
    """Forget this process's counts, and its unwritten counts not kept (tests)."""
    global _local_writer
    _counted_this_minute.clear()
    _kept_this_hour.clear()
    with _local_lock:
        _local_not_kept.clear()
        if _local_writer is not None:
            _local_writer.cancel()
        _local_writer = None
    _said_at.clear()


# --- Writing the counts to the sources -----------------------------------------------------


def write_not_kept_counts() -> int:
    """The sweeper's step: add the counts not kept that Redis holds to their sources; how many
    sources had any. Counts a failed UPDATE leaves are put back, for the next sweep."""
    cache = caches["default"]
    try:
        counts_reply, times_reply = run_script(cache, _TAKE_SCRIPT, keys=[NOT_KEPT_COUNTS_KEY, NOT_KEPT_TIMES_KEY])
    except ScriptsUnavailable:
        return 0  # the embedded mode: each process writes its own (write_local_not_kept_counts)
    times = dict(zip(times_reply[::2], times_reply[1::2], strict=True))
    taken: NotKept = {}
    for raw_id, raw_count in zip(counts_reply[::2], counts_reply[1::2], strict=True):
        last_at = times.get(raw_id)
        taken[int(raw_id)] = (int(raw_count), float(last_at) if last_at is not None else time.time())
    if not taken:
        return 0
    try:
        add_not_kept_to_sources(taken)
    except Exception:
        args = [value for source_id, (count, last_at) in taken.items() for value in (source_id, count, repr(last_at))]
        try:
            run_script(cache, _PUT_BACK_SCRIPT, keys=[NOT_KEPT_COUNTS_KEY, NOT_KEPT_TIMES_KEY], args=args)
        except Exception:
            # Redis gone too since the counts were taken (this host cut off): they are nowhere
            # else, so this process holds them and writes them itself, as its own while Redis is down.
            logger.exception("could not put the counts of rejected requests not kept back; this process writes them")
            _note_not_kept_locally(taken)
        raise
    return len(taken)


def add_not_kept_to_sources(counts: NotKept) -> None:
    """Add ``counts`` to their sources, in one transaction (a source deleted meanwhile is passed by).

    update(): it leaves updated_at alone (the version secret_use compares), and sends no signal
    (a saved source clears every cached copy of itself, see apps.py)."""
    with transaction.atomic():
        for source_id, (count, last_at) in sorted(counts.items()):  # in id order: two writers never deadlock
            at = Value(datetime.fromtimestamp(last_at, tz=UTC), output_field=DateTimeField())
            Source.objects.filter(pk=source_id).order_by().update(
                rejected_not_kept_count=F("rejected_not_kept_count") + count,
                rejected_not_kept_last_at=Greatest(Coalesce("rejected_not_kept_last_at", at), at),
            )


# --- What the pages say ---------------------------------------------------------------------


@dataclass(frozen=True)
class RejectedNotKept:
    """A source's rejected requests not kept, as its pages, the admin and the API say them."""

    count: int
    last_at: datetime | None
    per_minute: int
    per_hour: int

    @property
    def count_text(self) -> str:
        return f"{self.count:,}"


def rejected_not_kept(source: Source) -> RejectedNotKept | None:
    """What the source's pages say of its rejected requests not kept; None while there were none."""
    if not source.rejected_not_kept_count:
        return None
    return RejectedNotKept(
        count=source.rejected_not_kept_count,
        last_at=source.rejected_not_kept_last_at,
        per_minute=settings.INGEST_REJECTED_RECORDS_PER_MINUTE,
        per_hour=settings.INGEST_REJECTED_RECORDS_PER_HOUR,
    )
