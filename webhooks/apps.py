from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from organizations.models import Organization

        from . import checks  # noqa: F401 - registers the deploy checks
        from .models import Source
        from .services.ingest import forget_cached_sources

        for model in (Source, Organization):
            post_save.connect(forget_cached_sources, sender=model, dispatch_uid=f"ingest-cache-{model.__name__}")
            post_delete.connect(forget_cached_sources, sender=model, dispatch_uid=f"ingest-cache-del-{model.__name__}")
