# A partial index of failed attempts, newest first per organization (a destination's last failure),
# built without blocking attempt recording; safe to run again.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

FAILED_INDEX = models.Index(
    fields=("organization", "-id"),
    condition=models.Q(response_status__isnull=True)
    | models.Q(response_status__lt=200)
    | models.Q(response_status__gte=300),
    name="attempt_failed",
)
FAILED_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS attempt_failed ON webhooks_deliveryattempt (organization_id, id DESC) "
    "WHERE (response_status IS NULL OR response_status < 200 OR response_status >= 300)"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "DeliveryAttempt")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, FAILED_INDEX)
        return
    build_index_concurrently(schema_editor, "attempt_failed", FAILED_INDEX_SQL)
    schema_editor.execute("ANALYZE webhooks_deliveryattempt")  # the destination pages use it at once


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "DeliveryAttempt")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, FAILED_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS attempt_failed")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0021_purged_event_key")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="deliveryattempt", index=FAILED_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
