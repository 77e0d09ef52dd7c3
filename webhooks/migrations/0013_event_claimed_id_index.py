# The index on claimed_event_id, built without blocking ingest and safe to run again.

from django.db import migrations, models

CLAIMED_ID_INDEX = models.Index(
    condition=models.Q(("claimed_event_id__isnull", False)), fields=["claimed_event_id"], name="event_claimed_id"
)


def create_claimed_id_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(apps.get_model("webhooks", "WebhookEvent"), CLAIMED_ID_INDEX)
        return
    # CONCURRENTLY: a plain CREATE INDEX would hold back every ingest INSERT while it reads the
    # whole events table. A build that failed before (a timeout, a killed release) leaves an
    # invalid index behind that IF NOT EXISTS would keep for good: it is dropped first.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_index JOIN pg_class ON pg_class.oid = pg_index.indexrelid "
            "WHERE pg_class.relname = 'event_claimed_id' AND NOT pg_index.indisvalid"
        )
        left_invalid = cursor.fetchone() is not None
    if left_invalid:
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_claimed_id")
    schema_editor.execute("SET statement_timeout = 0")  # the build takes as long as the table needs
    try:
        schema_editor.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_claimed_id ON webhooks_webhookevent (claimed_event_id) "
            "WHERE claimed_event_id IS NOT NULL"
        )
    finally:
        schema_editor.execute("RESET statement_timeout")
    # Fresh statistics, so that searches use the new index at once.
    schema_editor.execute("ANALYZE webhooks_webhookevent")


def drop_claimed_id_index(apps, schema_editor):
    schema_editor.remove_index(apps.get_model("webhooks", "WebhookEvent"), CLAIMED_ID_INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0012_event_claimed_id")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="webhookevent", index=CLAIMED_ID_INDEX)],
            database_operations=[migrations.RunPython(create_claimed_id_index, drop_claimed_id_index)],
        ),
    ]
