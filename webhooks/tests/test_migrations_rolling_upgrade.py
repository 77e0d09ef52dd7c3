"""Every migration runs while the previous release still serves (the release phase migrates before
the new processes replace the old ones, README "Upgrading a running deployment"). Two kinds of
operation break that, and are refused here for every migration after those already released:

- a column added NOT NULL without a database default (``db_default``): the old code's INSERTs do not
  name it and fail (Django's ``default`` is applied by Django, not by the database, and removed
  from the column once the existing rows are filled);
- an index or constraint built by a plain AddIndex/AddConstraint on a large table (events,
  deliveries, attempts, audit entries): CREATE INDEX holds back every write to the table while it
  reads it whole. Such indexes are built CONCURRENTLY (webhooks.migration_helpers);
- a schema change of a large table in a migration outside a transaction (``atomic = False``, as
  those that build an index CONCURRENTLY are): migrate bounds its lock wait only in a transaction,
  so it waits without bound behind a long transaction, and every statement on the table queues
  behind it. Its own migration, atomic, first.
"""

from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.models import NOT_PROVIDED

PROJECT_APPS = ("accounts", "organizations", "webhooks")
LARGE_TABLES = {("webhooks", "webhookevent"), ("webhooks", "delivery"), ("webhooks", "deliveryattempt")}
LARGE_TABLES |= {("organizations", "auditlog")}

# Released before this check, each upgrade done: a later migration is never among them.
RELEASED_BEFORE_THE_CHECK = {
    ("accounts", "0002_session_generation_invitation"),
    ("organizations", "0003_audit_hash_chain"),
    ("organizations", "0006_organization_deletion"),
    ("webhooks", "0001_initial"),
    ("webhooks", "0004_dashboard_indexes"),
    ("webhooks", "0007_delivery_due_by_destination"),
}


# Released with schema changes outside a transaction, before that was checked.
SCHEMA_CHANGES_OUTSIDE_A_TRANSACTION_RELEASED = {
    ("webhooks", "0026_event_processing_set_aside"),
    ("webhooks", "0035_delivery_bulk_retry"),
    ("webhooks", "0038_event_signed_content_digest"),
}


def database_operations(operations):
    """The operations that change the database (a SeparateDatabaseAndState's state side does not)."""
    for operation in operations:
        if isinstance(operation, migrations.SeparateDatabaseAndState):
            yield from database_operations(operation.database_operations)
        else:
            yield operation


def what_breaks_a_rolling_upgrade(app_label: str, operations, *, atomic: bool = True) -> list[str]:
    problems = []
    for operation in database_operations(operations):
        changes_a_large_table = (app_label, getattr(operation, "model_name", None)) in LARGE_TABLES
        if not atomic and changes_a_large_table and isinstance(operation, migrations.AddField | migrations.AlterField):
            problems.append(
                f"{operation.model_name}.{operation.name} is changed outside a transaction: its wait for the "
                "table's lock is unbounded, and the running processes' statements queue behind it"
            )
        if isinstance(operation, migrations.AddField):
            field = operation.field
            if not field.many_to_many and not field.null and field.db_default is NOT_PROVIDED:
                problems.append(
                    f"{operation.model_name}.{operation.name} is added NOT NULL without db_default: "
                    "the previous release's INSERTs fail"
                )
        elif isinstance(operation, migrations.AddIndex | migrations.AddConstraint):
            if (app_label, operation.model_name) in LARGE_TABLES:
                built = operation.index if isinstance(operation, migrations.AddIndex) else operation.constraint
                problems.append(
                    f"{built.name} on {operation.model_name} is built without CONCURRENTLY: "
                    "writes to the table wait for the whole build"
                )
    return problems


def test_no_migration_after_those_released_breaks_the_previous_release_running_beside_it():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    problems = {
        key: found
        for key, migration in sorted(loader.disk_migrations.items())
        if key[0] in PROJECT_APPS and key not in RELEASED_BEFORE_THE_CHECK
        for found in [
            what_breaks_a_rolling_upgrade(
                key[0],
                migration.operations,
                atomic=migration.atomic or key in SCHEMA_CHANGES_OUTSIDE_A_TRANSACTION_RELEASED,
            )
        ]
        if found
    }
    assert problems == {}


def test_the_check_tells_a_safe_column_and_index_from_unsafe_ones():
    unsafe = [
        migrations.AddField("delivery", "priority", models.IntegerField(default=0)),
        migrations.AddIndex("webhookevent", models.Index(fields=["event_type"], name="event_type_plain")),
    ]
    safe = [
        migrations.AddField("delivery", "priority", models.IntegerField(default=0, db_default=0)),
        migrations.AddField("delivery", "note", models.TextField(null=True)),
        migrations.AddIndex("destination", models.Index(fields=["name"], name="destination_name")),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex("webhookevent", models.Index(fields=["status"], name="by_status"))],
            database_operations=[
                migrations.RunSQL("CREATE INDEX CONCURRENTLY by_status ON webhooks_webhookevent (status)")
            ],
        ),
    ]
    assert what_breaks_a_rolling_upgrade("webhooks", unsafe) == [
        "delivery.priority is added NOT NULL without db_default: the previous release's INSERTs fail",
        "event_type_plain on webhookevent is built without CONCURRENTLY: writes to the table wait for the whole build",
    ]
    assert what_breaks_a_rolling_upgrade("webhooks", safe) == []
    outside_a_transaction = [migrations.AddField("delivery", "note", models.TextField(null=True))]
    assert what_breaks_a_rolling_upgrade("webhooks", outside_a_transaction, atomic=False) == [
        "delivery.note is changed outside a transaction: its wait for the table's lock is unbounded, and the "
        "running processes' statements queue behind it"
    ]
    assert what_breaks_a_rolling_upgrade("webhooks", safe[-1:], atomic=False) == []
