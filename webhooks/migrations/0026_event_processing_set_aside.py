# Events whose processing failed alone are set aside with their error and a time to try again
# (services.processing). The head-of-queue index leaves them out and they get their own; both are
# built without blocking ingest; safe to run again. The old one, event_unfinished, stays: the
# previous release's workers, which run on while this migrates, claim and sweep by it (without it
# each of their claims read the whole event table); a later release drops it.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

WAITING_INDEX = models.Index(
    fields=("received_at",),
    condition=models.Q(status="received", processing_retry_at__isnull=True),
    name="event_waiting",
)
SET_ASIDE_INDEX = models.Index(
    fields=("processing_retry_at",),
    condition=models.Q(status="received", processing_retry_at__isnull=False),
    name="event_set_aside",
)
INDEX_SQL = {
    "event_waiting": (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_waiting ON webhooks_webhookevent (received_at) "
        "WHERE (processing_retry_at IS NULL AND status = 'received')"
    ),
    "event_set_aside": (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_set_aside ON webhooks_webhookevent (processing_retry_at) "
        "WHERE (processing_retry_at IS NOT NULL AND status = 'received')"
    ),
}


def add_the_indexes(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, WAITING_INDEX)
        schema_editor.add_index(model, SET_ASIDE_INDEX)
        return
    for name in ("event_waiting", "event_set_aside"):
        build_index_concurrently(schema_editor, name, INDEX_SQL[name])
    schema_editor.execute("ANALYZE webhooks_webhookevent")


def remove_the_indexes(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, WAITING_INDEX)
        schema_editor.remove_index(model, SET_ASIDE_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_waiting")
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_set_aside")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0025_destination_custom_headers")]

    operations = [
        # Instant on PostgreSQL: constant defaults, no CHECK to verify.
        migrations.AddField(
            model_name="webhookevent",
            name="processing_error",
            field=models.CharField(blank=True, db_default="", default="", max_length=300),
        ),
        migrations.AddField(
            model_name="webhookevent",
            name="processing_failures",
            field=models.IntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="webhookevent",
            name="processing_retry_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(model_name="webhookevent", index=WAITING_INDEX),
                migrations.AddIndex(model_name="webhookevent", index=SET_ASIDE_INDEX),
            ],
            database_operations=[migrations.RunPython(add_the_indexes, remove_the_indexes)],
        ),
    ]
