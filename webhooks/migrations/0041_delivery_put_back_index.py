# The partial index of the deliveries the platform holds (0040's columns): it holds only deliveries put
# back and still waiting, so it starts empty. Built CONCURRENTLY (a plain build would hold back every
# delivery write while it reads the whole table), outside a transaction, and safe to run again after a
# release stopped half-way. A database that applied the earlier form of 0040 (which built it) has it:
# IF NOT EXISTS leaves it as it is.

from django.db import migrations, models

from webhooks.migration_helpers import build_index_concurrently

INDEX_NAME = "delivery_put_back"
PUT_BACK_INDEX = models.Index(
    fields=("put_back_cause", "put_back_since"),
    condition=models.Q(put_back_cause__isnull=False, status__in=("pending", "in_flight")),
    name=INDEX_NAME,
)
PUT_BACK_INDEX_SQL = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX_NAME} ON webhooks_delivery (put_back_cause, put_back_since) "
    "WHERE put_back_cause IS NOT NULL AND status IN ('pending', 'in_flight')"
)


def add_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(model, PUT_BACK_INDEX)
        return
    build_index_concurrently(schema_editor, INDEX_NAME, PUT_BACK_INDEX_SQL)


def remove_the_index(apps, schema_editor):
    model = apps.get_model("webhooks", "Delivery")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(model, PUT_BACK_INDEX)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX_NAME}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0040_delivery_put_back")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=PUT_BACK_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
