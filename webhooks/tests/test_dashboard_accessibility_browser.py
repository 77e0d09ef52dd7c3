"""The dashboard as a keyboard, a screen reader and a phone meet it, in a real browser (Playwright +
Debian's Chromium), under the Content-Security-Policy (its violations are watched as in
test_content_security_policy_browser.py)."""

import pytest
from playwright.sync_api import expect

from webhooks.models import WebhookEvent

from .dashboard_helpers import build_world, ingest_stripe, work_driven_by_the_test
from .test_content_security_policy_browser import assert_clean, flush, watch
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


# WCAG's contrast ratio between the focused element's outline and the first opaque background
# behind the element (the ring is drawn outside it, with an offset, on what surrounds it).
FOCUS_RING_CONTRAST = """() => {
  const rgb = (color) => color.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const [R, G, B] = [r, g, b].map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * R + 0.7152 * G + 0.0722 * B;
  };
  const focused = document.activeElement;
  const style = getComputedStyle(focused);
  if (style.outlineStyle === "none" || parseFloat(style.outlineWidth) === 0) return 0;
  let behind = focused.parentElement;
  while (behind && rgb(getComputedStyle(behind).backgroundColor)[3] === 0) behind = behind.parentElement;
  const background = behind ? rgb(getComputedStyle(behind).backgroundColor) : [255, 255, 255];
  const [light, dark] = [luminance(rgb(style.outlineColor)), luminance(background)].sort((a, b) => b - a);
  return (light + 0.05) / (dark + 0.05);
}"""


def tab_to(page, locator, most=80):
    """Presses Tab until the element has the focus, as a keyboard user reaches it."""
    handle = locator.element_handle()
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate("(element) => document.activeElement === element", handle):
            return
    raise AssertionError(f"{locator} was not reached with Tab")


def test_the_focus_ring_stands_out_from_what_surrounds_it(browser, live_server, client, organization, owner):
    """The ring was a light blue (#8ab4f8) everywhere: 2.1:1 against the white cards and 2:1 against
    the page, under the 3:1 a focus indicator needs; it is the accent there, and stays light on the
    dark top bar, where the accent would be under 3:1."""
    world = build_world(client, organization)
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/")
    for control in (
        page.get_by_role("link", name="Edit"),  # on the page
        page.get_by_role("button", name="Retry all failed deliveries"),  # in a card
        page.get_by_role("searchbox", name="Find an event by id"),  # in the dark top bar
        page.get_by_role("button", name="Sign out"),
    ):
        tab_to(page, control)
        assert page.evaluate(FOCUS_RING_CONTRAST) >= 3, control
    flush(page)
    assert_clean(seen, pages_at_least=1)


def test_each_search_form_of_a_page_is_a_landmark_of_its_own_name(browser, live_server, client, organization, owner):
    """The events list and the audit log have their filters beside the top bar's search: two search
    landmarks with no name, which a screen reader's list of landmarks could not tell apart."""
    build_world(client, organization)
    page = sign_in(browser, live_server, owner)
    for path, filters in (("/o/acme/events/", "Filter events"), ("/o/acme/audit/", "Filter the audit log")):
        page.goto(f"{live_server.url}{path}")
        names = page.locator("[role=search]").evaluate_all("(forms) => forms.map((form) => form.ariaLabel)")
        assert sorted(names) == sorted(["Find an event by id", filters]), path
        assert page.get_by_role("search", name=filters).get_by_role("button", name="Apply").count() == 1


def test_new_events_on_the_live_list_are_said_to_a_screen_reader(browser, live_server, client, organization, owner):
    """The polls put new rows in the table and replace the live note with the same text: nothing
    was said. A status region, on the page from the start, now says how many arrived, for the
    empty list's poll (which brings the first ones) as for the list's."""
    source = build_world(client, organization).source
    WebhookEvent.objects.all().delete()
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.clock.install()  # each poll comes when the test moves the page's clock on
    page.goto(f"{live_server.url}/o/acme/events/")
    page.wait_for_selector("text=Waiting for events")
    arrivals = page.locator("#event-list-status")
    assert arrivals.get_attribute("role") == "status" and arrivals.inner_text() == ""

    ingest_stripe(client, source, "evt_first_arrival", "customer.created")
    with page.expect_response(lambda response: "/events/" in response.url and "/live/" not in response.url):
        page.clock.run_for(5_000)
    page.wait_for_selector("#event-poller")
    assert arrivals.text_content() == "New events arrived: the list shows them."

    ingest_stripe(client, source, "evt_second_arrival", "customer.updated")
    ingest_stripe(client, source, "evt_third_arrival", "customer.deleted")
    with page.expect_response(lambda response: "/events/live/" in response.url):
        page.clock.run_for(5_000)
    page.wait_for_selector("#event-live >> text=customer.deleted")
    assert arrivals.text_content() == "2 new events at the top of the list."
    # The next poll finds nothing new: nothing more is said.
    with page.expect_response(lambda response: "/events/live/" in response.url):
        page.clock.run_for(5_000)
    expect(arrivals).to_have_text("")
    flush(page)
    assert_clean(seen, pages_at_least=1)


def test_a_long_body_scrolls_from_the_keyboard(browser, live_server, client, organization, owner):
    """The body's box scrolls past 480 px: it was no named region and took the keyboard's focus only
    where the browser focuses scrolling boxes by itself (Chromium)."""
    source = build_world(client, organization).source
    event_id = ingest_stripe(client, source, "evt_long_body", note="a long note " * 2_000)
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/{event_id}/")
    body = page.get_by_role("region", name="Body, Formatted JSON")
    assert body.get_attribute("tabindex") == "0"
    tab_to(page, body)
    page_scrolled = page.evaluate("window.scrollY")
    assert body.evaluate("(box) => box.scrollHeight > box.clientHeight")
    # Scrolls the box, not the page; smoothly: its scrollTop moves on over a few frames.
    page.keyboard.press("End")
    page.wait_for_function("(box) => box.scrollTop > 0", arg=body.element_handle())
    assert page.evaluate("window.scrollY") == page_scrolled


def test_the_api_reference_s_tables_fit_a_desktop_window_and_a_small_phone(browser, live_server, owner):
    """The names of the fields were kept on one line with their "required" badge, and a description
    did not break inside a setting's name (DELIVERY_MAX_TIMEOUT_SECONDS): the destination's body
    fields were 1027 px wide in a 940 px column at 1280 px, a box to scroll sideways that holds
    nothing a keyboard can focus. On a 320 px phone (WCAG's reflow width) a constraint such as a
    header name's pattern, kept on one line, made a dozen cards scroll sideways. Between 760 px, where
    the list of endpoints comes beside the page, and 1,100 px (a tablet, a half-screen window) the
    column left was too narrow for the tables' four columns: they scrolled sideways there too."""
    # One load, the window then resized: the layout is the style sheet's alone (no script measures
    # the window), and the browser lays the page out again at each width.
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/docs/api/")
    page.wait_for_selector("#post-api-v1-destinations")
    for width in (1280, 1024, 900, 768, 320):
        page.set_viewport_size({"width": width, "height": 900})
        assert page.evaluate("window.innerWidth") == width
        scrolling = page.evaluate(
            "[...document.querySelectorAll('.table-wrap')].filter((wrap) => wrap.scrollWidth > wrap.clientWidth)"
            ".map((wrap) => wrap.closest('[id]').id)"
        )
        assert scrolling == [], (width, scrolling)
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"), width
    flush(page)
    assert_clean(seen, pages_at_least=1)
    page.context.close()


def test_a_copy_button_says_it_copied_to_a_screen_reader(browser, live_server, client, organization, owner):
    """Its own name changed to "Copied", which a screen reader does not say of the focused button;
    a second click within the 1.5 s left "Copied" as its name."""
    source = build_world(client, organization).source
    page = sign_in(browser, live_server, owner, own_context=True)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/sources/{source.pk}/")
    status = page.locator("#copy-status")
    assert status.get_attribute("role") == "status" and status.text_content() == ""
    page.clock.install()
    copy = page.locator("[data-copy=ingest-url]")
    copy.focus()
    page.keyboard.press("Enter")
    expect(status).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()").endswith(f"/in/{source.ingest_token}/")
    # Again, while it reads "Copied" (the page's clock stands still): emptied first, the status says
    # when this second copy has been made.
    page.evaluate("document.getElementById('copy-status').textContent = ''")
    page.keyboard.press("Enter")
    expect(status).to_have_text("Copied to the clipboard.")
    page.clock.run_for(2_000)
    assert copy.inner_text() == "Copy" and status.text_content() == ""
    flush(page)
    assert_clean(seen, pages_at_least=1)


def test_a_refused_choice_among_checkboxes_is_tied_to_their_group(browser, live_server, client, organization, owner):
    """Django ties a field's help and errors to its control, but not to a group of checkboxes: the
    destination's sources, refused, said nothing of why to a screen reader on the group."""
    world = build_world(client, organization)
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/edit/")
    group = page.get_by_role("group", name="Sources")
    # A source that is not one of the organization's (deleted meanwhile, say).
    group.locator("input[type=checkbox]").first.evaluate("(box) => { box.value = '987654'; box.checked = true; }")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector(".form-error-summary")
    described_by = group.get_attribute("aria-describedby").split()
    said = [page.locator(f"#{element_id}").inner_text() for element_id in described_by]
    assert any("987654" in text or "valid choice" in text for text in said), said


def test_the_overview_s_charts_give_their_hours_as_a_table(browser, live_server, client, organization, owner):
    """Each bar's count was only in its SVG <title>: a tooltip for a mouse, out of reach of the
    keyboard and a touch screen, and inside role="img" of a screen reader's. The hours with events
    are now in a table behind a disclosure under each chart."""
    build_world(client, organization)  # one event, received now
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{live_server.url}/o/acme/")  # again: the disclosures closed, the focus at the top
        charts = page.locator("section:has(figure.chart)")
        assert charts.count() == 2
        for index in range(2):
            chart = charts.nth(index)
            disclosure = chart.locator("summary", has_text="The hours with events, as a table")
            tab_to(page, disclosure)
            page.keyboard.press("Enter")
            table = chart.get_by_role("table")
            expect(table).to_be_visible()
            assert table.locator("tbody tr").count() == 1
            assert table.locator("td[data-label=Events]").inner_text() == "1"
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    flush(page)
    assert_clean(seen, pages_at_least=2)
    page.context.close()


def test_a_refused_sign_in_box_is_marked_as_the_dashboard_s_are(browser, live_server):
    """A wrong code was said under the box and tied to it (aria-invalid, aria-describedby), but the box
    kept its grey border: the dashboard's forms mark it red (.has-error), the sign-in pages had no
    such wrapper. On a phone, as most sign-in links are opened there."""
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{live_server.url}/accounts/sign-in/")
    page.get_by_label("Email address").fill("someone@acme.example")
    page.keyboard.press("Enter")
    code = page.get_by_label("Or type the code here")
    grey = code.evaluate("(box) => getComputedStyle(box).borderTopColor")
    code.fill("000000")
    page.keyboard.press("Enter")
    page.wait_for_selector("#code-error li")
    assert code.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "id_code"
    red = page.evaluate("getComputedStyle(document.body).getPropertyValue('--bad').trim()")
    assert red == "#b3261e" and grey != "rgb(179, 38, 30)"
    assert code.evaluate("(box) => getComputedStyle(box).borderTopColor") == "rgb(179, 38, 30)"
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    context.close()


def test_a_filter_applied_at_once_says_what_the_list_now_holds(browser, live_server, client, organization, owner):
    """A choice in a list or a typed search replaces the results without a page load: nothing told a
    screen reader that anything happened, nor what was found."""
    world = build_world(client, organization)
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.clock.install()  # no poll of new arrivals comes meanwhile to clear what was said
    page.goto(f"{live_server.url}/o/acme/events/")
    status = page.locator("#event-list-status")
    with page.expect_response(lambda response: "source=" in response.url):
        page.get_by_label("Source").select_option(label=world.source.name)
    expect(status).to_have_text("1 event listed.")
    page.get_by_label("Search").fill("evt_nobody_has")
    page.keyboard.press("Enter")
    expect(status).to_have_text("No events listed.")
    assert page.locator("#event-results h2").inner_text() == "No events match"
    flush(page)
    assert_clean(seen, pages_at_least=1)
