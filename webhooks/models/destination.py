from django.db import models
from django.utils import timezone

from organizations.models import Organization
from webhooks.fields import EncryptedTextField


class Destination(models.Model):
    """A tenant's URL that receives events, signed with Standard Webhooks headers."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="destinations")
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2000)
    secret = EncryptedTextField()
    secret_hint = models.CharField(max_length=8, blank=True, editable=False)
    timeout_seconds = models.FloatField(default=15.0)
    is_active = models.BooleanField(default=True)
    sources = models.ManyToManyField("webhooks.Source", through="webhooks.Subscription", related_name="destinations")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("organization", "name")

    def __str__(self) -> str:
        return self.name
