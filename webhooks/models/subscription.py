from fnmatch import fnmatchcase

from django.db import models

from organizations.models import Organization


class Subscription(models.Model):
    """Events of a source go to a destination, optionally only some event types."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    source = models.ForeignKey("webhooks.Source", on_delete=models.CASCADE, related_name="subscriptions")
    destination = models.ForeignKey("webhooks.Destination", on_delete=models.CASCADE, related_name="subscriptions")
    # Glob patterns such as "invoice.*"; empty means every event type.
    event_types = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("source", "destination"), name="subscription_unique_source_destination")
        ]

    def __str__(self) -> str:
        return f"{self.source} → {self.destination}"

    def matches(self, event_type: str) -> bool:
        return not self.event_types or any(fnmatchcase(event_type, pattern) for pattern in self.event_types)
