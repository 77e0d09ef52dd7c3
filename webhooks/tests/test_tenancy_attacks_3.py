"""A third round of attacks on tenancy and roles: a member and an admin of organization A, an owner of
B, a staff account with few permissions. Each test here is an attack that worked before its fix,
or a cheap guard beside one."""

from __future__ import annotations

import threading

import pytest
from django.contrib import admin as django_admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.db import connection, models, transaction
from django.test import RequestFactory
from django.urls import reverse

from accounts.models import Invitation
from organizations import team
from organizations.models import Membership
from organizations.services import organization_set_active
from webhooks.fields import EncryptedTextField
from webhooks.services.organization_deletion import organization_request_deletion
from webhooks.tests.api_helpers import make_event
from webhooks.tests.factories import make_source
from webhooks.tests.processes import PATIENCE_SECONDS, wait_until

pytestmark = pytest.mark.django_db

SIGNATURE = "t=1733500000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"


@pytest.fixture
def view_only_staff(client):
    """Staff who may view everything and change nothing: signatures are masked for them."""
    user = get_user_model().objects.create_user(email="viewer@hookline.example", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(user)
    return user


def test_view_only_staff_cannot_read_a_masked_signature_through_the_lists_query_string(
    client, organization, view_only_staff
):
    source = make_source(organization)
    event = make_event(source, headers={"stripe-signature": SIGNATURE, "content-type": "application/json"})
    page = client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk]))
    assert page.status_code == 200 and SIGNATURE not in page.content.decode()  # masked on the page

    # Counting the events whose signature starts with a guess told it one character at a time.
    changelist = reverse("admin:webhooks_webhookevent_changelist")
    right = client.get(changelist, {"headers__stripe-signature__startswith": SIGNATURE[:20]})
    wrong = client.get(changelist, {"headers__stripe-signature__startswith": SIGNATURE[:19] + "x"})
    assert right.status_code == wrong.status_code == 400
    assert str(event.pk) not in right.content.decode()


# Fields whose value a page may show masked, or not at all: a lookup inside them is a way to read them.
HIDDEN_VALUE_FIELDS = (models.JSONField, EncryptedTextField)


def test_no_admin_list_filters_inside_a_document_or_an_encrypted_column(view_only_staff):
    request = RequestFactory().get("/admin/")
    request.user = view_only_staff
    checked = []
    for model, model_admin in django_admin.site._registry.items():
        if model._meta.app_label not in ("organizations", "webhooks", "accounts"):
            continue
        for field in model._meta.get_fields():
            if isinstance(field, HIDDEN_VALUE_FIELDS):
                for lookup in (f"{field.name}__x__startswith", f"{field.name}__contains", f"{field.name}__startswith"):
                    assert not model_admin.lookup_allowed(lookup, "a", request), (model.__name__, lookup)
                checked.append(f"{model.__name__}.{field.name}")
    assert (
        "WebhookEvent.headers" in checked
        and "Source.options" in checked
        and "DeliveryAttempt.request_headers" in checked
    )


# --- The last owner, from the admin ------------------------------------------------------------------


@pytest.fixture
def support_staff(client):
    """Staff allowed to change tenants' accounts and memberships (support work), not a superuser."""
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


def organization_page_with_roles(organization, roles: dict) -> dict:
    """The organization's admin form as loaded, with its members' roles set to ``roles`` (membership:
    role, or None to delete it)."""
    rows = list(Membership.objects.filter(organization=organization).order_by("pk"))
    posted = {
        "name": organization.name,
        "slug": organization.slug,
        "is_active": "on",
        "plan": organization.plan,
        "monthly_event_quota": organization.monthly_event_quota,
        "retention_days": organization.retention_days,
        "memberships-TOTAL_FORMS": str(len(rows)),
        "memberships-INITIAL_FORMS": str(len(rows)),
    }
    for index, row in enumerate(rows):
        role = roles.get(row.pk, row.role)
        posted |= {
            f"memberships-{index}-id": row.pk,
            f"memberships-{index}-organization": organization.pk,
            f"memberships-{index}-user": row.user_id,
            f"memberships-{index}-role": role or row.role,
        }
        if row.pk in roles and role is None:
            posted[f"memberships-{index}-DELETE"] = "on"
    return posted


def test_staff_cannot_leave_an_organization_without_an_owner(client, organization, member, support_staff):
    # The team's own rule (organizations.team): an organization always keeps an owner, who alone
    # manages roles and members. The admin's membership rows went around it.
    owner = Membership.objects.get(organization=organization, role=Membership.Role.OWNER)
    page = reverse("admin:organizations_organization_change", args=[organization.pk])
    for roles in ({owner.pk: Membership.Role.MEMBER}, {owner.pk: None}):
        response = client.post(page, organization_page_with_roles(organization, roles))
        assert response.status_code == 200, roles
        assert "owner" in str([fs.formset.non_form_errors() for fs in response.context["inline_admin_formsets"]])
    user_page = reverse("admin:accounts_user_change", args=[owner.user_id])
    response = client.post(
        user_page,
        {
            "full_name": "",
            "is_active": "on",
            "date_joined_0": owner.user.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": owner.user.date_joined.strftime("%H:%M:%S"),
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "1",
            "memberships-0-id": owner.pk,
            "memberships-0-user": owner.user_id,
            "memberships-0-organization": organization.pk,
            "memberships-0-role": Membership.Role.OWNER,
            "memberships-0-DELETE": "on",
        },
    )
    assert response.status_code == 200
    assert Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).get() == owner

    # Making someone else owner in the same save hands the organization over, as on the Team page.
    member_row = Membership.objects.get(user=member)
    handed_over = organization_page_with_roles(
        organization, {owner.pk: Membership.Role.ADMIN, member_row.pk: Membership.Role.OWNER}
    )
    assert client.post(page, handed_over).status_code == 302
    assert Membership.objects.get(organization=organization, role=Membership.Role.OWNER) == member_row


def test_staff_cannot_delete_the_account_of_an_organizations_only_owner(client, organization, owner, member):
    # Deleting the account takes its memberships along: the same organization without an owner.
    staff = get_user_model().objects.create_user(email="support@hookline.example", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=["view_user", "delete_user"]))
    client.force_login(staff)
    page = reverse("admin:accounts_user_delete", args=[owner.pk])
    response = client.get(page)
    assert response.status_code == 200 and "Acme" in str(response.context["protected"])
    assert client.post(page, {"post": "yes"}).status_code == 200
    changelist = reverse("admin:accounts_user_changelist")
    selected = {"action": "delete_selected", "_selected_action": [owner.pk, member.pk], "post": "yes"}
    assert client.post(changelist, selected).status_code == 200
    assert get_user_model().objects.filter(pk=owner.pk).exists()
    # A member who owns nothing is deleted as before.
    assert client.post(reverse("admin:accounts_user_delete", args=[member.pk]), {"post": "yes"}).status_code == 302
    assert not get_user_model().objects.filter(pk=member.pk).exists()


def a_lock_is_awaited_or(done: threading.Event) -> bool:
    """Whether another connection waits for a row lock (or ``done`` says it went by without)."""
    if done.is_set():
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] > 0


def while_the_team_page_demotes(organization, actor, membership, staff_request):
    """Run ``staff_request`` while an owner's demotion of ``membership`` on the Team page is under way:
    read as an owner before it commits, committed once the request waits for a lock (or is done)."""
    demoting, done, failures = threading.Event(), threading.Event(), []

    def demote() -> None:
        try:
            with transaction.atomic():
                team.member_role_change(
                    organization=organization, actor=actor, membership=membership, role=Membership.Role.MEMBER
                )
                demoting.set()
                assert wait_until(lambda: a_lock_is_awaited_or(done), PATIENCE_SECONDS, interval=0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
            demoting.set()
        finally:
            connection.close()

    owners_click = threading.Thread(target=demote, daemon=True)
    owners_click.start()
    assert demoting.wait(PATIENCE_SECONDS)
    try:
        return staff_request()
    finally:
        done.set()
        owners_click.join(PATIENCE_SECONDS)
        assert not owners_click.is_alive() and not failures, failures


@pytest.mark.django_db(transaction=True)
def test_staff_demoting_one_owner_while_the_other_is_demoted_leaves_an_owner(client, organization, owner):
    # Two owners: one demotes the other on the Team page while support staff demote the first in the
    # admin. Each saw the other owner and went ahead, and the organization was left with none.
    support = get_user_model().objects.create_user(email="support@hookline.example", is_staff=True)
    support.user_permissions.set(
        Permission.objects.filter(codename__in=["view_organization", "change_organization", "change_membership"])
    )
    client.force_login(support)
    first = Membership.objects.get(user=owner)
    second = Membership.objects.create(
        user=get_user_model().objects.create_user(email="second@acme.example"),
        organization=organization,
        role=Membership.Role.OWNER,
    )
    page = reverse("admin:organizations_organization_change", args=[organization.pk])
    posted = organization_page_with_roles(organization, {first.pk: Membership.Role.MEMBER})
    while_the_team_page_demotes(organization, owner, second, lambda: client.post(page, posted))
    assert Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).exists()


@pytest.mark.django_db(transaction=True)
def test_staff_deleting_one_owners_account_while_the_other_is_demoted_leaves_an_owner(client, organization, owner):
    support = get_user_model().objects.create_user(email="support@hookline.example", is_staff=True)
    support.user_permissions.set(Permission.objects.filter(codename__in=["view_user", "delete_user"]))
    client.force_login(support)
    second = Membership.objects.create(
        user=get_user_model().objects.create_user(email="second@acme.example"),
        organization=organization,
        role=Membership.Role.OWNER,
    )
    page = reverse("admin:accounts_user_delete", args=[owner.pk])
    changelist = reverse("admin:accounts_user_changelist")
    selected = {"action": "delete_selected", "_selected_action": [owner.pk], "post": "yes"}
    for request in (lambda: client.post(page, {"post": "yes"}), lambda: client.post(changelist, selected)):
        while_the_team_page_demotes(organization, owner, second, request)
        assert Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).exists()
        Membership.objects.filter(pk=second.pk).update(role=Membership.Role.OWNER)


# --- Joining an organization an operator closed ----------------------------------------------------


@pytest.mark.parametrize("closed_by", ["suspension", "deletion"])
def test_an_open_invitation_joins_no_suspended_or_deleting_organization_from_the_home_page(
    client, organization, owner, outsider, closed_by
):
    # The invitation's link refuses an inactive organization (team.invitation_for_token); the home
    # page's Join button, the other way in, took it: a suspended tenant's invitee became a member
    # (and one of an organization being deleted, a row its deletion may already have passed).
    invitation = team.invitation_create(
        organization=organization, actor=owner, email=outsider.email, role=Membership.Role.ADMIN
    )
    if closed_by == "suspension":
        organization_set_active(organization=organization, active=False)
    else:
        organization_request_deletion(organization=organization)
    client.force_login(outsider)
    assert "Join Acme" not in client.get(reverse("home")).content.decode()
    response = client.post(reverse("invitation_join", args=[invitation.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert not Membership.objects.filter(user=outsider, organization=organization).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None
    if closed_by == "suspension":  # once it is active again, the invitation still works
        organization_set_active(organization=organization, active=True)
        client.post(reverse("invitation_join", args=[invitation.pk]))
        assert Membership.objects.get(user=outsider, organization=organization).role == Membership.Role.ADMIN


# --- An admin inviting while being demoted ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_admin_demoted_while_inviting_leaves_no_admin_invitation_behind(organization, owner):
    # Demoting an admin revokes the invitations they sent above their new role, so that they cannot
    # come back as admin through one sent to another address of theirs. An invitation made while the
    # demotion was being committed escaped that: its role was read before, its row written after.
    admin = get_user_model().objects.create_user(email="admin@acme.example")
    admin_membership = Membership.objects.create(user=admin, organization=organization, role=Membership.Role.ADMIN)
    demoted, invited, failures = threading.Event(), threading.Event(), []

    def an_invitation_waits_or_is_made() -> bool:
        if invited.is_set():
            return True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0] > 0

    def demote() -> None:
        try:
            with transaction.atomic():  # the owner's demotion, committed once the invitation is under way
                team.member_role_change(
                    organization=organization, actor=owner, membership=admin_membership, role=Membership.Role.MEMBER
                )
                demoted.set()
                assert wait_until(an_invitation_waits_or_is_made, PATIENCE_SECONDS, interval=0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
            demoted.set()
        finally:
            connection.close()

    owners_click = threading.Thread(target=demote, daemon=True)
    owners_click.start()
    assert demoted.wait(PATIENCE_SECONDS)
    try:
        team.invitation_create(
            organization=organization, actor=admin, email="admin.other@elsewhere.example", role=Membership.Role.ADMIN
        )
    except PermissionDenied:
        pass  # read after the demotion: refused
    finally:
        invited.set()
    owners_click.join(PATIENCE_SECONDS)
    assert not owners_click.is_alive() and not failures, failures
    assert Membership.objects.get(pk=admin_membership.pk).role == Membership.Role.MEMBER
    assert not Invitation.objects.open().filter(invited_by=admin, role=Membership.Role.ADMIN).exists()
