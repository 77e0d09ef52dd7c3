"""Retention settings that cannot wipe a tenant by accident, and the monthly quota notice."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.urls import reverse

from organizations.models import Organization
from webhooks.tests.test_admin import organization_form

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("days", [0, 3651])
def test_retention_outside_one_day_to_ten_years_is_refused(organization, days):
    organization.retention_days = days
    with pytest.raises(ValidationError) as error:
        organization.full_clean()
    assert "retention_days" in error.value.message_dict


@pytest.mark.parametrize("days", [1, 30, 3650])
def test_retention_from_one_day_to_ten_years_is_accepted(organization, days):
    organization.retention_days = days
    organization.full_clean()


def test_retention_help_text_says_what_is_deleted():
    help_text = Organization._meta.get_field("retention_days").help_text
    assert "deleted" in help_text and "events" in help_text


def test_the_admin_refuses_a_retention_of_zero_days(client, organization):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    response = client.post(url, organization_form(organization, retention_days=0))
    assert response.status_code == 200
    assert "retention_days" in response.context["adminform"].form.errors
    organization.refresh_from_db()
    assert organization.retention_days == 30
