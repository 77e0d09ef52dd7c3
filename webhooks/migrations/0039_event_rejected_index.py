# The rejected requests of every organization, newest first: the platform admin's events list
# filtered by status "rejected" read the whole events table to count them (a parallel sequential
# scan, 0.5 s at 2,100,000 events, docs/dashboard-bench.md twenty-first session). About one request
# in a hundred, so the index is small.
#
# Built CONCURRENTLY (a plain build would hold back every ingest INSERT while it reads the whole
# table), outside a transaction, and safe to run again after a release stopped half-way.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

INDEX_NAME = "event_rejected_id"
REJECTED_INDEX = models.Index(fields=("-id",), condition=models.Q(status="rejected"), name=INDEX_NAME)
REJECTED_INDEX_SQL = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX_NAME} ON webhooks_webhookevent (id DESC) WHERE status = 'rejected'"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, REJECTED_INDEX)
        return
    build_index_concurrently(schema_editor, INDEX_NAME, REJECTED_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, REJECTED_INDEX)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX_NAME}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0038_event_signed_content_digest")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="webhookevent", index=REJECTED_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
