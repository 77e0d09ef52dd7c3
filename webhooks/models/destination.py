import json
from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from organizations.models import Organization
from webhooks.fields import EncryptedTextField


class Destination(models.Model):
    """A tenant's URL that receives events, signed with Standard Webhooks headers."""

    # Bounds of an attempt's timeout: below 1 s hardly any receiver answers; above 60 s a slow
    # receiver holds a sending thread too long (DELIVERY_MAX_TIMEOUT_SECONDS may cap it lower).
    MIN_TIMEOUT_SECONDS = 1.0
    MAX_TIMEOUT_SECONDS = 60.0
    # Bounds a tenant may set (services.destinations checks them for the dashboard, API and admin):
    # more concurrent sends than a dispatcher has threads would only let one destination crowd out
    # the others; a rate limit above a thousand a second is no limit in practice.
    MIN_CONCURRENCY, MAX_CONCURRENCY = 1, 50
    MIN_RATE_LIMIT_PER_SECOND, MAX_RATE_LIMIT_PER_SECOND = 1, 1000
    MIN_RETRY_AGE_SECONDS, MAX_RETRY_AGE_SECONDS = 60, 30 * 86400
    # A destination's own retry schedule: each wait at least 5 s (the sweeper hands due retries to a
    # dispatcher every SWEEP_INTERVAL_SECONDS, 5 by default, so a shorter wait would not be kept,
    # and a failed receiver is rarely back sooner), at most a week, 20 waits at most and 30 days in all
    # (the longest retry age a destination may set).
    MIN_RETRY_WAIT_SECONDS, MAX_RETRY_WAIT_SECONDS = 5, 7 * 86400
    MAX_RETRY_SCHEDULE_STEPS = 20
    MAX_RETRY_SCHEDULE_SECONDS = 30 * 86400

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="destinations")
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2000)
    secret = EncryptedTextField()
    secret_hint = models.CharField(max_length=8, blank=True, editable=False)
    # After a rotation, attempts are signed with both secrets until this time, so that a
    # receiver can switch over without refusing anything (Standard Webhooks takes any one).
    # A database default too: processes still running older code (during a deploy) insert without it.
    previous_secret = EncryptedTextField(blank=True, default="", db_default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Headers sent with every attempt (an API gateway's key, basic auth for the receiver): a JSON list
    # of [name, value] pairs, encrypted since the values are credentials. Written only through
    # services.destinations (which checks them); custom_header_hints is what may be shown of them.
    custom_headers = EncryptedTextField(blank=True, default="", db_default="", editable=False)
    custom_header_hints = models.JSONField(blank=True, default=list, db_default=[], editable=False)
    # Conditions on the event's JSON body, all of which must hold for an event to be delivered here
    # (services.payload_filters): a list of {"path", "op", "value"}, checked there for every form, the
    # API and commands. A database default: adding the column then rewrites no table.
    payload_filters = models.JSONField(blank=True, default=list, db_default=[])
    timeout_seconds = models.FloatField(
        default=15.0, validators=[MinValueValidator(MIN_TIMEOUT_SECONDS), MaxValueValidator(MAX_TIMEOUT_SECONDS)]
    )
    is_active = models.BooleanField(default=True)
    # Fairness: one slow or failing destination can hold at most this many sending threads.
    max_concurrency = models.PositiveSmallIntegerField(
        default=10, validators=[MinValueValidator(MIN_CONCURRENCY), MaxValueValidator(MAX_CONCURRENCY)]
    )
    rate_limit_per_second = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Empty for no limit.",
        validators=[MinValueValidator(MIN_RATE_LIMIT_PER_SECOND), MaxValueValidator(MAX_RATE_LIMIT_PER_SECOND)],
    )
    rate_window_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    rate_window_count = models.PositiveIntegerField(default=0, editable=False)
    # Most 4xx answers mean "never going to work"; some receivers use them for transient trouble.
    retry_client_errors = models.BooleanField(default=False)
    # The destination's own retry policy (services.delivery.decide_outcome): the waits between its
    # retries (its own, or DELIVERY_RETRY_SCHEDULE), how many of them, and until when. Attempts by
    # hand (retry, bulk retry) come on top, as they do on the schedule.
    # A JSON list of whole seconds, written only through services.destinations (which checks it);
    # NULL for the platform's schedule. JSON rather than an array: the embedded mode runs on SQLite.
    retry_schedule = models.JSONField(
        null=True,
        blank=True,
        help_text="Seconds to wait before each retry, in order. Empty for DELIVERY_RETRY_SCHEDULE.",
    )
    max_attempts = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Attempts on the schedule, the first included (1: no retries). "
        "Empty for every step of the retry schedule (the destination's own, or DELIVERY_RETRY_SCHEDULE).",
    )
    max_retry_age_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(MIN_RETRY_AGE_SECONDS), MaxValueValidator(MAX_RETRY_AGE_SECONDS)],
        help_text="No retry is scheduled later than this many seconds after the delivery was created "
        "(the last one is moved up to that time). Empty for no age limit.",
    )
    # Circuit breaker: paused destinations keep their deliveries queued until resumed, for
    # PAUSED_DESTINATION_HOLD_DAYS at most (then marked dead by the retention run: services.lifecycle).
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_reason = models.CharField(max_length=300, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    last_alerted_at = models.DateTimeField(null=True, blank=True, editable=False)
    # An automatic pause owes its admins an email: set with the pause, in its transaction, and cleared
    # once the email is sent (webhooks.services.alerts). The sweeper sends what is due and still owed,
    # so that a COMMIT whose reply was lost, or a worker gone before its after-commit step, only
    # delays the email. Moved ahead while one sender has it: another leaves it alone meanwhile.
    pause_notice_due_at = models.DateTimeField(null=True, blank=True, editable=False)
    dead_digest_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    sources = models.ManyToManyField("webhooks.Source", through="webhooks.Subscription", related_name="destinations")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # Set when a tenant asks for the destination to be deleted: it is inactive from then on (sent
    # nothing, given no new deliveries), hidden from everything but the destination lists, and a
    # background task deletes its deliveries, their attempts and its links in batches, and finally
    # this row (see webhooks.services.destination_deletion). Never cleared.
    deletion_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    deletion_requested_by = models.CharField(max_length=200, null=True, blank=True, editable=False)
    # Rows deleted so far, by kind: the background deletion's progress, kept across its runs.
    deletion_progress = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("organization", "name")

    def __str__(self) -> str:
        return self.name

    @property
    def being_deleted(self) -> bool:
        return self.deletion_requested_at is not None

    @property
    def previous_secret_valid_until(self):
        """When the previous secret stops signing, while it still does; else None."""
        from webhooks.services.secrets import previous_secret_valid_until

        return previous_secret_valid_until(self)

    @property
    def held_deliveries_given_up_from(self):
        """While paused: when the retention run starts marking its held deliveries dead (each one held
        longer than PAUSED_DESTINATION_HOLD_DAYS, services.lifecycle); None when it is not paused."""
        if self.paused_at is None:
            return None
        return self.paused_at + timedelta(days=settings.PAUSED_DESTINATION_HOLD_DAYS)

    def custom_header_values(self) -> dict[str, str]:
        """The custom headers, name to value, in the order they were added (empty when none)."""
        return dict(json.loads(self.custom_headers)) if self.custom_headers else {}

    def signing_secrets(self) -> list[str]:
        """The current secret, then the previous one while its overlap lasts."""
        return [self.secret, self.previous_secret] if self.previous_secret_valid_until else [self.secret]
