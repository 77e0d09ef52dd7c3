"""Recompute the audit log's hash chain and report the first entry that does not hold."""

import json

from django.core.management.base import BaseCommand, CommandError

from organizations.services import audit_verify_chain


class Command(BaseCommand):
    help = "Walk the audit log's hash chain; exit 1 at the first broken link."
    requires_system_checks = []  # as the other operator commands (OperatorCommand)

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        report = audit_verify_chain()
        if options["json"]:
            self.stdout.write(json.dumps(report.__dict__))
        elif report.ok and not report.checked:
            self.stdout.write("OK: the audit log is empty.")
        elif report.ok:
            self.stdout.write(
                f"OK: {report.checked} entries chain correctly (ids {report.first_entry_id}–{report.last_entry_id}); "
                f"head hash {report.last_entry_hash or '—'}"
            )
        else:
            self.stdout.write(
                f"BROKEN at entry {report.broken_entry_id}: {report.reason} "
                f"({report.checked} entries before it verified)"
            )
        if not report.ok:
            raise CommandError("the audit log's hash chain is broken", returncode=1)
