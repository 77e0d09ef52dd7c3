"""A new tenant's first hour, in one real browser session (Playwright + Debian's Chromium).

Sign in by the emailed link, connect Stripe, add a destination, send a test event, see the
first try fail and the retry succeed, invite a colleague who accepts in another browser and
can read everything but change nothing. Events are processed and deliveries sent by the test
itself (the worker has tests of its own), so every step is deterministic.
"""

import re

import pytest
from django.core import mail
from playwright.sync_api import expect

from organizations.models import Membership
from webhooks.models import Delivery, WebhookEvent
from webhooks.services import processing
from webhooks.tests.delivering import deliver_now

from .dashboard_helpers import work_driven_by_the_test

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


def deliver_everything_due():
    processing.process_received_events()
    for delivery in Delivery.objects.filter(status=Delivery.Status.PENDING):
        deliver_now(delivery.pk)


def test_a_new_tenant_connects_a_provider_fixes_a_failure_and_invites_a_colleague(
    browser, live_server, settings, organization, owner, httpserver
):
    settings.PUBLIC_BASE_URL = live_server.url
    # The tenant's app is down for the first try, then up.
    httpserver.expect_oneshot_request("/hooks").respond_with_data("maintenance", status=503)
    httpserver.expect_request("/hooks").respond_with_data("ok", status=200)
    owner_context = browser.new_context(viewport={"width": 1280, "height": 900})
    colleague_context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = owner_context.new_page()
        page.set_default_timeout(10_000)

        # Sign in with the link from the email; the empty overview says how to start.
        page.goto(f"{live_server.url}/")
        page.get_by_label("Email address").fill(owner.email)
        page.get_by_role("button", name="Email me a sign-in link").click()
        page.get_by_role("heading", name="Check your email").wait_for()
        link = re.search(r"http://\S+/accounts/sign-in/link/\S+/", mail.outbox[-1].body).group(0)
        page.goto(link)
        page.get_by_role("heading", name="Connect your first provider").wait_for()
        assert page.url == f"{live_server.url}/o/acme/"

        # Connect Stripe and a destination.
        page.get_by_role("link", name="Add a source").first.click()
        page.get_by_role("link", name="Stripe").first.click()
        page.get_by_label("Name").fill("Stripe live")
        page.get_by_label("Signing secret").fill("whsec_journey_secret")
        page.get_by_role("button", name="Create source").click()
        page.wait_for_selector("text=Source “Stripe live” created")
        source_url = page.url
        page.get_by_role("link", name="Destinations", exact=True).click()
        page.get_by_role("link", name="Add a destination").first.click()
        page.get_by_label("Name").fill("Orders app")
        page.get_by_label("URL").fill(httpserver.url_for("/hooks"))
        page.get_by_label("Stripe live").check()
        page.get_by_role("button", name="Create destination").click()
        assert page.input_value("#one-time-secret").startswith("whsec_")

        # A test event, signed as Stripe signs, arrives; the first try fails.
        page.goto(source_url)
        page.get_by_role("link", name="Send test event").click()
        page.get_by_role("button", name="Send test event").click()
        page.wait_for_selector("#test-result >> text=HTTP 200")
        deliver_everything_due()
        page.locator("#test-result a").first.click()
        # Read once the event's page has come: the click waits only for the navigation to begin.
        expect(page.locator(".timeline")).to_contain_text("HTTP 503")

        # One click retries it, and it is delivered.
        page.get_by_role("button", name="Retry now").click()
        page.wait_for_selector("text=Retry to Orders app queued")
        deliver_everything_due()
        page.reload()
        assert "Succeeded" in page.inner_text(".delivery")
        assert "HTTP 200" in page.inner_text(".timeline")
        assert [response.status_code for _, response in httpserver.log] == [503, 200]
        event = WebhookEvent.objects.get(organization=organization)

        # Invite a colleague, who accepts on a phone.
        page.get_by_role("link", name="Team").click()
        page.get_by_label("Email address").fill("colleague@acme.example")
        page.get_by_label("Role", exact=True).select_option("member")
        page.get_by_role("button", name="Send invitation").click()
        page.get_by_text("Invitation sent to colleague@acme.example.").wait_for()
        invitation = re.search(r"http://\S+/team/join/\S+/", mail.outbox[-1].body).group(0)
        colleague = colleague_context.new_page()
        colleague.set_default_timeout(10_000)
        colleague.goto(invitation)
        colleague.get_by_role("button", name="Accept and sign in").click()
        colleague.wait_for_url(f"{live_server.url}/o/acme/")
        assert Membership.objects.get(user__email="colleague@acme.example").role == Membership.Role.MEMBER

        # The colleague reads the event and its history, and has nothing to press.
        colleague.goto(f"{live_server.url}/o/acme/events/{event.pk}/")
        assert "Succeeded" in colleague.inner_text(".delivery")
        for path in (f"/o/acme/events/{event.pk}/", "/o/acme/sources/", "/o/acme/destinations/", "/o/acme/team/"):
            colleague.goto(f"{live_server.url}{path}")
            assert colleague.locator("#main form[method=post]").count() == 0, path
    finally:
        owner_context.close()
        colleague_context.close()
