"""A hostile user's attacks on the sign-in and the tenant dashboard, kept as regression tests.

Each test names one attack; what the others already cover (CSRF and roles on every route, IDOR with
another organization's ids, token masking in logs, link reuse and expiry) lives in
webhooks/tests/test_authorization_matrix.py, test_dashboard_access.py, test_log_masking.py and
accounts/tests/test_sign_in.py.
"""

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import SESSION_KEY
from django.core import mail
from django.test import Client
from django.urls import reverse

from organizations.models import Membership
from organizations.team import invitation_create
from webhooks.models import WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations
from webhooks.services.destinations import destination_create
from webhooks.tests.dashboard_helpers import dead_delivery, ingest_stripe
from webhooks.tests.factories import make_source

pytestmark = pytest.mark.django_db

SIGN_IN = reverse("accounts:sign_in")
CODE = reverse("accounts:sign_in_code")
XSS = '"><img src=x onerror=alert(1)><script>hl_xss()</script>'


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


def ask(client, email, next_url=""):
    return client.post(SIGN_IN, {"email": email, "next": next_url})


def link_path(message) -> str:
    return urlsplit(re.search(r"https?://\S+/accounts/sign-in/link/\S+/", message.body).group(0)).path


def code_in(message) -> str:
    return re.search(r"^(\d{6})$", message.body, re.MULTILINE).group(1)


def signed_in(client, user):
    client.force_login(user)
    return client


# --- Open redirect through next= -------------------------------------------------------------

OFF_SITE_NEXTS = [
    "/\\evil.example/",
    "\\\\evil.example/",
    "https:evil.example",
    "https:/evil.example",
    "http:\\\\evil.example",
    "%2F%2Fevil.example",
    "/%2F/evil.example",
    "\t//evil.example/",
    " //evil.example/",
    "//evil.example%2F@testserver/",
    "http://testserver@evil.example/",
    "data:text/html,<script>alert(1)</script>",
]


def _leaves_site(location: str) -> bool:
    # What a browser does with the Location: resolved against the page, does it land elsewhere?
    from urllib.parse import urljoin

    resolved = urljoin("http://testserver/accounts/sign-in/", location.strip().replace("\\", "/"))
    return urlsplit(resolved).hostname != "testserver" or urlsplit(resolved).scheme not in ("http", "https")


@pytest.mark.parametrize("next_url", OFF_SITE_NEXTS)
def test_next_never_sends_the_browser_off_site_after_a_link_or_a_code(owner, next_url):
    by_link = Client()
    ask(by_link, owner.email, next_url)
    response = by_link.get(link_path(mail.outbox[-1]))
    assert response.status_code == 302 and not _leaves_site(response["Location"]), response["Location"]

    by_code = Client()
    ask(by_code, owner.email, next_url)
    response = by_code.post(CODE, {"code": code_in(mail.outbox[-1])})
    assert response.status_code == 302 and not _leaves_site(response["Location"]), response["Location"]


# --- Session fixation, sign-out --------------------------------------------------------------


def test_signing_in_by_link_rotates_the_session_key(owner):
    browser = Client()
    ask(browser, owner.email)
    planted = browser.session.session_key
    assert planted

    browser.get(link_path(mail.outbox[0]))

    assert browser.session.get(SESSION_KEY) == str(owner.pk)
    assert browser.session.session_key != planted
    # The planted id is worth nothing: it was not carried over to the signed-in session.
    attacker = Client()
    attacker.cookies["sessionid"] = planted
    assert attacker.get("/o/acme/").status_code == 302


def test_joining_by_invitation_rotates_the_session_key(organization, owner):
    invitation, token = _invitation_with_token(organization, owner, "newbie@elsewhere.example")
    browser = Client()
    session = browser.session  # a session the browser holds before joining, as a planted one would be
    session["planted"] = True
    session.save()
    planted = session.session_key

    browser.post(reverse("team:invitation_accept", args=[organization.slug, token]))

    assert browser.session.get(SESSION_KEY) is not None
    assert browser.session.session_key != planted


def _invitation_with_token(organization, owner, email):
    mail.outbox.clear()
    invitation = invitation_create(organization=organization, actor=owner, email=email, role="member")
    token = re.search(r"/team/join/([A-Za-z0-9_-]+)/", mail.outbox[-1].body).group(1)
    return invitation, token


def test_a_session_cookie_kept_from_before_sign_out_opens_nothing(owner):
    browser = signed_in(Client(), owner)
    stolen = browser.cookies["sessionid"].value
    assert browser.get("/o/acme/").status_code == 200

    browser.post(reverse("accounts:sign_out"))

    replay = Client()
    replay.cookies["sessionid"] = stolen
    assert replay.get("/o/acme/").status_code == 302
    assert replay.get("/o/acme/events/live/", HTTP_HX_REQUEST="true").status_code == 302


def test_a_removed_member_with_an_open_session_gets_404_on_pages_and_htmx_partials(client, organization, owner, member):
    source = make_source(organization, name="Stripe live")
    event_id = ingest_stripe(client, source, "evt_removed")
    browser = signed_in(Client(), member)
    assert browser.get(f"/o/acme/events/{event_id}/").status_code == 200

    Membership.objects.filter(user=member, organization=organization).delete()

    for path in ("/o/acme/", f"/o/acme/events/{event_id}/", f"/o/acme/events/{event_id}/progress/"):
        assert browser.get(path).status_code == 404, path
    assert browser.get("/o/acme/events/live/", HTTP_HX_REQUEST="true").status_code == 404


# --- Headers: clickjacking, Referer leaking the sign-in token, sniffing ----------------------


def test_pages_holding_a_sign_in_or_invitation_token_keep_it_from_third_parties_and_frames(organization, owner):
    ask(Client(), owner.email)
    # Opened in another browser: the confirmation page, whose address holds the live token.
    confirm = Client().get(link_path(mail.outbox[0]))
    assert confirm.status_code == 200
    _, token = _invitation_with_token(organization, owner, "newbie@elsewhere.example")
    join = Client().get(reverse("team:invitation_accept", args=[organization.slug, token]))
    assert join.status_code == 200
    for response in (confirm, join, Client().get(SIGN_IN)):
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]


def test_pages_naming_who_signs_in_or_holding_a_token_are_never_stored(organization, other_organization, owner):
    # They went out without Cache-Control: the browser kept them, and Back showed them again after
    # the session had ended elsewhere (the home page: the account's organizations and invitations).
    browser = Client()
    ask(browser, owner.email)
    confirm = Client().get(link_path(mail.outbox[0]))
    _, token = _invitation_with_token(organization, owner, "newbie@elsewhere.example")
    join = Client().get(reverse("team:invitation_accept", args=[organization.slug, token]))
    Membership.objects.create(user=owner, organization=other_organization, role=Membership.Role.MEMBER)
    home = signed_in(Client(), owner).get("/")
    assert home.status_code == 200 and "Globex" in home.content.decode()
    for response in (browser.get(CODE), confirm, join, home):
        assert response.status_code == 200
        assert {"no-store", "private"} <= {part.strip() for part in response["Cache-Control"].split(",")}


# --- Stored XSS through what tenants and senders control --------------------------------------


def test_markup_from_names_event_types_headers_and_bodies_is_shown_as_text(client, organization, owner):
    source = make_source(organization, name=f"src {XSS}")
    destination, _ = destination_create(
        organization=organization, name=f"dst {XSS}", url="http://127.0.0.1:9/hook", sources=[source]
    )
    event_id = ingest_stripe(client, source, "evt_xss", event_type=f"x{XSS}", note=XSS, HTTP_X_NOTE=XSS)
    dead_delivery(WebhookEvent.objects.get(pk=event_id), destination)
    browser = signed_in(Client(), owner)
    pages = [
        "/o/acme/",
        "/o/acme/events/",
        f"/o/acme/events/?search={XSS}",
        f"/o/acme/events/?event_type={XSS}",
        f"/o/acme/events/?body_contains={XSS[:40]}",
        f"/o/acme/events/{event_id}/",
        f"/o/acme/events/{event_id}/progress/",
        "/o/acme/sources/",
        f"/o/acme/sources/{source.pk}/",
        "/o/acme/destinations/",
        f"/o/acme/destinations/{destination.pk}/",
        "/o/acme/audit/",
        "/o/acme/team/",
    ]
    for path in pages:
        response = browser.get(path)
        assert response.status_code == 200, path
        html = response.content.decode()
        assert "<img src=x" not in html and "<script>hl_xss" not in html, path


def test_next_is_shown_back_as_text_on_the_sign_in_form(client):
    html = client.get(SIGN_IN, {"next": XSS}).content.decode()
    assert "<img src=x" not in html and "<script>hl_xss" not in html


# --- CSRF on the state-changing POSTs outside /o/<slug>/ ----------------------------------------


def test_joining_accepting_and_signing_out_need_a_csrf_token(organization, owner, outsider):
    invitation, token = _invitation_with_token(organization, owner, outsider.email)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(outsider)

    assert strict.post(reverse("invitation_join", args=[invitation.pk])).status_code == 403
    assert strict.post(reverse("team:invitation_accept", args=[organization.slug, token])).status_code == 403
    assert not Membership.objects.filter(user=outsider, organization=organization).exists()
    for way_out in ("accounts:sign_out", "accounts:sign_out_everywhere"):
        assert strict.post(reverse(way_out)).status_code == 403
    assert strict.get("/o/globex/").status_code == 200  # still signed in


# --- Cross-tenant ids through the events list's search and cursors ---------------------------


def test_another_organizations_event_ids_find_nothing_through_search_or_cursors(
    client, organization, other_organization, owner
):
    theirs = make_source(other_organization, name="Globex stripe")
    their_event = ingest_stripe(client, theirs, "evt_globex_secret", event_type="globex.only")
    browser = signed_in(Client(), owner)
    for query in (
        {"search": their_event},
        {"search": "evt_globex_secret"},
        {"search": f"http://testserver/o/globex/events/{their_event}/"},
        {"before": their_event},
    ):
        html = browser.get("/o/acme/events/", query).content.decode()
        assert "globex.only" not in html and "evt_globex_secret" not in html.replace(query.get("search", ""), ""), query
    live = browser.get("/o/acme/events/live/", {"after": their_event}, HTTP_HX_REQUEST="true")
    assert "globex.only" not in live.content.decode()
