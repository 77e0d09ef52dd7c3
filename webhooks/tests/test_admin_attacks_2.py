"""A hostile tenant's data in front of a platform admin, and a staff account without permissions.

Every text a tenant (or a receiver it points a destination at) controls is stored with markup in
it, bypassing the forms as data saved before a validator existed would; then every admin page
that could show it is opened and must show it as text: no tag, no attribute, no javascript: link.
"""

from __future__ import annotations

import re

import pytest
from django.contrib import admin as django_admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from organizations.api_keys import api_key_create
from organizations.models import ApiKey, AuditLog, Membership, Organization
from organizations.services import audit_record
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.tests.factories import make_destination, make_source
from webhooks.tests.test_admin import admin, superuser  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db

# Each closes an attribute and a tag before opening its own, as an injection into either would.
MARKUP = "\"'><svg/onload=alert(1)><img src=x onerror=alert(2)></script><script>alert(3)</script>"
JAVASCRIPT_URL = "javascript:alert(4)//https://x.example/"

# What must never reach a page unescaped.
RAW_TAGS = re.compile(r"<svg/onload|<img src=x|<script>alert|onerror=alert\(2\)\"", re.IGNORECASE)
JAVASCRIPT_HREF = re.compile(r"""(?:href|src|action|formaction)\s*=\s*["']?\s*javascript:""", re.IGNORECASE)


def hostile(prefix: str) -> str:
    return f"{prefix} {MARKUP}"


@pytest.fixture
def hostile_tenant(db, superuser):  # noqa: F811
    """One tenant whose every name, header, body and answer carries markup, stored as it came."""
    organization = Organization.objects.create(name=hostile("Org"), slug="hostile")
    user = get_user_model().objects.create_user(email="evil+<svg/onload=alert(1)>@evil.example")
    user.first_name, user.last_name = hostile("First"), hostile("Last")
    user.save()
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.OWNER)
    source = make_source(organization, name="placeholder")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks", sources=[source])
    # Saved past the forms' validators: as a row written before one existed, or by a bug elsewhere.
    Source.objects.filter(pk=source.pk).update(name=hostile("Source"), options={"note": MARKUP})
    Destination.objects.filter(pk=destination.pk).update(
        name=hostile("Destination"),
        url=JAVASCRIPT_URL,
        payload_filters=[{"path": MARKUP, "op": "equals", "value": MARKUP}],
        custom_header_hints=[{"name": hostile("X-Header"), "hint": MARKUP}],
        pause_reason=hostile("Paused"),
        paused_at="2026-01-01T00:00:00Z",
    )
    destination.subscriptions.update(event_types=[MARKUP])
    event = WebhookEvent.objects.create(
        organization=organization,
        source=source,
        provider_event_id=hostile("evt") + "x" * 40,  # long: shortened() puts it in a title attribute
        event_type=MARKUP,
        body=b'{"html": "' + MARKUP.replace('"', '\\"').encode() + b'"}\xff\xfe<svg/onload=alert(1)>',
        headers={MARKUP: MARKUP, "Content-Type": "text/html<script>alert(3)</script>"},
        remote_ip="203.0.113.7",
        status=WebhookEvent.Status.REJECTED,
        rejection_code=MARKUP[:40],
        rejection_detail=hostile("Detail"),
        processing_error=hostile("Error"),
    )
    delivery = Delivery.objects.create(
        organization=organization,
        event=event,
        destination=destination,
        status=Delivery.Status.DEAD,
        attempt_count=1,
        last_status_code=500,
        last_error=hostile("Last error") + "y" * 200,  # long: shown with a title attribute
        claimed_by=MARKUP[:100],
    )
    # What a hostile receiver answers: its body and headers are stored and shown.
    DeliveryAttempt.objects.create(
        organization=organization,
        delivery=delivery,
        attempt_number=1,
        response_status=500,
        response_body=hostile("Response body"),
        request_headers={MARKUP: MARKUP},
        error=hostile("Attempt error"),
        duration_ms=3,
    )
    api_key_create(organization=organization, name=hostile("Key")[:100], actor=user)
    audit_record(
        action="destination.updated",
        organization=organization,
        actor_label=hostile("Actor"),
        target=destination,
        target_label=hostile("Target"),
        changes={MARKUP: {"before": MARKUP, "after": [MARKUP, {"x": MARKUP}]}},
        user_agent=hostile("Agent"),
    )
    return {"organization": organization, "source": source, "destination": destination, "event": event}


def assert_shown_as_text(response, page: str) -> None:
    assert response.status_code == 200, (page, response.status_code)
    html = response.content.decode()
    assert not RAW_TAGS.search(html), (page, RAW_TAGS.search(html).group(0))
    assert not JAVASCRIPT_HREF.search(html), (page, JAVASCRIPT_HREF.search(html).group(0))


def test_no_admin_list_or_page_renders_a_tenants_markup(admin, hostile_tenant):  # noqa: F811
    # A change from the admin, so that the history pages name the hostile rows too.
    organization = hostile_tenant["organization"]
    LogEntry.objects.log_actions(
        user_id=get_user_model().objects.get(is_superuser=True).pk,
        queryset=[organization, hostile_tenant["destination"]],
        action_flag=CHANGE,
        change_message=[{"changed": {"fields": [MARKUP]}}],
    )
    pages = [reverse("admin:index")]
    for model in django_admin.site._registry:
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        pages += [changelist, f"{changelist}?q=svg"]
        for pk in model.objects.order_by("pk").values_list("pk", flat=True)[:20]:
            pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]))
            pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[pk]))
    for page in pages:
        assert_shown_as_text(admin.get(page), page)


def test_a_tenants_markup_shows_as_text_where_the_admin_shows_it_at_length(admin, hostile_tenant):  # noqa: F811
    # A check of the check: each of these pages does show the hostile text, escaped.
    event = hostile_tenant["event"]
    page = admin.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    assert "&lt;svg/onload=alert(1)&gt;" in page  # the body, the headers, the attempts
    assert "Response body" in page and "Attempt error" in page
    destination = admin.get(reverse("admin:webhooks_destination_change", args=[hostile_tenant["destination"].pk]))
    assert "Destination" in destination.content.decode()


def test_confirmation_pages_and_messages_name_a_tenant_as_text(admin, hostile_tenant):  # noqa: F811
    destination, event, source = hostile_tenant["destination"], hostile_tenant["event"], hostile_tenant["source"]
    organization = hostile_tenant["organization"]
    posts = [
        (reverse("admin:webhooks_destination_changelist"), "resume", destination.pk),
        (reverse("admin:webhooks_destination_changelist"), "pause", destination.pk),
        (reverse("admin:webhooks_destination_changelist"), "retry_dead_deliveries", destination.pk),
        (reverse("admin:webhooks_destination_changelist"), "send_waiting_now", destination.pk),
        (reverse("admin:webhooks_destination_changelist"), "rotate_secret", destination.pk),  # its one-time page
        (reverse("admin:webhooks_webhookevent_changelist"), "replay_to_destinations", event.pk),
        (reverse("admin:webhooks_webhookevent_changelist"), "retry_failed_deliveries", event.pk),
        (reverse("admin:webhooks_source_changelist"), "delete_selected", source.pk),
        (reverse("admin:organizations_organization_changelist"), "delete_selected", organization.pk),
        (
            reverse("admin:organizations_apikey_changelist"),
            "revoke",
            ApiKey.objects.get(organization=organization).pk,
        ),
    ]
    for url, action, pk in posts:
        response = admin.post(url, {"action": action, "_selected_action": [pk]}, follow=True)
        assert_shown_as_text(response, f"{url} {action}")
        if action == "rotate_secret":
            assert "hookline-secret" in response.content.decode() and "Destination" in response.content.decode()
    for url in (
        reverse("admin:organizations_organization_delete", args=[organization.pk]),
        reverse("admin:webhooks_source_delete", args=[source.pk]),
    ):
        assert_shown_as_text(admin.get(url), url)


def test_the_audit_log_is_append_only_in_the_admin_even_for_a_superuser(admin, hostile_tenant):  # noqa: F811
    entry = AuditLog.objects.filter(action="destination.updated").get()
    change = reverse("admin:organizations_auditlog_change", args=[entry.pk])
    admin.post(change, {"action": "tampered", "actor_label": "nobody"})
    assert admin.post(reverse("admin:organizations_auditlog_delete", args=[entry.pk]), {"post": "yes"}).status_code in (
        403,
        302,
    )
    admin.post(
        reverse("admin:organizations_auditlog_changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    entry.refresh_from_db()
    assert entry.action == "destination.updated" and entry.actor_label.startswith("Actor")
    assert admin.get(reverse("admin:organizations_auditlog_add")).status_code == 403


# --- A staff account without permissions ---------------------------------------------------------


@pytest.fixture
def bare_staff(client, db):
    user = get_user_model().objects.create_user(email="staff@hookline.example", password="x" * 20, is_staff=True)
    client.force_login(user)
    return client


def test_staff_without_permissions_reach_no_page_of_any_model_or_the_custom_views(bare_staff, hostile_tenant):
    for model in django_admin.site._registry:
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert bare_staff.get(changelist).status_code == 403, changelist
        first = model.objects.order_by("pk").values_list("pk", flat=True).first()
        if first is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first])
            assert bare_staff.get(change).status_code in (403, 302), change
    # The custom views: the chain's verdict, the one-time secrets page.
    verify = bare_staff.get(reverse("admin:organizations_auditlog_verify"))
    assert verify.status_code == 302 and verify["Location"] == reverse("admin:index")
    secrets = bare_staff.get(reverse("admin:webhooks_source_new_secrets", args=["guess"]))
    assert secrets.status_code in (302, 403)
    index = bare_staff.get(reverse("admin:index")).content.decode()
    assert "Org " not in index and "platform-overview" not in index


def test_staff_without_permissions_run_no_action(bare_staff, hostile_tenant):
    destination, event = hostile_tenant["destination"], hostile_tenant["event"]
    for url, action, pk in (
        (reverse("admin:webhooks_destination_changelist"), "resume", destination.pk),
        (reverse("admin:webhooks_destination_changelist"), "rotate_secret", destination.pk),
        (reverse("admin:webhooks_webhookevent_changelist"), "retry_failed_deliveries", event.pk),
        (reverse("admin:webhooks_source_changelist"), "rotate_secret", hostile_tenant["source"].pk),
    ):
        response = bare_staff.post(url, {"action": action, "_selected_action": [pk], "confirm": "yes"})
        assert response.status_code == 403, (url, action)
    destination.refresh_from_db()
    assert destination.paused_at is not None
    assert Delivery.objects.get(event=event).status == Delivery.Status.DEAD


def test_view_only_staff_see_no_secret_and_change_nothing(client, hostile_tenant):
    user = get_user_model().objects.create_user(email="viewer@hookline.example", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(user)
    destination = Destination.objects.get(pk=hostile_tenant["destination"].pk)
    source = Source.objects.get(pk=hostile_tenant["source"].pk)
    for url in (
        reverse("admin:webhooks_destination_change", args=[destination.pk]),
        reverse("admin:webhooks_source_change", args=[source.pk]),
    ):
        response = client.get(url)
        assert_shown_as_text(response, url)
        html = response.content.decode()
        assert destination.secret not in html and source.secret not in html
    # Posting a change form anyway is refused.
    response = client.post(
        reverse("admin:webhooks_destination_change", args=[destination.pk]),
        {"name": "renamed", "url": "http://127.0.0.1:9/x"},
    )
    assert response.status_code == 403
    assert Destination.objects.get(pk=destination.pk).name != "renamed"


# --- A staff account making itself a tenant's owner ------------------------------------------------


@pytest.fixture
def membership_staff(client, db):
    """Staff allowed to change users and memberships (support work on tenants' accounts), nothing more."""
    user = get_user_model().objects.create_user(email="support@hookline.example", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=[
                "view_user",
                "change_user",
                "view_organization",
                "change_organization",
                "add_membership",
                "change_membership",
                "delete_membership",
            ]
        )
    )
    client.force_login(user)
    return user


def own_page_adding_a_membership(user, organization, role="owner") -> dict:
    return {
        "full_name": "",
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "0",
        "memberships-0-user": user.pk,
        "memberships-0-organization": organization.pk,
        "memberships-0-role": role,
    }


def test_staff_cannot_make_themselves_a_tenants_owner_from_their_own_page(client, membership_staff, hostile_tenant):
    # An owner's membership opens the tenant's dashboard (events, bodies, secrets' rotation) to an
    # account whose admin permissions show none of it.
    organization = hostile_tenant["organization"]
    response = client.post(
        reverse("admin:accounts_user_change", args=[membership_staff.pk]),
        own_page_adding_a_membership(membership_staff, organization),
    )
    assert response.status_code == 200 and "superuser" in response.content.decode()
    assert not Membership.objects.filter(user=membership_staff).exists()


def test_staff_cannot_add_themselves_or_another_staff_account_from_an_organizations_page(
    client, membership_staff, hostile_tenant
):
    organization = hostile_tenant["organization"]
    colleague = get_user_model().objects.create_user(email="colleague@hookline.example", is_staff=True)
    owner = Membership.objects.get(organization=organization)
    for user in (membership_staff, colleague):
        response = client.post(
            reverse("admin:organizations_organization_change", args=[organization.pk]),
            {
                "name": "Org renamed",
                "slug": organization.slug,
                "is_active": "on",
                "plan": organization.plan,
                "monthly_event_quota": organization.monthly_event_quota,
                "retention_days": organization.retention_days,
                "memberships-TOTAL_FORMS": "2",
                "memberships-INITIAL_FORMS": "1",
                "memberships-0-id": owner.pk,
                "memberships-0-organization": organization.pk,
                "memberships-0-user": owner.user_id,
                "memberships-0-role": owner.role,
                "memberships-1-organization": organization.pk,
                "memberships-1-user": user.pk,
                "memberships-1-role": "owner",
            },
        )
        assert response.status_code == 200, user.email
        assert not Membership.objects.filter(user=user).exists(), user.email


def test_staff_still_change_a_tenant_accounts_memberships_and_a_superuser_a_staff_accounts(
    client,
    membership_staff,
    hostile_tenant,
    superuser,  # noqa: F811
):
    organization = hostile_tenant["organization"]
    tenant = get_user_model().objects.create_user(email="someone@tenant.example")
    data = own_page_adding_a_membership(tenant, organization, role="member")
    data["email"] = tenant.email
    response = client.post(reverse("admin:accounts_user_change", args=[tenant.pk]), data)
    assert response.status_code == 302
    assert Membership.objects.get(user=tenant).role == "member"

    client.force_login(superuser)
    data = own_page_adding_a_membership(membership_staff, organization, role="admin")
    data["email"] = membership_staff.email
    response = client.post(reverse("admin:accounts_user_change", args=[membership_staff.pk]), data)
    assert response.status_code == 302
    assert Membership.objects.get(user=membership_staff).role == "admin"


def test_markup_in_a_lists_search_and_filter_parameters_is_shown_as_text(admin, hostile_tenant):  # noqa: F811
    # A link sent to a platform admin ("look at these events") carries its own parameters.
    for name, params in (
        ("admin:webhooks_webhookevent_changelist", {"q": MARKUP, "received_at_from": MARKUP}),
        ("admin:webhooks_webhookevent_changelist", {"received_at_to": "2026-01-01T" + MARKUP}),
        ("admin:webhooks_delivery_changelist", {"completed_at_from": MARKUP, "q": MARKUP}),
        ("admin:organizations_auditlog_changelist", {"created_at_from": MARKUP, "q": MARKUP}),
        ("admin:organizations_auditlog_changelist", {"action": MARKUP}),
        ("admin:webhooks_destination_changelist", {"organization": MARKUP, "q": MARKUP}),
    ):
        response = admin.get(reverse(name), params)
        if response.status_code == 302:  # Django's answer to a parameter it does not know: ?e=1
            continue
        assert_shown_as_text(response, f"{name} {params}")


# --- Credentials in a source's options ---------------------------------------------------------------


def test_a_source_options_url_password_saved_before_it_was_dropped_is_shown_nowhere_in_the_admin(
    admin,  # noqa: F811
    hostile_tenant,
):
    # Twilio's public URL is cleaned of user:password@ since; a source saved before still holds one.
    # The dashboard and the API leave it out (options_for_viewer); the admin showed it to any staff.
    source = make_source(hostile_tenant["organization"], provider="twilio", secret="twilio-auth-token-0123456789")
    legacy = {"public_url": "https://twilio-user:legacy-pass-4242@hooks.example/in/abc"}
    Source.objects.filter(pk=source.pk).update(options=legacy)
    viewer = get_user_model().objects.create_user(email="viewer@hookline.example", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_source"))
    as_viewer = Client()
    as_viewer.force_login(viewer)
    page = reverse("admin:webhooks_source_change", args=[source.pk])
    for browser in (admin, as_viewer):
        html = browser.get(page).content.decode()
        assert "hooks.example/in/abc" in html  # the URL is shown ...
        assert "legacy-pass-4242" not in html  # ... without its password

    # Saving the page as shown works, and loses only what Twilio never used (clean_options drops it too).
    form = admin.get(page).context["adminform"].form
    data = {"name": "Twilio renamed", "options": form["options"].value(), "is_active": "on"}
    data.update(allowed_networks="", new_secret="")
    assert admin.post(page, data).status_code == 302
    source.refresh_from_db()
    assert source.name == "Twilio renamed"
    assert source.options == {"public_url": "https://hooks.example/in/abc"}


def test_an_action_posted_from_another_site_without_the_csrf_token_changes_nothing(superuser, hostile_tenant):  # noqa: F811
    # A tenant's page (or a link in its webhook) making the admin's browser post an action.
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(superuser)
    destination = hostile_tenant["destination"]
    for url, action in (
        (reverse("admin:webhooks_destination_changelist"), "resume"),
        (reverse("admin:webhooks_destination_changelist"), "rotate_secret"),
    ):
        response = browser.post(url, {"action": action, "_selected_action": [destination.pk], "confirm": "yes"})
        assert response.status_code == 403, action
    destination.refresh_from_db()
    assert destination.paused_at is not None
    # The chain's verdict is the one custom view reached by GET: it changes nothing.
    count = AuditLog.objects.count()
    assert browser.get(reverse("admin:organizations_auditlog_verify")).status_code == 302
    assert AuditLog.objects.count() == count
