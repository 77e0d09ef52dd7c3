"""Celery tasks: they take ids and call services, nothing more."""

from celery import shared_task
from celery.signals import worker_init, worker_shutting_down

from webhooks.services import (
    alerts,
    delivery,
    destination_deletion,
    lifecycle,
    operations,
    organization_deletion,
    platform_health,
    processing,
    scheduling,
    source_deletion,
)


@worker_init.connect
def _prepare_for_a_warm_shutdown(**kwargs) -> None:
    scheduling.prepare_for_worker_shutdown()  # in the main process, before the pool forks


@worker_shutting_down.connect
def _tell_running_tasks_to_wind_up(**kwargs) -> None:
    scheduling.note_worker_stopping()


@shared_task(name="webhooks.tasks.process_events")
def process_events() -> int:
    platform_health.note_worker_ran()
    return processing.process_received_events()


_DISPATCH_SOFT_TIME_LIMIT, _DISPATCH_TIME_LIMIT = delivery.dispatcher_time_limits()


# Longer limits than the other tasks': a run holds results through a database outage.
@shared_task(
    name="webhooks.tasks.dispatch_deliveries",
    soft_time_limit=_DISPATCH_SOFT_TIME_LIMIT,
    time_limit=_DISPATCH_TIME_LIMIT,
)
def dispatch_deliveries(slot: int = 0) -> int:
    platform_health.note_worker_ran()
    return delivery.dispatch_due_deliveries(slot=slot)


@shared_task(name="webhooks.tasks.sweep")
def sweep() -> dict:
    # Beat sends this every SWEEP_INTERVAL_SECONDS: an idle worker is seen alive by it too.
    platform_health.note_worker_ran()
    return processing.sweep()


@shared_task(name="webhooks.tasks.run_bulk_retry")
def run_bulk_retry(job_id: int) -> None:
    operations.bulk_retry_run(job_id)


@shared_task(name="webhooks.tasks.send_dead_letter_digests")
def send_dead_letter_digests() -> int:
    return alerts.send_dead_letter_digests()


@shared_task(name="webhooks.tasks.purge_expired_events")
def purge_expired_events(start_after: int | None = None) -> int:
    return lifecycle.retention_task(start_after).deleted


@shared_task(name="webhooks.tasks.forget_expired_previous_secrets")
def forget_expired_previous_secrets() -> int:
    return lifecycle.forget_expired_previous_secrets()


@shared_task(name="webhooks.tasks.delete_organization")
def delete_organization(organization_id: int) -> bool:
    return organization_deletion.organization_deletion_task(organization_id)


@shared_task(name="webhooks.tasks.delete_source")
def delete_source(source_id: int) -> bool:
    return source_deletion.source_deletion_task(source_id)


@shared_task(name="webhooks.tasks.delete_destination")
def delete_destination(destination_id: int) -> bool:
    return destination_deletion.destination_deletion_task(destination_id)
