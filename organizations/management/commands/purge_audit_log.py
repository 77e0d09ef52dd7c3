"""Retention for the audit log: the one way its rows may be deleted, and itself audited."""

import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from organizations.services import audit_purge, audit_purge_count, audit_system_actor, command_actor_label
from webhooks.management.commands._base import WHOLE_NUMBER


class Command(BaseCommand):
    help = "Delete audit entries older than --older-than-days; the purge writes its own entry."
    requires_system_checks = []  # as the other operator commands (OperatorCommand)

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-days",
            type=WHOLE_NUMBER,
            required=True,
            metavar="N",
            help="delete the entries older than N days (1 or more)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="only say how many entries would be deleted; delete nothing"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, older_than_days: int, **options):
        if older_than_days < 1:
            message = "--older-than-days must be at least 1"
            if options["json"]:  # a script still reads one JSON object
                self.stdout.write(json.dumps({"error": message}))
            raise CommandError(message)
        before = timezone.now() - timedelta(days=older_than_days)
        if options["dry_run"]:
            count = audit_purge_count(before=before)
            if options["json"]:
                self.stdout.write(json.dumps({"would_delete": count, "before": before.isoformat()}))
            else:
                self.stdout.write(
                    f"Would delete {count} audit entries older than {older_than_days} days; none deleted."
                )
            return
        with audit_system_actor(command_actor_label("purge_audit_log")):
            deleted = audit_purge(before=before, actor=None)
        if options["json"]:
            self.stdout.write(json.dumps({"deleted": deleted, "before": before.isoformat()}))
        else:
            self.stdout.write(f"Deleted {deleted} audit entries older than {older_than_days} days.")
