"""Install the project's periodic tasks (settings.CELERY_BEAT_SCHEDULE) into django-celery-beat's tables.

Idempotent: each task is created or brought back to the code's schedule by name, exactly as
celery beat's DatabaseScheduler does at start-up; an admin's "enabled" switch is kept. Run by
the Procfile's release phase and by `make run`, so the tasks are in the admin before beat starts.
"""

import json

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from config.celery import app


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
                    "schedule": str(task.interval or task.crontab or task.solar or task.clocked),
                    "created": not existed,
                }
            )
        if options["json"]:
            self.stdout.write(json.dumps({"periodic_tasks": installed}))
        else:
            for item in installed:
                state = "created" if item["created"] else "up to date"
                self.stdout.write(f"{item['name']}: {item['task']} {item['schedule']} ({state})")
