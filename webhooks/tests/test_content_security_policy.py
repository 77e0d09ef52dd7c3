"""The Content-Security-Policy header (config/content_security_policy.py) on every page the page
tests open (dashboard, team, sign-in, errors, the admin), and pages that need nothing it refuses:
no inline script, style, event handler or evaluated htmx attribute.

The browser tests (test_content_security_policy_browser.py) check the same in Chromium."""

import base64
import hashlib
import re
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib import admin as django_admin
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse

from config.content_security_policy import NOT_A_PAGE, ContentSecurityPolicyMiddleware, policy_header
from config.urls import handler500
from organizations.api_keys import api_key_create
from organizations.models import Membership
from webhooks.models import WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations

from .dashboard_helpers import build_world, dead_delivery, ingest_stripe
from .test_dashboard_access import ADMIN_PAGES, READ_PAGES, url_kwargs

pytestmark = pytest.mark.django_db

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; report-uri /csp-reports"
)
# What the policy refuses in a page: <script> without src (a JSON one is data), <style>, style and on… attributes,
# javascript: URLs, and htmx attributes that evaluate JavaScript.
INLINE = re.compile(
    r"<script\b(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>|<style\b|\sstyle=|\son[a-z]+=|javascript:|\shx-on|hx-vals=[\"']\s*js:",
    re.IGNORECASE,
)


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


def assert_policed(response, where) -> None:
    assert response["Content-Type"].startswith("text/html"), where
    assert response["Content-Security-Policy"] == PAGE_POLICY, where
    html = response.content.decode()
    assert not INLINE.findall(html), (where, INLINE.findall(html))


def test_the_policy_is_the_one_documented():
    assert policy_header(settings.SECURE_CSP) == PAGE_POLICY
    assert "unsafe" not in PAGE_POLICY


def test_every_dashboard_page_carries_the_policy(client, organization, owner, member):
    world = build_world(client, organization)
    world.api_key, _ = api_key_create(organization=organization, name="ci")
    client.force_login(owner)
    for name, kind in READ_PAGES + ADMIN_PAGES:
        response = client.get(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]), follow=True)
        assert response.status_code == 200, name
        assert_policed(response, name)
    # The htmx answers: the test sender's result and the live list's rows.
    source_test = reverse("dashboard:source_test", args=["acme", world.source.pk])
    response = client.post(source_test, {"event_type": "invoice.paid"}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and b"test-result" in response.content
    assert_policed(response, "source_test (htmx)")
    live = client.get(reverse("dashboard:events_live", args=["acme"]), headers={"HX-Request": "true"})
    assert_policed(live, "events_live (htmx)")
    # The team pages, and the organizations page of someone in two.
    assert_policed(client.get(reverse("team:members", args=["acme"])), "team")
    remove = reverse("team:member_remove", args=["acme", Membership.objects.get(user=member).pk])
    assert_policed(client.get(remove), "member_remove")
    client.post(reverse("team:invite", args=["acme"]), {"email": "new@acme.example", "role": "member"})
    invitation = urlsplit(re.search(r"https?://\S+/team/join/\S+/", mail.outbox[-1].body).group(0)).path
    assert_policed(client.get(invitation), "invitation_accept")
    assert_policed(client.get(reverse("team:invitation_accept", args=["acme", "no-such-token"])), "unavailable")
    Membership.objects.create(user=owner, organization=build_other(), role=Membership.Role.MEMBER)
    assert_policed(client.get(reverse("home")), "home")


def build_other():
    from organizations.services import organization_create

    return organization_create(name="Globex", slug="globex", owner_email="owner@globex.example")


def test_sign_in_pages_carry_the_policy(client, owner):
    assert_policed(client.get(reverse("accounts:sign_in")), "sign_in")
    code_page = client.post(reverse("accounts:sign_in"), {"email": owner.email}, follow=True)
    assert code_page.redirect_chain and "6-digit" in code_page.content.decode()
    assert_policed(code_page, "sign_in_code")
    link = urlsplit(re.search(r"https?://\S+/accounts/sign-in/link/\S+/", mail.outbox[-1].body).group(0)).path
    assert_policed(Client().get(link), "sign_in_confirm")
    assert_policed(client.get(reverse("accounts:sign_in_link", args=["no-such-token"])), "link unavailable")
    client.force_login(owner)
    assert_policed(client.get(reverse("accounts:sign_out")), "sign_out")
    assert_policed(Client().get(reverse("admin:login")), "admin login")


def test_error_pages_carry_the_policy(client, organization, owner, member):
    client.force_login(member)
    missing = client.get("/no/such/page/")
    assert missing.status_code == 404
    assert_policed(missing, "404")
    refused = client.get(reverse("dashboard:source_providers", args=["acme"]))
    assert refused.status_code == 403
    assert_policed(refused, "403")
    # A form without its CSRF token gets the product's page, not Django's inline-styled one.
    strict = Client(enforce_csrf_checks=True)
    csrf = strict.post(reverse("accounts:sign_in"), {"email": owner.email})
    assert csrf.status_code == 403 and "Form not sent" in csrf.content.decode()
    assert_policed(csrf, "403 csrf")


def test_the_500_page_allows_its_own_style_block_by_hash_only():
    from django.utils.module_loading import import_string

    response = import_string(handler500)(RequestFactory().get("/o/acme/"))
    assert response.status_code == 500
    block = re.search(rb"<style>(.*?)</style>", response.content, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(block).digest()).decode()
    assert response["Content-Security-Policy"] == PAGE_POLICY.replace(
        "style-src 'self'", f"style-src 'self' 'sha256-{digest}'"
    )
    # Through the middleware too: the page's own header is kept.
    middleware = ContentSecurityPolicyMiddleware(lambda request: response)
    assert middleware(RequestFactory().get("/"))["Content-Security-Policy"].endswith("report-uri /csp-reports")
    assert f"'sha256-{digest}'" in middleware(RequestFactory().get("/"))["Content-Security-Policy"]


def test_every_admin_page_carries_the_policy(client, organization):
    from django.contrib.auth.models import Group

    from webhooks.services.operations import bulk_retry_start

    world = build_world(client, organization)
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    # An action's confirmation page (asked for two deliveries or more), one of Hookline's own templates.
    second = WebhookEvent.objects.get(pk=ingest_stripe(client, world.source, "evt_world_2"))
    dead_delivery(second, world.destination)
    events = reverse("admin:webhooks_webhookevent_changelist") + f"?organization={organization.pk}&failed=yes"
    selection = {
        "action": "retry_failed_deliveries",
        "select_across": "1",
        "_selected_action": [world.event.pk, second.pk],
    }
    confirmation = client.post(events, selection)
    assert "Send 2 failed deliveries again now?" in confirmation.content.decode()
    assert_policed(confirmation, "action confirmation")
    Group.objects.create(name="operators")
    bulk_retry_start(organization=organization, filters={}, actor=superuser)
    call_command("install_periodic_tasks")
    assert_policed(client.get(reverse("admin:index")), "admin index")
    for model in django_admin.site._registry:
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert_policed(client.get(changelist), changelist)
        add = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        if add.status_code == 200:  # (a 403 where the admin adds nothing by hand)
            assert_policed(add, f"{opts.label} add")
        first = model.objects.order_by("pk").first()
        if first is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk])
            assert_policed(client.get(change), change)


def test_responses_that_are_not_pages_get_the_minimal_policy(client, organization):
    world = build_world(client, organization)
    ingest = Client().post(f"/in/{world.source.ingest_token}/", b"{}", content_type="application/json")
    assert ingest["Content-Type"].startswith("application/json")
    assert ingest["Content-Security-Policy"] == NOT_A_PAGE == "default-src 'none'; frame-ancestors 'none'"
    api = Client().get("/api/v1/events/")
    assert api.status_code == 401 and api["Content-Security-Policy"] == NOT_A_PAGE
    assert Client().get("/livez")["Content-Security-Policy"] == NOT_A_PAGE


def test_with_debug_on_django_s_own_error_pages_get_no_policy(settings, organization, owner):
    # Their tracebacks are styled and scripted inline; the product's pages keep the policy.
    settings.DEBUG = True
    browser = Client(raise_request_exception=False)
    missing = browser.get("/no/such/page/")
    assert missing.status_code == 404 and "<style" in missing.content.decode()
    assert "Content-Security-Policy" not in missing
    assert browser.get(reverse("accounts:sign_in"))["Content-Security-Policy"] == PAGE_POLICY
