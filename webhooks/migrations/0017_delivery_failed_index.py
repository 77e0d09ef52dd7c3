# A partial index of failed deliveries (dead, or waiting for a retry after a failed attempt), built
# without blocking delivery recording; safe to run again.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

FAILED_INDEX = models.Index(
    fields=("status", "event"),
    condition=models.Q(status="dead") | models.Q(status="pending", attempt_count__gt=0),
    name="delivery_failed",
)
FAILED_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_failed ON webhooks_delivery (status, event_id) "
    "WHERE (status = 'dead' OR (status = 'pending' AND attempt_count > 0))"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, FAILED_INDEX)
        return
    build_index_concurrently(schema_editor, "delivery_failed", FAILED_INDEX_SQL)
    schema_editor.execute("ANALYZE webhooks_delivery")  # the admin's filters use it at once


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, FAILED_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS delivery_failed")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0016_attempt_delivery_number_unique")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=FAILED_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
