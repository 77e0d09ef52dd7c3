"""A sender's and a receiver's markup in a real browser (Playwright + Debian's Chromium): shown as
text on the tenant's pages, in rows htmx swaps in live, and on the platform admin's event page.

The HTML tests (accounts/tests/test_dashboard_attacks_2.py, test_admin_attacks_2.py) read the
markup the server sends; this one asks the browser what it built from it: no element the payload
names exists, no handler ran and no dialog opened."""

import json

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from webhooks.models import Delivery, DeliveryAttempt, WebhookEvent

from .dashboard_helpers import dead_delivery, ingest_stripe, work_driven_by_the_test
from .factories import make_destination, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db(transaction=True)

# Each closes an attribute, a textarea and a script before opening an element the test looks for;
# the handlers would set a global (where the CSP allowed them) and open a dialog.
PAYLOAD = (
    '"\'></textarea></script><b id=hl-xss-tag>x</b><img id=hl-xss-img src=x onerror="window.hlXss=1;alert(1)">'
    "<div id=hl-xss-htmx hx-get=/admin/ hx-trigger=load></div>"
)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


def browser_of(browser, live_server, user):
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(10_000)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    return page, dialogs


def assert_shown_as_text(page, dialogs):
    assert page.locator("#hl-xss-tag, #hl-xss-img, #hl-xss-htmx").count() == 0, page.url
    assert page.evaluate("() => window.hlXss") is None, page.url
    assert dialogs == [], page.url
    # The page does show the payload, as the text it is.
    assert "<b id=hl-xss-tag>" in page.inner_text("body"), page.url


def test_markup_from_senders_and_receivers_stays_text_in_the_browser(browser, live_server, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event_id = ingest_stripe(client := Client(), source, "evt_1", event_type=f"invoice.{PAYLOAD}", note=PAYLOAD)
    delivery = dead_delivery(WebhookEvent.objects.get(pk=event_id), destination)
    DeliveryAttempt.objects.filter(delivery=delivery).update(response_body=PAYLOAD, error=PAYLOAD[:500])
    Delivery.objects.filter(pk=delivery.pk).update(last_error=PAYLOAD)
    # A refused request: anyone who knows the ingest URL can leave this record, no secret needed.
    refused = json.dumps({"id": f"evt_{PAYLOAD}", "object": "event", "type": PAYLOAD})
    client.post(
        f"/in/{source.ingest_token}/", refused, content_type="application/json", **stripe_headers(refused, "whsec_x")
    )

    rejected = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED)

    page, dialogs = browser_of(browser, live_server, owner)
    for path in (
        f"/o/acme/events/{event_id}/",
        f"/o/acme/events/{rejected.pk}/",
        f"/o/acme/destinations/{destination.pk}/",
    ):
        page.goto(live_server.url + path)
        assert_shown_as_text(page, dialogs)

    # A row the live list swaps in through htmx, which also reads hx-* attributes from what it swaps.
    # The page's timers on a clock the test moves: the poll comes when its 5 s have passed on that
    # clock, without the test waiting them out.
    page.clock.install()
    page.goto(f"{live_server.url}/o/acme/events/")
    page.wait_for_selector("#event-poller")
    ingest_stripe(client, source, "evt_2", event_type=f"later.{PAYLOAD}")
    with page.expect_response(lambda response: "/events/live/" in response.url):
        page.clock.run_for(5_000)
    page.get_by_text("later.", exact=False).first.wait_for()
    assert_shown_as_text(page, dialogs)


def test_markup_from_a_tenant_stays_text_on_the_admins_event_page(browser, live_server, organization):
    source = make_source(organization, name="Stripe live")
    event_id = ingest_stripe(Client(), source, "evt_1", event_type=f"invoice.{PAYLOAD}", note=PAYLOAD)
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    page, dialogs = browser_of(browser, live_server, superuser)
    for path in (f"/admin/webhooks/webhookevent/{event_id}/change/", "/admin/webhooks/webhookevent/"):
        page.goto(live_server.url + path)
        assert_shown_as_text(page, dialogs)
