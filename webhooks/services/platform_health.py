"""Processing health: whether the worker and beat keep up, for operators (admin, /metrics, a command).

Ingest stores and acknowledges webhooks whether or not anything processes them, so a dead
worker or beat shows nowhere else until tenants notice. Each figure here is one bounded query
on an index the processing itself uses (counts stop at COUNT_CAP), so it can be asked for on
every admin page view and every scrape. A figure whose query fails is left out (None) and
named in ``unmeasured``, never raised: this is read during outages.

What each process leaves behind to be judged by:
- beat: django-celery-beat's DatabaseScheduler writes each periodic task's ``last_run_at``
  (the time it was due and beat tried to send it) when it syncs, which CELERY_BEAT_SYNC_EVERY
  makes happen after each task (celery's default, every 3 minutes, made a fresh beat look stopped
  for its first 3). It writes it whether or not the send reached the broker, so beat also marks
  each send that did (note_beat_sent, a ProcessMark row: readable while Redis, the broker, is
  down): a newest ``last_run_at`` after that mark is a send that failed. A beat that cannot reach
  the broker at all (started while it was down, or with a wrong CELERY_BROKER_URL) retries its
  connection before it reserves any task, so no ``last_run_at`` moves: it marks each failed try
  instead (note_beat_tried, config/beat.py), which counts as a try here;
- workers: every task that workers run often (the sweep that beat sends every
  SWEEP_INTERVAL_SECONDS, processing, dispatching) stamps a cache key, at most once per
  WORKER_MARK_EVERY_SECONDS per process; with Redis unreachable, the newest delivery attempt
  (a primary-key lookup) is the only sign, and without one the workers are "unknown".
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, InterfaceError, connection, transaction
from django.db.models import Min, OuterRef, Subquery
from django.utils import timezone

from webhooks.fields import UNREADABLE_REASONS
from webhooks.models import Delivery, DeliveryAttempt, Destination, ProcessMark, WebhookEvent
from webhooks.services import secret_health
from webhooks.services.delivery import DESTINATION_SENDING, PUT_BACK_CAUSES, put_back_counts
from webhooks.services.secret_health import SecretFailures

logger = logging.getLogger(__name__)

# Counts stop here: past it the number says only "a lot", and counting further would read a big table.
COUNT_CAP = 10_000
# Each query may take this long at most (PostgreSQL): a health check must not queue behind itself.
QUERY_TIMEOUT_MS = 5000

# "Dead, last 24 h" counts the deliveries that went dead since this long before the check.
DEAD_RECENTLY = timedelta(hours=24)

OK, DEGRADED, STALLED = "ok", "degraded", "stalled"
VERDICT_LEVELS = {OK: 0, DEGRADED: 1, STALLED: 2}

WORKER_MARK_KEY = "health:worker_ran_at"
WORKER_MARK_EVERY_SECONDS = 5.0
WORKER_MARK_TTL_SECONDS = 7 * 24 * 3600
_worker_marked_at: float | None = None  # monotonic, this process


def note_worker_ran() -> None:
    """Stamp the time a worker ran a task; at most every few seconds per process. Never raises."""
    global _worker_marked_at
    now = time.monotonic()
    if _worker_marked_at is not None and now - _worker_marked_at < WORKER_MARK_EVERY_SECONDS:
        return
    _worker_marked_at = now
    try:
        cache.set(WORKER_MARK_KEY, time.time(), timeout=WORKER_MARK_TTL_SECONDS)
    except Exception as exc:  # Redis down: the health check says "unknown" rather than this failing a task
        logger.debug("could not stamp the worker's run: %s", exc)


BEAT_SENT_MARK = "beat_sent"
BEAT_TRIED_MARK = "beat_tried"


def _mark(name: str, what: str) -> None:
    now = timezone.now()
    try:
        if not ProcessMark.objects.filter(name=name).update(at=now):
            ProcessMark.objects.bulk_create([ProcessMark(name=name, at=now)], ignore_conflicts=True)
    # The database down, or beat's connection to it closed: beat's own writes fail too then; the
    # next one marks it.
    except (DatabaseError, InterfaceError) as exc:
        logger.warning("could not mark %s: %s", what, exc)


def note_beat_sent() -> None:
    """Mark that beat's task reached the broker: called in beat, after the publish succeeded
    (config/celery.py). One small UPDATE per task beat sends, like its own last_run_at's. Never raises."""
    _mark(BEAT_SENT_MARK, "beat's send")


def note_beat_tried() -> None:
    """Mark that beat tried to reach the broker and could not: called in beat at each failed try to
    connect (config/beat.py), which comes before any task is reserved. Never raises."""
    _mark(BEAT_TRIED_MARK, "beat's failed try to reach the broker")


@dataclass
class Backlog:
    """Rows in one state: how many (up to COUNT_CAP) and how long the oldest has been there."""

    count: int
    oldest_seconds: float  # 0 when there is none

    @property
    def capped(self) -> bool:
        return self.count >= COUNT_CAP

    @property
    def count_in_words(self) -> str:
        return _count_in_words(self.count)

    @property
    def oldest_in_words(self) -> str:
        return duration_in_words(self.oldest_seconds)


@dataclass
class PeriodicRun:
    name: str
    task: str
    enabled: bool
    last_run_at: datetime | None
    every_seconds: float | None  # None: not an interval schedule (crontab, solar, clocked)


@dataclass
class ProcessingHealth:
    checked_at: datetime
    verdict: str = OK
    reasons: list[str] = field(default_factory=list)
    # None: not measured (its query failed); see unmeasured.
    events_waiting: Backlog | None = None  # received, not yet processed; age of the oldest
    # Received, but set aside after failing to be processed alone; how overdue the most overdue retry is.
    events_set_aside: Backlog | None = None
    deliveries_due: Backlog | None = None  # pending at a destination that sends, next attempt passed; most overdue
    deliveries_in_flight: Backlog | None = None  # claimed by a worker; oldest claim
    deliveries_pending: int | None = None  # every pending delivery, due or not, paused destinations' too
    deliveries_dead: int | None = None
    deliveries_dead_24h: int | None = None
    # Deliveries the platform itself holds now (put back unsent, Delivery.put_back_cause), by cause:
    # how many, and since when the longest held has been (its first put-back of that cause in a row).
    # Tried again without end, never charged to their receivers: only this says how long it lasts.
    deliveries_held_by_platform: dict[str, Backlog] | None = None
    # Active destinations paused (the circuit breaker's or by hand): their deliveries wait on purpose,
    # so no backlog above shows them, yet each is a tenant's receiver down.
    destinations_paused: int | None = None
    periodic_tasks: list[PeriodicRun] | None = None
    # When beat last tried to send an enabled periodic task (the newest last_run_at, or its newest
    # failed try to reach the broker), sent or not.
    beat_last_run_at: datetime | None = None
    beat_tried_at: datetime | None = None  # beat's newest failed try to connect to the broker
    beat_sent_at: datetime | None = None  # when a task beat sent last reached the broker
    worker_ran_at: datetime | None = None  # the newest sign of a worker at work
    # "mark" (the cache holds the workers' stamp), "attempt" (no stamp: the newest attempt), "none" or "unknown"
    worker_signal: str = "unknown"
    redis_up: bool | None = None
    last_attempt_at: datetime | None = None
    # Stored secrets that could not be decrypted, every process's (services.secret_health); None:
    # the cache did not answer.
    secrets_unreadable: SecretFailures | None = None
    # Deliveries put back unsent by cause (services.delivery.PUT_BACK_CAUSES), every process's since
    # the cache was last emptied; None: the cache did not answer.
    deliveries_put_back: dict[str, int] | None = None
    unmeasured: list[str] = field(default_factory=list)

    @property
    def level(self) -> int:
        return VERDICT_LEVELS[self.verdict]

    @property
    def deliveries_dead_in_words(self) -> str | None:
        return None if self.deliveries_dead is None else _count_in_words(self.deliveries_dead)

    @property
    def deliveries_dead_24h_in_words(self) -> str | None:
        return None if self.deliveries_dead_24h is None else _count_in_words(self.deliveries_dead_24h)

    @property
    def deliveries_dead_24h_since(self) -> datetime:
        """Where deliveries_dead_24h starts counting (the admin's link lists the deliveries it counted)."""
        return dead_recently_since(self.checked_at)

    @property
    def beat_age_in_words(self) -> str | None:
        return None if self.beat_last_run_at is None else duration_in_words(self.age(self.beat_last_run_at))

    @property
    def beat_sent_age_in_words(self) -> str | None:
        return None if self.beat_sent_at is None else duration_in_words(self.age(self.beat_sent_at))

    @property
    def beat_sends_fail(self) -> bool:
        """Beat's newest try came after its last send that reached the broker: that try failed."""
        return self.beat_last_run_at is not None and (
            self.beat_sent_at is None or self.beat_sent_at < self.beat_last_run_at
        )

    @property
    def worker_age_in_words(self) -> str | None:
        return None if self.worker_ran_at is None else duration_in_words(self.age(self.worker_ran_at))

    def age(self, moment: datetime | None) -> float | None:
        return None if moment is None else max((self.checked_at - moment).total_seconds(), 0.0)

    def as_dict(self) -> dict:
        data = asdict(self)
        if self.secrets_unreadable is not None:
            data["secrets_unreadable"] = {
                "counts": [
                    {"place": place, "reason": reason, "count": count}
                    for (place, reason), count in sorted(self.secrets_unreadable.counts.items())
                ],
                "last": self.secrets_unreadable.last,
            }
        for name in ("events_waiting", "events_set_aside", "deliveries_due", "deliveries_in_flight"):
            backlog = getattr(self, name)
            if backlog is not None:
                data[name]["capped"] = backlog.capped
        for cause, backlog in (self.deliveries_held_by_platform or {}).items():
            data["deliveries_held_by_platform"][cause]["capped"] = backlog.capped
        data["count_cap"] = COUNT_CAP
        return _iso_times(data)


def _iso_times(value):
    """Datetimes as ISO 8601 text, wherever they are in ``value``, for JSON."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _iso_times(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_iso_times(item) for item in value]
    return value


def thresholds() -> dict[str, float]:
    return {
        "backlog_degraded": settings.HEALTH_BACKLOG_DEGRADED_SECONDS,
        "backlog_stalled": settings.HEALTH_BACKLOG_STALLED_SECONDS,
        "beat_stale": settings.HEALTH_BEAT_STALE_SECONDS,
        "worker_stale": settings.HEALTH_WORKER_STALE_SECONDS,
        # The sweeper releases a claim at LIVE_CLAIM_MAX_SECONDS at the latest; give it a few sweeps more.
        "claim_stale": settings.LIVE_CLAIM_MAX_SECONDS + max(6 * settings.SWEEP_INTERVAL_SECONDS, 60),
    }


def processing_health(now: datetime | None = None) -> ProcessingHealth:
    """Measure the backlogs and the processes' last signs of life, then judge them."""
    now = now or timezone.now()
    health = ProcessingHealth(checked_at=now)
    measures = (
        ("events_waiting", _events_waiting),
        ("events_set_aside", _events_set_aside),
        ("deliveries_due", _deliveries_due),
        ("deliveries_in_flight", _deliveries_in_flight),
        ("deliveries_pending", _deliveries_pending),
        ("deliveries_dead", _deliveries_dead),
        ("deliveries_dead_24h", _deliveries_dead_24h),
        ("deliveries_held_by_platform", _deliveries_held_by_platform),
        ("destinations_paused", _destinations_paused),
        ("periodic_tasks", _periodic_tasks),
        ("beat_sent_at", _beat_sent_at),
        ("beat_tried_at", _beat_tried_at),
        ("last_attempt_at", _last_attempt_at),
    )
    for name, measure in measures:
        try:
            with transaction.atomic():  # a savepoint: a failed query leaves the caller's transaction usable
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}")
                setattr(health, name, measure(now))
        except DatabaseError as exc:
            logger.warning("processing health: could not measure %s: %s", name, exc)
            health.unmeasured.append(name)
    if health.periodic_tasks:
        runs = [task.last_run_at for task in health.periodic_tasks if task.enabled and task.last_run_at]
        # Even before any task has run: a beat started with the broker down on a fresh install marks
        # its tries and sends nothing, and "is beat running?" sent its operator the wrong way.
        if health.beat_tried_at is not None:
            runs.append(health.beat_tried_at)
        health.beat_last_run_at = max(runs, default=None)
    _read_worker_mark(health)
    try:
        health.secrets_unreadable = secret_health.shared()
    except Exception as exc:  # the cache down: said by redis_up; this figure is left out
        logger.warning("processing health: could not read the secret decryption failures: %s", exc)
    try:
        health.deliveries_put_back = put_back_counts()
    except Exception as exc:  # the cache down, as above
        logger.warning("processing health: could not read the deliveries put back: %s", exc)
    _judge(health)
    return health


def _capped_count(queryset) -> int:
    # COUNT(*) over a LIMITed subquery: reads at most COUNT_CAP index entries.
    return queryset.order_by().values("pk")[:COUNT_CAP].count()


def _events_waiting(now) -> Backlog:
    # As the processing claims them, on the event_waiting index; set-aside events are counted apart.
    waiting = WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED, processing_retry_at__isnull=True)
    oldest = waiting.order_by("received_at").values_list("received_at", flat=True).first()
    return Backlog(_capped_count(waiting), _seconds_between(oldest, now))


def _events_set_aside(now) -> Backlog:
    """Events that failed to be processed alone and wait for their next try (the event_set_aside
    index): a bug to fix whatever their number; overdue ones also mean processing is not running."""
    set_aside = WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED, processing_retry_at__isnull=False)
    first_due = set_aside.order_by("processing_retry_at").values_list("processing_retry_at", flat=True).first()
    return Backlog(_capped_count(set_aside), _seconds_between(first_due, now))


def _sending_destinations():
    # As the dispatcher chooses them: a paused or turned-off destination's deliveries wait on purpose.
    return Destination.objects.filter(DESTINATION_SENDING)


def _deliveries_due(now) -> Backlog:
    """Due deliveries of destinations that send. Walked destination by destination on the
    delivery_due_by_dest index: a paused destination's backlog, however large, is never read."""
    due = Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
    oldest_due_of_destination = (
        due.filter(destination=OuterRef("pk")).order_by("next_attempt_at").values("next_attempt_at")[:1]
    )
    oldest = (
        _sending_destinations()
        .annotate(oldest_due=Subquery(oldest_due_of_destination))
        .aggregate(oldest=Min("oldest_due"))["oldest"]
    )
    if oldest is None:
        return Backlog(0, 0.0)
    return Backlog(_capped_count(due.filter(destination__in=_sending_destinations())), _seconds_between(oldest, now))


def _deliveries_in_flight(now) -> Backlog:
    claimed = Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT)  # the delivery_in_flight index
    oldest = claimed.order_by("claimed_at").values_list("claimed_at", flat=True).first()
    return Backlog(_capped_count(claimed), _seconds_between(oldest, now))


def _deliveries_pending(now) -> int:
    return _capped_count(Delivery.objects.filter(status=Delivery.Status.PENDING))  # the delivery_due index


def _deliveries_dead(now) -> int:
    return _capped_count(Delivery.objects.filter(status=Delivery.Status.DEAD))  # the delivery_failed index


def dead_recently_since(now: datetime) -> datetime:
    # To the whole second: a list filter's time (an address bar's, a datetime-local input's) names
    # seconds, so the admin's link lists the very deliveries counted, none from a fraction before.
    return (now - DEAD_RECENTLY).replace(microsecond=0)


def _deliveries_dead_24h(now) -> int:
    # On the delivery_dead_completed index, in its order: without the ORDER BY the planner, which
    # takes the recent completions to be as often dead as the older ones (most are successes),
    # expects the cap to come soon in a scan of the whole table and reads it (3 million rows, 0.3 s).
    recent = Delivery.objects.filter(status=Delivery.Status.DEAD, completed_at__gte=dead_recently_since(now))
    return recent.order_by("completed_at").values("pk")[:COUNT_CAP].count()


def _deliveries_held_by_platform(now) -> dict[str, Backlog]:
    """Deliveries put back unsent and not sent since, by cause, each cause read on the delivery_put_back
    index (which holds only those): a count up to COUNT_CAP and the oldest put_back_since. In flight
    too: one claimed again is still held until an attempt is recorded."""
    held = {}
    for cause in PUT_BACK_CAUSES:
        of_cause = Delivery.objects.filter(
            put_back_cause=cause, status__in=(Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT)
        )
        since = of_cause.order_by("put_back_since").values_list("put_back_since", flat=True).first()
        held[cause] = Backlog(_capped_count(of_cause), _seconds_between(since, now))
    return held


def _destinations_paused(now) -> int:
    # As the admin index's "Paused destinations" lists them.
    return _capped_count(Destination.objects.filter(is_active=True, paused_at__isnull=False))


def _periodic_tasks(now) -> list[PeriodicRun]:
    from django_celery_beat.models import PeriodicTask

    runs = []
    for task in PeriodicTask.objects.select_related("interval").order_by("name"):
        every = None
        if task.interval is not None:
            every = task.interval.schedule.run_every.total_seconds()
        runs.append(PeriodicRun(task.name, task.task, task.enabled, task.last_run_at, every))
    return runs


def _beat_sent_at(now) -> datetime | None:
    return ProcessMark.objects.filter(name=BEAT_SENT_MARK).values_list("at", flat=True).first()


def _beat_tried_at(now) -> datetime | None:
    return ProcessMark.objects.filter(name=BEAT_TRIED_MARK).values_list("at", flat=True).first()


def _last_attempt_at(now) -> datetime | None:
    # Attempt ids are UUIDv7: the newest is the end of the primary key's index.
    return DeliveryAttempt.objects.order_by("-id").values_list("started_at", flat=True).first()


def _read_worker_mark(health: ProcessingHealth) -> None:
    try:
        stamped = cache.get(WORKER_MARK_KEY)
        health.redis_up = True
    except Exception as exc:
        logger.warning("processing health: the cache does not answer: %s", exc)
        health.redis_up = False
        stamped = None
    if stamped is not None:
        health.worker_ran_at = datetime.fromtimestamp(float(stamped), tz=UTC)
        health.worker_signal = "mark"
    # An attempt shows a worker at work even where the mark cannot be read or was lost. Where the
    # mark is there, an attempt after it (a process stamps at most every few seconds, so the last
    # attempt before workers stop often is) moves the time on, but the sign stays the mark: judged
    # as the "attempt" sign, stopped workers under a running beat read "no mark in the cache",
    # degraded, instead of stalled.
    if health.last_attempt_at is not None and (
        health.worker_ran_at is None or health.last_attempt_at > health.worker_ran_at
    ):
        health.worker_ran_at = health.last_attempt_at
        if health.worker_signal != "mark":
            health.worker_signal = "attempt"
    if health.worker_ran_at is None:
        health.worker_signal = "none" if health.redis_up else "unknown"


def _seconds_between(earlier: datetime | None, later: datetime) -> float:
    return 0.0 if earlier is None else max((later - earlier).total_seconds(), 0.0)


def duration_in_words(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _judge(health: ProcessingHealth) -> None:
    limits = thresholds()
    stalled: list[str] = []
    degraded: list[str] = []
    worker_age = health.age(health.worker_ran_at)
    worker_recent = worker_age is not None and worker_age <= limits["worker_stale"]
    beat_age = health.age(health.beat_last_run_at)
    beat_sent_age = health.age(health.beat_sent_at)
    beat_sending = beat_sent_age is not None and beat_sent_age <= limits["beat_stale"]

    events = health.events_waiting
    if events is not None and events.count and events.oldest_seconds > limits["backlog_degraded"]:
        webhooks_wait = "webhook waits" if events.count == 1 else "webhooks wait"
        words = (
            f"{_count_in_words(events.count)} {webhooks_wait} to be processed, the oldest received "
            f"{duration_in_words(events.oldest_seconds)} ago"
        )
        if events.oldest_seconds > limits["backlog_stalled"]:
            stalled.append(f"{words}: are workers running?")
        else:
            degraded.append(f"{words}: processing is behind")

    set_aside = health.events_set_aside
    if set_aside is not None and set_aside.count:
        # Whatever their number: each is a webhook a bug kept from its deliveries.
        could_not = (
            "webhook could not be processed and is"
            if set_aside.count == 1
            else "webhooks could not be processed and are"
        )
        words = f"{_count_in_words(set_aside.count)} {could_not} set aside; their pages say why"
        if set_aside.oldest_seconds > limits["backlog_stalled"]:
            stalled.append(
                f"{words}, and the first next try is {duration_in_words(set_aside.oldest_seconds)} overdue: "
                "are workers running?"
            )
        else:
            degraded.append(f"{words}; once fixed, the events list's action processes them now")

    due = health.deliveries_due
    if due is not None and due.count and due.oldest_seconds > limits["backlog_degraded"]:
        words = (
            f"the oldest due delivery is {duration_in_words(due.oldest_seconds)} overdue "
            f"({_count_in_words(due.count)} due)"
        )
        if worker_recent:
            # Workers are at work: a destination's concurrency or rate limit holds its backlog, or
            # there are too few workers for the traffic. Late, not stopped.
            degraded.append(
                f"{words}, though a worker ran {duration_in_words(worker_age)} ago: too few workers, "
                "or a slow or rate-limited destination holds its backlog"
            )
        elif due.oldest_seconds > limits["backlog_stalled"]:
            stalled.append(f"{words}: are workers running?")
        else:
            degraded.append(f"{words}: are workers running?")

    tasks = health.periodic_tasks
    if tasks is not None:
        if not [task for task in tasks if task.enabled]:
            stalled.append("no periodic task is installed and enabled: run install_periodic_tasks")
        elif health.beat_last_run_at is None:
            stalled.append("beat has never sent a periodic task: is beat running?")
        elif beat_age > limits["beat_stale"]:
            stalled.append(
                f"beat looks stopped: no periodic task sent for {duration_in_words(beat_age)}; "
                "retries and lost work wait for its sweep"
            )
        elif (
            "beat_sent_at" not in health.unmeasured
            and health.beat_sends_fail
            and health.beat_sent_at is None
            and health.redis_up
            # Beat's newest try is a failed connection it marked: a beat of this release, not the one before.
            and health.beat_last_run_at != health.beat_tried_at
        ):
            # No send was ever marked, and Redis answers: most likely the beat of the release before
            # the one that marks sends (webhooks migration 0036) still runs beside this code, as it
            # does for the minutes of a rolling upgrade. Its sends reach the broker; said as
            # "stalled, is the broker up?" it paged for nothing at each such upgrade. Not OK either:
            # a broker of its own (CELERY_BROKER_URL) may be down.
            degraded.append(
                f"beat tried a send {duration_in_words(beat_age)} ago, but none is marked as having reached "
                "the broker: a beat started before this release (which does not mark its sends) still runs, "
                "or the broker (CELERY_BROKER_URL) refuses them. Restart beat with the release"
            )
        elif "beat_sent_at" not in health.unmeasured and health.beat_sends_fail:
            # Beat runs (it tried within beat_stale) but the broker refused its newest task: the
            # sweep and the rest did not go out, whatever last_run_at says.
            last_reached = (
                f"the last that did was sent {duration_in_words(beat_sent_age)} ago"
                if health.beat_sent_at is not None
                else "none has reached it yet"
            )
            words = (
                f"beat's sends do not reach the broker: its newest try, {duration_in_words(beat_age)} ago, "
                f"failed; {last_reached}. Is the broker (CELERY_BROKER_URL) up?"
            )
            (degraded if beat_sending else stalled).append(words)

    if worker_recent:
        if health.redis_up is False:
            # A recent attempt keeps the workers "recent" for minutes after Redis went away: the
            # verdict must not read OK meanwhile, with every new webhook stored and none processed.
            degraded.append("Redis does not answer: webhooks are stored, but processing and deliveries wait for Redis")
    elif health.redis_up is False:
        degraded.append("Redis does not answer: whether workers run is unknown, and processing waits for Redis")
    elif health.worker_signal == "mark":
        words = f"no worker has run a task for {duration_in_words(worker_age)}"
        if beat_sending and not health.beat_sends_fail:
            stalled.append(
                f"{words}, though beat sends the sweep every {settings.SWEEP_INTERVAL_SECONDS:g} s: "
                "are workers running?"
            )
        else:
            degraded.append(words)
    elif health.worker_signal == "attempt":  # Redis answers but holds no mark: emptied, or no worker ran since
        degraded.append(
            "no worker has left its mark in the cache, and the newest delivery attempt is "
            f"{duration_in_words(worker_age)} old: are workers running?"
        )
    else:
        degraded.append("no worker has run a task since the cache was last emptied: are workers running?")

    claims = health.deliveries_in_flight
    if claims is not None and claims.count and claims.oldest_seconds > limits["claim_stale"]:
        degraded.append(
            f"a delivery has been in flight for {duration_in_words(claims.oldest_seconds)}: the sweeper "
            "should have released it by now; is beat running?"
        )

    secrets = health.secrets_unreadable
    if secrets is not None and secrets.recent:
        degraded.append(secrets.reason_words(health.checked_at.timestamp()))

    for cause, held in (health.deliveries_held_by_platform or {}).items():
        # Tried again without end and never charged to their receivers: a hold that lasts is the
        # platform's to end (its keys, or a tenant's unanswering DNS filling the lookups).
        if held.count and held.oldest_seconds > limits["backlog_degraded"]:
            deliveries = "delivery is" if held.count == 1 else "deliveries are"
            degraded.append(
                f"{_count_in_words(held.count)} {deliveries} held by the platform, not sent ({HELD_BY_PLATFORM[cause]}), "
                f"the longest for {duration_in_words(held.oldest_seconds)}: they are tried again until it ends"
            )

    for name in health.unmeasured:
        degraded.append(f"could not measure {name.replace('_', ' ')} (the query failed)")

    health.reasons = stalled + degraded
    health.verdict = STALLED if stalled else DEGRADED if degraded else OK


# Why the platform holds deliveries, by Delivery.put_back_cause, for the verdict's reasons.
HELD_BY_PLATFORM = {
    "secret_unreadable": "their destination's secret cannot be decrypted: a worker lacks a key of FIELD_ENCRYPTION_KEYS",
    "dns_lookups_busy": "the platform's own bound on DNS lookups in progress refuses their sends",
}


def _count_in_words(count: int) -> str:
    return f"{COUNT_CAP:,}+" if count >= COUNT_CAP else f"{count:,}"


# --- Prometheus text exposition format (version 0.0.4) ---------------------------------------

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prometheus_text(health: ProcessingHealth | None) -> str:
    """The figures as gauges. A figure that was not measured is left out and its
    ``hookline_health_measure_up`` is 0; ``health`` None (the check itself failed) gives only
    ``hookline_health_up 0``."""
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples, kind: str = "gauge") -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels.items())
            lines.append(f"{name}{{{label_text}}} {_number(value)}" if labels else f"{name} {_number(value)}")

    gauge("hookline_health_up", "1 if the processing health check ran.", [({}, 0 if health is None else 1)])
    if health is None:
        return "\n".join(lines) + "\n"

    def backlog(backlog: Backlog | None, attribute: str):
        return None if backlog is None else getattr(backlog, attribute)

    def timestamp(moment: datetime | None):
        return None if moment is None else moment.timestamp()

    measured = [
        "events_waiting",
        "events_set_aside",
        "deliveries_due",
        "deliveries_in_flight",
        "deliveries_pending",
        "deliveries_dead",
        "deliveries_dead_24h",
        "deliveries_held_by_platform",
        "destinations_paused",
        "periodic_tasks",
        "beat_sent_at",
        "beat_tried_at",
        "last_attempt_at",
    ]
    gauge(
        "hookline_health_measure_up",
        "1 if the figure's query succeeded, 0 if it failed (its metrics are then left out).",
        [({"measure": name}, 0 if name in health.unmeasured else 1) for name in measured],
    )
    gauge("hookline_health_verdict", "Processing verdict: 0 ok, 1 degraded, 2 stalled.", [({}, health.level)])
    gauge(
        "hookline_redis_up",
        "1 if the cache (Redis) answered the health check.",
        [({}, None if health.redis_up is None else int(health.redis_up))],
    )
    gauge("hookline_count_cap", "Counts stop at this number.", [({}, COUNT_CAP)])
    events, due, claimed = health.events_waiting, health.deliveries_due, health.deliveries_in_flight
    gauge(
        "hookline_events_waiting", "Webhooks received and not yet processed (capped).", [({}, backlog(events, "count"))]
    )
    gauge(
        "hookline_events_waiting_oldest_age_seconds",
        "Age of the oldest webhook not yet processed (0 if none).",
        [({}, backlog(events, "oldest_seconds"))],
    )
    set_aside = health.events_set_aside
    gauge(
        "hookline_events_set_aside",
        "Webhooks received that failed to be processed and wait for their next try (capped).",
        [({}, backlog(set_aside, "count"))],
    )
    gauge(
        "hookline_events_set_aside_overdue_seconds",
        "How overdue the first set-aside webhook's next try is (0 if none is due).",
        [({}, backlog(set_aside, "oldest_seconds"))],
    )
    gauge(
        "hookline_deliveries_due",
        "Deliveries due now at destinations that send, not yet sent (capped).",
        [({}, backlog(due, "count"))],
    )
    gauge(
        "hookline_deliveries_due_oldest_overdue_seconds",
        "How overdue the oldest due delivery is (0 if none).",
        [({}, backlog(due, "oldest_seconds"))],
    )
    gauge(
        "hookline_deliveries_in_flight_oldest_claim_age_seconds",
        "Age of the oldest claim (0 if none).",
        [({}, backlog(claimed, "oldest_seconds"))],
    )
    gauge(
        "hookline_deliveries",
        "Deliveries by status (capped; succeeded ones are not counted).",
        [
            ({"status": "pending"}, health.deliveries_pending),
            ({"status": "in_flight"}, backlog(claimed, "count")),
            ({"status": "dead"}, health.deliveries_dead),
        ],
    )
    gauge(
        "hookline_deliveries_dead_24h",
        "Deliveries that went dead in the last 24 hours (capped).",
        [({}, health.deliveries_dead_24h)],
    )
    gauge(
        "hookline_destinations_paused",
        "Active destinations paused, by the circuit breaker or by hand: their deliveries wait (capped).",
        [({}, health.destinations_paused)],
    )
    gauge(
        "hookline_periodic_task_last_run_timestamp_seconds",
        "When beat last sent, or tried to send, each periodic task.",
        [({"task": task.name}, timestamp(task.last_run_at)) for task in health.periodic_tasks or []],
    )
    gauge(
        "hookline_beat_last_run_timestamp_seconds",
        "When beat last sent, or tried to send, any enabled periodic task.",
        [({}, timestamp(health.beat_last_run_at))],
    )
    gauge(
        "hookline_beat_last_sent_timestamp_seconds",
        "When a task beat sent last reached the broker.",
        [({}, timestamp(health.beat_sent_at))],
    )
    gauge(
        "hookline_worker_last_run_timestamp_seconds",
        "The newest sign of a worker running a task.",
        [({}, timestamp(health.worker_ran_at))],
    )
    gauge(
        "hookline_last_delivery_attempt_timestamp_seconds",
        "When the newest delivery attempt started.",
        [({}, timestamp(health.last_attempt_at))],
    )
    if health.deliveries_put_back is not None:
        gauge(
            "hookline_deliveries_put_back_total",
            "Deliveries put back unsent for a reason of the platform's own, their attempt not counted, by cause "
            "(secret_unreadable: a destination secret no key decrypts; dns_lookups_busy: the organization's or "
            "process's DNS lookups in progress were full), every process's.",
            [({"cause": cause}, count) for cause, count in health.deliveries_put_back.items()],
            kind="counter",
        )
    held = health.deliveries_held_by_platform
    # Every cause, 0 included, as the counter above.
    gauge(
        "hookline_deliveries_held_by_platform",
        "Deliveries put back unsent by the platform and not sent since, by cause (capped): retried without "
        "end, never charged to their receivers.",
        [({"cause": cause}, backlog.count) for cause, backlog in (held or {}).items()],
    )
    gauge(
        "hookline_deliveries_held_by_platform_oldest_seconds",
        "How long the longest held delivery of each cause has been put back in a row (0 if none).",
        [({"cause": cause}, backlog.oldest_seconds) for cause, backlog in (held or {}).items()],
    )
    secrets = health.secrets_unreadable
    if secrets is not None:
        # Every place and reason, 0 included: a series that appears only at its first failure
        # makes rate() and increase() miss that failure.
        gauge(
            "hookline_secret_decrypt_failures_total",
            "Stored secrets that could not be decrypted, by where (place) and why (reason: unknown_key, "
            "a well-formed token no configured key opens; malformed, not a Fernet token), every process's.",
            [
                ({"place": place, "reason": reason}, secrets.counts.get((place, reason), 0))
                for place in secret_health.PLACES
                for reason in UNREADABLE_REASONS
            ],
            kind="counter",
        )
        gauge(
            "hookline_secret_decrypt_failure_recent",
            "1 while a stored secret could not be decrypted within HEALTH_SECRET_UNREADABLE_SECONDS.",
            [({}, int(secrets.recent))],
        )
        gauge(
            "hookline_secret_decrypt_failure_last_timestamp_seconds",
            "When a stored secret last could not be decrypted (while recent).",
            [({}, secrets.last["at"] if secrets.last else None)],
        )
    return "\n".join(lines) + "\n"


def _label_value(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
