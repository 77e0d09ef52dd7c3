# One attempt row per (delivery, attempt number). Rows written twice for one send before recording
# became idempotent (a COMMIT whose reply was lost) are removed first, the earliest kept; the index
# is built without blocking the dispatchers' inserts, then made the constraint. Safe to run again.

from django.db import migrations, models

CONSTRAINT = models.UniqueConstraint(fields=("delivery", "attempt_number"), name="attempt_delivery_number")

REMOVE_REPEATED_ATTEMPTS = """
DELETE FROM webhooks_deliveryattempt WHERE id IN (
    SELECT later.id FROM webhooks_deliveryattempt later
    JOIN webhooks_deliveryattempt earlier
      ON earlier.delivery_id = later.delivery_id
     AND earlier.attempt_number = later.attempt_number
     AND earlier.id < later.id
)
"""


def add_constraint(apps, schema_editor):
    schema_editor.execute(REMOVE_REPEATED_ATTEMPTS)
    model = apps.get_model("webhooks", "DeliveryAttempt")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_constraint(model, CONSTRAINT)
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_index.indisvalid FROM pg_index JOIN pg_class ON pg_class.oid = pg_index.indexrelid "
            "WHERE pg_class.relname = 'attempt_delivery_number'"
        )
        row = cursor.fetchone()
        cursor.execute("SELECT 1 FROM pg_constraint WHERE conname = 'attempt_delivery_number'")
        constrained = cursor.fetchone() is not None
    if constrained:
        return
    if row is not None and not row[0]:  # an earlier build that failed leaves an invalid index
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS attempt_delivery_number")
    schema_editor.execute("SET statement_timeout = 0")  # the build takes as long as the table needs
    try:
        schema_editor.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS attempt_delivery_number "
            "ON webhooks_deliveryattempt (delivery_id, attempt_number)"
        )
    finally:
        schema_editor.execute("RESET statement_timeout")
    schema_editor.execute(
        "ALTER TABLE webhooks_deliveryattempt ADD CONSTRAINT attempt_delivery_number "
        "UNIQUE USING INDEX attempt_delivery_number"
    )


def remove_constraint(apps, schema_editor):
    schema_editor.remove_constraint(apps.get_model("webhooks", "DeliveryAttempt"), CONSTRAINT)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("webhooks", "0015_event_provider_id_prefix_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddConstraint(model_name="deliveryattempt", constraint=CONSTRAINT)],
            database_operations=[migrations.RunPython(add_constraint, remove_constraint)],
        ),
    ]
