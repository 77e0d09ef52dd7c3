"""The keyboard's way to "what happened to webhook X?" in a real browser (Playwright + Debian's
Chromium), under the Content-Security-Policy, at phone and desktop widths.

The trial's way: Events, paste the id, Enter, then 23 Tabs from the search box to the result. Now:
"/" from any page, paste, Enter; one event opens, several are a Tab away.
"""

import os

import pytest

from webhooks.models import WebhookEvent

from .factories import make_source
from .test_content_security_policy_browser import assert_clean, flush, watch
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

VIEWPORTS = [(375, 740), (1280, 900)]
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
SHARED = "f1e2d3c4-0000-4000-8000-00000000beef"


@pytest.fixture
def events(organization):
    source = make_source(organization, provider="github", secret="s" * 20, name="GitHub")

    def event(**fields):
        return WebhookEvent.objects.create(
            organization=organization,
            source=source,
            event_type=fields.pop("event_type", "push"),
            body=b"{}",
            status=fields.pop("status", WebhookEvent.Status.PROCESSED),
            **fields,
        )

    # Older events first: enough of them that the list has rows besides the ones searched for.
    for number in range(5):
        event(provider_event_id=f"other-{number}", event_type="issues.opened")
    one = event(provider_event_id=DELIVERY)
    # Two with one id: a delivery GitHub sent, and a rejected request claiming the same id.
    shared = event(provider_event_id=SHARED, event_type="pull_request.opened")
    claimed = event(
        status=WebhookEvent.Status.REJECTED, claimed_event_id=SHARED, event_type="", rejection_code="bad_signature"
    )
    return one, shared, claimed


def focused(page) -> dict:
    return page.evaluate(
        """() => { const element = document.activeElement;
                   return {id: element.id, tag: element.tagName, href: element.getAttribute("href") || "",
                           text: element.textContent.trim(), visible: element.getBoundingClientRect().width > 1}; }"""
    )


def no_sideways_scroll(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0


def screenshot(page, name: str) -> None:
    if directory := os.environ.get("HOOKLINE_SCREENSHOTS"):
        page.screenshot(path=os.path.join(directory, name), full_page=False)


@pytest.mark.parametrize("width, height", VIEWPORTS, ids=["phone", "desktop"])
def test_slash_paste_enter_opens_the_one_event_and_says_where_its_id_came_from(
    browser, live_server, organization, member, events, width, height
):
    one, _, _ = events
    page = sign_in(browser, live_server, member, width=width, height=height, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/sources/")
    search = page.locator("#topbar-find")
    box = search.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    no_sideways_scroll(page)

    page.keyboard.press("/")
    assert focused(page)["id"] == "topbar-find"
    assert search.input_value() == ""  # the "/" opened the search, it was not typed into it
    page.keyboard.insert_text(f"X-GitHub-Delivery: {DELIVERY}")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/o/acme/events/{one.pk}/")
    summary = page.locator("section[aria-labelledby=summary]")
    assert "(X-GitHub-Delivery header)" in summary.inner_text()
    no_sideways_scroll(page)
    screenshot(page, f"find-event-one-{width}.png")
    flush(page)
    assert_clean(seen, pages_at_least=2)
    page.context.close()


@pytest.mark.parametrize("width, height", VIEWPORTS, ids=["phone", "desktop"])
def test_several_events_with_the_id_are_listed_and_the_first_is_one_tab_away(
    browser, live_server, organization, member, events, width, height
):
    _, shared, claimed = events
    page = sign_in(browser, live_server, member, width=width, height=height, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/")
    page.keyboard.press("/")
    page.keyboard.insert_text(f"'{SHARED}'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/o/acme/events/?q=*")
    rows = page.locator("#event-rows tr, #event-live tr")
    assert rows.count() == 2
    page.keyboard.press("Tab")
    first = focused(page)
    assert first["href"] == f"/o/acme/events/{claimed.pk}/", first  # the newest match, past the 9 filters
    screenshot(page, f"find-event-several-{width}.png")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/o/acme/events/{claimed.pk}/")

    # An id nobody has: the list says so, and what was searched.
    page.keyboard.press("/")
    page.keyboard.insert_text("evt_nobody_has_this")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/o/acme/events/?q=*")
    assert "No event of Acme has the id evt_nobody_has_this" in page.locator("#id-search-none").inner_text()
    no_sideways_scroll(page)
    flush(page)
    assert_clean(seen, pages_at_least=4)
    page.context.close()


@pytest.mark.parametrize("width, height", VIEWPORTS, ids=["phone", "desktop"])
def test_from_the_events_lists_own_search_the_results_are_three_keys_away(
    browser, live_server, organization, member, events, width, height
):
    _, shared, _ = events
    page = sign_in(browser, live_server, member, width=width, height=height, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/events/")
    page.get_by_label("Search", exact=True).fill(f"X-GitHub-Delivery: {SHARED}")
    with page.expect_response(lambda response: "/o/acme/events/?" in response.url):
        page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#event-results tbody tr').length === 2")
    assert focused(page)["id"] == "id_q"

    page.keyboard.press("Tab")
    skip = focused(page)
    assert skip["text"] == "Skip to the results" and skip["visible"], skip
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert focused(page)["href"].startswith("/o/acme/events/0"), focused(page)
    rows = page.locator("#event-results tbody tr a")
    assert focused(page)["href"] == rows.first.get_attribute("href")

    # "/" typed in a field is a character of it, not the shortcut.
    page.get_by_label("Body contains").fill("")
    page.get_by_label("Body contains").press("/")
    assert page.get_by_label("Body contains").input_value() == "/"
    assert focused(page)["id"] == "id_body"
    no_sideways_scroll(page)
    flush(page)
    assert_clean(seen, pages_at_least=1)
    page.context.close()
