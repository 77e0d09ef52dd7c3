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


def organization_by_slug(slug: str) -> Organization:
    """Operator lookup (management commands); raises Organization.DoesNotExist."""
    return Organization.objects.get(slug=slug)
