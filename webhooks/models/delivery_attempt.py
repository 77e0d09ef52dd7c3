from django.db import models
from django.utils import timezone
from uuid6 import uuid7

from organizations.models import Organization

# An attempt that got no answer, or an answer other than 2xx.
FAILED = models.Q(response_status__isnull=True) | models.Q(response_status__lt=200) | models.Q(response_status__gte=300)


class DeliveryAttempt(models.Model):
    """One HTTP request to a destination and what came back."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    delivery = models.ForeignKey("webhooks.Delivery", on_delete=models.CASCADE, related_name="attempts")
    attempt_number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    request_headers = models.JSONField(default=dict)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)
    # The answer went on past what is kept (DELIVERY_RESPONSE_BODY_MAX_BYTES): response_body is its start.
    # A database default too: the previous release's INSERTs, during a rolling upgrade, do not name it.
    response_truncated = models.BooleanField(default=False, db_default=False)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ("delivery", "attempt_number")
        constraints = [
            # One row per send: each claim numbers its attempt anew. The recording code already
            # writes a send once however often it is handed in; this keeps that true for good.
            models.UniqueConstraint(fields=("delivery", "attempt_number"), name="attempt_delivery_number"),
        ]
        indexes = [
            # A destination's last failure (its page and the destinations list): walked newest
            # first, in proportion to the failures rather than to every attempt ever made; a
            # destination that never failed would otherwise read the whole table.
            models.Index(fields=("organization", "-id"), condition=FAILED, name="attempt_failed"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.attempt_number} of {self.delivery_id}"
