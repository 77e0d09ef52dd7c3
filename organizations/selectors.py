"""Reads that enforce tenancy: tenant objects are only reached through these."""

from __future__ import annotations

from django.http import Http404

from .models import Membership, Organization


def organization_for_member(*, user, slug: str) -> tuple[Organization, Membership]:
    """The organization and the user's membership, or 404 for non-members (never 403)."""
    membership = (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=slug, organization__is_active=True)
        .first()
    )
    if membership is None:
        raise Http404("No such organization")
    return membership.organization, membership


def active_memberships(*, user) -> list[Membership]:
    """The user's memberships of active organizations, by organization name."""
    return list(
        Membership.objects.filter(user=user, organization__is_active=True)
        .select_related("organization")
        .order_by("organization__name")
    )


def suspended_memberships(*, user) -> list[Membership]:
    """The user's memberships of organizations an operator deactivated: shown as suspended, never opened."""
    return list(
        Membership.objects.filter(user=user, organization__is_active=False)
        .select_related("organization")
        .order_by("organization__name")
    )


def suspended_organization_for_member(*, user, slug: str) -> Organization | None:
    """The deactivated organization ``slug`` if the user is one of its members, else None (non-members learn nothing)."""
    if not user.is_authenticated:
        return None
    membership = (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=slug, organization__is_active=False)
        .first()
    )
    return membership.organization if membership else None


def organization_by_slug(slug: str) -> Organization:
    """Operator lookup (management commands); raises Organization.DoesNotExist."""
    return Organization.objects.get(slug=slug)
