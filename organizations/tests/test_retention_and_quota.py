"""Retention settings that cannot wipe a tenant by accident, and the monthly quota notice."""

import re
from datetime import date, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from organizations.models import AuditLog, MonthlyUsage, Organization, current_month
from organizations.selectors import usage_this_month
from organizations.services import audit_verify_chain
from webhooks.models import WebhookEvent
from webhooks.services.lifecycle import purge_expired_events, record_usage
from webhooks.tests.factories import make_source
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


# --- The hourly purge ----------------------------------------------------------------


def make_event(source, age: timedelta, status=WebhookEvent.Status.PROCESSED) -> WebhookEvent:
    return WebhookEvent.objects.create(
        organization_id=source.organization_id,
        source=source,
        body=b"{}",
        status=status,
        received_at=timezone.now() - age,
    )


def test_a_retention_below_one_day_stored_anyway_keeps_events_younger_than_a_day(organization):
    source = make_source(organization)
    recent = make_event(source, timedelta(hours=2))
    old = make_event(source, timedelta(days=2))
    Organization.objects.filter(pk=organization.pk).update(retention_days=0)  # past the validators

    assert purge_expired_events() == 1
    assert list(WebhookEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not WebhookEvent.objects.filter(pk=old.pk).exists()


def test_each_purge_audits_once_per_organization_whose_events_it_deleted(organization, other_organization):
    source = make_source(organization)
    make_source(other_organization)  # nothing of theirs is old enough
    for _ in range(3):
        make_event(source, timedelta(days=31))
    make_event(source, timedelta(days=31), status=WebhookEvent.Status.REJECTED)
    make_event(source, timedelta(days=1))
    now = timezone.now()

    assert purge_expired_events(batch_size=2, now=now) == 4
    entries = list(AuditLog.objects.filter(action="retention.purged"))
    assert len(entries) == 1
    entry = entries[0]
    assert entry.organization_id == organization.pk
    assert entry.actor_type == AuditLog.ActorType.SYSTEM and entry.actor_user_id is None
    assert entry.changes["events"] == 3 and entry.changes["rejected_requests"] == 1
    assert entry.changes["retention_days"] == 30
    assert entry.changes["cutoff"] == (now - timedelta(days=30)).isoformat()

    assert purge_expired_events(now=now) == 0  # nothing left to delete: nothing more to record
    assert AuditLog.objects.filter(action="retention.purged").count() == 1
    assert audit_verify_chain().ok


# --- Monthly quota ---------------------------------------------------------------------


def quota_mails():
    return [message for message in mail.outbox if "quota" in message.subject]


def count(source, n, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        record_usage([make_event(source, timedelta(0)) for _ in range(n)])


def test_changing_the_quota_rearms_the_months_notice(organization, django_capture_on_commit_callbacks):
    organization.monthly_event_quota = 2
    organization.save()
    source = make_source(organization)
    count(source, 3, django_capture_on_commit_callbacks)
    count(source, 1, django_capture_on_commit_callbacks)
    assert len(quota_mails()) == 1  # once a month...
    usage = MonthlyUsage.objects.get(organization=organization)
    assert usage.quota_notified_at is not None

    organization.name = "Acme Inc."
    organization.save()  # not the quota: the notice stays sent
    assert MonthlyUsage.objects.get(pk=usage.pk).quota_notified_at is not None

    organization.monthly_event_quota = 4
    organization.save()  # ...unless the quota changes
    assert MonthlyUsage.objects.get(pk=usage.pk).quota_notified_at is None
    count(source, 1, django_capture_on_commit_callbacks)
    assert len(quota_mails()) == 2 and "more than 4 events" in quota_mails()[-1].body


def test_the_admin_changing_the_quota_rearms_the_notice(client, organization):
    usage = MonthlyUsage.objects.create(
        organization=organization, month=current_month(), events=10, quota_notified_at=timezone.now()
    )
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    assert client.post(url, organization_form(organization, monthly_event_quota=500)).status_code == 302
    usage.refresh_from_db()
    assert usage.quota_notified_at is None


def overview_text(client, user) -> str:
    """The page's text as read: tags removed, white space collapsed."""
    client.force_login(user)
    html = client.get(reverse("dashboard:overview", args=["acme"])).content.decode()
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_dashboard_overview_shows_this_months_usage_of_the_quota(client, organization, owner):
    make_source(organization)
    MonthlyUsage.objects.create(organization=organization, month=current_month(), events=41_250)
    MonthlyUsage.objects.create(organization=organization, month=date(2020, 1, 1), events=999_999)  # another month
    text = overview_text(client, owner)
    assert "Events this month 41,250 of 100,000 events" in text
    assert "over quota" not in text


def test_the_dashboard_overview_says_when_the_month_is_over_quota(client, organization, owner):
    make_source(organization)
    Organization.objects.filter(pk=organization.pk).update(monthly_event_quota=100)
    MonthlyUsage.objects.create(organization=organization, month=current_month(), events=101)
    text = overview_text(client, owner)
    assert "Events this month 101 of 100 events" in text and "over quota" in text
    assert "nothing is refused" in text.lower()


def test_usage_this_month_is_zero_before_the_first_event(organization):
    usage = usage_this_month(organization=organization)
    assert (usage.events, usage.quota, usage.over_quota) == (0, 100_000, False)
