# Which bulk retry last made a delivery pending again, so that a job can show what became of the
# deliveries it retried (jobs from before have none to show: outcome_recorded is false for them).
# Safe on a large delivery table:
# - the column is nullable without a default (no rewrite), and its foreign key is declared with it
#   in the same ADD COLUMN, which PostgreSQL does not validate by reading the table (it is all NULL);
# - its index is partial (only the deliveries a job takes) and built CONCURRENTLY, without holding
#   up delivery recording; safe to run again after an interruption, the columns too (a run stopped
#   during the build has added them already: AddFieldUnlessAdded).

import django.db.models.deletion
from django.db import migrations, models

from webhooks.migration_helpers import AddFieldUnlessAdded, build_index_concurrently

BULK_RETRY_INDEX = models.Index(
    fields=("bulk_retry", "status"),
    condition=models.Q(bulk_retry__isnull=False),
    name="delivery_bulk_retry_status",
)
BULK_RETRY_INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_bulk_retry_status ON webhooks_delivery "
    "(bulk_retry_id, status) WHERE bulk_retry_id IS NOT NULL"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, BULK_RETRY_INDEX)
        return
    build_index_concurrently(schema_editor, "delivery_bulk_retry_status", BULK_RETRY_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, BULK_RETRY_INDEX)
        return
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS delivery_bulk_retry_status")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0034_event_org_accepted_index")]

    operations = [
        AddFieldUnlessAdded(
            model_name="bulkretry",
            name="outcome_recorded",
            field=models.BooleanField(db_default=False, default=True),
        ),
        AddFieldUnlessAdded(
            model_name="delivery",
            name="bulk_retry",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="deliveries",
                to="webhooks.bulkretry",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=BULK_RETRY_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
