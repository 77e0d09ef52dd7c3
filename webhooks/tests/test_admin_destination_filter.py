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


def page_state(admin, destination: Destination) -> str:
    """The state the destination's page says, in the words of the list's filter."""
    page = admin.get(reverse("admin:webhooks_destination_change", args=[destination.pk])).content.decode()
    state = page.split('id="destination-state"', 1)[1].split("</p>", 1)[0]
    for words, value in (
        ('<strong class="hookline-bad">Inactive</strong>', "inactive"),
        ('<strong class="hookline-bad">Paused</strong>', "paused"),
        ("its organization is being deleted", "organization_being_deleted"),
        ("its organization is suspended", "organization_suspended"),
        ("<strong>Sending</strong>", "sending"),
    ):
        if words in state:
            return value
    raise AssertionError(state)


def test_each_destination_is_listed_under_the_one_state_its_page_says(admin, organization, other_organization):
    # An inactive destination that is also paused says "Inactive" on its page, and a destination of an
    # organization being deleted (inactive too) says so, not "suspended": the filter lists them there only.
    from organizations.services import organization_create

    doomed_organization = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    destinations = {
        "sending": make_destination(organization, test_admin.RECEIVER)[0],
        "paused": make_destination(organization, test_admin.RECEIVER)[0],
        "inactive": make_destination(organization, test_admin.RECEIVER)[0],
        "inactive_and_paused": make_destination(organization, test_admin.RECEIVER)[0],
        "suspended": make_destination(other_organization, test_admin.RECEIVER)[0],
        "being_deleted": make_destination(doomed_organization, test_admin.RECEIVER)[0],
    }
    Destination.objects.filter(pk__in=[destinations["paused"].pk, destinations["inactive_and_paused"].pk]).update(
        paused_at=timezone.now()
    )
    Destination.objects.filter(pk__in=[destinations["inactive"].pk, destinations["inactive_and_paused"].pk]).update(
        is_active=False
    )
    Organization.objects.filter(pk=other_organization.pk).update(is_active=False)
    Organization.objects.filter(pk=doomed_organization.pk).update(is_active=False, deletion_requested_at=timezone.now())

    states = ("paused", "sending", "organization_suspended", "organization_being_deleted", "inactive")
    listed = {state: listed_under(admin, state) for state in states}
    for name, destination in destinations.items():
        assert [state for state in states if destination.pk in listed[state]] == [page_state(admin, destination)], name
