"""Custom headers on the dashboard's destination form, in a real browser: set, replace a value,
remove, and never see a value again."""

import pytest

from webhooks.models import Destination

from .factories import make_destination
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "Bearer browser-secret-Z9y8"


def test_headers_are_set_replaced_and_removed_without_retyping_the_others(browser, live_server, organization, owner):
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/hook", custom_headers={"X-Keep": "kept-Q1w2e3r4"}
    )
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/destinations/{destination.pk}/edit/")
    page.locator("#id_custom_headers_set").fill(f"Authorization: {TOKEN}\nX-Temp: temp-value-1234")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector("text=Destination saved.")
    assert "…Z9y8" in page.content() and "X-Temp" in page.content() and TOKEN not in page.content()

    # A refusal: the box comes back empty, with the reason; nothing changed.
    page.goto(f"{live_server.url}/o/acme/destinations/{destination.pk}/edit/")
    page.locator("#id_custom_headers_set").fill("webhook-signature: typed-value-5678")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector("text=cannot be set")
    assert page.locator("#id_custom_headers_set").input_value() == ""
    assert "typed-value-5678" not in page.content()

    # Remove one by its tick, replace another's value; the untouched one keeps its value.
    page.get_by_label("X-Temp (value …1234)").check()
    page.locator("#id_custom_headers_set").fill("authorization: Bearer replaced-A0b0")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector("text=Destination saved.")
    assert Destination.objects.get(pk=destination.pk).custom_header_values() == {
        "X-Keep": "kept-Q1w2e3r4",
        "authorization": "Bearer replaced-A0b0",
    }
    for value in ("kept-Q1w2e3r4", "replaced-A0b0", "temp-value-1234"):
        assert value not in page.content()
