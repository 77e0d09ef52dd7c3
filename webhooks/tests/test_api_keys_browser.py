"""An admin makes an API key in a real browser, a script uses it over HTTP, the admin revokes it
(after a confirmation page)."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from organizations.models import ApiKey

from .test_dashboard_browser import SCREENSHOT_DIR, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def _get(url: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_create_use_and_revoke_a_key(browser, live_server, organization, owner, tmp_path):
    target = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/")
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("nightly-report")
    page.get_by_label("Read only").check()
    page.get_by_role("button", name="Create key").click()

    key = page.locator("#one-time-secret").input_value()
    assert key.startswith("hl_")
    assert "Copy it now" in page.content()
    status, body = _get(f"{live_server.url}/api/v1/events", key)
    assert status == 200 and body["results"] == []

    page.get_by_role("link", name="Continue to API keys").click()
    row = page.locator(f"tr[data-api-key='{ApiKey.objects.get().prefix}']")
    assert "nightly-report" in row.inner_text() and "Read only" in row.inner_text()
    assert key not in page.content()  # shown once only
    row.get_by_role("link", name="Revoke nightly-report").click()
    # Asked first, on a page of its own: nothing is revoked yet.
    expect(page.get_by_role("heading", name="Revoke nightly-report?")).to_be_visible()
    assert ApiKey.objects.get().revoked_at is None
    page.get_by_role("button", name="Revoke key").click()
    # Read once the list is back (the click waits only for the navigation to begin).
    expect(page.locator(f"tr[data-api-key='{ApiKey.objects.get().prefix}']")).to_contain_text("Revoked")
    assert "revoked" in page.locator(".messages, [role=status], body").first.inner_text().lower()
    assert "Revoked" in page.locator(f"tr[data-api-key='{ApiKey.objects.get().prefix}']").inner_text()

    page.screenshot(path=str(target / "api-keys-desktop.png"), full_page=True)
    status, body = _get(f"{live_server.url}/api/v1/events", key)
    assert status == 401 and body["error"] == "invalid_api_key" and "revoked" in body["detail"]
