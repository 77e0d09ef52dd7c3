import secrets
from functools import cached_property

from django.db import models
from django.utils import timezone

from organizations.models import Organization
from webhooks.fields import EncryptedTextField, unreadable_secrets
from webhooks.providers.registry import provider_choices


def new_ingest_token() -> str:
    # 32 random bytes: the token is the only secret part of the ingest URL.
    return secrets.token_urlsafe(32)


class Source(models.Model):
    """One provider connection of a tenant, reached at /in/<ingest_token>/."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="sources")
    provider = models.CharField(max_length=40, choices=provider_choices)
    name = models.CharField(max_length=200)
    ingest_token = models.CharField(max_length=64, unique=True, default=new_ingest_token, editable=False)
    secret = EncryptedTextField()
    secret_hint = models.CharField(max_length=8, blank=True, editable=False)
    # During a rotation the previous secret keeps verifying until it expires.
    previous_secret = EncryptedTextField(blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # When each secret last verified a request during a rotation's overlap (recorded at most once
    # a minute, see services.secret_use); both are cleared by a rotation, as they were about the
    # secrets it replaced. They tell the tenant whether the provider has moved to the new secret.
    secret_last_matched_at = models.DateTimeField(null=True, blank=True, editable=False)
    previous_secret_last_matched_at = models.DateTimeField(null=True, blank=True, editable=False)
    options = models.JSONField(default=dict, blank=True)
    # The networks requests may come from, as normalised CIDR strings ("192.0.2.0/24",
    # "2001:db8::/32"); empty lets any address through. Checked by
    # services.source_networks.check_allowed_networks wherever it is set; ingest reads the
    # parsed form, allowed_ip_networks. The database default keeps the column's addition
    # free of a table rewrite (PostgreSQL stores it in the catalog).
    allowed_networks = models.JSONField(default=list, db_default=[], blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # Set when a tenant asks for the source to be deleted: it is inactive from then on, hidden
    # from everything but the source list, and a background task deletes its events and other
    # rows in batches and finally this one (see webhooks.services.source_deletion). Never cleared.
    deletion_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    deletion_requested_by = models.CharField(max_length=200, null=True, blank=True, editable=False)
    # Rows deleted so far, by kind: the background deletion's progress, kept across its runs.
    deletion_progress = models.JSONField(null=True, blank=True, editable=False)
    # Rejected requests answered but not kept, past INGEST_REJECTED_RECORDS_PER_MINUTE or _PER_HOUR
    # (see services.rejected_requests): how many since the source was made, and when the last one
    # came. Added to in batches, never per request: ingest counts them in Redis and the sweeper
    # adds those counts here. Database defaults: the columns are added without a table rewrite.
    rejected_not_kept_count = models.BigIntegerField(default=0, db_default=0, editable=False)
    rejected_not_kept_last_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("organization", "name")
        indexes = [models.Index(fields=("organization", "provider"), name="source_org_provider")]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"

    @property
    def being_deleted(self) -> bool:
        return self.deletion_requested_at is not None

    def active_secrets(self, now=None) -> list[str]:
        """Secrets that verify right now: the current one, plus the previous one inside its window.
        Of a source read with fields.take_readable_secrets, those this process can decrypt: one it
        cannot stays deferred, and reading it would raise SecretNotReadable."""
        now = now or timezone.now()
        found = [self.secret]
        if "previous_secret" in unreadable_secrets(self):
            return found
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            found.append(self.previous_secret)
        return found

    @cached_property
    def allowed_ip_networks(self) -> tuple:
        """``allowed_networks`` parsed, once per instance: the ingest path keeps its copy of a
        source for INGEST_SOURCE_CACHE_SECONDS and checks every request against this."""
        from webhooks.services.source_networks import parse_allowed_networks

        return parse_allowed_networks(self.allowed_networks)
