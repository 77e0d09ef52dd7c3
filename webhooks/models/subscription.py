from fnmatch import fnmatchcase

from django.db import models

from organizations.models import Organization

WILDCARDS = "*?["
# Where a provider's type names the types under a name: "issues.opened", Shopify's "orders/create".
TYPE_LEVEL_SEPARATORS = (".", "/")


def event_type_matches(event_type: str, pattern: str) -> bool:
    """Whether a filter pattern takes an event type: shell-style (``*``, ``?``, ``[set]``, as
    fnmatch reads them), and a pattern without wildcards also takes the types named under it,
    since that is how providers group them: after a dot ("issues" takes GitHub's "issues.opened")
    or a slash ("orders" takes Shopify's "orders/create")."""
    if fnmatchcase(event_type, pattern):
        return True
    return not any(character in pattern for character in WILDCARDS) and event_type.startswith(
        tuple(pattern + separator for separator in TYPE_LEVEL_SEPARATORS)
    )


class Subscription(models.Model):
    """Events of a source go to a destination, optionally only some event types."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    source = models.ForeignKey("webhooks.Source", on_delete=models.CASCADE, related_name="subscriptions")
    destination = models.ForeignKey("webhooks.Destination", on_delete=models.CASCADE, related_name="subscriptions")
    # Patterns such as "invoice.*" or "issues" (see event_type_matches); empty means every event type.
    event_types = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("source", "destination"), name="subscription_unique_source_destination")
        ]

    def __str__(self) -> str:
        return f"{self.source} → {self.destination}"

    def matches(self, event_type: str) -> bool:
        return not self.event_types or any(event_type_matches(event_type, pattern) for pattern in self.event_types)
