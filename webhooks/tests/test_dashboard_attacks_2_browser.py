"""What a tab keeps of the dashboard once its session has ended (Playwright + Debian's Chromium)."""

import json
import re

import pytest
from django.core import mail

from accounts.services import sessions_revoke_all
from webhooks.tests.factories import STRIPE_SECRET, make_source
from webhooks.tests.signing import stripe_headers

pytestmark = pytest.mark.django_db(transaction=True)

HISTORY_CACHE = "htmx-history-cache"


@pytest.fixture
def public_url(live_server, settings):
    settings.PUBLIC_BASE_URL = live_server.url
    return live_server.url


def sign_in(page, base_url, email):
    page.goto(f"{base_url}/accounts/sign-in/?next=/o/acme/events/")
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
