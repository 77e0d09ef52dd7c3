"""Suspending an organization in the admin, and making it active again, are audit actions of their own
(organization.suspended, organization.reactivated) with the field's before and after: an incident's
review found them only as a generic change ("is_active: true → false") among every other edit."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from organizations.audit_actions import audit_action_label
from organizations.models import AuditLog, Organization
from organizations.services import audit_verify_chain, organization_set_active
from organizations.tests.admin_forms import organization_change_form

pytestmark = pytest.mark.django_db

GENERIC_CHANGE = "admin.organizations.organization.changed"


@pytest.fixture
def admin(client):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return client


def change_organization(admin, organization, *, active: bool, **changes):
    """Post the organization's admin page as a browser does: an unticked box is not sent."""
    form = organization_change_form(organization, active=active, **changes)
    response = admin.post(reverse("admin:organizations_organization_change", args=[organization.pk]), form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    organization.refresh_from_db()


def test_suspending_and_reactivating_in_the_admin_are_audited_as_such_with_before_and_after(admin, organization):
    change_organization(admin, organization, active=False)
    assert not organization.is_active
    suspended = AuditLog.objects.get(action="organization.suspended")
    assert suspended.changes == {"fields": {"is_active": [True, False]}}
    assert suspended.organization_id == organization.pk and suspended.actor_label == "root@hookline.example"
    assert suspended.target_id == str(organization.pk)
    # Only the suspension changed: no generic entry besides it.
    assert not AuditLog.objects.filter(action=GENERIC_CHANGE).exists()

    change_organization(admin, organization, active=True)
    assert organization.is_active
    reactivated = AuditLog.objects.get(action="organization.reactivated")
    assert reactivated.changes == {"fields": {"is_active": [False, True]}}
    assert audit_verify_chain().ok

    # The audit log's Action filter finds the suspension alone, with its before and after.
    listing = admin.get(reverse("admin:organizations_auditlog_changelist"), {"action": "organization.suspended"})
    assert list(listing.context["cl"].result_list) == [suspended]
    assert "is_active: true → false" in listing.content.decode()


def test_a_suspension_with_other_changes_keeps_them_in_the_admins_change_entry(admin, organization):
    change_organization(admin, organization, active=False, plan="business")
    assert not organization.is_active and organization.plan == "business"
    assert AuditLog.objects.get(action="organization.suspended").changes == {"fields": {"is_active": [True, False]}}
    assert AuditLog.objects.get(action=GENERIC_CHANGE).changes["fields"] == {"plan": ["free", "business"]}


def test_saving_without_touching_is_active_writes_no_suspension_entry(admin, organization):
    change_organization(admin, organization, active=True, plan="team")
    assert not AuditLog.objects.filter(action__in=["organization.suspended", "organization.reactivated"]).exists()


def test_an_organization_being_deleted_is_not_made_active_again(organization):
    Organization.objects.filter(pk=organization.pk).update(is_active=False, deletion_requested_at=timezone.now())
    organization.refresh_from_db()
    with pytest.raises(ValidationError):
        organization_set_active(organization=organization, active=True)
    organization.refresh_from_db()
    assert not organization.is_active
    assert not AuditLog.objects.filter(action="organization.reactivated").exists()


def test_the_dashboards_audit_filter_words_name_the_new_actions():
    from webhooks.forms import audit_action_choices

    assert audit_action_label("organization.suspended") == "suspended the organization"
    assert audit_action_label("organization.reactivated") == "made the organization active again"
    choices = dict(audit_action_choices(["organization.suspended", "organization.reactivated"]))
    assert choices == {
        "organization.suspended": "suspended the organization",
        "organization.reactivated": "made the organization active again",
    }
