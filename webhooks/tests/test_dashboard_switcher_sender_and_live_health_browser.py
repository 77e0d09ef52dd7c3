"""Defects found walking the dashboard at phone and desktop widths, in a real browser (Playwright +
Debian's Chromium), under the Content-Security-Policy (its violations watched as in
test_content_security_policy_browser.py): the organization switcher that stayed open, the test
sender's refused payload not marked on its box, the destination's health cards that did not follow a
bulk retry, and the audit log's reversed dates."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from organizations.models import Membership
from organizations.services import organization_create
from webhooks.models import BulkRetry, Delivery
from webhooks.services import operations

from .dashboard_helpers import build_world, work_driven_by_the_test
from .factories import make_source
from .test_content_security_policy_browser import assert_clean, flush, watch
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

VIEWPORTS = [(375, 740), (1280, 900)]


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch, bulk_retries=True)


def focused(page) -> str:
    return page.evaluate("document.activeElement.textContent.trim()")


@pytest.mark.parametrize("width, height", VIEWPORTS, ids=["phone", "desktop"])
def test_the_organization_switcher_closes_on_escape_and_on_a_click_outside(
    browser, live_server, organization, owner, width, height
):
    # It stayed open over the page until its own button was clicked again.
    other = organization_create(name="Globex", slug="globex", owner_email="owner@globex.example")
    Membership.objects.create(user=owner, organization=other, role=Membership.Role.ADMIN)
    page = sign_in(browser, live_server, owner, width=width, height=height, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/")
    switcher = page.locator(".org-switcher")
    summary = switcher.locator("summary")
    menu = page.get_by_role("list", name="Switch organization")

    # The keyboard opens it, moves through it, and Escape closes it with the focus back on its button.
    summary.focus()
    page.keyboard.press("Enter")
    menu.wait_for(state="visible")
    page.keyboard.press("Tab")
    assert focused(page) == "Acme"
    page.keyboard.press("Tab")
    assert focused(page) == "Globex"
    page.keyboard.press("Escape")
    menu.wait_for(state="hidden")
    assert switcher.get_attribute("open") is None
    assert page.evaluate("document.activeElement === document.querySelector('.org-switcher summary')")

    # A click anywhere else on the page closes it.
    summary.click()
    menu.wait_for(state="visible")
    page.mouse.click(width - 10, height - 10)  # the page's foot, away from the menu
    menu.wait_for(state="hidden")
    # So does the focus leaving it (Tab past its last link).
    summary.focus()
    page.keyboard.press("Enter")
    menu.wait_for(state="visible")
    for _ in range(3):  # Acme, Globex, All organizations
        page.keyboard.press("Tab")
    assert focused(page) == "All organizations"
    page.keyboard.press("Tab")
    menu.wait_for(state="hidden")
    # A click inside it follows its link as before.
    summary.click()
    page.get_by_role("link", name="Globex").click()
    page.wait_for_url(f"{live_server.url}/o/globex/")
    flush(page)
    assert_clean(seen, pages_at_least=2)
    page.context.close()


def test_a_refused_payload_is_marked_on_its_box_and_the_mark_goes_once_corrected(
    browser, live_server, settings, organization, owner
):
    # The box was not marked (no aria-invalid, nothing describing it), and the refusal in the result
    # started with "Or an edited payload:".
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    page = sign_in(browser, live_server, owner, width=VIEWPORTS[0][0], height=VIEWPORTS[0][1], own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/sources/{source.pk}/test/")
    box = page.get_by_label("Edited payload")
    box.fill('{\n  "id": "evt_typed",\n  "type": "invoice.paid"\n  "object": "event"\n}')
    page.get_by_role("button", name="Send test event").click()
    page.wait_for_selector("#id_payload_error")

    box = page.get_by_label("Edited payload")
    assert box.get_attribute("aria-invalid") == "true"
    described_by = box.get_attribute("aria-describedby").split()
    assert "id_payload_error" in described_by
    error = page.locator("#id_payload_error").inner_text()
    assert error.startswith("The payload is not valid JSON: on line 4"), error
    assert "Or an edited payload" not in page.locator("main").inner_text()
    # The cursor is in the box, with what was typed, to correct it.
    assert page.evaluate("document.activeElement.id") == "id_payload"
    assert '"object": "event"' in box.input_value()
    # Nothing sticks out sideways, at a phone's width or a desktop's (the window resized: the layout
    # is the style sheet's alone, no script measures the window).
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        assert page.evaluate("window.innerWidth") == width
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, width

    box.fill('{"id": "evt_typed", "object": "event", "type": "invoice.paid", "data": {"object": {}}}')
    page.get_by_role("button", name="Send test event").click()
    page.wait_for_selector("#test-result >> text=HTTP 200")
    box = page.get_by_label("Edited payload")
    assert box.get_attribute("aria-invalid") is None
    assert page.locator("#id_payload_error").count() == 0
    flush(page)
    assert_clean(seen, pages_at_least=1)
    page.context.close()


def card_stat(page, title: str) -> str:
    return page.locator("#destination-health .card", has_text=title).locator(".stat").inner_text()


def test_the_health_cards_follow_a_bulk_retry_until_it_has_finished(browser, live_server, client, organization, owner):
    """Only the "Failed deliveries" section followed a bulk retry; the cards above it (1 failed,
    0 waiting) stayed as they were until the page was loaded again."""
    world = build_world(client, organization)
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.clock.install()  # each poll comes when the test moves the page's clock on
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/")
    page.get_by_role("button", name="Retry all failed deliveries").click()
    page.wait_for_selector("text=Retrying 1 failed delivery in the background.")
    assert (card_stat(page, "Failed, 7 days"), card_stat(page, "Waiting, 7 days")) == ("1", "0")
    assert page.locator("#destination-failed-count").inner_text().startswith("1 failed event received")

    operations.bulk_retry_run(BulkRetry.objects.get(organization=organization).pk)
    with page.expect_response(lambda response: "/bulk-retries/" in response.url) as changed:
        page.clock.run_for(2_000)
    assert changed.value.status == 200
    page.wait_for_selector("#bulk-retry-status >> text=1 of 1 sent again")
    expect(page.locator("#destination-health .card", has_text="Failed, 7 days").locator(".stat")).to_have_text("0")
    assert (card_stat(page, "Failed, 7 days"), card_stat(page, "Waiting, 7 days")) == ("0", "1")
    assert page.locator("#destination-failed-count").inner_text().startswith("No event received in the last 7 days")
    # Still one set of cards, in its place above the settings.
    assert page.locator(".cards").count() == 1
    assert (
        page.evaluate(
            "document.querySelector('#destination-health').nextElementSibling.getAttribute('aria-labelledby')"
        )
        == "settings-heading"
    )
    # Finished, and its delivery sent (the status follows it until then): no more polls.
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.SUCCEEDED, next_attempt_at=None)
    with page.expect_response(lambda response: "/bulk-retries/" in response.url) as sent:
        page.clock.run_for(2_000)
    assert sent.value.status == 200
    page.wait_for_selector("#bulk-retry-status >> text=1 delivered, 0 failed again")
    assert page.locator("#bulk-retry-status").get_attribute("hx-trigger") is None
    polls = []
    page.on("request", lambda request: polls.append(request.url) if "/bulk-retries/" in request.url else None)
    page.clock.run_for(10_000)
    flush(page)
    assert polls == []
    assert_clean(seen, pages_at_least=2)
    page.context.close()


def test_reversed_audit_dates_are_said_under_the_to_box(browser, live_server, client, organization, owner):
    # "Nothing matches these filters", as if nothing had changed in that time.
    build_world(client, organization)
    page = sign_in(browser, live_server, owner, width=VIEWPORTS[0][0], height=VIEWPORTS[0][1], own_context=True)
    seen = watch(page)
    today = timezone.now().date()
    page.goto(f"{live_server.url}/o/acme/audit/")
    page.get_by_label("From", exact=True).fill(today.isoformat())
    page.get_by_label("To", exact=True).fill((today - timedelta(days=2)).isoformat())
    page.get_by_role("button", name="Apply").click()
    page.wait_for_selector("#id_until_error")
    to_box = page.get_by_label("To", exact=True)
    assert to_box.get_attribute("aria-invalid") == "true"
    assert page.locator("#id_until_error").inner_text() == "The dates are reversed: To is before From."
    assert "id_until_error" in to_box.get_attribute("aria-describedby").split()
    assert "Nothing matches" not in page.locator("main").inner_text()
    assert page.locator("main table tbody tr").count() >= 2
    # The message sits between the box's label and the box, no wider than the box; the boxes and
    # the Apply button stay level; the page does not scroll sideways. At a phone's width and a
    # desktop's (the window resized: the layout is the style sheet's alone, no script measures it).
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        assert page.evaluate("window.innerWidth") == width
        label = page.locator("label[for=id_until]").bounding_box()
        box, message = to_box.bounding_box(), page.locator("#id_until_error").bounding_box()
        assert label["y"] + label["height"] <= message["y"] + 1 and message["y"] + message["height"] <= box["y"] + 1
        assert message["x"] >= box["x"] - 1 and message["x"] + message["width"] <= box["x"] + box["width"] + 1
        from_box = page.get_by_label("From", exact=True).bounding_box()
        apply = page.get_by_role("button", name="Apply").bounding_box()
        for other in (from_box, apply):
            beside = other["y"] < box["y"] + box["height"] and box["y"] < other["y"] + other["height"]
            assert not beside or abs(other["y"] + other["height"] - box["y"] - box["height"]) <= 2, (width, box, other)
        assert abs(from_box["y"] - box["y"]) <= 2, width  # From and To side by side at both widths, level
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, width
    # The Action list reads in words.
    options = page.locator("#id_action option").all_inner_texts()
    assert "created the source" in options and "source.created" not in options
    flush(page)
    assert_clean(seen, pages_at_least=2)
    page.context.close()
