"""What several migrations do the same way on PostgreSQL."""

from __future__ import annotations


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
    if left_invalid:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    schema_editor.execute("SET statement_timeout = 0")  # the build takes as long as the table needs
    try:
        schema_editor.execute(create_sql)
    finally:
        schema_editor.execute("RESET statement_timeout")
