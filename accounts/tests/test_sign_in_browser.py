"""Signing in in a real browser (Playwright + Debian's Chromium) against the live server."""

import re

import pytest
from django.core import mail

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def public_url(live_server, settings):
    # Emails carry absolute links; point them at the live server.
    settings.PUBLIC_BASE_URL = live_server.url
    return live_server.url


def ask_for_sign_in(page, base_url, email):
    page.goto(f"{base_url}/o/acme/team/")
    assert "/accounts/sign-in/?next=/o/acme/team/" in page.url
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    assert len(mail.outbox) == 1
    return mail.outbox[0]


def test_sign_in_by_magic_link(page, public_url, organization, owner):
    message = ask_for_sign_in(page, public_url, owner.email)
    link = re.search(r"http://\S+/accounts/sign-in/link/\S+/", message.body).group(0)

    page.goto(link)

    page.get_by_role("heading", name="Team").wait_for()
    assert page.url == f"{public_url}/o/acme/team/"
    assert owner.email in page.inner_text(".topbar-user")


def test_sign_in_by_code(page, public_url, organization, owner):
    message = ask_for_sign_in(page, public_url, owner.email)
    code = re.search(r"^(\d{6})$", message.body, re.MULTILINE).group(1)

    page.get_by_label("Or type the code here").fill(code)
    page.get_by_role("button", name="Sign in").click()

    page.get_by_role("heading", name="Team").wait_for()
    assert page.url == f"{public_url}/o/acme/team/"


def test_a_link_opened_elsewhere_asks_before_signing_in(browser, page, public_url, organization, owner):
    message = ask_for_sign_in(page, public_url, owner.email)
    link = re.search(r"http://\S+/accounts/sign-in/link/\S+/", message.body).group(0)
    other = browser.new_context()
    try:
        elsewhere = other.new_page()
        elsewhere.goto(link)
        elsewhere.get_by_role("heading", name="Sign in as").wait_for()
        assert elsewhere.get_by_role("textbox").count() == 0  # the address is shown, not editable
        elsewhere.get_by_role("button", name="Sign in").click()
        elsewhere.wait_for_url(f"{public_url}/o/acme/team/")
    finally:
        other.close()
