"""Reads that enforce tenancy: tenant objects are only reached through these."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import F
from django.http import Http404

from .models import ApiKey, Membership, MonthlyUsage, Organization, current_month


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


@dataclass(frozen=True)
class QuotaUsage:
    """Events accepted this month against the organization's monthly quota (a notice only: nothing is refused)."""

    events: int
    quota: int

    @property
    def over_quota(self) -> bool:
        return self.events > self.quota


def usage_this_month(*, organization: Organization) -> QuotaUsage:
    """The organization's count for the current month (UTC), 0 before its first event."""
    events = (
        MonthlyUsage.objects.filter(organization=organization, month=current_month())
        .values_list("events", flat=True)
        .first()
    )
    return QuotaUsage(events=events or 0, quota=organization.monthly_event_quota)


def api_keys_for_organization(*, organization: Organization) -> list[ApiKey]:
    """The organization's API keys, the active ones first, newest first."""
    return list(
        ApiKey.objects.filter(organization=organization)
        .select_related("created_by")
        .order_by(F("revoked_at").desc(nulls_first=True), "-created_at")
    )


def api_key_for_organization(*, organization: Organization, api_key_id) -> ApiKey:
    """One API key of this organization; ApiKey.DoesNotExist for anyone else's."""
    return ApiKey.objects.select_related("organization").get(organization=organization, pk=api_key_id)
