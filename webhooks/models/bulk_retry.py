from django.conf import settings
from django.db import models
from django.utils import timezone

from organizations.models import Organization


class BulkRetry(models.Model):
    """A background job that retries every failed or dead delivery matching a filter."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # source, destination, statuses, event_type, received_after, received_before
    filters = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    # Of total, the deliveries left out because their source or destination is being deleted (sent
    # again, they would only be dead-lettered unsent or held until the deletion removes them): as
    # counted when the job was asked for until it runs, then as its run finds them.
    left_out = models.PositiveIntegerField(default=0, db_default=0)
    # Progress cursor: a job picked up again after a crash continues after this delivery.
    last_delivery_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Set when a run takes the job and after each batch: a job whose run stopped beating
    # (a worker killed, a task lost with the broker) is taken up again by the sweeper.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Whether its run marks the deliveries it retries (Delivery.bulk_retry), so that what became of
    # them can be counted. False for jobs from before (and any that code from before asked for
    # while a release was being deployed): nothing marks their deliveries, no outcome is shown.
    outcome_recorded = models.BooleanField(default=True, db_default=False)

    class Meta:
        ordering = ("-created_at",)
        verbose_name_plural = "bulk retries"

    def __str__(self) -> str:
        return f"bulk retry {self.pk} ({self.retried}/{self.total})"

    @property
    def to_retry(self) -> int:
        """Of total, those the job retries: the rest are left out."""
        return max(self.total - self.left_out, 0)
