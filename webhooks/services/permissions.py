"""Role checks that services repeat on their own, so a change is refused even if a view forgets."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied

from organizations.models import ApiKey, Membership, Organization

CONFIGURING_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


class NotAllowed(PermissionDenied):
    """The actor's role in the organization does not allow this change."""


def require_configure_role(*, organization: Organization, actor) -> None:
    """Admins and owners may change configuration and retry; members only read.

    An API key (the REST API) counts as an admin of its own organization when it is read-write.
    ``actor=None`` is the platform itself (management commands, tasks) and is allowed, and so
    are platform operators (staff, acting from the Django admin, whose own permissions apply).
    The dashboard's views check the role first, so staff get no extra rights there.
    """
    if actor is None or getattr(actor, "is_staff", False):
        return
    if isinstance(actor, ApiKey):
        # A key acts for its own organization only, and only a read-write one changes anything.
        if actor.organization_id != organization.pk or not actor.can_write or actor.is_revoked:
            raise NotAllowed("This API key does not allow this change.")
        return
    allowed = Membership.objects.filter(user=actor, organization=organization, role__in=CONFIGURING_ROLES).exists()
    if not allowed:
        raise NotAllowed("Your role in this organization does not allow this change.")
