# The provider-id index with pattern operators (it also serves searches by an id's start), built
# beside the old one without blocking ingest, then the old one dropped; safe to run again.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

OLD_INDEX = models.Index(fields=["provider_event_id"], name="event_provider_id")
NEW_INDEX = models.Index(
    fields=["provider_event_id"], name="event_provider_id_prefix", opclasses=["varchar_pattern_ops"]
)
NEW_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_provider_id_prefix "
    "ON webhooks_webhookevent (provider_event_id varchar_pattern_ops)"
)
OLD_INDEX_SQL = "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_provider_id ON webhooks_webhookevent (provider_event_id)"


def use_the_prefix_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, NEW_INDEX)
        schema_editor.remove_index(model, OLD_INDEX)
        return
    build_index_concurrently(schema_editor, "event_provider_id_prefix", NEW_INDEX_SQL)
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_provider_id")
    schema_editor.execute("ANALYZE webhooks_webhookevent")  # searches use the new index at once


def use_the_plain_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, OLD_INDEX)
        schema_editor.remove_index(model, NEW_INDEX)
        return
    build_index_concurrently(schema_editor, "event_provider_id", OLD_INDEX_SQL)
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_provider_id_prefix")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0014_source_secret_last_matched")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="webhookevent", name="event_provider_id"),
                migrations.AddIndex(model_name="webhookevent", index=NEW_INDEX),
            ],
            database_operations=[migrations.RunPython(use_the_prefix_index, use_the_plain_index)],
        ),
    ]
