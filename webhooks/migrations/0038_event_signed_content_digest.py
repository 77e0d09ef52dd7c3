# The digest of a webhook's signed content, for providers whose event id is not signed (GitHub,
# Bitbucket, Linear, Shopify by option), and its partial unique index per source: a signed request
# posted again under a fresh id is counted as a duplicate of the stored event.
#
# The column is nullable without a default: adding it rewrites nothing. The index is built
# CONCURRENTLY (a plain build would hold back every ingest INSERT while it reads the whole table),
# outside a transaction, and both steps are safe to run again after a release stopped half-way.

from django.db import migrations, models

from webhooks.migration_helpers import AddFieldUnlessAdded, build_index_concurrently

INDEX_NAME = "event_unique_source_signed_content"
SIGNED_CONTENT_CONSTRAINT = models.UniqueConstraint(
    fields=("source", "signed_content_digest"),
    condition=models.Q(signed_content_digest__isnull=False),
    name=INDEX_NAME,
)
SIGNED_CONTENT_INDEX_SQL = (
    f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {INDEX_NAME} ON webhooks_webhookevent "
    "(source_id, signed_content_digest) WHERE signed_content_digest IS NOT NULL"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_constraint(model, SIGNED_CONTENT_CONSTRAINT)
        return
    build_index_concurrently(schema_editor, INDEX_NAME, SIGNED_CONTENT_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "WebhookEvent")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_constraint(model, SIGNED_CONTENT_CONSTRAINT)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX_NAME}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0037_destination_deletion")]

    operations = [
        AddFieldUnlessAdded(
            model_name="webhookevent",
            name="signed_content_digest",
            field=models.CharField(blank=True, editable=False, max_length=64, null=True),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddConstraint(model_name="webhookevent", constraint=SIGNED_CONTENT_CONSTRAINT)
            ],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
