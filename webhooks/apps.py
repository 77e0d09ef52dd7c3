import sys

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from organizations.models import Organization

        from . import checks  # noqa: F401 - registers the deploy checks
        from .models import Source

        for model in (Source, Organization):
            post_save.connect(forget_cached_sources, sender=model, dispatch_uid=f"ingest-cache-{model.__name__}")
            post_delete.connect(forget_cached_sources, sender=model, dispatch_uid=f"ingest-cache-del-{model.__name__}")


def forget_cached_sources(**kwargs) -> None:
    # Only a process that imported the ingest service holds cached sources. Importing it here at
    # start-up brought the providers, the delivery engine and Celery's tasks into every process
    # (show_event, list_events and the other commands included) whether it took webhooks in or not.
    ingest = sys.modules.get("webhooks.services.ingest")
    if ingest is not None:
        ingest.forget_cached_sources(**kwargs)
