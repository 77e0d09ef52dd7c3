"""Names people give (an organization's, a source's, a destination's): shown in pages and in
email subjects, so they hold no line breaks or other control characters."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

# Control characters (a line break in a name would make an email subject that names it a refused
# header) and the line separators and bidirectional controls that make a name read differently
# from what it is.
_NOT_IN_A_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a name shown in the dashboard and in emails, or None if it can."""
    if _NOT_IN_A_NAME.search(name):
        return "the name may not contain line breaks, tabs or other control characters"
    return None


def validate_name(value: str) -> None:
    """The form validator: the same rule, its message on the field."""
    if problem := name_problem(value):
        raise ValidationError(problem[0].upper() + problem[1:] + ".")


def one_line(text: str) -> str:
    """``text`` fit for an email header: each run of control characters becomes one space.

    Names saved before name_problem existed may hold a line break, which Django refuses in a header.
    """
    return re.sub(r"\s*" + _NOT_IN_A_NAME.pattern + r"+\s*", " ", text).strip()
