# The partial, covering index of succeeded deliveries the overview reads (the model's comment says
# why). Built CONCURRENTLY (a plain build would hold back every delivery write while it reads the
# whole table: 12 s for 2.5 million deliveries on the development machine), outside a transaction,
# and safe to run again after a release stopped half-way.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

INDEX_NAME = "delivery_succeeded"
SUCCEEDED_INDEX = models.Index(
    fields=("organization", "destination", "id"),
    include=("event", "latency", "is_replay", "completed_at"),
    condition=models.Q(status="succeeded"),
    name=INDEX_NAME,
)
SUCCEEDED_INDEX_SQL = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX_NAME} ON webhooks_delivery"
    " (organization_id, destination_id, id) INCLUDE (event_id, latency, is_replay, completed_at) WHERE status = 'succeeded'"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, SUCCEEDED_INDEX)
        return
    build_index_concurrently(schema_editor, INDEX_NAME, SUCCEEDED_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, SUCCEEDED_INDEX)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX_NAME}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0043_delivery_latency_event_hour")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=SUCCEEDED_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
