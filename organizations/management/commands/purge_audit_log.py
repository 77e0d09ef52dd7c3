"""Retention for the audit log: the one way its rows may be deleted, and itself audited."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from organizations.services import audit_purge


class Command(BaseCommand):
    help = "Delete audit entries older than --older-than-days; the purge writes its own entry."

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=int, required=True)

    def handle(self, *args, older_than_days: int, **options):
        if older_than_days < 1:
            raise CommandError("--older-than-days must be at least 1")
        deleted = audit_purge(before=timezone.now() - timedelta(days=older_than_days), actor=None)
        self.stdout.write(f"Deleted {deleted} audit entries older than {older_than_days} days.")
