# The REST API's delivery list (an organization's deliveries, newest first) reads this index instead of
# walking every organization's deliveries backwards; built without blocking delivery recording.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

ORG_ID_INDEX = models.Index(fields=("organization", "-id"), name="delivery_org_id")
ORG_ID_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_org_id ON webhooks_delivery (organization_id, id DESC)"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, ORG_ID_INDEX)
        return
    build_index_concurrently(schema_editor, "delivery_org_id", ORG_ID_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, ORG_ID_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS delivery_org_id")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0017_delivery_failed_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=ORG_ID_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
