"""Role checks that services repeat on their own, so a change is refused even if a view forgets."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied

from organizations.models import Membership, Organization

CONFIGURING_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


class NotAllowed(PermissionDenied):
    """The actor's role in the organization does not allow this change."""


def require_configure_role(*, organization: Organization, actor) -> None:
    """Admins and owners may change configuration and retry; members only read.

    ``actor=None`` is the platform itself (management commands, tasks) and is allowed, and so
    are platform operators (staff, acting from the Django admin, whose own permissions apply).
    The dashboard's views check the role first, so staff get no extra rights there.
    """
    if actor is None or getattr(actor, "is_staff", False):
        return
    allowed = Membership.objects.filter(user=actor, organization=organization, role__in=CONFIGURING_ROLES).exists()
    if not allowed:
        raise NotAllowed("Your role in this organization does not allow this change.")
