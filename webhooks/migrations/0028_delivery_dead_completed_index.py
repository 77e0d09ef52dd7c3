# A partial index of dead deliveries by when they died (processing health counts the last day's),
# built without blocking delivery recording; safe to run again.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

DEAD_COMPLETED_INDEX = models.Index(
    fields=("completed_at",), condition=models.Q(status="dead"), name="delivery_dead_completed"
)
DEAD_COMPLETED_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_dead_completed ON webhooks_delivery (completed_at) "
    "WHERE status = 'dead'"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, DEAD_COMPLETED_INDEX)
        return
    build_index_concurrently(schema_editor, "delivery_dead_completed", DEAD_COMPLETED_INDEX_SQL)
    schema_editor.execute("ANALYZE webhooks_delivery")  # the admin's index page uses it at once


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, DEAD_COMPLETED_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS delivery_dead_completed")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0027_destination_short_header_value_hints")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=DEAD_COMPLETED_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
