from django.db import models
from django.utils import timezone
from uuid6 import uuid7

from organizations.models import Organization

# Dead, or waiting after a failed attempt: the rows of the partial index delivery_failed, which a
# query whose condition is this one can read instead of every delivery.
FAILED = models.Q(status="dead") | models.Q(status="pending", attempt_count__gt=0)
# Retrying: waiting for the next attempt after a failed one, as its receiver's failure made it wait
# (within FAILED, so on the same index). Not one the platform itself put back unsent since
# (put_back_cause, HELD_BY_PLATFORM): it waits for the platform, not for the receiver, which may
# have answered the previous attempt long ago; every count and filter of retrying deliveries (the
# dashboard's, the API's, list_events') leaves it out, as the destination's page does.
RETRYING = models.Q(status="pending", attempt_count__gt=0, put_back_cause__isnull=True)
# Held by the platform: put back unsent for the platform's own reason, whatever its earlier attempts.
HELD_BY_PLATFORM = models.Q(status="pending", put_back_cause__isnull=False)


class Delivery(models.Model):
    """One event on its way to one destination."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"  # due at next_attempt_at
        IN_FLIGHT = "in_flight", "In flight"  # claimed by a worker
        SUCCEEDED = "succeeded", "Succeeded"
        DEAD = "dead", "Dead"  # out of retries or refused; kept and can be retried by hand

    class PutBackCause(models.TextChoices):
        """Why the platform itself did not send a delivery and put it back (services.delivery._put_back_unsent)."""

        SECRET_UNREADABLE = "secret_unreadable", "Its destination's secret cannot be decrypted"
        DNS_LOOKUPS_BUSY = "dns_lookups_busy", "The platform's own DNS lookups in progress are full"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey("webhooks.WebhookEvent", on_delete=models.CASCADE, related_name="deliveries")
    destination = models.ForeignKey("webhooks.Destination", on_delete=models.CASCADE, related_name="deliveries")
    is_replay = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    # Attempts asked for by hand (retry, bulk retry) come on top of DELIVERY_RETRY_SCHEDULE:
    # a failed "Retry now" must not bring the delivery a step closer to dead. Counted when the
    # retry is asked for (see MANUAL_ATTEMPT_ASKED), so it may be one ahead of attempt_count.
    # A database default too: processes still running the code before this column (during a
    # deploy) insert deliveries without it.
    manual_attempts = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The dispatcher run holding the claim (services.claim_owners), whose mark in the cache tells the
    # sweeper it is alive. NULL for claims that name none (a test's: webhooks.tests.delivering) or
    # made before this column: those are judged by their age alone.
    claimed_by = models.CharField(max_length=100, null=True, blank=True)
    # The bulk retry that last made it pending again, set in the same UPDATE; cleared by a retry by
    # hand: its status is then that job's outcome (selectors.with_bulk_retry_outcomes). Not indexed
    # on its own: the partial index below holds only the deliveries a job has taken.
    bulk_retry = models.ForeignKey(
        "webhooks.BulkRetry",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deliveries",
        db_index=False,
    )
    # Set while the platform itself keeps the delivery from going out (a destination secret no key
    # decrypts, its own bound on DNS lookups): it was put back unsent, its attempt not counted, and
    # is tried again without end. Since when (the first put-back of this cause in a row) and how many
    # times in a row: the next delay grows with it in whichever process claims it next. Cleared once
    # an attempt is recorded and when it is retried by hand. Nullable without a default: adding the
    # columns rewrites nothing.
    put_back_cause = models.CharField(max_length=20, choices=PutBackCause.choices, null=True, blank=True)
    put_back_since = models.DateTimeField(null=True, blank=True)
    # IntegerField, not Positive…: its CHECK would have the migration scan the whole table under its lock.
    put_back_times = models.IntegerField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    # A succeeded delivery's time from its event's receipt to its completion, written by the same
    # UPDATE that records the success: the overview's latency percentiles read it here instead of
    # looking up the event of each of the day's deliveries (82,000 lookups, 1.3 s, for a tenant of
    # 2 million events a month). NULL on any other delivery, and on those that succeeded before the
    # column existed (the overview then looks their event up, as before).
    latency = models.DurationField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("-id",)
        verbose_name_plural = "deliveries"
        constraints = [
            # Fan-out creates at most one regular delivery per event and destination;
            # replays add more, deliberately.
            models.UniqueConstraint(
                fields=("event", "destination"),
                condition=models.Q(is_replay=False),
                name="delivery_unique_event_destination",
            )
        ]
        indexes = [
            models.Index(
                fields=("next_attempt_at", "id"),
                condition=models.Q(status="pending"),
                name="delivery_due",
            ),
            models.Index(
                fields=("destination",),
                condition=models.Q(status="in_flight"),
                name="delivery_in_flight_by_dest",
            ),
            # A destination's own due deliveries, when another's backlog fills the global order.
            models.Index(
                fields=("destination", "next_attempt_at", "id"),
                condition=models.Q(status="pending"),
                name="delivery_due_by_dest",
            ),
            models.Index(
                fields=("claimed_at",),
                condition=models.Q(status="in_flight"),
                name="delivery_in_flight",
            ),
            models.Index(fields=("organization", "status", "-id"), name="delivery_org_status_id"),
            # The REST API's delivery list, newest first, without a status filter.
            models.Index(fields=("organization", "-id"), name="delivery_org_id"),
            # Failed deliveries across organizations (the admin's overview, its "dead" and "has
            # failed deliveries" filters): read in proportion to the failures, not to the table.
            # A first attempt that succeeds never enters it.
            models.Index(
                fields=("status", "event"),
                condition=FAILED,
                name="delivery_failed",
            ),
            # Deliveries that died lately, by when (processing health's dead-in-24-h count, read on
            # every admin page view and scrape): the failed index would have it check every dead one.
            models.Index(
                fields=("completed_at",),
                condition=models.Q(status="dead"),
                name="delivery_dead_completed",
            ),
            # A bulk retry's outcome, counted by status from the index alone; the deliveries no job
            # has taken (nearly all) are not in it.
            models.Index(
                fields=("bulk_retry", "status"),
                condition=models.Q(bulk_retry__isnull=False),
                name="delivery_bulk_retry_status",
            ),
            # Succeeded deliveries by destination, newest last, with what the overview reads of them
            # (migration 0044): the failing destinations' successes of the week and the day's latency
            # percentiles, from the index alone. Read from the table they were 0.6 – 1 s and 0.2 – 0.4 s
            # for a tenant of 2 million events a month (docs/dashboard-bench.md, twenty-fourth session).
            models.Index(
                fields=("organization", "destination", "id"),
                include=("event", "latency", "is_replay", "completed_at"),
                condition=models.Q(status="succeeded"),
                name="delivery_succeeded",
            ),
            # Deliveries the platform holds (processing health: how many by cause, since when): only
            # those put back and not yet sent, a handful but for an outage of keys or DNS.
            models.Index(
                fields=("put_back_cause", "put_back_since"),
                condition=models.Q(put_back_cause__isnull=False, status__in=("pending", "in_flight")),
                name="delivery_put_back",
            ),
        ]

    def __str__(self) -> str:
        return f"delivery of event {self.event_id} to destination {self.destination_id}"

    @property
    def message_id(self) -> str:
        """The webhook-id the receiver gets: the event's id, stable across retries; a replay's own
        id, so that a receiver that dedupes on webhook-id does take the replay."""
        return str(self.pk if self.is_replay else self.event_id)

    @property
    def scheduled_attempt_count(self) -> int:
        """Attempts that count against the retry schedule (the first attempt always does)."""
        return max(self.attempt_count - self.manual_attempts, 1)
