"""What several migrations do the same way on PostgreSQL."""

from __future__ import annotations

from django.db import migrations


def build_index_concurrently(schema_editor, name: str, create_sql: str) -> None:
    """Run ``create_sql`` (a CREATE INDEX CONCURRENTLY IF NOT EXISTS ``name``) safely again.

    CONCURRENTLY: a plain CREATE INDEX would hold back every write to the table while it reads
    it whole. A build that failed before (a timeout, a killed release) leaves an invalid index
    behind that IF NOT EXISTS would keep for good: it is dropped first.
    """
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_index JOIN pg_class ON pg_class.oid = pg_index.indexrelid "
            "WHERE pg_class.relname = %s AND NOT pg_index.indisvalid",
            [name],
        )
        left_invalid = cursor.fetchone() is not None
    # No bound on its lock waits either: migrate's lock_timeout (webhooks/management/commands/migrate.py)
    # is for schema changes, which block the running processes while they wait. A concurrent build
    # blocks none of their statements while it waits for the transactions older than it, and cut
    # short it would start again from the beginning. The session's bound is put back after it.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout')")
        (lock_timeout,) = cursor.fetchone()
    schema_editor.execute("SET lock_timeout = 0")
    schema_editor.execute("SET statement_timeout = 0")  # the build takes as long as the table needs
    try:
        if left_invalid:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        schema_editor.execute(create_sql)
    finally:
        schema_editor.execute("RESET statement_timeout")
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [lock_timeout])


class AddFieldUnlessAdded(migrations.AddField):
    """AddField, except where the column is there already: added by an earlier run of the same
    migration that was stopped before it was recorded.

    A migration that builds an index CONCURRENTLY runs outside a transaction, so each of its steps
    commits on its own: a release stopped during the build (on a large table the longest step: the
    release's time limit, a cancelled build) leaves the migration's columns added but the migration
    not recorded, and the next release runs it again from its first step, where adding a column
    again would fail ("column already exists") and stop every release after it.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        column = model._meta.get_field(self.name).column
        with schema_editor.connection.cursor() as cursor:
            table = schema_editor.connection.introspection.get_table_description(cursor, model._meta.db_table)
        if column not in {existing.name for existing in table}:
            super().database_forwards(app_label, schema_editor, from_state, to_state)
