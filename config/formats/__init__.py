"""How dates and times are written on the pages Django renders (FORMAT_MODULE_PATH points here).

Django's English format stops at the minute and names no zone ("March 4, 2026, 8:42 p.m."): whether a
duplicate came 1 s or 59 s after the original, or an attempt before or after a retry by hand, could
not be told, nor in which zone the time was. Every date-time the admin shows (lists, change pages,
inlines) goes through DATETIME_FORMAT, so setting it here is the one place that decides it.
"""

from datetime import datetime

from django.utils import formats, timezone


def to_the_second(moment: datetime | None) -> str | None:
    """A date-time as the admin shows it ("2026-03-04 20:42:17 UTC"), for text built in Python."""
    if moment is None:
        return None  # the admin's empty value
    return formats.date_format(timezone.localtime(moment), "DATETIME_FORMAT")
