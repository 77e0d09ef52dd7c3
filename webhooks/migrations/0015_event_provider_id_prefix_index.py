# The provider-id index with pattern operators (it also serves searches by an id's start), built
# beside the old one without blocking ingest, then the old one dropped; safe to run again.

from django.db import migrations, models

OLD_INDEX = models.Index(fields=["provider_event_id"], name="event_provider_id")
NEW_INDEX = models.Index(
    fields=["provider_event_id"], name="event_provider_id_prefix", opclasses=["varchar_pattern_ops"]
)
NEW_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_provider_id_prefix "
    "ON webhooks_webhookevent (provider_event_id varchar_pattern_ops)"
)
OLD_INDEX_SQL = "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_provider_id ON webhooks_webhookevent (provider_event_id)"


def _build_concurrently(schema_editor, name: str, create_sql: str) -> None:
    # CONCURRENTLY: a plain CREATE INDEX would hold back every ingest INSERT while it reads the
    # whole events table. A build that failed before (a timeout, a killed release) leaves an
    # invalid index behind that IF NOT EXISTS would keep for good: it is dropped first.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_index JOIN pg_class ON pg_class.oid = pg_index.indexrelid "
            "WHERE pg_class.relname = %s AND NOT pg_index.indisvalid",
            [name],
        )
        left_invalid = cursor.fetchone() is not None
    if left_invalid:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    schema_editor.execute("SET statement_timeout = 0")  # the build takes as long as the table needs
    try:
        schema_editor.execute(create_sql)
    finally:
        schema_editor.execute("RESET statement_timeout")


def use_the_prefix_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, NEW_INDEX)
        schema_editor.remove_index(model, OLD_INDEX)
        return
    _build_concurrently(schema_editor, "event_provider_id_prefix", NEW_INDEX_SQL)
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_provider_id")
    schema_editor.execute("ANALYZE webhooks_webhookevent")  # searches use the new index at once


def use_the_plain_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, OLD_INDEX)
        schema_editor.remove_index(model, NEW_INDEX)
        return
    _build_concurrently(schema_editor, "event_provider_id", OLD_INDEX_SQL)
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
