"""An organization's own cap on deliveries sent at once: set by platform admins (audited), shown to its
members, who cannot change it. How the dispatcher applies it: test_delivery_engine and
test_why_not_sent_and_why_waiting."""

import html
import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from organizations.models import AuditLog, Organization
from organizations.services import audit_verify_chain
from webhooks.tests.factories import make_destination, make_source
from webhooks.tests.test_admin import organization_form

pytestmark = pytest.mark.django_db

CHANGED = "admin.organizations.organization.changed"


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")


def text_of(response) -> str:
    """The page's text as read: tags removed, white space collapsed."""
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split()))


def test_a_platform_admin_sets_and_clears_an_organizations_cap_and_each_change_is_audited(
    client, organization, superuser, settings
):
    settings.ORGANIZATION_MAX_CONCURRENCY = 32
    client.force_login(superuser)
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    assert "32 (the platform's ORGANIZATION_MAX_CONCURRENCY)" in text_of(client.get(url))

    assert client.post(url, organization_form(organization, max_concurrency="64")).status_code == 302
    organization.refresh_from_db()
    assert (organization.max_concurrency, organization.effective_max_concurrency) == (64, 64)
    entry = AuditLog.objects.get(action=CHANGED)
    assert entry.changes["fields"] == {"max_concurrency": [None, 64]}
    assert entry.organization_id == organization.pk and entry.actor_user_id == superuser.pk
    assert "64 (this organization's own)" in text_of(client.get(url))
    listed = text_of(client.get(reverse("admin:organizations_organization_changelist")))
    assert "Sent at once (in effect)" in listed and "64 (this organization's own)" in listed

    # Emptied: the platform's again, and audited as such.
    assert client.post(url, organization_form(organization, max_concurrency="")).status_code == 302
    organization.refresh_from_db()
    assert (organization.max_concurrency, organization.effective_max_concurrency) == (None, 32)
    cleared = AuditLog.objects.filter(action=CHANGED).order_by("-id").first()
    assert cleared.changes["fields"] == {"max_concurrency": [64, None]}
    assert audit_verify_chain().ok


@pytest.mark.parametrize("value", ["0", "-3", "many", "99999999999"])
def test_the_admin_refuses_a_cap_that_is_not_a_positive_number(client, organization, superuser, value):
    client.force_login(superuser)
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    response = client.post(url, organization_form(organization, max_concurrency=value))
    assert response.status_code == 200
    assert "max_concurrency" in response.context["adminform"].form.errors
    organization.refresh_from_db()
    assert organization.max_concurrency is None
    assert not AuditLog.objects.filter(action=CHANGED).exists()


def test_the_database_refuses_a_cap_of_zero_written_past_the_form(organization):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Organization.objects.filter(pk=organization.pk).update(max_concurrency=0)


def test_a_tenant_sees_its_cap_and_cannot_change_it(client, organization, owner, superuser, settings):
    settings.ORGANIZATION_MAX_CONCURRENCY = 32
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks", sources=[source])
    client.force_login(owner)
    overview = reverse("dashboard:overview", args=[organization.slug])
    assert "Sent at once 32 deliveries at most, over all your destinations" in text_of(client.get(overview))

    # The organization's own page is the admin's, which a tenant's owner does not get into.
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    refused = client.post(url, organization_form(organization, max_concurrency="500"))
    assert refused.status_code == 302 and refused["Location"].startswith(reverse("admin:login"))
    organization.refresh_from_db()
    assert organization.max_concurrency is None
    assert not AuditLog.objects.filter(action=CHANGED).exists()

    Organization.objects.filter(pk=organization.pk).update(max_concurrency=6)
    page = client.get(overview)
    assert "Sent at once 6 deliveries at most" in text_of(page)
    assert 'name="max_concurrency"' not in page.content.decode()  # shown, not a field
    detail = client.get(reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]))
    assert "at most 10 at a time (and 6 over all of Acme's destinations)" in text_of(detail)
