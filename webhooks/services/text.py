"""Making arbitrary text storable in PostgreSQL text and jsonb columns."""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def storable_text(value: str) -> str:
    """``value`` with what PostgreSQL refuses replaced by U+FFFD.

    PostgreSQL text and jsonb cannot hold NUL, and psycopg cannot encode a lone
    surrogate; both reach us from JSON bodies (``"\\u0000"``, ``"\\ud800"``) and
    from receivers' responses. Refusing the value would lose the webhook or the
    record of an attempt, so it is kept with the offending characters replaced.
    """
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join(REPLACEMENT if "\ud800" <= char <= "\udfff" else char for char in value)
    return value
