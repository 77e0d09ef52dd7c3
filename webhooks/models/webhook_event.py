from django.db import models
from django.utils import timezone
from uuid6 import uuid7

from organizations.models import Organization
from webhooks.services.text import visible_text


class WebhookEvent(models.Model):
    """One received request: verified (and then processed), or rejected with its reason."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"  # committed, waiting to be fanned out
        PROCESSED = "processed", "Processed"  # deliveries created
        REJECTED = "rejected", "Rejected"  # failed verification; kept to explain why

    # Time-ordered ids keep inserts at the end of the index and let lists page by keyset.
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # No index of its own: the (organization, -id) indexes below serve every lookup by organization.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="events", db_index=False)
    source = models.ForeignKey("webhooks.Source", on_delete=models.CASCADE, related_name="events")
    provider_event_id = models.CharField(max_length=255, null=True, blank=True)
    event_type = models.CharField(max_length=255, blank=True)
    body = models.BinaryField()
    headers = models.JSONField(default=dict)
    remote_ip = models.GenericIPAddressField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RECEIVED)
    rejection_code = models.CharField(max_length=40, blank=True)
    rejection_detail = models.CharField(max_length=500, blank=True)
    # Rejected requests only: the event id the request claims, read without trusting it, so a
    # tenant chasing "evt_123" finds the request that failed verification. Never in the
    # duplicate constraint: a forged request must not take an id from the real event.
    claimed_event_id = models.CharField(max_length=255, null=True, blank=True)
    # Hex SHA-256 of what the signature covers, for providers whose event id is not signed
    # (Provider.dedupes_on_signed_content): a request posted again under a fresh id is a duplicate of
    # the event stored with the same content. The unique index below decides it. NULL for every other
    # provider, so the index holds only those providers' events.
    signed_content_digest = models.CharField(max_length=64, null=True, blank=True, editable=False)
    duplicate_count = models.PositiveIntegerField(default=0)
    last_duplicate_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Set aside after processing failed for this event alone (see services.processing): it stays
    # received, the claim passes it by until processing_retry_at, and the failure is told on its
    # page. Database defaults: the ingest writer's INSERT names only the columns it fills.
    processing_failures = models.IntegerField(default=0, db_default=0)  # no CHECK: adding one scans the table
    processing_error = models.CharField(max_length=300, blank=True, default="", db_default="")
    processing_retry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            # The database, not a lookup, decides that a redelivery is a duplicate.
            models.UniqueConstraint(
                fields=("source", "provider_event_id"),
                condition=models.Q(provider_event_id__isnull=False),
                name="event_unique_source_provider_id",
            ),
            # Built CONCURRENTLY by its migration (0038): a plain build would block ingest on a big table.
            models.UniqueConstraint(
                fields=("source", "signed_content_digest"),
                condition=models.Q(signed_content_digest__isnull=False),
                name="event_unique_source_signed_content",
            ),
        ]
        indexes = [
            models.Index(fields=("organization", "-id"), name="event_org_id"),
            models.Index(fields=("organization", "status", "-id"), name="event_org_status_id"),
            # The lists' default, accepted events only (selectors.EVENT_STATUS_ALL): without it, a list
            # under a flood of newer rejected requests walks past each of them, and one with no
            # accepted event left walks every row of the organization.
            models.Index(
                fields=("organization", "-id"), condition=~models.Q(status="rejected"), name="event_org_accepted_id"
            ),
            # The platform admin's "rejected" filter across organizations (about 1 request in 100):
            # without it, its capped count read the whole table (migration 0039).
            models.Index(fields=("-id",), condition=models.Q(status="rejected"), name="event_rejected_id"),
            # Dashboard filters and search: each one an index walk in list order, newest first.
            models.Index(fields=("organization", "source", "-id"), name="event_org_source_id"),
            models.Index(fields=("organization", "event_type", "-id"), name="event_org_type_id"),
            # Alone, so the admin finds a provider id across tenants; the dashboard adds the organization.
            # Pattern operators, so that it also serves a search by the start of a compound id (a
            # Twilio message SID finds its "SM…:<hash>" events); equality is served as before.
            models.Index(
                fields=("provider_event_id",), name="event_provider_id_prefix", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=("claimed_event_id",),
                condition=models.Q(claimed_event_id__isnull=False),
                name="event_claimed_id",
            ),
            # Small: only the rows the sweeper and the processor look for. The head of the queue
            # leaves out the events set aside, so that however many there are, claiming the oldest
            # waiting ones never walks past them; those have their own index, by when they are due.
            models.Index(
                fields=("received_at",),
                condition=models.Q(status="received", processing_retry_at__isnull=True),
                name="event_waiting",
            ),
            models.Index(
                fields=("processing_retry_at",),
                condition=models.Q(status="received", processing_retry_at__isnull=False),
                name="event_set_aside",
            ),
        ]

    def __str__(self) -> str:
        # How the admin names the event (breadcrumbs, titles, its audit labels): the sender's controls
        # escaped, as everywhere an event type or id is shown (text.visible_text); the fields stay exact.
        return visible_text(f"{self.event_type or 'event'} {self.provider_event_id or self.id}")

    @property
    def is_set_aside(self) -> bool:
        """Received, but its processing failed and waits for processing_retry_at."""
        return self.status == self.Status.RECEIVED and self.processing_retry_at is not None

    def processing_problem(self) -> str:
        """What a page says of an event set aside, or ""."""
        if not self.is_set_aside:
            return ""
        tries = f"{self.processing_failures} tr{'y' if self.processing_failures == 1 else 'ies'}"
        retry_at = timezone.localtime(self.processing_retry_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        return f"could not be processed: {self.processing_error}, {tries}, next try at {retry_at}"
