"""Install the project's periodic tasks (settings.CELERY_BEAT_SCHEDULE) into django-celery-beat's tables.

Idempotent: each task is created or brought back to the code's schedule by name, exactly as
celery beat's DatabaseScheduler does at start-up; an admin's "enabled" switch is kept. Run by
the Procfile's release phase and by `make run`, so the tasks are in the admin before beat starts.
Also removes Celery's own ``celery.backend_cleanup``, which beat installed while result_expires was
set (see CELERY_RESULT_EXPIRES in config/settings.py) and which has nothing to clean here.
"""

import json

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from config.celery import app
from webhooks.services.text import duration_words

# Installed by beat itself (Scheduler.install_default_entries) whenever result_expires is set.
CELERY_RESULT_CLEANUP_TASK = "celery.backend_cleanup"


class Command(BaseCommand):
    help = "Create or update the periodic tasks listed in settings.CELERY_BEAT_SCHEDULE."
    requires_system_checks = []  # as the other operator commands (OperatorCommand)

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    @transaction.atomic
    def handle(self, *args, **options):
        installed = []
        for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
            existed = PeriodicTask.objects.filter(name=name).exists()
            task = ModelEntry.from_entry(name, app=app, **entry).model
            installed.append(
                {
                    "name": name,
                    "task": task.task,
                    "schedule": _schedule_in_words(task),
                    "created": not existed,
                }
            )
        removed = []
        if not app.conf.result_expires and CELERY_RESULT_CLEANUP_TASK not in settings.CELERY_BEAT_SCHEDULE:
            # Left by a beat that ran before result_expires was unset: beat no longer adds it, and
            # nothing else would take it out of the admin's list and the health check's.
            stale = PeriodicTask.objects.filter(name=CELERY_RESULT_CLEANUP_TASK, task=CELERY_RESULT_CLEANUP_TASK)
            if stale.delete()[0]:
                removed.append(CELERY_RESULT_CLEANUP_TASK)
        if options["json"]:
            self.stdout.write(json.dumps({"periodic_tasks": installed, "removed": removed}))
        else:
            for item in installed:
                state = "created" if item["created"] else "up to date"
                self.stdout.write(f"{item['name']}: {item['task']} {item['schedule']} ({state})")
            for name in removed:
                self.stdout.write(f"{name}: removed (Hookline keeps no task results to clean up)")


def _schedule_in_words(task: PeriodicTask) -> str:
    """The task's schedule, worded the same whether its interval was just created or read back.

    A new IntervalSchedule keeps the float it was given ("every 5.0 seconds") until it is read back
    from its integer column ("every 5 seconds"), so an interval is worded from its length instead.
    """
    if task.interval is not None:
        return f"every {duration_words(task.interval.schedule.run_every.total_seconds())}"
    return str(task.crontab or task.solar or task.clocked)
