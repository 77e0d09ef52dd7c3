"""The platform admin in a real browser (Playwright driving Debian's Chromium)."""

import re

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

from organizations.models import AuditLog
from webhooks.models import Delivery
from webhooks.tests.factories import make_destination, make_source
from webhooks.tests.test_admin import RECEIVER, attempt, deliver, make_event

PASSWORD = "correct horse battery"


@pytest.fixture
def failed_events(organization):
    source = make_source(organization, name="Acme live")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    events = [make_event(source, f"evt_failed_{number}", "invoice.paid") for number in range(3)]
    for event in events:
        attempt(deliver(event, destination, Delivery.Status.DEAD, attempts=3), 3, 503, "service unavailable")
    return events


def sign_in(page, live_server):
    """Opens the platform overview as a superuser, the browser carrying a session made by Django's test
    client: the admin's sign-in form has tests of its own (test_admin_login.py, and in a browser
    test_content_security_policy_browser.py)."""
    superuser = get_user_model().objects.create_superuser("root@hookline.example", PASSWORD)
    client = Client()
    client.force_login(superuser)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page.goto(f"{live_server.url}/admin/")
    page.wait_for_selector("#platform-overview")


@pytest.mark.django_db(transaction=True)
def test_retry_from_an_event_page_and_in_bulk_then_find_it_in_the_audit_log(live_server, page, failed_events):
    sign_in(page, live_server)
    assert page.inner_text("#overview-dead .hookline-figure").strip() == "3"

    # One event: its page shows the failed attempt, and the retry button acts at once.
    first = failed_events[0]
    page.goto(f"{live_server.url}/admin/webhooks/webhookevent/?failed=yes")
    page.click(f"#result_list a[href*='/webhookevent/{first.pk}/change/']")
    # Retried until the page has loaded that far: the click waits only for the navigation to begin,
    # and under load #content was read half parsed, before its inlines (the attempts).
    expect(page.locator("#content")).to_contain_text("service unavailable")
    page.click("#retry-failed-deliveries")
    page.wait_for_selector(".messagelist .success")
    assert "1 delivery queued for another attempt." in page.inner_text(".messagelist")
    assert page.url.endswith(f"/webhookevent/{first.pk}/change/")  # still on the event's page, to watch it
    assert Delivery.objects.get(event=first).status == Delivery.Status.PENDING

    # The other two from the list: the action asks for confirmation first.
    page.goto(f"{live_server.url}/admin/webhooks/webhookevent/?failed=yes")
    for event in failed_events[1:]:
        page.check(f"input[name=_selected_action][value='{event.pk}']")
    page.select_option("select[name=action]", "retry_failed_deliveries")
    page.click("button[name=index]")
    page.wait_for_selector("#confirm-action")
    assert "Send 2 failed deliveries again now?" in page.inner_text("#content")
    assert Delivery.objects.filter(status=Delivery.Status.DEAD).count() == 2
    page.click("#confirm-action")
    page.wait_for_selector(".messagelist .success")
    assert not Delivery.objects.filter(status=Delivery.Status.DEAD).exists()

    # The audit log view: filtered by action, each retry by this admin, and the chain verifies.
    page.goto(f"{live_server.url}/admin/organizations/auditlog/")
    page.click("#changelist-filter a[href*='action=delivery.retried']")
    page.wait_for_selector("#result_list")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 3
    assert all("root@hookline.example" in text for text in rows.all_inner_texts())
    page.click("#verify-audit-chain")
    page.wait_for_selector(".messagelist .success")
    assert re.search(r"The audit log verifies: \d+ entries chain correctly", page.inner_text(".messagelist"))

    entry = AuditLog.objects.filter(action="delivery.retried").order_by("id").first()
    page.goto(f"{live_server.url}/admin/organizations/auditlog/{entry.pk}/change/")
    assert entry.entry_hash in page.inner_text("#content")
    assert entry.previous_hash in page.inner_text("#content")


@pytest.mark.django_db(transaction=True)
def test_deleting_an_organization_shows_counts_and_answers_at_once(live_server, page, failed_events, monkeypatch):
    from organizations.models import Organization
    from webhooks import tasks

    published = []
    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: published.append(a))
    organization = failed_events[0].organization
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/admin/organizations/organization/{organization.pk}/change/")
    page.click("a.deletelink")
    page.wait_for_selector(".hookline-deletion-note")
    summary = page.inner_text("#content")
    assert "Events (and rejected requests): 3" in summary and "Delivery attempts: 3" in summary
    assert "evt_failed_0" not in summary  # counts, not rows
    page.click("input[type=submit]")
    page.wait_for_selector(".messagelist .success")
    assert "under way" in page.inner_text(".messagelist")
    assert "being deleted" in page.inner_text("#result_list")
    assert Organization.objects.get(pk=organization.pk).being_deleted and published
