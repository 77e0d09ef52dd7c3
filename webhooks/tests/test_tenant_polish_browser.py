"""Small tenant-facing points of the dashboard a trial and an audit found, in a real browser
(Playwright + Debian's Chromium): what a tenant was offered or shown, and what it should have been."""

import pytest
from playwright.sync_api import expect

from conftest import UserFactory
from organizations.models import Membership
from webhooks.models import Delivery

from .api_helpers import make_event
from .dashboard_helpers import build_world, work_driven_by_the_test
from .factories import make_source
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch, bulk_retries=True)


def test_retry_all_failed_deliveries_is_offered_only_when_one_has_failed(
    browser, live_server, client, organization, owner
):
    # The button showed on every destination's page; with nothing failed, a click only said "Nothing
    # to retry". Now it says so beside a disabled button, and is offered once a delivery is dead.
    world = build_world(client, organization)
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.SUCCEEDED)
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/")
    button = page.get_by_role("button", name="Retry all failed deliveries")
    expect(button).to_be_disabled()
    expect(page.locator("#bulk-retry-nothing")).to_have_text(
        "Nothing to retry: no delivery to this destination is out of retries."
    )
    assert button.get_attribute("aria-describedby") == "bulk-retry-nothing"

    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.DEAD)
    page.reload()
    expect(button).to_be_enabled()
    expect(page.locator("#bulk-retry-nothing")).to_have_count(0)
    button.click()
    expect(page.get_by_text("1 failed delivery")).not_to_have_count(0)


def test_the_only_owner_is_told_why_their_role_cannot_change_instead_of_offered_a_refused_change(
    browser, live_server, organization, owner
):
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/team/")
    own_row = page.locator(f"tr[data-member='{owner.email}']")
    expect(own_row.get_by_role("button", name="Change role")).to_have_count(0)
    expect(own_row.get_by_role("combobox")).to_have_count(0)
    expect(own_row.locator(".only-owner")).to_contain_text("The only owner: make another member an owner first")

    # With a second owner, either may be given another role: both rows offer it.
    other = UserFactory(email="second.owner@acme.example")
    Membership.objects.create(user=other, organization=organization, role=Membership.Role.OWNER)
    page.reload()
    expect(own_row.get_by_role("button", name="Change role")).to_have_count(1)
    expect(page.locator(".only-owner")).to_have_count(0)
    expect(
        page.locator("tr[data-member='second.owner@acme.example']").get_by_role("button", name="Change role")
    ).to_have_count(1)


def test_an_id_search_finding_nothing_says_so_and_does_not_wait(browser, live_server, organization, owner):
    # "No event with this id" came with "Waiting for events…" under it, as if the search were pending.
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/")
    expect(page.locator("#event-waiting")).to_have_text("Waiting for events…")  # the list without filters waits

    search = page.get_by_label("Search")
    search.fill("evt_nobody_has")
    with page.expect_response(lambda response: "q=evt_nobody_has" in response.url):
        search.press("Enter")
    expect(page.get_by_role("heading", name="No event matches “evt_nobody_has”")).to_be_visible()
    expect(page.locator("#id-search-none")).to_contain_text("Body contains")
    expect(page.locator("#event-waiting")).to_have_count(0)


def test_an_event_type_and_id_with_bidirectional_controls_show_them_escaped(browser, live_server, organization, owner):
    # "invoice.\u202ediap" read "invoice.paid" in the events list and on its page: the override
    # reversed what followed it. Shown escaped, the page says which characters are there.
    source = make_source(organization)
    event = make_event(source, event_type="invoice.\u202ediap", provider_event_id="evt_\u2066123\u2069")
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/")
    row = page.locator(".events-table tbody tr").first
    expect(row).to_contain_text("invoice.\\u202ediap")
    expect(row).to_contain_text("evt_\\u2066123\\u2069")
    assert "invoice.paid" not in row.inner_text()

    page.goto(f"{live_server.url}/o/acme/events/{event.pk}/")
    expect(page.locator("main h1")).to_contain_text("invoice.\\u202ediap")
    assert "\u202e" not in page.title() and "\u202e" not in page.locator("main").inner_text()
    # The filter still takes the exact stored value.
    page.goto(f"{live_server.url}/o/acme/events/?event_type=invoice.%E2%80%AEdiap")
    expect(page.locator(".events-table tbody tr")).to_have_count(1)
