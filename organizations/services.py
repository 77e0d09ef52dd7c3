"""Writes for organizations, memberships and the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from .models import AuditLog, Membership, Organization

SECRET_MASK = "********"


def audit_record(
    *,
    action: str,
    organization: Organization | None = None,
    actor=None,
    actor_label: str = "",
    target=None,
    changes: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditLog:
    """The one way an audit entry is written. ``actor`` is a User or None (the system)."""
    if actor is not None:
        actor_type = AuditLog.ActorType.USER
        actor_label = actor_label or str(actor)
    else:
        actor_type = AuditLog.ActorType.SYSTEM
        actor_label = actor_label or "system"
    return AuditLog.objects.create(
        organization=organization,
        actor_type=actor_type,
        actor_user=actor,
        actor_label=actor_label,
        action=action,
        target_type=target._meta.label if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_label=str(target)[:300] if target is not None else "",
        changes=changes or {},
        ip_address=ip_address,
    )


@transaction.atomic
def organization_create(*, name: str, slug: str, owner_email: str, actor=None) -> Organization:
    """Create an organization with its owner (the user is created when new)."""
    user_model = get_user_model()
    email = user_model.objects.normalize_email(owner_email).lower()
    owner = user_model.objects.filter(email=email).first() or user_model.objects.create_user(email)
    organization = Organization.objects.create(name=name, slug=slug)
    Membership.objects.create(user=owner, organization=organization, role=Membership.Role.OWNER)
    audit_record(
        action="organization.created",
        organization=organization,
        actor=actor,
        target=organization,
        changes={"name": name, "slug": slug, "owner": owner.email},
    )
    return organization
