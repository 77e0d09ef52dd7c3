"""The destination list's state filter says what the destination's page says: a suspended
organization's destination is "Not sending" on its page, so it is not listed as "Sending"."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.models import Organization
from webhooks.models import Destination
from webhooks.tests import test_admin
from webhooks.tests.factories import make_destination

pytestmark = pytest.mark.django_db

superuser = test_admin.superuser
admin = test_admin.admin

DESTINATIONS = reverse("admin:webhooks_destination_changelist")


def listed_under(admin, state: str) -> set[int]:
    return {destination.pk for destination in test_admin.listed(admin.get(f"{DESTINATIONS}?state={state}"))}


def page_says_sending(admin, destination: Destination) -> bool:
    page = admin.get(reverse("admin:webhooks_destination_change", args=[destination.pk])).content.decode()
    assert 'id="destination-state"' in page
    return "<strong>Sending</strong>" in page


def test_a_suspended_organizations_destinations_are_not_listed_as_sending(admin, organization, other_organization):
    sending, _ = make_destination(organization, test_admin.RECEIVER)
    paused, _ = make_destination(organization, test_admin.RECEIVER)
    Destination.objects.filter(pk=paused.pk).update(paused_at=timezone.now())
    inactive, _ = make_destination(organization, test_admin.RECEIVER)
    Destination.objects.filter(pk=inactive.pk).update(is_active=False)
    suspended, _ = make_destination(other_organization, test_admin.RECEIVER)
    Organization.objects.filter(pk=other_organization.pk).update(is_active=False)

    assert listed_under(admin, "sending") == {sending.pk}
    assert listed_under(admin, "organization_suspended") == {suspended.pk}
    # The filter and each destination's page agree on which destinations are sending.
    everyone = [sending, paused, inactive, suspended]
    assert {destination.pk for destination in everyone if page_says_sending(admin, destination)} == {sending.pk}


def test_the_state_filter_reads_no_row_more_for_more_destinations(admin, organization, other_organization):
    make_destination(other_organization, test_admin.RECEIVER)
    Organization.objects.filter(pk=other_organization.pk).update(is_active=False)

    def queries(state: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            test_admin.listed(admin.get(f"{DESTINATIONS}?state={state}"))
        return len(captured)

    few = {state: queries(state) for state in ("sending", "organization_suspended")}
    for _ in range(4):
        make_destination(organization, test_admin.RECEIVER)
        make_destination(other_organization, test_admin.RECEIVER)
    assert {state: queries(state) for state in few} == few
