# The previous release (0026) claims and sweeps events by event_waiting and event_set_aside, so
# nothing running reads event_unfinished any more; it was kept only for the release before that,
# whose workers ran on while 0026 migrated. Dropped CONCURRENTLY: a plain DROP INDEX waits for, and
# then holds up, every statement on the event table, ingest's INSERTs included.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

UNFINISHED_INDEX = models.Index(
    fields=("status", "received_at"),
    condition=models.Q(status="received"),
    name="event_unfinished",
)


def drop_the_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(apps.get_model("webhooks", "WebhookEvent"), UNFINISHED_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_unfinished")


def build_the_index_again(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(apps.get_model("webhooks", "WebhookEvent"), UNFINISHED_INDEX)
        return
    build_index_concurrently(
        schema_editor,
        "event_unfinished",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_unfinished ON webhooks_webhookevent (status, received_at) "
        "WHERE status = 'received'",
    )


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0028_delivery_dead_completed_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveIndex(model_name="webhookevent", name="event_unfinished")],
            database_operations=[migrations.RunPython(drop_the_index, build_the_index_again)],
        ),
    ]
