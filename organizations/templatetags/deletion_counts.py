from django import template

from organizations import deletion_counts

register = template.Library()


@register.simple_tag
def deletion_count_cap() -> str:
    """Where the counts on a delete confirmation page stop (“more than …” past it)."""
    return f"{deletion_counts.COUNT_CAP:,}"
