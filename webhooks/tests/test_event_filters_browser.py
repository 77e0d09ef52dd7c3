"""The events list's filter bar in a real browser: one row on a laptop's window, wrapped when narrower."""

import pytest

from .dashboard_helpers import build_world, work_driven_by_the_test
from .factories import make_destination, make_source
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

CONTROLS = (
    "#event-filters input:not([type=hidden]), #event-filters select, #event-filters button,"
    " #event-filters .btn, #event-filters summary"
)


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


def shown_controls(page) -> list[dict]:
    """Each filter box, button and toggle the page shows (not From and To while closed), in order."""
    page.wait_for_selector("#event-filters")
    return page.eval_on_selector_all(
        CONTROLS,
        "controls => controls.filter(control => control.checkVisibility()).map(control => {"
        " const box = control.getBoundingClientRect();"
        " return {name: control.id || control.textContent.trim(), top: box.top, bottom: box.bottom}; })",
    )


def overflow(page) -> float:
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def test_the_events_filters_share_one_row_at_1280_px_and_wrap_when_narrower(
    browser, live_server, client, organization, owner
):
    build_world(client, organization)
    page = sign_in(browser, live_server, owner, width=1280, height=900)
    page.goto(f"{live_server.url}/o/{organization.slug}/events/")
    controls = shown_controls(page)
    names = [control["name"] for control in controls]
    assert names == [
        "id_q",
        "id_body",
        "id_status",
        "id_source",
        "id_event_type",
        "id_destination",
        "id_range",
        "Apply",
        "Clear",
        "From / To",
    ]
    assert {control["top"] for control in controls} == {controls[0]["top"]}, controls
    assert overflow(page) <= 0
    # From and To open on a row of their own, below the others, which stay on theirs.
    page.get_by_text("From / To").click()
    opened = {control["name"]: control for control in shown_controls(page)}
    assert opened["id_since"]["top"] == opened["id_until"]["top"] > controls[0]["bottom"]
    assert opened["id_range"]["top"] == opened["Apply"]["top"] == controls[0]["top"]

    # A narrower window wraps the row, without scrolling the page sideways.
    page.set_viewport_size({"width": 900, "height": 900})
    narrow = shown_controls(page)
    assert len({control["top"] for control in narrow}) > 1
    assert overflow(page) <= 0


def test_the_events_filters_fit_1280_px_with_the_names_a_tenant_gives_its_sources_and_destinations(
    browser, live_server, organization, owner
):
    # Names of a tenant's first day: the lists are as wide as their longest name, and with these the
    # row ran 19 px past the window, so the whole page scrolled sideways to reach From / To.
    make_source(organization, name="Stripe production")
    github = make_source(organization, provider="github", secret="a-secret-of-this-test", name="GitHub org hooks")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[github])
    destination.name = "Billing app"
    destination.save(update_fields=["name"])
    page = sign_in(browser, live_server, owner, width=1280, height=900)
    page.goto(f"{live_server.url}/o/{organization.slug}/events/")
    controls = shown_controls(page)
    assert {control["top"] for control in controls} == {controls[0]["top"]}, controls
    assert overflow(page) <= 0
    # The lists give up width before a filter leaves the window, still naming what they hold.
    assert page.locator("#id_source").bounding_box()["width"] >= 80


def test_from_and_to_are_shown_open_when_set(browser, live_server, client, organization, owner):
    build_world(client, organization)
    page = sign_in(browser, live_server, owner, width=1280, height=900)
    page.goto(f"{live_server.url}/o/{organization.slug}/events/?since=2026-01-02T03:04:05")
    assert page.get_by_label("From (UTC)").is_visible()
    assert page.input_value("#id_since") == "2026-01-02T03:04:05"
