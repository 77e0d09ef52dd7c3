from organizations.models import Organization
from webhooks.models import WebhookEvent
from webhooks.selectors import EVENT_STATUS_ALL, EVENT_STATUSES_FROM_DELIVERIES, EventFilters, event_page
from webhooks.services.text import terminal_text

from ._base import NumberArgument, OperatorCommand, find_given

# Each event comes with all its deliveries: an unbounded --limit could load a whole organization at once.
MAX_LIMIT = 1000


class Command(OperatorCommand):
    help = "List an organization's newest events with their deliveries."

    def add_command_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument(
            "--status",
            choices=[*(value for value, _ in WebhookEvent.Status.choices), *EVENT_STATUSES_FROM_DELIVERIES],
            help="an event status, or failed (a delivery is dead), retrying (a delivery failed and waits) or "
            "held_by_platform (a delivery the platform itself put back unsent)",
        )
        parser.add_argument(
            "--search",
            metavar="ID",
            help="an exact id: the provider's (also one a rejected request claims), Hookline's, or a webhook-id",
        )
        parser.add_argument(
            "--limit",
            type=NumberArgument(bounds=(1, MAX_LIMIT)),
            default=20,
            metavar="N",
            help=f"newest N events, 1 to {MAX_LIMIT} (default 20)",
        )

    def run(self, **options):
        organization = find_given(Organization.objects.all(), options["org"], field="slug")
        # Every request by default, rejected ones too, as this command always listed them (the
        # dashboard and the API list accepted events unless asked: selectors.EVENT_STATUS_ALL).
        filters = EventFilters(status=options.get("status") or EVENT_STATUS_ALL, search=options.get("search") or "")
        events = event_page(organization=organization, filters=filters, limit=options["limit"]).events
        rows = [
            {
                "id": str(event.id),
                "source": event.source.name,
                "provider_event_id": event.provider_event_id,
                "claimed_event_id": event.claimed_event_id,
                "event_type": event.event_type,
                "status": event.status,
                "rejection": event.rejection_code or None,
                "rejection_detail": event.rejection_detail or None,
                "duplicate_count": event.duplicate_count,
                "received_at": event.received_at.isoformat(),
                "deliveries": [
                    {
                        "id": str(delivery.id),
                        "webhook_id": delivery.message_id,
                        "destination": delivery.destination.name,
                        # Names need not be unique: `make run` follows its demo destination by id.
                        "destination_id": delivery.destination_id,
                        "is_replay": delivery.is_replay,
                        "status": delivery.status,
                        "attempts": delivery.attempt_count,
                        # Why the last attempt failed and when the next one is due: what an
                        # operator needs before `retry_delivery --id`.
                        "last_status_code": delivery.last_status_code,
                        "last_error": delivery.last_error or None,
                        "next_attempt_at": _iso(delivery.next_attempt_at)
                        if delivery.status == delivery.Status.PENDING and delivery.attempt_count
                        else None,
                    }
                    for delivery in event.deliveries.all()
                ],
            }
            for event in events
        ]
        lines = [
            f"{row['received_at'][:19]}  {row['status']:<9} {_one_line(row['event_type']) or '-':<30} "
            + _one_line(row["provider_event_id"] or f"{row['rejection'] or ''} {row['claimed_event_id'] or ''}".strip())
            + f"  (source {_one_line(row['source'])})"
            # Redeliveries of the same provider event, counted on it (the events list's ×N badge).
            + (f"  ×{row['duplicate_count'] + 1} received" if row["duplicate_count"] else "")
            + (f"\n    {_one_line(row['rejection_detail'])}" if row["rejection_detail"] else "")
            + "".join(_delivery_line(d) for d in row["deliveries"])
            for row in rows
        ]
        return {"events": rows}, "\n".join(lines) or "No events."


def _delivery_line(delivery: dict) -> str:
    attempts = delivery["attempts"]
    # A replay is a second delivery to the same destination: said, so that it is not taken for a duplicate.
    replay = " (replay)" if delivery["is_replay"] else ""
    line = (
        f"\n    → {_one_line(delivery['destination'])}{replay}: {delivery['status']} "
        f"({attempts} attempt{'' if attempts == 1 else 's'})"
    )
    if delivery["last_error"] and delivery["status"] != "succeeded":
        line += f", last: {_one_line(delivery['last_error'])}"
    if delivery["next_attempt_at"]:
        line += f", next try {delivery['next_attempt_at'][:19]}"
    return line + f"  delivery {delivery['id']}"


def _one_line(value: str | None) -> str | None:
    """A sender's or receiver's text kept on its line: a line break in an event type must not print
    a line that reads as one of this command's own ("    → endpoint: succeeded")."""
    return terminal_text(value, keep_lines=False) if value else value


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None
