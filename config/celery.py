import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("hookline")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def filter_worker_logs(logger, **kwargs):
    """Celery replaces the root logger's handlers (Django's masking one among them) and gives
    task loggers their own, so the worker and beat mask URL tokens on those handlers too, and
    leave out the lines of sweeps that found nothing to do."""
    from config.log_filters import QuietIdleSweeps
    from config.log_masking import MaskUrlTokens

    for handler in logger.handlers:
        for wanted in (MaskUrlTokens, QuietIdleSweeps):
            if not any(isinstance(existing, wanted) for existing in handler.filters):
                handler.addFilter(wanted())
