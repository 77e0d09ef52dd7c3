"""The dashboard in a real browser (Playwright + Debian's Chromium).

The browser is signed in with a session cookie made by Django's test client, so
these tests do not depend on the sign-in flow, which has tests of its own.
"""

import hashlib
import hmac
import os
import random
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from organizations.models import Membership
from webhooks.models import Delivery, Destination, Source, WebhookEvent
from webhooks.selectors import uuid7_floor
from webhooks.services import processing
from webhooks.tests.delivering import deliver_now

from .browser_pages import signed_in_page
from .dashboard_helpers import build_world, ingest_stripe, work_driven_by_the_test
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


def sign_in(browser, live_server, user, width=1280, height=900, *, own_context=False):
    # A page handed on from test to test unless own_context (webhooks/tests/browser_pages.py).
    return signed_in_page(browser, live_server, user, width, height, own_context=own_context)


def test_admin_connects_a_source_adds_a_destination_sends_a_test_event_and_sees_it_delivered(
    browser, live_server, settings, organization, owner, httpserver
):
    settings.PUBLIC_BASE_URL = live_server.url
    httpserver.expect_request("/receiver").respond_with_data("thanks", status=200)
    page = sign_in(browser, live_server, owner, own_context=True)
    page.clock.install()  # the answer's polls come when the test moves the page's clock on (below)
    page.goto(f"{live_server.url}/")
    page.get_by_role("link", name="Add a source").click()
    page.get_by_role("link", name="Stripe").first.click()
    page.get_by_label("Name").fill("Stripe live")
    page.get_by_label("Signing secret").fill("whsec_browser_secret")
    page.get_by_role("button", name="Create source").click()
    page.wait_for_selector("text=Source “Stripe live” created")
    source = Source.objects.get(name="Stripe live")
    assert page.input_value("#ingest-url") == f"{live_server.url}/in/{source.ingest_token}/"

    page.get_by_role("link", name="Destinations", exact=True).click()
    page.get_by_role("link", name="Add a destination").first.click()
    page.get_by_label("Name").fill("My app")
    page.get_by_label("URL").fill(httpserver.url_for("/receiver"))
    page.get_by_label("Stripe live").check()
    page.get_by_label("Attempts at most").fill("3")
    page.get_by_label("Stop retrying after (hours)").fill("6")
    page.get_by_role("button", name="Create destination").click()
    page.wait_for_selector("#one-time-secret")
    destination = Destination.objects.get(name="My app")
    assert page.input_value("#one-time-secret") == destination.secret
    assert (destination.max_attempts, destination.max_retry_age_seconds) == (3, 6 * 3600)

    page.goto(f"{live_server.url}/o/acme/sources/{source.pk}/")
    page.get_by_role("link", name="Send test event").click()
    page.get_by_role("button", name="Send test event").click()
    page.wait_for_selector("#test-result >> text=HTTP 200")
    event = WebhookEvent.objects.get(source=source)
    # The focus moves to the answer (the button that sent it was disabled meanwhile) ...
    # (expect, not wait_for_function: a string predicate is evaluated in the page, which the
    # Content-Security-Policy refuses)
    expect(page.locator("#test-result .test-result")).to_be_focused()

    # ... and the answer follows the event to the destination, without a reload.
    processing.process_received_events()
    with page.expect_response(lambda response: "/progress/" in response.url):
        page.clock.run_for(2_000)
    page.wait_for_selector("#event-progress >> text=Queued")
    deliver_now(Delivery.objects.get(event=event).pk)
    with page.expect_response(lambda response: "/progress/" in response.url):
        page.clock.run_for(2_000)
    page.wait_for_selector("#event-progress >> text=Succeeded")
    assert "HTTP 200" in page.inner_text("#event-progress")
    assert page.evaluate("document.activeElement.matches('#test-result .test-result')")  # polls keep the focus
    page.locator("#test-result a").first.click()
    page.wait_for_selector("h1")
    assert event.event_type in page.inner_text("h1")
    assert "Succeeded" in page.inner_text(".delivery") and "HTTP 200" in page.inner_text(".timeline")
    assert len(httpserver.log) == 1


def test_live_events_list_shows_new_arrivals_without_reload(browser, live_server, client, organization, owner):
    world = build_world(client, organization)
    page = sign_in(browser, live_server, owner, own_context=True)
    # The page's own timers on a clock the test moves: each poll comes when its 5 s have passed
    # on that clock, without the test waiting them out.
    page.clock.install()
    page.goto(f"{live_server.url}/o/acme/events/")
    page.wait_for_selector("#event-poller")
    rows = page.locator(".events-table tbody tr")
    assert rows.count() == 1
    ingest_stripe(client, world.source, "evt_arrives_live", "customer.created")
    with page.expect_response(lambda response: "/events/live/" in response.url):
        page.clock.run_for(5_000)
    page.wait_for_selector("#event-live >> text=customer.created")
    assert rows.count() == 2 and "customer.created" in rows.first.inner_text()
    # The next poll reads the live rows again: they are replaced, not added twice.
    with page.expect_response(lambda response: "/events/live/" in response.url):
        page.clock.run_for(5_000)
    assert rows.count() == 2


def test_the_filter_controls_show_the_start_applied(browser, live_server, client, organization, owner):
    """?range=7d&since=<with microseconds>: the start applied, while the box showed nothing and the
    dropdown "Last 7 days"."""
    build_world(client, organization)
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/?range=7d&since=2026-01-02T03:04:05.678901")
    assert page.input_value("#id_since") == "2026-01-02T03:04:05"
    assert page.input_value("#id_range") == ""  # Any time: the start given applies instead
    assert page.locator("#event-range").inner_text().startswith("Events received from ")


# window.settled: resolved once the filters' own request is answered and swapped in, its boxes out of
# band included. Not by the live list's poll, which settles every 5 s too; and not returned, or
# page.evaluate would wait for it (until that poll: 5 s a call, and the swap itself not awaited).
FILTERS_SETTLED = """() => {
  window.settled = new Promise((done) => {
    document.body.addEventListener("htmx:afterSettle", function settled(event) {
      if (event.detail.requestConfig?.elt?.id !== "event-filters") return;
      document.body.removeEventListener("htmx:afterSettle", settled);
      done(true);
    });
  });
}"""


def test_a_reversed_received_range_is_said_on_the_to_box_and_goes_once_corrected(
    browser, live_server, client, organization, owner
):
    # Said in the list's "Not applied" notice, where the audit log says it on the To box. The filters
    # apply by htmx: they come back out of band, and the swapped boxes must still apply on change.
    build_world(client, organization)
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/")
    now = timezone.now()
    page.get_by_text("From / To").click()  # on a row of their own, closed while neither is set
    since, until = page.get_by_label("From (UTC)"), page.get_by_label("To (UTC)")
    # Each answer's swap, the filters out of band included, is awaited: To filled in the form that
    # From's answer is about to replace would be lost. Every request names both boxes ("until=" even
    # when empty), so To's own is told by its value, which starts with the year.
    page.evaluate(FILTERS_SETTLED)
    with page.expect_response(lambda response: "since=2" in response.url):
        since.fill((now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.evaluate("window.settled")
    page.evaluate(FILTERS_SETTLED)
    with page.expect_response(lambda response: "until=2" in response.url):
        until.fill((now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))
    page.evaluate("window.settled")
    page.wait_for_selector("#id_until_error")
    assert page.locator("#id_until_error").inner_text() == "The dates are reversed: To is before From."
    assert until.get_attribute("aria-invalid") == "true"
    assert "id_until_error" in until.get_attribute("aria-describedby").split()
    assert page.evaluate("document.activeElement.id") == "id_until"  # the focus stays on the box
    assert "Not applied" not in page.locator("#event-results").inner_text()
    assert page.locator(".events-table tbody tr").count() == 1  # from the start on
    with page.expect_response(lambda response: "until=" in response.url):
        until.fill((now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    expect(page.locator("#id_until_error")).to_have_count(0)
    assert until.get_attribute("aria-invalid") is None


def test_the_empty_list_s_poll_leaves_what_is_being_typed_in_the_filters(browser, live_server, organization, owner):
    # "Waiting for events…" reloads the results every 5 s: its answer must not bring the filters
    # back out of band too, or every poll wipes a search being typed (and closes an open list).
    page = sign_in(browser, live_server, owner, own_context=True)
    page.clock.install()
    page.goto(f"{live_server.url}/o/acme/events/")
    page.wait_for_selector("text=Waiting for events")
    search = page.get_by_label("Search")
    search.click()
    search.type("evt_half_typ")
    # Not returned (a function's body, not an expression): page.evaluate would wait for the promise,
    # until the page's clock, ticking on by itself, brought the poll 5 s later.
    page.evaluate(
        "() => { window.polled = new Promise("
        "(done) => document.body.addEventListener('htmx:afterSettle', done, {once: true})); }"
    )
    with page.expect_response(lambda response: "/events/" in response.url and "/live/" not in response.url):
        page.clock.run_for(5_000)
    page.evaluate("window.polled")
    assert search.input_value() == "evt_half_typ"
    assert page.evaluate("document.activeElement.id") == "id_q"


def test_a_member_types_a_value_of_the_body_and_finds_its_event(browser, live_server, client, organization, member):
    world = build_world(client, organization)  # its body holds "evt_world_1"
    ingest_stripe(client, world.source, "evt_unrelated", "customer.created")
    page = sign_in(browser, live_server, member)
    page.goto(f"{live_server.url}/o/acme/events/")
    rows = page.locator(".events-table tbody tr")
    assert rows.count() == 2
    page.get_by_label("Body contains").fill('"evt_world_1"')
    with page.expect_response(lambda response: "body=" in response.url):
        page.get_by_label("Body contains").press("Enter")
    page.wait_for_selector("#body-search >> text=Searched events received back to")
    assert "1 found" in page.inner_text("#body-search")
    assert rows.count() == 1 and "invoice.paid" in rows.first.inner_text()
    assert "body=%22evt_world_1%22" in page.url  # the address keeps the search, for a reload or a link


def test_admin_retries_a_failed_delivery_and_it_succeeds(browser, live_server, client, organization, owner, httpserver):
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    world = build_world(client, organization, url=httpserver.url_for("/hook"))
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/?status=failed")
    page.get_by_role("link", name="invoice.paid").click()
    # Retried: the click waits only for the navigation to begin, and a page read half parsed lacks it.
    expect(page.locator(".timeline")).to_contain_text("HTTP 503")
    page.get_by_role("button", name="Retry now").click()
    page.wait_for_selector("text=Retry to endpoint queued")
    assert Delivery.objects.get(pk=world.delivery.pk).status == Delivery.Status.PENDING

    deliver_now(world.delivery.pk)
    page.reload()
    assert "Succeeded" in page.inner_text(".delivery")
    assert "HTTP 200" in page.inner_text(".timeline")


CHANGE_CONTROLS = re.compile(
    "|".join(
        re.escape(label)
        for label in ("Add a source", "Add a destination", "Send test event", "Retry now", "Rotate secret", "Delete")
    ),
    re.IGNORECASE,
)


def test_member_sees_everything_but_no_change_buttons(browser, live_server, client, organization, member):
    world = build_world(client, organization)
    page = sign_in(browser, live_server, member)
    pages = [
        "/o/acme/",
        "/o/acme/sources/",
        f"/o/acme/sources/{world.source.pk}/",
        "/o/acme/destinations/",
        f"/o/acme/destinations/{world.destination.pk}/",
        f"/o/acme/events/{world.event.pk}/",
    ]
    for path in pages:
        page.goto(f"{live_server.url}{path}")
        assert page.locator("#main").is_visible()
        # Members read: the only forms on their pages are search/filter forms, never changes.
        assert page.locator("#main form[method=post]").count() == 0, path
        # No link or button whose name holds any of these (as a name given as a string matches: a part
        # of it, whatever the case), asked for all at once.
        for role in ("link", "button"):
            change = page.get_by_role(role, name=CHANGE_CONTROLS)
            assert change.count() == 0, (path, role, change.all_inner_texts())
    assert Membership.objects.get(user=member).role == Membership.Role.MEMBER


SCREENSHOT_DIR = os.environ.get("HOOKLINE_SCREENSHOTS")


def seed_history(world, days=7, per_day=40):
    """Events spread over past days with their deliveries, so the charts and health have something to show."""
    rng = random.Random(7)
    now = timezone.now()
    events, deliveries = [], []
    for n in range(days * per_day):
        received = now - timedelta(minutes=rng.randint(1, days * 24 * 60))
        event = WebhookEvent(
            id=uuid.UUID(int=uuid7_floor(received).int | rng.getrandbits(60)),
            organization=world.source.organization,
            source=world.source,
            provider_event_id=f"evt_hist_{n}",
            event_type=rng.choice(["invoice.paid", "charge.succeeded", "customer.updated"]),
            body=b'{"object": "event"}',
            status=WebhookEvent.Status.PROCESSED,
            received_at=received,
        )
        events.append(event)
        failed = rng.random() < 0.04
        deliveries.append(
            Delivery(
                id=uuid.UUID(int=uuid7_floor(received).int | rng.getrandbits(60)),
                organization=world.source.organization,
                event=event,
                destination=world.destination,
                status=Delivery.Status.DEAD if failed else Delivery.Status.SUCCEEDED,
                attempt_count=1,
                last_status_code=500 if failed else 200,
                created_at=received,
                completed_at=received + timedelta(milliseconds=rng.randint(80, 900)),
            )
        )
    WebhookEvent.objects.bulk_create(events)
    Delivery.objects.bulk_create(deliveries)


def test_main_pages_render_at_desktop_and_phone_widths(browser, live_server, client, organization, owner, tmp_path):
    """Screenshots of the main pages; set HOOKLINE_SCREENSHOTS=docs/screenshots to refresh the committed ones."""
    world = build_world(client, organization)
    seed_history(world)
    for n, event_type in enumerate(["customer.created", "charge.succeeded", "invoice.payment_failed"]):
        ingest_stripe(client, world.source, f"evt_shot_{n}", event_type)
    processing.process_received_events()
    target = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    pages = {
        "overview": "/o/acme/",
        "events": "/o/acme/events/",
        "event-detail": f"/o/acme/events/{world.event.pk}/",
        "sources": "/o/acme/sources/",
        "source-detail": f"/o/acme/sources/{world.source.pk}/",
        "destinations": "/o/acme/destinations/",
        "destination-detail": f"/o/acme/destinations/{world.destination.pk}/",
        "source-providers": "/o/acme/sources/new/",
        "source-test": f"/o/acme/sources/{world.source.pk}/test/",
        "audit": "/o/acme/audit/",
        "team": "/o/acme/team/",
    }
    signed_out_pages = {"sign-in": "/accounts/sign-in/"}
    # One signed-out page and one signed-in; each page is loaded once and shown at one width then
    # the other (the window resized: the layout is the style sheet's alone, no script measures it).
    signed_out = browser.new_context().new_page()
    page = sign_in(browser, live_server, owner)
    for name, path, browser_page in [
        *((n, p, signed_out) for n, p in signed_out_pages.items()),
        *((n, p, page) for n, p in pages.items()),
    ]:
        browser_page.set_viewport_size({"width": 1280, "height": 900})
        browser_page.goto(f"{live_server.url}{path}")
        browser_page.wait_for_selector("h1")
        for width_name, width, height in (("desktop", 1280, 900), ("phone", 390, 844)):
            browser_page.set_viewport_size({"width": width, "height": height})
            assert browser_page.evaluate("window.innerWidth") == width
            # Nothing may stick out sideways on a phone: the page scrolls only vertically.
            overflow = browser_page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (name, width_name, overflow)
            shot = target / f"{name}-{width_name}.png"
            browser_page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5_000
    signed_out.context.close()


def test_an_event_page_with_a_long_event_type_fits_a_375_px_phone(browser, live_server, client, organization, owner):
    # Shopify's topics have no spaces or dots to break at: the heading must wrap anyway.
    world = build_world(client, organization)
    long_type = "fulfillment_orders/cancellation_request_accepted"
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, world.source, "evt_long_type", long_type))
    dead = Delivery.objects.create(
        organization=organization,
        event=event,
        destination=world.destination,
        status=Delivery.Status.DEAD,
        attempt_count=1,
        last_error="HTTP 301: redirects are not followed; update the URL",
        completed_at=timezone.now(),
    )
    assert dead.pk
    page = sign_in(browser, live_server, owner, width=375, height=812)
    for path in (f"/o/acme/events/{event.pk}/", "/o/acme/events/"):
        page.goto(f"{live_server.url}{path}")
        page.wait_for_selector("h1")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (path, overflow)
    page.goto(f"{live_server.url}/o/acme/events/{event.pk}/")
    heading = page.locator("h1").bounding_box()
    assert heading["x"] + heading["width"] <= 375
    assert long_type in page.locator("h1").inner_text()


def test_shared_token_source_says_exactly_which_header_the_sender_must_send(
    browser, live_server, client, organization, owner
):
    """A tenant who follows a general "Authorization: Bearer <token>" example into a source whose
    default takes the token alone is refused; the secret's page and the source page say what to
    send, the refusal says which setting to change, and after changing it the same request passes."""
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/sources/new/shared_token/")
    page.get_by_label("Name").fill("Database hook")
    page.get_by_role("button", name="Create source").click()
    token = page.input_value("#one-time-secret")
    assert "Authorization: <token> (the token alone" in page.inner_text("#sender-requirement")
    assert "signs with it" not in page.inner_text("#main")
    page.get_by_role("link", name="Continue to Database hook").click()
    # The secret's page says it too: read the source's own once the secret's has gone.
    expect(page.locator("#one-time-secret")).to_have_count(0)
    assert "Authorization: <token>" in page.inner_text("#sender-requirement")
    source = Source.objects.get(name="Database hook")

    def send(authorization):
        return client.generic(
            "POST",
            f"/in/{source.ingest_token}/",
            '{"type": "INSERT", "record": {"id": 1}}',
            content_type="application/json",
            HTTP_AUTHORIZATION=authorization,
        )

    refused = send(f"Bearer {token}")
    assert refused.status_code == 401
    assert "set the source's Scheme prefix to Bearer" in refused.json()["detail"]
    assert token not in refused.content.decode()

    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Scheme prefix").fill("Bearer")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector("#sender-requirement")
    assert page.inner_text("#sender-requirement") == "Each request must carry the header Authorization: Bearer <token>."
    assert send(f"Bearer {token}").status_code == 200


def test_generic_hmac_source_page_describes_the_signature_its_sender_must_make(
    browser, live_server, client, organization, owner
):
    secret = "generic-sender-secret"
    source = make_source(
        organization, provider="generic_hmac", secret=secret, name="Billing", header="X-Signature", prefix="sha256="
    )
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/sources/{source.pk}/")
    described = page.inner_text("#sender-requirement")
    assert described == "Each request must carry the header X-Signature: sha256=<hex HMAC-SHA256 of the raw body>."
    # Signed as the sentence says, with the standard library rather than Hookline's code, it passes.
    body = b'{"type": "invoice.paid", "id": "inv_1"}'
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    response = client.generic(
        "POST", f"/in/{source.ingest_token}/", body, content_type="application/json", HTTP_X_SIGNATURE=signature
    )
    assert response.status_code == 200, response.content


def test_the_page_that_shows_a_new_github_secret_also_gives_the_url_github_asks_for_with_it(
    browser, live_server, settings, client, organization, owner
):
    """GitHub's webhook form asks for the Payload URL and the Secret together; the one page that can
    show a generated secret gives both, and a delivery signed as GitHub signs it is accepted there."""
    settings.PUBLIC_BASE_URL = live_server.url
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/sources/new/github/")
    page.get_by_label("Name").fill("GitHub org")
    page.get_by_role("button", name="Create source").click()
    secret = page.input_value("#one-time-secret")
    url = page.input_value("#ingest-url")
    assert "the URL it sends webhooks to, and the secret it signs them with" in page.inner_text("#sender-requirement")

    body = b'{"action": "opened", "issue": {"number": 7}}'
    response = client.generic(
        "POST",
        url.removeprefix(live_server.url),
        body,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256="sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        HTTP_X_GITHUB_EVENT="issues",
        HTTP_X_GITHUB_DELIVERY=str(uuid.uuid4()),
    )
    assert response.status_code == 200, response.content
    assert WebhookEvent.objects.get(pk=response.json()["id"]).event_type == "issues.opened"


# The words of each visible text node of the element that are drawn on more than one line.
WORDS_SPLIT_ACROSS_LINES = """(element) => {
  const split = [];
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const match of node.textContent.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const tops = new Set([...range.getClientRects()].map((rect) => Math.round(rect.top)));
      if (tops.size > 1) split.push(match[0]);
    }
  }
  return split;
}"""


def test_sentences_in_an_event_summary_wrap_between_words(browser, live_server, client, organization, owner):
    # The summary's values break anywhere so that long ids fit; a sentence there (how often the
    # provider sent the event) wrapped mid-word: "processed o / nce".
    world = build_world(client, organization)
    ingest_stripe(client, world.source, "evt_world_1")
    ingest_stripe(client, world.source, "evt_world_1")
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/{world.event.pk}/")
    duplicates = page.locator("dl.fields dt", has_text="Duplicates").locator("xpath=following-sibling::dd[1]")
    assert "processed once" in duplicates.inner_text()
    assert duplicates.evaluate("(dd) => dd.getClientRects().length") == 1
    assert duplicates.evaluate("(dd) => dd.getBoundingClientRect().height > 30")  # it does wrap, as it did
    assert duplicates.evaluate(WORDS_SPLIT_ACROSS_LINES) == []


def test_a_checkbox_label_reads_on_one_line_with_its_help_underneath(browser, live_server, organization, owner):
    # The help beside the box took the row's width and squeezed "Retry 4xx answers" into a column
    # one word wide.
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/destinations/new/")
    label = page.locator("label", has_text="Retry 4xx answers")
    help_text = page.locator(".field-check .helptext")
    label_box, help_box = label.bounding_box(), help_text.bounding_box()
    line_height = label.evaluate("(el) => parseFloat(getComputedStyle(el).lineHeight) || 24")
    assert label_box["height"] <= line_height * 1.5, label_box
    assert help_box["y"] >= label_box["y"] + label_box["height"] - 1, (label_box, help_box)


DESTINATION_FORM_SECTIONS = ("Where to send", "Which events", "Delivery policy", "Custom headers")


def test_the_destination_form_in_sections_shows_a_refusal_where_it_is_and_saves_once_corrected(
    browser, live_server, organization, owner
):
    make_source(organization, name="Stripe live")
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/destinations/new/")
    section = {title: page.get_by_role("group", name=title, exact=True) for title in DESTINATION_FORM_SECTIONS}
    section["Where to send"].get_by_label("Name").fill("Billing")
    section["Where to send"].get_by_label("URL").fill("http://127.0.0.1:9/billing")
    section["Which events"].get_by_label("Stripe live").check()
    section["Which events"].get_by_label("Event types").fill("invoice.*")
    section["Delivery policy"].get_by_label("Retry schedule").fill("1h30m")
    section["Delivery policy"].get_by_label("Attempts at most").fill("3")
    section["Custom headers"].get_by_label("Custom headers").fill("X-Api-Key: key-Q1w2e3r4")
    page.get_by_role("button", name="Create destination").click()

    summary = page.locator(".form-error-summary")
    summary.wait_for()
    # The headers typed are never shown back: the summary names their box too, to type them again.
    assert summary.inner_text() == "To correct below: Retry schedule, Custom headers."
    # The refused field is in its section, says why, and has the focus.
    policy = page.get_by_role("group", name="Delivery policy", exact=True)
    error = policy.locator("#field-retry_schedule .errorlist")
    assert error.is_visible() and "1h30m" in error.inner_text()
    assert page.evaluate("document.activeElement.id") == "id_retry_schedule"
    assert page.get_by_role("textbox", name="Retry schedule").get_attribute("aria-invalid") == "true"
    # Only the refused box is drawn in red, not the others of its section.
    border = "(box) => getComputedStyle(box).borderTopColor"
    assert policy.get_by_label("Timeout (seconds)").evaluate(border) != policy.get_by_label("Retry schedule").evaluate(
        border
    )
    # The link of the summary leads to it.
    summary.get_by_role("link", name="Retry schedule").click()
    assert page.url.endswith("#field-retry_schedule")
    assert error.is_visible()
    # What was typed stays, but the headers (secrets) are typed again.
    assert page.get_by_label("Event types").input_value() == "invoice.*"
    assert page.get_by_label("Attempts at most").input_value() == "3"
    assert page.get_by_label("Stripe live").is_checked()
    assert page.get_by_label("Custom headers").input_value() == ""
    assert "type these headers again" in page.inner_text("#field-custom_headers_set")

    policy.get_by_label("Retry schedule").fill("10s, 1m, 90m")
    page.get_by_label("Custom headers").fill("X-Api-Key: key-Q1w2e3r4")
    page.get_by_role("button", name="Create destination").click()
    page.wait_for_selector("#one-time-secret")
    destination = Destination.objects.get(name="Billing")
    assert (destination.retry_schedule, destination.max_attempts) == ([10, 60, 5400], 3)
    assert destination.custom_header_values() == {"X-Api-Key": "key-Q1w2e3r4"}
    subscription = destination.subscriptions.get()
    assert (subscription.source.name, subscription.event_types) == ("Stripe live", ["invoice.*"])


def test_the_destination_form_s_sections_fit_desktop_and_phone_widths(browser, live_server, organization, owner):
    make_source(organization, name="A source with a long name that a phone has to wrap somewhere")
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/hook", custom_headers={"X-Very-Long-Header-Name-For-A-Gateway": "v-12345678"}
    )
    page = sign_in(browser, live_server, owner)
    for path, submit in (
        ("/o/acme/destinations/new/", "Create destination"),
        (f"/o/acme/destinations/{destination.pk}/edit/", "Save"),
    ):
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(f"{live_server.url}{path}")
        page.get_by_label("Retry schedule").fill("1h30m")  # refused: the error summary and message show too
        page.get_by_role("button", name=submit).click()
        page.locator(".form-error-summary").wait_for()
        # The refused form read at both widths (the window resized: the layout is the style sheet's
        # alone, no script measures the window).
        for width, height in ((1280, 900), (375, 812)):
            page.set_viewport_size({"width": width, "height": height})
            assert page.evaluate("window.innerWidth") == width
            for title in DESTINATION_FORM_SECTIONS:
                section = page.get_by_role("group", name=title, exact=True)
                assert section.is_visible(), (path, width, title)
                box = section.bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= width, (path, width, title, box)
                heading = section.get_by_role("heading", name=title, level=2)
                assert heading.is_visible(), (path, width, title)
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (path, width, overflow)
