"""What a platform admin's incident drill in /admin/ found: no way to list the destinations that are
failing without opening each one, and a list filter's value with a NUL character answered a 500."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Destination
from webhooks.tests import test_admin
from webhooks.tests.factories import make_destination

pytestmark = pytest.mark.django_db

# test_admin's: two tenants, a dead, a retrying and a delivered event; a superuser signed in.
setup = test_admin.setup
superuser = test_admin.superuser
admin = test_admin.admin

DESTINATIONS = reverse("admin:webhooks_destination_changelist")


def make_failing(destination: Destination, failures: int) -> None:
    Destination.objects.filter(pk=destination.pk).update(
        failing_since=timezone.now().replace(microsecond=0), consecutive_failures=failures
    )


def test_the_destination_list_filters_the_failing_ones_and_says_since_when(admin, setup):
    failing, healthy = setup["destination"], setup["their_destination"]
    make_failing(failing, 12)

    assert test_admin.listed(admin.get(DESTINATIONS, {"failing": "yes"})) == [failing]
    assert test_admin.listed(admin.get(DESTINATIONS, {"failing": "no"})) == [healthy]
    page = admin.get(DESTINATIONS).content.decode()
    failing.refresh_from_db()
    assert f"since {failing.failing_since:%Y-%m-%d %H:%M:%S} UTC: 12 consecutive failed attempts" in page


def test_the_destination_list_runs_the_same_queries_for_one_or_many_failing_destinations(admin, organization):
    first, _ = make_destination(organization, test_admin.RECEIVER)
    make_failing(first, 3)

    def queries_for_the_list() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin.get(DESTINATIONS, {"failing": "yes"}).status_code == 200
        return len(queries)

    with_one = queries_for_the_list()
    for _ in range(15):
        destination, _ = make_destination(organization, test_admin.RECEIVER)
        make_failing(destination, 3)
    assert queries_for_the_list() == with_one


@pytest.mark.parametrize(
    "changelist, parameter",
    [
        ("admin:webhooks_delivery_changelist", "status__exact"),
        ("admin:webhooks_webhookevent_changelist", "status__exact"),
        ("admin:webhooks_bulkretry_changelist", "status__exact"),
        ("admin:organizations_auditlog_changelist", "action"),
        ("admin:webhooks_source_changelist", "q"),
    ],
)
def test_a_nul_character_in_a_list_parameter_is_a_bad_request_not_a_server_error(admin, setup, changelist, parameter):
    # PostgreSQL refuses NUL in text: the filter's query failed and the page answered 500.
    response = admin.get(reverse(changelist), {parameter: "dead\x00"})
    assert response.status_code == 400


def test_a_nul_character_in_a_parameters_name_is_a_bad_request_too(admin, setup):
    response = admin.get(reverse("admin:webhooks_delivery_changelist") + "?status__exact%00=dead")
    assert response.status_code == 400
