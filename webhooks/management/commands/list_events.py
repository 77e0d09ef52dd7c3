from organizations.models import Organization
from webhooks.models import WebhookEvent
from webhooks.selectors import events_for_organization

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = "List an organization's newest events with their deliveries."

    def add_command_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--status", choices=[value for value, _ in WebhookEvent.Status.choices])
        parser.add_argument("--limit", type=_positive, default=20, help="newest N events (default 20)")

    def run(self, **options):
        organization = Organization.objects.get(slug=options["org"])
        events = events_for_organization(
            organization=organization, status=options.get("status"), limit=options["limit"], with_deliveries=True
        )
        rows = [
            {
                "id": str(event.id),
                "provider_event_id": event.provider_event_id,
                "event_type": event.event_type,
                "status": event.status,
                "rejection": event.rejection_code or None,
                "duplicate_count": event.duplicate_count,
                "received_at": event.received_at.isoformat(),
                "deliveries": [
                    {
                        "id": str(delivery.id),
                        "destination": delivery.destination.name,
                        "status": delivery.status,
                        "attempts": delivery.attempt_count,
                    }
                    for delivery in event.deliveries.all()
                ],
            }
            for event in events
        ]
        lines = [
            f"{row['received_at'][:19]}  {row['status']:<9} {row['event_type'] or '-':<30} {row['provider_event_id'] or row['rejection'] or ''}"
            + "".join(
                f"\n    → {d['destination']}: {d['status']} ({d['attempts']} attempt{'' if d['attempts'] == 1 else 's'})"
                for d in row["deliveries"]
            )
            for row in rows
        ]
        return {"events": rows}, "\n".join(lines) or "No events."


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


_positive.__name__ = "positive integer"  # argparse names the type: "invalid positive integer value: '-5'"
