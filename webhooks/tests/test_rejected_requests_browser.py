"""A flood of rejected requests as a tenant sees it in a real browser (Playwright + Debian's Chromium):
the events list keeps its accepted events in view and says how many rejected ones it leaves out,
with a way to them, and the source's page says how many were not kept at all."""

import pytest

from webhooks.models import WebhookEvent
from webhooks.services import ingest
from webhooks.services.processing import sweep

from .dashboard_helpers import ingest_stripe
from .factories import make_source
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_processing(monkeypatch):
    monkeypatch.setattr("webhooks.services.ingest.schedule_event_processing", lambda **_: None)


def test_a_flood_of_rejected_requests_is_counted_beside_the_list_and_on_the_source(
    browser, live_server, client, settings, monkeypatch, organization, member
):
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 4
    monkeypatch.setattr(ingest, "rejection_clock", lambda: 1_800_000_000.0)  # one minute throughout
    source = make_source(organization, name="Billing live")
    ingest_stripe(client, source, "evt_real")
    for _ in range(7):  # the provider signs with another secret
        response = client.generic(
            "POST",
            f"/in/{source.ingest_token}/",
            "{}",
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE="t=1,v1=00",
        )
        assert response.status_code == 401
    sweep()

    page = sign_in(browser, live_server, member)
    page.goto(f"{live_server.url}/o/acme/events/")
    rows = page.locator("#event-rows tr, #event-live tr")
    assert rows.count() == 1 and "invoice.paid" in rows.first.inner_text()
    note = page.locator("#rejected-beside")
    assert note.is_visible()
    assert "4 rejected requests are not listed here" in note.inner_text()
    note.get_by_role("link", name="Show the rejected requests").click()
    page.wait_for_url("**status=rejected**")
    assert page.locator("#event-rows tr, #event-live tr").count() == 4
    assert page.get_by_label("Status").input_value() == WebhookEvent.Status.REJECTED

    page.goto(f"{live_server.url}/o/acme/sources/{source.pk}/")
    not_kept = page.locator("#rejected-not-kept")
    assert not_kept.is_visible()
    assert "3 more rejected requests not kept" in not_kept.inner_text()
