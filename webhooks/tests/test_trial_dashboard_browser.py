"""What a new tenant ran into in the dashboard, in a real browser (Playwright + Debian's Chromium).

Events are processed and deliveries sent by the test itself, so every step is deterministic.
"""

import pytest
from playwright.sync_api import expect

from webhooks.models import Delivery
from webhooks.tests.delivering import deliver_now

from .dashboard_helpers import build_world, work_driven_by_the_test
from .test_dashboard_browser import FILTERS_SETTLED, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


def test_a_typed_search_is_one_request_whether_applied_by_button_or_enter(
    browser, live_server, client, organization, owner
):
    """Typing in a filter box and pressing Apply (or Enter) fired the form's "change" and then its
    "submit": two requests, so each body search ran twice and took two of the organization's few
    body-search slots."""
    build_world(client, organization)
    page = sign_in(browser, live_server, owner, own_context=True)
    searches = []
    page.on("request", lambda request: searches.append(request.url) if request.headers.get("hx-request") else None)
    page.goto(f"{live_server.url}/o/acme/events/")

    page.get_by_label("Body contains").fill("evt_world_1")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_selector("#body-search >> text=1 found")
    # Both requests of one click leave in the same task: by the time one answer is shown, both were sent.
    assert len(searches) == 1 and "body=evt_world_1" in searches[0]

    searches.clear()
    page.get_by_label("Search").fill("evt_world_1")
    page.evaluate(FILTERS_SETTLED)
    with page.expect_response(lambda response: "q=evt_world_1" in response.url):
        page.get_by_label("Search").press("Enter")
    # The answer swapped in before the next change: one made while htmx still handles it was lost
    # (the status list's request never left, once in CI).
    page.evaluate("window.settled")
    assert len(searches) == 1

    # A choice in a list still applies at once.
    searches.clear()
    with page.expect_response(lambda response: "status=failed" in response.url):
        page.select_option("#id_status", "failed")
    assert len(searches) == 1


def retry_and_follow(page, live_server, world):
    """Opens the event page, retries its dead delivery and waits until the page follows it (a first
    poll finding nothing new yet). The page's polls come when the test moves its clock on."""
    page.clock.install()
    page.goto(f"{live_server.url}/o/acme/events/{world.event.pk}/")
    following = page.get_by_text("Following the deliveries")
    assert following.count() == 0  # a dead delivery changes no more: nothing to follow
    page.get_by_role("button", name="Retry now").click()
    page.wait_for_selector("text=Retry to endpoint queued")
    following.wait_for()
    with page.expect_response(lambda response: "/progress/" in response.url and response.status == 204):
        page.clock.run_for(2_000)
    return following


def test_the_event_page_follows_a_retry_in_place_keeping_the_focus_and_says_what_changed(
    browser, live_server, client, organization, owner, httpserver
):
    """After "Retry now" (or a replay) the page said "queued" and stayed as it was: the result of
    the retry showed only after a manual reload. Then the page reloaded itself once the delivery
    changed: the focus went back to the top and a screen reader read the page again from there, so
    one reading the body lost their place. Now the deliveries alone change, and what changed is said."""
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    world = build_world(client, organization, url=httpserver.url_for("/hook"))
    page = sign_in(browser, live_server, owner, own_context=True)
    following = retry_and_follow(page, live_server, world)
    # Reading the body, below the deliveries; a mark that a page load would wipe.
    body = page.get_by_role("region", name="Body, Formatted JSON")
    body.focus()
    page.evaluate("() => { window.stillTheSamePage = true; }")
    status = page.locator("#event-deliveries-status")
    expect(status).to_have_text("")

    deliver_now(world.delivery.pk)
    assert Delivery.objects.get(pk=world.delivery.pk).status == Delivery.Status.SUCCEEDED
    with page.expect_response(lambda response: "/progress/" in response.url and response.status == 200):
        page.clock.run_for(2_000)
    delivery = page.locator(".delivery")
    expect(delivery.locator(".delivery-header .badge")).to_have_text("Succeeded")
    expect(page.locator(".timeline")).to_contain_text("HTTP 200")
    expect(body).to_be_focused()
    assert page.evaluate("() => window.stillTheSamePage") is True
    expect(status).to_have_text("Delivery to endpoint: succeeded.")
    expect(page.locator("h1")).not_to_contain_text("dead")  # the heading's badges follow too
    assert following.count() == 0  # done: no more polling


def test_a_focus_inside_the_followed_deliveries_stays_on_the_same_element(
    browser, live_server, client, organization, owner, httpserver
):
    """The section is replaced: the focus goes back to the element of the same id in the new content,
    an opened attempt's response stays open, and a focused button that is gone (no "Retry now" on a
    delivery that succeeded) leaves the focus in the section rather than at the top of the page."""
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    world = build_world(client, organization, url=httpserver.url_for("/hook"))
    page = sign_in(browser, live_server, owner, own_context=True)
    retry_and_follow(page, live_server, world)
    page.get_by_text("Response (20 characters)").click()
    link = page.locator(".delivery h3 a", has_text="endpoint")
    link.focus()

    deliver_now(world.delivery.pk)
    with page.expect_response(lambda response: "/progress/" in response.url and response.status == 200):
        page.clock.run_for(2_000)
    expect(page.locator("#event-deliveries-status")).to_have_text("Delivery to endpoint: succeeded.")
    expect(link).to_be_focused()
    expect(page.get_by_text("upstream unavailable")).to_be_visible()


def test_a_focused_button_gone_with_the_change_leaves_the_focus_in_the_deliveries(
    browser, live_server, client, organization, owner, httpserver
):
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    world = build_world(client, organization, url=httpserver.url_for("/hook"))
    page = sign_in(browser, live_server, owner, own_context=True)
    retry_and_follow(page, live_server, world)
    page.get_by_role("button", name="Retry now").focus()  # a queued delivery may be retried at once

    deliver_now(world.delivery.pk)
    with page.expect_response(lambda response: "/progress/" in response.url and response.status == 200):
        page.clock.run_for(2_000)
    expect(page.get_by_role("button", name="Retry now")).to_have_count(0)
    expect(page.locator("#event-deliveries")).to_be_focused()


def test_a_refused_destination_form_asks_for_the_custom_headers_again(browser, live_server, organization, owner):
    """The custom headers box never shows its values back, so a form refused for another field (a
    mistyped URL) came back with it empty and nothing said: corrected and saved, the destination
    had no headers, and the receiver behind its gateway refused every delivery."""
    page = sign_in(browser, live_server, owner, width=375, height=800)
    page.goto(f"{live_server.url}/o/acme/destinations/new/")
    page.get_by_label("Name").fill("Behind a gateway")
    page.get_by_label("URL").fill("not a url")
    page.get_by_label("Custom headers").fill("X-Api-Key: gateway-key-123")
    page.get_by_role("button", name="Create destination").click()

    summary = page.locator(".form-error-summary")
    summary.wait_for()
    assert summary.inner_text() == "To correct below: URL, Custom headers."
    assert "type these headers again" in page.inner_text("#field-custom_headers_set")
    assert page.input_value("#id_custom_headers_set") == ""
    assert "gateway-key-123" not in page.content()
