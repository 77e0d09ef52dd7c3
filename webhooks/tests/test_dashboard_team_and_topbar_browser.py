"""Defects found walking the dashboard as a new tenant at phone and desktop widths, in a real
browser (Playwright + Debian's Chromium), under the Content-Security-Policy."""

import re

import pytest

from organizations.models import Membership
from organizations.services import organization_create

from .test_content_security_policy_browser import assert_clean, flush, watch
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

VIEWPORTS = [(375, 740), (1280, 900)]


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2 contrast of two computed colours ("rgb(r, g, b)")."""

    def luminance(colour: str) -> float:
        channels = [int(value) / 255 for value in re.findall(r"\d+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_the_organization_switcher_reads_on_the_dark_top_bar(browser, live_server, organization, owner):
    # Its name was in the link blue of `details summary`, 2.8:1 on the top bar (AA asks 4.5:1).
    other = organization_create(name="Globex", slug="globex", owner_email="owner@globex.example")
    Membership.objects.create(user=owner, organization=other, role=Membership.Role.ADMIN)
    page = sign_in(browser, live_server, owner, width=VIEWPORTS[0][0], height=VIEWPORTS[0][1], own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/")
    summary = page.locator(".org-switcher summary")
    # At a phone's width and a desktop's (the window resized: the style sheet's media queries apply
    # again, no script measures the window).
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        assert page.evaluate("window.innerWidth") == width
        colour = summary.evaluate("(element) => getComputedStyle(element).color")
        top_bar = page.locator(".topbar").evaluate("(element) => getComputedStyle(element).backgroundColor")
        assert contrast_ratio(colour, top_bar) >= 4.5, (width, colour, top_bar)
    summary.click()
    page.get_by_role("link", name="Globex").click()
    page.wait_for_url(f"{live_server.url}/o/globex/")
    flush(page)
    assert_clean(seen, pages_at_least=2)
    page.context.close()


def test_a_refused_invitation_shows_why_under_the_address_and_puts_the_cursor_there(
    browser, live_server, organization, owner, member
):
    # The refusal came after the form, tied to no field, and the focus went back to the top of the page.
    page = sign_in(browser, live_server, owner, width=VIEWPORTS[0][0], height=VIEWPORTS[0][1], own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/team/")
    page.get_by_label("Email address").fill(member.email)
    page.get_by_role("button", name="Send invitation").click()
    page.wait_for_selector(".team-invite .errorlist")

    address = page.get_by_label("Email address")
    assert page.evaluate("document.activeElement.id") == "id_email"
    assert address.input_value() == member.email and address.get_attribute("aria-invalid") == "true"
    field = page.locator(".team-invite .field.has-error")
    assert field.locator("#id_email").count() == 1
    assert field.locator(".errorlist").inner_text() == f"{member.email} is already a member."
    # The button stays level with the boxes, beside the role or under the address on a phone: at a
    # phone's width and a desktop's (the window resized: the layout is the style sheet's alone).
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        assert page.evaluate("window.innerWidth") == width
        button = page.get_by_role("button", name="Send invitation").bounding_box()
        role = page.locator("#id_role").bounding_box()
        assert abs(button["y"] - role["y"]) <= 4 and abs(button["height"] - role["height"]) <= 4, (width, button, role)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, width

    address.fill("colleague@acme.example")
    page.get_by_role("button", name="Send invitation").click()
    page.wait_for_selector("text=Invitation sent to colleague@acme.example.")
    flush(page)
    assert_clean(seen, pages_at_least=3)
    page.context.close()
