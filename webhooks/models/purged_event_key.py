from django.db import models


class PurgedEventKey(models.Model):
    """The de-duplication key of an event the retention purge deleted, kept KEPT_DAYS longer than its body.

    A redelivery is recognised by its stored event's (source, provider event id); once the purge has
    deleted the event, a captured request sent again would otherwise be stored and delivered as a new
    event. The ingest counts a request whose key is here as a duplicate of the purged event, in the
    same INSERT statement that counts the stored ones. A digest of the id only: past the retention,
    nothing of the tenant's data is kept.
    """

    # Longer than any provider's retry span (Apple's last retry comes about 6.5 days after the first
    # attempt), so that a genuine retry is recognised even with the shortest retention.
    KEPT_DAYS = 7

    source = models.ForeignKey("webhooks.Source", on_delete=models.CASCADE, related_name="+", db_index=False)
    event_id_digest = models.CharField(max_length=64)  # sha256 hex of the stored provider event id
    original_id = models.UUIDField()  # the purged event's id, answered to a redelivery as the original's
    received_at = models.DateTimeField()
    forget_after = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("source", "event_id_digest"), name="purged_event_key_unique_per_source")
        ]

    def __str__(self) -> str:
        return f"purged event {self.original_id} of source {self.source_id}"
