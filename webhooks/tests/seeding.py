"""Many rows of one model in one INSERT ... SELECT, for tests that seed thousands of rows to read.

bulk_create builds a model instance per row and prepares each of its fields in Python: for the
~27,000 rows of a month of history that took most of a test's seconds. Here the rows are one
template instance (built by the model's own constructor, so every default and every value not
given is the model's) repeated ``count`` times, with the columns that differ between rows sent as
one array each (their values prepared by the field, as bulk_create would) and unnested by
PostgreSQL. The rows stored are the same as bulk_create's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection, models


def insert_rows(template: models.Model, count: int, **varying: Sequence[Any]) -> None:
    """``count`` rows of ``template``'s model, each ``template``'s values except ``varying``'s (a
    field's attname, e.g. ``event_id``, to one value per row)."""
    model = type(template)
    fields = model._meta.concrete_fields
    unknown = set(varying) - {field.attname for field in fields}
    assert not unknown, f"not columns of {model.__name__}: {unknown}"
    assert all(len(values) == count for values in varying.values()), "one value per row"
    primary_key = model._meta.pk
    assert primary_key.attname in varying or primary_key.db_returning, "each row's own key, one per row"
    columns, selected, constants, arrays, array_names = [], [], [], [], []
    for field in fields:
        if field.attname not in varying and field.primary_key and field.db_returning:
            continue  # a serial key: the database numbers the rows
        columns.append(connection.ops.quote_name(field.column))
        cast = field.cast_db_type(connection)
        if field.attname in varying:
            name = f"c{len(arrays)}"
            arrays.append([field.get_db_prep_save(value, connection) for value in varying[field.attname]])
            array_names.append((name, cast))
            selected.append(f"v.{name}")
        else:
            constants.append(field.get_db_prep_save(getattr(template, field.attname), connection))
            selected.append(f"%s::{cast}")
    unnested = ", ".join(f"%s::{cast}[]" for _, cast in array_names)
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(selected)} FROM unnest({unnested}) AS v({', '.join(name for name, _ in array_names)})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*constants, *arrays])
