from datetime import date, timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from webhooks.fields import EncryptedTextField

# Retention deletes events for good: never less than a day, and at most about ten years.
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650


def current_month() -> date:
    """The first day of the current month (UTC): the key of this month's MonthlyUsage."""
    return timezone.now().date().replace(day=1)


class Organization(models.Model):
    """A tenant. Every tenant-owned row points here."""

    class Plan(models.TextChoices):
        FREE = "free", "Free"
        TEAM = "team", "Team"
        BUSINESS = "business", "Business"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=60, unique=True)
    plan = models.CharField(max_length=20, choices=Plan.choices, default=Plan.FREE)
    monthly_event_quota = models.PositiveIntegerField(default=100_000)
    retention_days = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(MIN_RETENTION_DAYS), MaxValueValidator(MAX_RETENTION_DAYS)],
        help_text=(
            "Days a finished event is kept, counted from when it was received and from when its last "
            "delivery ended (succeeded or died, also after a retry). Every hour, events past both (with their "
            "deliveries and delivery attempts, and rejected requests received longer ago than this) are "
            "deleted for good; events still waiting to be delivered are kept. "
            f"From {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} days."
        ),
    )
    is_active = models.BooleanField(default=True)
    # When it was last suspended (made inactive), None while it is active: its held deliveries are
    # marked dead once SUSPENDED_ORGANIZATION_HOLD_DAYS past it (webhooks.services.lifecycle). Set and
    # cleared by organizations.services.organization_set_active, and by any save() of is_active (see
    # save); a change of is_active made by a raw UPDATE is caught up by the next retention run.
    suspended_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The platform's ORGANIZATION_MAX_CONCURRENCY for this tenant alone: more for a large one, less
    # for a noisy one. Empty (NULL) follows the setting, so that changing it still reaches everyone else.
    max_concurrency = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="deliveries sent at once",
        help_text=(
            "Deliveries this organization may have being sent at once, over all its destinations, so that "
            "its slow receivers cannot take every sending thread. Empty: the platform's "
            "ORGANIZATION_MAX_CONCURRENCY."
        ),
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Set when a platform admin asks for the organization to be deleted: it is inactive from then
    # on, and a background task deletes its rows in batches and finally this one (see
    # webhooks.services.organization_deletion). Never cleared: there is no way back.
    deletion_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    deletion_requested_by = models.CharField(max_length=200, blank=True, editable=False)
    # Rows deleted so far, by kind: the background deletion's progress, kept across its runs.
    deletion_progress = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        ordering = ("name",)
        constraints = [
            # 0 would stop the tenant's deliveries for good: suspending it says so, this would not.
            models.CheckConstraint(
                condition=models.Q(max_concurrency__isnull=True) | models.Q(max_concurrency__gte=1),
                name="organization_max_concurrency_positive",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        # The over-quota notice is sent once a month; a new quota (the admin, or any other save)
        # re-arms it, so the owners hear again once the month's count passes the new quota.
        update_fields = kwargs.get("update_fields")
        quota_changed = False
        if not self._state.adding and (update_fields is None or "monthly_event_quota" in update_fields):
            stored = Organization.objects.filter(pk=self.pk).values_list("monthly_event_quota", flat=True).first()
            quota_changed = stored is not None and stored != self.monthly_event_quota
        if update_fields is None or "is_active" in update_fields:
            # Its suspension's time follows is_active however it is saved (a shell's save(), the admin's
            # add of an inactive organization), not only through organization_set_active: left as it
            # was, a reactivation and a new suspension between two retention runs would keep the old
            # suspension's time, and its deliveries would be given up before the new one's bound. (A
            # raw UPDATE is caught up by the next retention run.)
            if self.is_active:
                self.suspended_at = None
            elif self.suspended_at is None:
                self.suspended_at = timezone.now()
            if update_fields is not None and "suspended_at" not in update_fields:
                kwargs["update_fields"] = [*update_fields, "suspended_at"]
        super().save(*args, **kwargs)
        if quota_changed:
            MonthlyUsage.objects.filter(
                organization=self, month__gte=current_month(), quota_notified_at__isnull=False
            ).update(quota_notified_at=None)

    @property
    def being_deleted(self) -> bool:
        return self.deletion_requested_at is not None

    @property
    def held_deliveries_given_up_from(self):
        """While suspended: when the retention run starts marking its held deliveries dead (each one
        held longer than SUSPENDED_ORGANIZATION_HOLD_DAYS); None when it is active, being deleted
        (everything goes with it), or its suspension's time is not known yet (the next retention run sets it)."""
        if self.is_active or self.being_deleted or self.suspended_at is None:
            return None
        return self.suspended_at + timedelta(days=settings.SUSPENDED_ORGANIZATION_HOLD_DAYS)

    @property
    def suspended_hold_days(self) -> int:
        """SUSPENDED_ORGANIZATION_HOLD_DAYS, for the pages that say when held deliveries are given up."""
        return settings.SUSPENDED_ORGANIZATION_HOLD_DAYS

    @property
    def effective_max_concurrency(self) -> int:
        """The deliveries it may have in flight at once: its own max_concurrency, or the platform's."""
        return self.max_concurrency or settings.ORGANIZATION_MAX_CONCURRENCY

    @property
    def follows_platform_max_concurrency(self) -> bool:
        return self.max_concurrency is None


def effective_max_concurrency(organization_path: str = "") -> Coalesce:
    """effective_max_concurrency in SQL, for a query that reads the organization anyway (through
    ``organization_path``, "organization__" from a destination or a delivery): the dispatcher's cap
    costs no query of its own. The setting is read at each call, as the dispatcher's code does."""
    return Coalesce(
        models.F(f"{organization_path}max_concurrency"),
        models.Value(settings.ORGANIZATION_MAX_CONCURRENCY),
        output_field=models.IntegerField(),
    )


# The Team page's rule, also the admin's for staff (organizations.team, organizations.admin).
LAST_OWNER = "An organization needs at least one owner: make someone else owner first."


class Membership(models.Model):
    """A user's role in one organization."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=("user", "organization"), name="membership_unique_user_org")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def can_configure(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.ADMIN)


class AuditLog(models.Model):
    """Append-only, hash-chained record of who changed what. Written only by organizations.services.

    The database refuses UPDATE and DELETE on this table (a PostgreSQL trigger, see
    migration 0003) except inside ``audit_purge``; ``verify_audit_log`` recomputes the chain.
    """

    class ActorType(models.TextChoices):
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"

    # No database constraint and DO_NOTHING: deleting a user or an organization must neither
    # cascade into the log nor UPDATE its rows (the trigger would refuse); the label copied
    # next to each reference keeps the entry readable after the row it names is gone.
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    organization_label = models.CharField(max_length=200, blank=True)
    actor_type = models.CharField(max_length=10, choices=ActorType.choices, default=ActorType.SYSTEM)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=100)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    target_label = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # SHA-256 hex of the previous entry's entry_hash (the chain) and of this entry's content.
    # Unique: two entries can never claim the same predecessor, so even a writer that skipped
    # the lock could not fork the chain.
    previous_hash = models.CharField(max_length=64, unique=True)
    entry_hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ("-id",)
        indexes = [
            models.Index(fields=("organization", "-created_at"), name="auditlog_org_time"),
            models.Index(fields=("action", "-id"), name="auditlog_action_id"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label or self.actor_type} {self.action}"


class MonthlyUsage(models.Model):
    """Events accepted per organization and calendar month; kept when the events themselves expire."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="usage")
    month = models.DateField(help_text="The first day of the month (UTC).")
    events = models.PositiveBigIntegerField(default=0)
    quota_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-month",)
        constraints = [models.UniqueConstraint(fields=("organization", "month"), name="usage_unique_org_month")]

    def __str__(self) -> str:
        return f"{self.organization} {self.month:%Y-%m}: {self.events}"


class ApiKey(models.Model):
    """A credential for the REST API, scoped to one organization.

    The key is ``hl_<prefix>_<secret>``; only the prefix (to recognize the key) and the SHA-256 of
    the secret part are stored, so a database dump holds no usable key.
    """

    class Access(models.TextChoices):
        READ_ONLY = "read_only", "Read only"
        READ_WRITE = "read_write", "Read and write"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    access = models.CharField(max_length=10, choices=Access.choices, default=Access.READ_ONLY)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (hl_{self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def can_write(self) -> bool:
        return self.access == self.Access.READ_WRITE


class IdempotencyKey(models.Model):
    """An ``Idempotency-Key`` a REST API client sent with a POST, and the answer its request got.

    The row is inserted (committed, with ``response_status`` null) before the request runs: the
    unique constraint, not a lookup, decides which of two concurrent requests with the same key runs.
    Once it has run, its answer is stored here and a retry gets it back instead of running again.
    Scoped to the key that sent it (and so to its organization). Forgotten after KEPT_HOURS.
    """

    KEPT_HOURS = 24
    # A request still marked running after this long was lost with its process (a killed worker):
    # a retry may take the key over rather than be refused until the key expires.
    ABANDONED_AFTER_SECONDS = 300

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # sha256 hex of the method, the path and the body: the same key with another request is refused.
    request_digest = models.CharField(max_length=64)
    request_method = models.CharField(max_length=10)
    request_path = models.CharField(max_length=2048)
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    # Null while the request runs.
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # The JSON body as sent, encrypted: a created source's or destination's answer holds its secret.
    response_body = EncryptedTextField(blank=True, default="")
    response_location = models.CharField(max_length=2048, blank=True, default="")

    class Meta:
        verbose_name = "API idempotency key"
        constraints = [
            models.UniqueConstraint(
                fields=("organization", "api_key", "key"), name="idempotency_key_unique_per_api_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.request_method} {self.request_path} ({self.key})"
