"""What a super admin handling an incident in /admin/ still found: the index's two dead-delivery figures
contradicting each other (one cached) and its "Dead, last 24 h" link listing every dead delivery; a
deliveries list without the last error; an index without the failing destinations; and an organization's
suspension audited as any other change."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Delivery, Destination
from webhooks.tests import test_admin
from webhooks.tests.factories import make_destination
from webhooks.tests.test_admin import deliver, make_event

pytestmark = pytest.mark.django_db

# test_admin's: two tenants, a dead, a retrying and a delivered event; a superuser signed in.
setup = test_admin.setup
superuser = test_admin.superuser
admin = test_admin.admin

INDEX = reverse("admin:index")


def dead_delivery(setup, name: str, completed_at) -> Delivery:
    delivery = deliver(make_event(setup["source"], name, "invoice.paid"), setup["destination"], Delivery.Status.DEAD, 8)
    Delivery.objects.filter(pk=delivery.pk).update(completed_at=completed_at)
    return delivery


def dead_card_figure(page: str) -> str:
    card = re.search(r'id="overview-dead">.*?<a href="[^"]*">([^<]*)</a>', page, re.S)
    return card.group(1).strip()


def link_named(page: str, text: str) -> str:
    return html.unescape(re.search(rf'<a href="([^"]*)">{re.escape(text)}</a>', page).group(1))


# --- 1. The index's dead-delivery figures agree, and each link lists what it counts ---------------


def test_the_dead_deliveries_card_agrees_with_dead_in_the_last_day_while_the_overview_is_cached(admin, setup):
    assert dead_card_figure(admin.get(INDEX).content.decode()) == "1"  # the overview is cached now
    for number in range(8):  # an incident: a receiver's deliveries go dead one after another
        dead_delivery(setup, f"evt_incident_{number}", timezone.now())

    response = admin.get(INDEX)
    page = response.content.decode()
    processing = response.context["processing"]
    assert (processing.deliveries_dead, processing.deliveries_dead_24h) == (9, 8)
    # It said 1 (cached a minute ago) beside "Dead, last 24 h: 8".
    assert dead_card_figure(page) == "9"


def test_dead_in_the_last_day_lists_the_deliveries_it_counted_and_dead_deliveries_lists_every_dead_one(admin, setup):
    now = timezone.now()
    recent = dead_delivery(setup, "evt_recent", now - timedelta(hours=2))
    dead_delivery(setup, "evt_yesterday", now - timedelta(hours=30))
    succeeded = Delivery.objects.get(event=setup["delivered"])
    Delivery.objects.filter(pk=succeeded.pk).update(completed_at=now - timedelta(hours=1))  # completed, not dead

    page = admin.get(INDEX).content.decode()
    # Dies after the page counted: not one of those it counted.
    dead_delivery(setup, "evt_later", now + timedelta(seconds=5))

    last_day = test_admin.listed(admin.get(link_named(page, "Dead, last 24 h")))
    assert [delivery.pk for delivery in last_day] == [recent.pk]
    assert re.search(r"Dead, last 24 h</a></td>\s*<td>1</td>", page)

    every_dead = test_admin.listed(admin.get(link_named(page, dead_card_figure(page))))
    assert len(every_dead) == 4 and {delivery.status for delivery in every_dead} == {Delivery.Status.DEAD}
    assert dead_card_figure(page) == "3"  # the setup's (never completed), the recent one, yesterday's


def test_the_deliveries_list_filters_by_completion_to_the_second_and_keeps_the_time_in_its_inputs(admin, setup):
    moment = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    inside = dead_delivery(setup, "evt_inside", moment + timedelta(milliseconds=999))  # within the last second
    dead_delivery(setup, "evt_before", moment - timedelta(milliseconds=1))
    dead_delivery(setup, "evt_after", moment + timedelta(seconds=1))
    stamp = f"{moment:%Y-%m-%dT%H:%M:%S}"

    response = admin.get(
        reverse("admin:webhooks_delivery_changelist"), {"completed_at_from": stamp, "completed_at_to": stamp}
    )
    assert [delivery.pk for delivery in test_admin.listed(response)] == [inside.pk]
    page = response.content.decode()
    assert f'type="datetime-local" step="1" name="completed_at_from" value="{stamp}"' in page
    # A day still names the whole day, in a date input.
    day = f"{moment + timedelta(days=1):%Y-%m-%d}"
    by_day = admin.get(reverse("admin:webhooks_delivery_changelist"), {"completed_at_to": day})
    assert len(test_admin.listed(by_day)) == 3  # not the setup's dead delivery, never completed
    assert f'type="date" name="completed_at_to" value="{day}"' in by_day.content.decode()


# --- 2. The deliveries list says why each failed ---------------------------------------------------

DELIVERIES = reverse("admin:webhooks_delivery_changelist")


def test_the_deliveries_list_shows_each_ones_last_error_short_and_escaped(admin, setup):
    timed_out = Delivery.objects.get(event=setup["retrying"])
    Delivery.objects.filter(pk=timed_out.pk).update(last_error="timed out after 10 s")
    long_error = "connection failed: <receiver.example>:443: " + "x" * 400 + " the end"
    Delivery.objects.filter(event=setup["dead"]).update(last_error=long_error)

    page = admin.get(DELIVERIES).content.decode()
    assert '<td class="field-last_error_short">timed out after 10 s</td>' in page
    shown = re.search(r'<td class="field-last_error_short"><span title="([^"]*)">([^<]*)</span></td>', page)
    assert html.unescape(shown.group(1)) == long_error  # whole on hover
    assert shown.group(2) == html.escape(long_error[:79]) + "…"  # its start, escaped
    assert '<td class="field-last_error_short"></td>' in page  # the delivered one: nothing to say


def test_the_deliveries_list_reads_last_errors_without_a_query_per_row(admin, setup):
    def queries_for_the_list() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin.get(DELIVERIES).status_code == 200
        return len(queries)

    Delivery.objects.update(last_error="HTTP 503: tried again later")
    with_three = queries_for_the_list()
    for number in range(15):
        dead_delivery(setup, f"evt_timeout_{number}", timezone.now())
    Delivery.objects.update(last_error="timed out after 10 s")
    assert queries_for_the_list() == with_three


# --- 3. The index counts the failing destinations, and links to them --------------------------------


def make_failing(destination: Destination, failures: int) -> None:
    Destination.objects.filter(pk=destination.pk).update(failing_since=timezone.now(), consecutive_failures=failures)


def failing_card(page: str) -> tuple[str, str]:
    card = re.search(r'id="overview-failing">.*?<a href="([^"]*)">([^<]*)</a>', page, re.S)
    return html.unescape(card.group(1)), card.group(2).strip()


def test_the_index_counts_the_failing_destinations_and_links_to_the_list_of_them(admin, setup, organization):
    assert failing_card(admin.get(INDEX).content.decode())[1] == "0"  # the cached overview is filled now
    failing, paused_and_failing = setup["destination"], setup["their_destination"]
    make_failing(failing, 3)
    make_failing(paused_and_failing, 40)
    Destination.objects.filter(pk=paused_and_failing.pk).update(paused_at=timezone.now())
    make_destination(organization, test_admin.RECEIVER)  # healthy

    link, count = failing_card(admin.get(INDEX).content.decode())
    assert count == "2"  # live, as the list it links to
    assert link == reverse("admin:webhooks_destination_changelist") + "?failing=yes"
    assert {item.pk for item in test_admin.listed(admin.get(link))} == {failing.pk, paused_and_failing.pk}


def test_the_index_runs_the_same_queries_for_one_or_many_failing_and_paused_destinations(admin, organization):
    first, _ = make_destination(organization, test_admin.RECEIVER)
    make_failing(first, 3)
    admin.get(INDEX)  # the cached overview is filled: both counts below read it

    def queries_for_the_index() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin.get(INDEX).status_code == 200
        return len(queries)

    with_one = queries_for_the_index()
    for _ in range(15):
        destination, _ = make_destination(organization, test_admin.RECEIVER)
        make_failing(destination, 3)
        Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    assert queries_for_the_index() == with_one
