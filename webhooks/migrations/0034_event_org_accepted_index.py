# A partial index of the organization's accepted events, newest first: the events lists' default
# (rejected requests are listed when asked for). Built without blocking ingest; safe to run again.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

ACCEPTED_INDEX = models.Index(
    fields=("organization", "-id"), condition=~models.Q(status="rejected"), name="event_org_accepted_id"
)
ACCEPTED_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_org_accepted_id ON webhooks_webhookevent "
    "(organization_id, id DESC) WHERE NOT (status = 'rejected')"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, ACCEPTED_INDEX)
        return
    build_index_concurrently(schema_editor, "event_org_accepted_id", ACCEPTED_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, ACCEPTED_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS event_org_accepted_id")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0033_source_rejected_not_kept")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="webhookevent", index=ACCEPTED_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
