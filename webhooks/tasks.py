"""Celery tasks: they take ids and call services, nothing more."""

from celery import shared_task

from webhooks.services import delivery, processing


@shared_task(name="webhooks.tasks.process_events")
def process_events() -> int:
    return processing.process_received_events()


@shared_task(name="webhooks.tasks.dispatch_deliveries")
def dispatch_deliveries() -> int:
    return delivery.dispatch_due_deliveries()


@shared_task(name="webhooks.tasks.sweep")
def sweep() -> dict:
    return processing.sweep()
