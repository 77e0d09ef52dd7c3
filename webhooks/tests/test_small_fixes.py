"""Small points left open: the admin's times to the second and in UTC, GitHub's delivery header as
GitHub spells it, bounded source secrets, ids in ASCII digits only, the event page announcing an
event with no deliveries."""

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from organizations.models import ApiKey, AuditLog, Organization
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
MOMENT = datetime(2026, 3, 4, 20, 42, 17, tzinfo=UTC)
SHOWN = "2026-03-04 20:42:17 UTC"


@pytest.fixture
def staff_client(db):
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return staff


# --- 1. The admin's times: to the second, and in UTC, on lists and change pages alike -----------------


def test_every_admin_list_and_change_page_gives_times_to_the_second_in_utc(organization, owner, staff_client):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = make_event(source, received_at=MOMENT)
    delivery = make_delivery(event, destination)
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    key, _ = make_key(organization)
    Source.objects.filter(pk=source.pk).update(created_at=MOMENT)
    Destination.objects.filter(pk=destination.pk).update(created_at=MOMENT, paused_at=MOMENT)
    Delivery.objects.filter(pk=delivery.pk).update(created_at=MOMENT, next_attempt_at=MOMENT)
    DeliveryAttempt.objects.filter(pk=attempt.pk).update(started_at=MOMENT)
    Organization.objects.filter(pk=organization.pk).update(created_at=MOMENT)
    ApiKey.objects.filter(pk=key.pk).update(created_at=MOMENT)
    get_user_model().objects.filter(pk=owner.pk).update(date_joined=MOMENT)

    pages = {
        "webhooks_webhookevent": event.pk,
        "webhooks_delivery": delivery.pk,
        "webhooks_deliveryattempt": attempt.pk,
        "webhooks_source": source.pk,
        "webhooks_destination": destination.pk,
        "organizations_organization": organization.pk,
        "organizations_apikey": key.pk,
        "accounts_user": owner.pk,
    }
    for name, pk in pages.items():
        listed = staff_client.get(reverse(f"admin:{name}_changelist")).content.decode()
        assert SHOWN in listed, name
        # A source's page shows no time; a user's dates are a superuser's to edit, in date and time inputs.
        if name not in ("webhooks_source", "accounts_user"):
            changed = staff_client.get(reverse(f"admin:{name}_change", args=[pk])).content.decode()
            assert SHOWN in changed, name
    # The audit log is append-only (its rows cannot be back-dated): its newest entry, as it was written.
    audit = AuditLog.objects.filter(organization=organization).first()
    written = audit.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert written in staff_client.get(reverse("admin:organizations_auditlog_changelist")).content.decode()
    assert written in staff_client.get(reverse("admin:organizations_auditlog_change", args=[audit.pk])).content.decode()
