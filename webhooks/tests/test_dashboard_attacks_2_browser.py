"""What a tab keeps of the dashboard once its session has ended (Playwright + Debian's Chromium)."""

import json
import re

import pytest
from django.core import mail

from accounts.services import sessions_revoke_all
from organizations import team
from organizations.models import Membership
from organizations.services import organization_create
from webhooks.tests.factories import STRIPE_SECRET, make_source
from webhooks.tests.signing import stripe_headers

pytestmark = pytest.mark.django_db(transaction=True)

HISTORY_CACHE = "htmx-history-cache"


@pytest.fixture
def public_url(live_server, settings):
    settings.PUBLIC_BASE_URL = live_server.url
    return live_server.url


def sign_in(page, base_url, email, next_url="/o/acme/events/"):
    page.goto(f"{base_url}/accounts/sign-in/?next={next_url}")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    page.goto(re.search(r"http://\S+/accounts/sign-in/link/\S+/", mail.outbox[-1].body).group(0))


def test_back_after_the_session_ended_elsewhere_shows_no_tenant_page_from_browser_storage(
    client, page, public_url, organization, owner
):
    source = make_source(organization, name="Stripe live")
    body = json.dumps({"id": "evt_kept_1", "object": "event", "type": "customer.secretive_thing"})
    response = client.post(
        f"/in/{source.ingest_token}/", body, content_type="application/json", **stripe_headers(body, STRIPE_SECRET)
    )
    assert response.status_code == 200
    sign_in(page, public_url, owner.email)
    page.wait_for_url(f"{public_url}/o/acme/events/")
    page.get_by_text("customer.secretive_thing").first.wait_for()
    # A filter applied by htmx pushes a new address: htmx 2 snapshots the page it leaves into
    # sessionStorage unless told to keep none.
    with page.expect_response(lambda answer: "status=processed" in answer.url):
        page.get_by_label("Status").select_option("processed")
    page.wait_for_url(re.compile(r"status=processed"))
    kept = page.evaluate(f"() => sessionStorage.getItem('{HISTORY_CACHE}') || ''")
    assert "secretive_thing" not in kept

    # "Sign out everywhere" from another device, as the sign-out page advises after a shared computer.
    sessions_revoke_all(user=owner)
    page.go_back()

    page.wait_for_url(re.compile(r"/accounts/sign-in/"))
    assert "secretive_thing" not in page.content()


def outsider_of(organization):
    return organization.memberships.get(role=Membership.Role.OWNER).user


def test_back_after_the_session_ended_elsewhere_shows_neither_the_home_page_nor_the_invitation(
    page, public_url, organization, other_organization, owner
):
    # The home page lists the account's organizations and the invitations to its address (who sent
    # them, with which role); it was sent without Cache-Control, unlike the organization's pages,
    # and Back after the session had ended showed it again from the browser's memory.
    Membership.objects.create(user=owner, organization=other_organization, role=Membership.Role.MEMBER)
    initech = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    team.invitation_create(organization=initech, actor=outsider_of(initech), email=owner.email, role="admin")
    sign_in(page, public_url, owner.email, next_url="/")
    page.wait_for_url(f"{public_url}/")
    page.get_by_text("Initech").first.wait_for()
    page.get_by_role("link", name="Acme").first.click()
    page.wait_for_url(f"{public_url}/o/acme/")

    sessions_revoke_all(user=owner)
    page.go_back()

    page.wait_for_url(re.compile(r"/accounts/sign-in/"))
    assert "Globex" not in page.content() and "Initech" not in page.content()
