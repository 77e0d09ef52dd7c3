"""A deactivated organization: its members are told it is suspended; everyone else still learns nothing."""

import pytest
from django.urls import reverse

from organizations.models import Membership, Organization

pytestmark = pytest.mark.django_db


@pytest.fixture
def suspended(organization):
    Organization.objects.filter(pk=organization.pk).update(is_active=False)
    organization.refresh_from_db()
    return organization


def text(response) -> str:
    return response.content.decode()


def test_home_tells_the_owner_of_a_suspended_organization_to_contact_the_operator(client, suspended, owner):
    client.force_login(owner)
    response = client.get("/")
    assert response.status_code == 200
    page = text(response)
    assert "Acme is suspended" in page and "Contact the operator" in page
    assert "not in an organization yet" not in page
    assert reverse("dashboard:overview", args=["acme"]) not in page  # nothing to open


@pytest.mark.parametrize("name", ["dashboard:overview", "dashboard:events", "team:members"])
def test_its_pages_say_it_is_suspended_to_members(client, suspended, member, name):
    client.force_login(member)
    response = client.get(reverse(name, args=["acme"]))
    assert response.status_code == 404  # still closed
    page = text(response)
    assert "<h1>Acme is suspended</h1>" in page and "Contact the operator" in page
    assert "Not found" not in page


def test_non_members_still_get_a_plain_404(client, suspended, outsider):
    client.force_login(outsider)
    response = client.get(reverse("dashboard:overview", args=["acme"]))
    assert response.status_code == 404
    assert "Acme" not in text(response) and "suspended" not in text(response)


def test_a_member_of_an_active_and_a_suspended_organization_sees_both(client, suspended, other_organization, owner):
    Membership.objects.create(user=owner, organization=other_organization, role=Membership.Role.ADMIN)
    client.force_login(owner)
    response = client.get("/")
    assert response.status_code == 200  # not sent straight into Globex: the suspension would go unsaid
    page = text(response)
    assert reverse("dashboard:overview", args=["globex"]) in page and "Acme is suspended" in page
    assert client.get(reverse("dashboard:overview", args=["globex"])).status_code == 200


def test_anonymous_visitors_are_still_sent_to_sign_in(client, suspended):
    response = client.get(reverse("dashboard:overview", args=["acme"]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:sign_in"))
