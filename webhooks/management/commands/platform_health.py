"""Whether processing keeps up: exit status 0 ok, 1 degraded, 2 stalled, for cron or `heroku run`."""

from datetime import datetime

from webhooks.services.platform_health import ProcessingHealth, duration_in_words, processing_health

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = (
        "Whether workers and beat keep up: webhooks waiting to be processed, deliveries overdue or in flight, "
        "when beat and the workers last ran. Exit status 0 ok, 1 degraded, 2 stalled."
    )

    def handle(self, *args, **options):
        super().handle(*args, **options)
        if self._level:
            raise SystemExit(self._level)  # after the output: a script reads both

    def run(self, **options):
        health = processing_health()
        self._level = health.level
        return health.as_dict(), _text(health)


def _text(health: ProcessingHealth) -> str:
    lines = [f"Processing: {health.verdict.upper()}"]
    lines += [f"  - {reason}" for reason in health.reasons]

    def backlog(label, value, oldest):
        if value is None:
            return f"{label}: not measured"
        count = f"{value.count:,}+" if value.capped else f"{value.count:,}"
        return f"{label}: {count}" + (
            f" ({oldest.format(duration_in_words(value.oldest_seconds))})" if value.count else ""
        )

    lines.append(backlog("Webhooks waiting to be processed", health.events_waiting, "the oldest received {} ago"))
    lines.append(
        backlog("Set aside (could not be processed)", health.events_set_aside, "the first next try {} overdue")
    )
    lines.append(backlog("Deliveries due, not sent", health.deliveries_due, "the oldest {} overdue"))
    lines.append(backlog("Deliveries in flight", health.deliveries_in_flight, "the oldest claimed {} ago"))
    lines.append(f"Dead deliveries, last 24 h: {_figure(health.deliveries_dead_24h)}")
    lines.append(f"Paused destinations (their deliveries wait): {_figure(health.destinations_paused)}")
    if health.deliveries_held_by_platform is None:
        lines.append("Deliveries held by the platform (put back unsent): not measured")
    else:
        for cause, held in health.deliveries_held_by_platform.items():
            lines.append(backlog(f"Deliveries held by the platform, {cause}", held, "the longest held for {}"))
    # Sent: reached the broker. A try after it (a periodic task's last_run_at) failed.
    lines.append(f"Beat last sent a task: {_ago(health, health.beat_sent_at)}")
    if health.beat_sends_fail:
        lines.append(f"Beat last tried to send one (it failed): {_ago(health, health.beat_last_run_at)}")
    worker_unknown = "unknown (Redis does not answer)" if health.worker_signal == "unknown" else "never"
    lines.append(f"A worker last ran a task: {_ago(health, health.worker_ran_at, worker_unknown)}")
    for task in health.periodic_tasks or []:
        state = "" if task.enabled else " (disabled)"
        lines.append(f"  {task.name}{state}: last sent or tried {_ago(health, task.last_run_at)}")
    return "\n".join(lines)


def _figure(value) -> str:
    return "not measured" if value is None else f"{value:,}"


def _ago(health: ProcessingHealth, moment: datetime | None, otherwise: str = "never") -> str:
    if moment is None:
        return otherwise
    return f"{duration_in_words(health.age(moment))} ago ({moment:%Y-%m-%d %H:%M:%S} UTC)"
