"""The dashboard's tables on a phone, and a bulk retry followed live, in a real browser (Playwright +
Debian's Chromium), under the Content-Security-Policy (its violations are watched as in
test_content_security_policy_browser.py)."""

import json

import pytest

from conftest import UserFactory
from organizations.api_keys import api_key_create
from organizations.models import Membership
from organizations.team import invitation_create
from webhooks.models import BulkRetry, Delivery
from webhooks.services import operations

from .dashboard_helpers import build_world, work_driven_by_the_test
from .test_content_security_policy_browser import assert_clean, flush, watch
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch, bulk_retries=True)


PHONE = {"width": 375, "height": 740}
TABLES_OVERFLOWING = """() => [...document.querySelectorAll('.table-wrap')]
  .filter((wrap) => wrap.scrollWidth > wrap.clientWidth)
  .map((wrap) => [wrap.querySelector('th, td').textContent.trim(), wrap.scrollWidth, wrap.clientWidth])"""


def test_every_table_of_the_dashboard_reads_on_a_phone_without_scrolling_sideways(
    browser, live_server, client, organization, owner
):
    """The team, invitations, audit log, API keys, sources, destinations, failing destinations and
    rejected requests each scrolled sideways inside their box at 375 px (the audit log's was 1009 px
    wide); their rows are now small cards, each value after its column's name."""
    world = build_world(client, organization)  # a dead delivery: the overview lists a failing destination
    for n in range(3):
        colleague = UserFactory(email=f"a.long.colleague.address.number{n}@subsidiary.example-corporation.com")
        Membership.objects.create(user=colleague, organization=organization, role=Membership.Role.ADMIN)
        invitation_create(
            organization=organization,
            actor=owner,
            email=f"invitee.number{n}@partner-company.example.org",
            role="member",
        )
    api_key_create(organization=organization, name="Nightly export for the finance team", actor=owner)
    refused = client.generic(
        "POST",
        f"/in/{world.source.ingest_token}/",
        json.dumps({"id": "evt_forged"}),
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE="t=1,v1=00",
    )
    assert refused.status_code == 401
    # Every dashboard page with a table (templates/dashboard and templates/team), with rows in it.
    pages = [
        "/o/acme/",
        "/o/acme/events/",
        f"/o/acme/events/{world.event.pk}/",
        "/o/acme/sources/",
        f"/o/acme/sources/{world.source.pk}/",
        f"/o/acme/sources/{world.source.pk}/rejected/",
        "/o/acme/destinations/",
        "/o/acme/audit/",
        "/o/acme/api-keys/",
        "/o/acme/team/",
    ]
    # Each page loaded once and read at both widths (the window resized: the layout is the style
    # sheet's alone, no script measures the window).
    desktop = {"width": 1280, "height": 900}
    page = sign_in(browser, live_server, owner, **PHONE, own_context=True)
    seen = watch(page)
    for path in pages:
        page.set_viewport_size(PHONE)
        page.goto(f"{live_server.url}{path}")
        page.wait_for_selector("main h1")
        assert page.locator("main table tbody tr").count() > 0, path
        for viewport in (PHONE, desktop):
            page.set_viewport_size(viewport)
            assert page.evaluate("window.innerWidth") == viewport["width"]
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (path, viewport, overflow)
            assert page.evaluate(TABLES_OVERFLOWING) == [], (path, viewport)
    # On a phone each value says which column it is; on a desktop the tables keep their header row.
    assert page.url == f"{live_server.url}/o/acme/team/"
    invitation = page.locator("tr[data-invitation='invitee.number0@partner-company.example.org']")
    for viewport in (PHONE, desktop):
        page.set_viewport_size(viewport)
        role_label = invitation.locator("td[data-label=Role]").evaluate(
            "(cell) => getComputedStyle(cell, '::before').content"
        )
        header_shown = page.locator("main thead").first.is_visible()
        if viewport is PHONE:
            assert role_label == '"Role: "' and not header_shown
        else:
            assert role_label in ("none", "normal") and header_shown
    flush(page)
    assert_clean(seen, pages_at_least=len(pages))
    page.context.close()


def test_a_bulk_retry_s_status_follows_it_until_it_has_finished(browser, live_server, client, organization, owner):
    """The destination page said "starting shortly" until it was loaded again by hand."""
    world = build_world(client, organization)
    page = sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.clock.install()  # each poll comes when the test moves the page's clock on
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/")
    page.get_by_role("button", name="Retry all failed deliveries").click()
    page.wait_for_selector("text=Retrying 1 failed delivery in the background.")
    status = page.locator("#bulk-retry-status")
    assert "starting shortly" in status.inner_text()
    assert page.get_by_role("button", name="Retry all failed deliveries").count() == 0

    # Nothing changed yet: the poll swaps nothing.
    with page.expect_response(lambda response: "/bulk-retries/" in response.url) as unchanged:
        page.clock.run_for(2_000)
    assert unchanged.value.status == 204

    job = BulkRetry.objects.get(organization=organization)
    operations.bulk_retry_run(job.pk)
    assert Delivery.objects.get(pk=world.delivery.pk).status == Delivery.Status.PENDING
    with page.expect_response(lambda response: "/bulk-retries/" in response.url) as changed:
        page.clock.run_for(2_000)
    assert changed.value.status == 200
    page.wait_for_selector("#bulk-retry-status >> text=1 of 1 sent again")
    assert "Finished" in status.inner_text() and "starting shortly" not in status.inner_text()
    # Finished: the button is back; the status follows the delivery it retried until it has been sent.
    page.get_by_role("button", name="Retry all failed deliveries").wait_for()
    assert status.get_attribute("hx-trigger") == "every 2s"
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.SUCCEEDED, next_attempt_at=None)
    with page.expect_response(lambda response: "/bulk-retries/" in response.url) as sent:
        page.clock.run_for(2_000)
    assert sent.value.status == 200
    page.wait_for_selector("#bulk-retry-status >> text=1 delivered, 0 failed again")
    # Sent: the status no longer polls.
    assert status.get_attribute("hx-trigger") is None
    polls = []
    page.on("request", lambda request: polls.append(request.url) if "/bulk-retries/" in request.url else None)
    page.clock.run_for(10_000)
    flush(page)  # a round trip after the clock: a request the timers made has been seen
    assert polls == []
    assert_clean(seen, pages_at_least=2)
    page.context.close()


def test_a_destination_s_last_failure_with_a_long_error_fits_a_phone(browser, live_server, client, organization, owner):
    """The error of a receiver that closed the connection, as the engine records it, holds a word of 40
    characters ("RemoteDisconnected('Remote"…): in the Last failure card of a 390 px phone it ran past
    the card and the whole destination page scrolled sideways by 20 px."""
    world = build_world(client, organization)
    world.delivery.attempts.update(
        response_status=None,
        response_body="",
        error="connection failed: ('Connection aborted.', RemoteDisconnected('Remote end closed connection"
        " without response'))",
    )
    page = sign_in(browser, live_server, owner, width=390, height=844)
    page.goto(f"{live_server.url}/o/{organization.slug}/destinations/{world.destination.pk}/")
    card = page.locator("#destination-health .card").filter(has_text="Last failure")
    assert "RemoteDisconnected" in card.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
    inside = card.evaluate(
        "card => [...card.querySelectorAll('*')].every("
        "element => element.getBoundingClientRect().right <= card.getBoundingClientRect().right)"
    )
    assert inside
