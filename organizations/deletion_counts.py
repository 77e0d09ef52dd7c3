"""What deleting something takes along, counted per kind up to a cap rather than listed.

Django's admin lists (and loads) every related row on its delete confirmation pages; a tenant, a
source or a destination has millions. These counts are what the admin's confirmation pages show
instead (CountsWhatADeletionTakesMixin) and what organization deletion records it was asked to delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.admin.models import LogEntry
from django.db.models import Model, QuerySet

from .models import Membership

# Counts stop here, as the admin's lists do (CappedCountPaginator).
COUNT_CAP = 10_000


@dataclass(frozen=True)
class KindCount:
    """How many rows of one kind there are, counted up to a cap."""

    kind: str
    count: int
    capped: bool  # there are more than ``count``
    model: type[Model] | None = None  # whose rows they are (for the admin's permission check)

    @property
    def label(self) -> str:
        return f"more than {self.count:,}" if self.capped else f"{self.count:,}"


def count_kinds(kinds: list[tuple[str, QuerySet]], cap: int | None = None) -> list[KindCount]:
    """One capped count per kind: COUNT(*) over a LIMITed subquery reads at most ``cap`` + 1 index
    entries, so the cost does not grow with the rows' number."""
    cap = cap or COUNT_CAP
    counts = []
    for kind, rows in kinds:
        count = rows.order_by().values("pk")[: cap + 1].count()
        counts.append(KindCount(kind, min(count, cap), count > cap, rows.model))
    return counts


def user_contents(*, user, cap: int | None = None) -> list[KindCount]:
    """What deleting an account deletes with it: its memberships, group memberships and permissions,
    and its admin history (Django's LogEntry: a platform admin's every change). The audit log keeps
    its entries; invitations, API keys and bulk retries it made stay, without it."""
    return count_kinds(
        [
            ("memberships", Membership.objects.filter(user_id=user.pk)),
            ("group memberships", user.groups.through.objects.filter(user_id=user.pk)),
            ("permissions of its own", user.user_permissions.through.objects.filter(user_id=user.pk)),
            ("admin history entries", LogEntry.objects.filter(user_id=user.pk)),
        ],
        cap,
    )
