from django.db import models
from django.utils import timezone


class SignatureNonce(models.Model):
    """A signed token of a scheme whose signature does not cover the whole body, bound to its first body.

    Mailgun signs only a timestamp and a token, PayPal only a CRC-32 of the body: a captured
    signature could be sent again with another body. The first body a token comes with is
    recorded here; an exact retry matches it, another body is refused. In PostgreSQL rather
    than the cache, so that an eviction or a flush cannot reopen the window.
    """

    # Longer than the providers concerned retry (PayPal: 3 days); older signatures are refused,
    # and so are signatures dated more than CLOCK_SKEW_SECONDS ahead.
    KEPT_SECONDS = 4 * 24 * 3600
    CLOCK_SKEW_SECONDS = 300

    source = models.ForeignKey("webhooks.Source", on_delete=models.CASCADE, related_name="+", db_index=False)
    # Digests only: the table holds nothing that could be sent again.
    nonce_digest = models.CharField(max_length=64)
    body_digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("source", "nonce_digest"), name="signature_nonce_unique_per_source")
        ]

    def __str__(self) -> str:
        return f"nonce {self.nonce_digest[:12]}… of source {self.source_id}"
