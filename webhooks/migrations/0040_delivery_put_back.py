# Why the platform itself holds a delivery it put back unsent (a destination secret no key decrypts,
# its own bound on DNS lookups), since when and how many times in a row: shown as the delivery's
# waiting_for, counted in the processing health, and read by whichever process claims it next for the
# next delay (services.delivery._put_back_unsent).
#
# The columns are nullable without a default (and without a CHECK, which would scan the table): adding
# them rewrites nothing. The partial index holds only deliveries put back and still waiting, so it starts
# empty; built CONCURRENTLY (a plain build would hold back every delivery write while it reads the whole
# table), outside a transaction, and every step is safe to run again after a release stopped half-way.

from django.db import migrations, models

from webhooks.migration_helpers import AddFieldUnlessAdded, build_index_concurrently

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

    dependencies = [("webhooks", "0039_event_rejected_index")]

    operations = [
        AddFieldUnlessAdded(
            model_name="delivery",
            name="put_back_cause",
            field=models.CharField(
                blank=True,
                choices=[
                    ("secret_unreadable", "Its destination's secret cannot be decrypted"),
                    ("dns_lookups_busy", "The platform's own DNS lookups in progress are full"),
                ],
                max_length=20,
                null=True,
            ),
        ),
        AddFieldUnlessAdded(
            model_name="delivery", name="put_back_since", field=models.DateTimeField(blank=True, null=True)
        ),
        AddFieldUnlessAdded(
            model_name="delivery", name="put_back_times", field=models.IntegerField(blank=True, null=True)
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="delivery", index=PUT_BACK_INDEX)],
            database_operations=[migrations.RunPython(add_the_index, remove_the_index)],
        ),
    ]
