"""Inviting a colleague in a real browser, who accepts in a second browser and sees a read-only Team page."""

import re

import pytest
from django.core import mail
from django.test import Client

from organizations.models import Membership

pytestmark = pytest.mark.django_db(transaction=True)


def signed_in_context(browser, base_url, user):
    """A browser context carrying a session of ``user`` (signing in itself is covered in accounts' browser tests)."""
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base_url}])
    return context


def test_owner_invites_a_member_who_accepts_and_cannot_change_anything(
    browser, live_server, settings, organization, owner
):
    settings.PUBLIC_BASE_URL = live_server.url
    owner_context = signed_in_context(browser, live_server.url, owner)
    invitee_context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    try:
        owner_page = owner_context.new_page()
        owner_page.goto(f"{live_server.url}/o/acme/team/")
        owner_page.get_by_label("Email address").fill("colleague@acme.example")
        owner_page.get_by_label("Role", exact=True).select_option("member")
        owner_page.get_by_role("button", name="Send invitation").click()
        owner_page.get_by_text("Invitation sent to colleague@acme.example.").wait_for()
        assert owner_page.locator("tr[data-invitation='colleague@acme.example']").count() == 1

        link = re.search(r"http://\S+/team/join/\S+/", mail.outbox[0].body).group(0)
        invitee = invitee_context.new_page()
        invitee.goto(link)
        invitee.get_by_role("heading", name="Join Acme").wait_for()
        invitee.get_by_role("button", name="Accept and sign in").click()
        invitee.wait_for_url(f"{live_server.url}/o/acme/")

        invitee.goto(f"{live_server.url}/o/acme/team/")
        invitee.get_by_role("heading", name="Team").wait_for()
        assert invitee.locator("tr[data-member='colleague@acme.example']").count() == 1
        for label in ("Send invitation", "Change role", "Remove", "Revoke"):
            assert invitee.get_by_role("button", name=label).count() == 0, label
        assert invitee.locator("form[action*='/team/']").count() == 0

        owner_page.reload()
        assert owner_page.locator("tr[data-member='colleague@acme.example']").count() == 1
        assert owner_page.locator("tr[data-invitation]").count() == 0
        assert Membership.objects.get(user__email="colleague@acme.example").role == Membership.Role.MEMBER
    finally:
        owner_context.close()
        invitee_context.close()
