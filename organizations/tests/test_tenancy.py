import pytest
from django.http import Http404

from organizations.models import AuditLog, Membership
from organizations.selectors import organization_for_member

pytestmark = pytest.mark.django_db


def test_members_reach_their_organization_and_outsiders_get_404(organization, owner, member, outsider):
    assert organization_for_member(user=owner, slug="acme")[1].role == Membership.Role.OWNER
    found, membership = organization_for_member(user=member, slug="acme")
    assert found == organization and not membership.can_configure
    with pytest.raises(Http404):
        organization_for_member(user=outsider, slug="acme")
    organization.is_active = False
    organization.save()
    with pytest.raises(Http404):
        organization_for_member(user=owner, slug="acme")


def test_creating_an_organization_is_audited(organization, owner):
    entry = AuditLog.objects.get(action="organization.created")
    assert entry.organization == organization
    assert entry.changes["owner"] == owner.email
    assert entry.actor_type == AuditLog.ActorType.SYSTEM
