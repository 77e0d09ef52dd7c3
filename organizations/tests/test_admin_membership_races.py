"""An admin page that saves a change audited by a service (a suspension, a new sign-in address) with
memberships edited inline, while an owner changes the same member on the Team page.

The Team page locks the memberships and then takes the audit chain's lock for its entry; the admin
page must take them in that order too. It wrote the service's entry (and held the audit lock) before
saving its inline rows, so each waited for the other and PostgreSQL failed one as a deadlock."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from accounts.models import Invitation
from organizations import admin as organizations_admin
from organizations import services, team
from organizations.models import AuditLog, Membership, Organization
from organizations.services import _AUDIT_CHAIN_LOCK, audit_verify_chain
from organizations.tests.admin_forms import organization_change_form
from webhooks.tests.lock_waits import waits_for_a_lock
from webhooks.tests.test_admin import user_form
from webhooks.tests.test_destination_delete_races import Paused

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")


def organization_form(organization, *, active: bool, roles: dict[int, str]) -> dict:
    """The organization's change page as a browser posts it, each membership with its role in ``roles``."""
    return organization_change_form(organization, active=active, roles=roles)


def saved_in_the_admin(superuser, url: str, form: dict):
    def save():
        client = Client()
        client.force_login(superuser)
        response = client.post(url, form)
        assert response.status_code == 302, response.content.decode()[:2000]

    return save


@pytest.mark.parametrize("page", ["organization suspended", "user's address changed"])
def test_an_admin_save_with_a_membership_inline_and_a_team_change_of_it_do_not_deadlock(
    superuser, organization, owner, member, page, monkeypatch
):
    membership = Membership.objects.get(user=member, organization=organization)
    if page == "organization suspended":
        url = reverse("admin:organizations_organization_change", args=[organization.pk])
        form = organization_form(organization, active=False, roles={membership.pk: Membership.Role.ADMIN})
        audited_by = services  # organization_set_active's entry
    else:
        url = reverse("admin:accounts_user_change", args=[member.pk])
        form = user_form(member, email="member@new.example", **{"memberships-0-role": Membership.Role.ADMIN})
        audited_by = organizations_admin  # the address change's entry in each of the user's organizations
    saving = Paused(saved_in_the_admin(superuser, url, form))
    real_audit = audited_by.audit_record

    def audited_then_pause(**kwargs):
        entry = real_audit(**kwargs)
        saving.pause()  # the audit chain's lock held until the admin's save commits
        return entry

    monkeypatch.setattr(audited_by, "audit_record", audited_then_pause)
    saving.thread.start()
    assert saving.reached.wait(10)
    changing = Paused(
        lambda: team.member_role_change(
            organization=organization, actor=owner, membership=membership, role=Membership.Role.OWNER
        )
    )
    changing.thread.start()
    waited = waits_for_a_lock(changing.thread)
    saving.released.set()
    saving.thread.join(10)
    changing.thread.join(10)
    assert not saving.thread.is_alive() and not changing.thread.is_alive()
    assert saving.errors == changing.errors == []
    assert waited, "the Team page's change did not wait for the admin's save"
    # The admin's save came first, the owner's change after it.
    assert Membership.objects.get(pk=membership.pk).role == Membership.Role.OWNER
    assert AuditLog.objects.filter(action="member.role_changed", changes__role=["admin", "owner"]).exists()
    assert audit_verify_chain().ok


def test_a_superusers_inline_changes_and_a_team_change_lock_the_memberships_in_one_order(
    superuser, organization, owner, member, monkeypatch
):
    """The Team page locks the owners' memberships (in id order) and then the member it changes; the
    admin's save wrote its changed rows in id order, a member's before a later owner's. Each then held
    a row the other waited for: the owners are locked first on the admin page too, whoever saves."""
    second_owner = get_user_model().objects.create_user("second-owner@acme.example")
    Membership.objects.create(user=second_owner, organization=organization, role=Membership.Role.OWNER)
    membership = Membership.objects.get(user=member, organization=organization)
    second = Membership.objects.get(user=second_owner)
    assert membership.pk < second.pk  # the admin's form saves the member's row first
    changing = Paused(
        lambda: team.member_role_change(
            organization=organization, actor=owner, membership=membership, role=Membership.Role.OWNER
        )
    )
    real_lock_owners = team._lock_owners

    def owners_locked_then_pause(organization):
        owners = real_lock_owners(organization)
        changing.pause()  # the owners' rows held, the member's not yet
        return owners

    monkeypatch.setattr(team, "_lock_owners", owners_locked_then_pause)
    changing.thread.start()
    assert changing.reached.wait(10)
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    roles = {membership.pk: Membership.Role.ADMIN, second.pk: Membership.Role.ADMIN}
    saving = Paused(saved_in_the_admin(superuser, url, organization_form(organization, active=True, roles=roles)))
    saving.thread.start()
    waited = waits_for_a_lock(saving.thread)
    changing.released.set()
    changing.thread.join(10)
    saving.thread.join(10)
    assert not saving.thread.is_alive() and not changing.thread.is_alive()
    assert saving.errors == changing.errors == []
    assert waited, "the admin's save did not wait for the Team page's change"
    # The Team page's change came first, the admin's save after it.
    assert dict(Membership.objects.values_list("pk", "role")) == {
        Membership.objects.get(user=owner).pk: Membership.Role.OWNER,
        membership.pk: Membership.Role.ADMIN,
        second.pk: Membership.Role.ADMIN,
    }


@pytest.mark.parametrize("change", ["removal", "demotion"])
def test_an_inviters_removal_in_the_admin_during_a_join_of_their_invitation_waits_for_it_without_a_deadlock(
    superuser, organization, owner, change, monkeypatch
):
    """As on the Team page (test_join_races): the join holds its invitation's row when it writes its
    audit entry, so the admin's save locks the invitations it revokes before its first audit entry,
    and waits for the join rather than hold the audit chain's lock while it waits for that row."""
    inviter = get_user_model().objects.create_user("admin@acme.example")
    Membership.objects.create(user=inviter, organization=organization, role=Membership.Role.ADMIN)
    sent = team.invitation_create(
        organization=organization, actor=inviter, email="invitee@example.com", role=Membership.Role.MEMBER
    )
    invitee = get_user_model().objects.create_user("invitee@example.com")
    join = Paused(lambda: team.invitation_join(user=invitee, invitation_id=sent.pk))
    real_audit = team.audit_record

    def claimed_then_pause(**kwargs):
        if kwargs["action"] == "invitation.accepted":
            join.pause()  # the invitation claimed (its row locked), its audit entry not written yet
        return real_audit(**kwargs)

    monkeypatch.setattr(team, "audit_record", claimed_then_pause)
    join.thread.start()
    assert join.reached.wait(10)
    # The user's page: the organization's page locks the organization's row first, which the join
    # holds too, and waits there before anything else.
    url = reverse("admin:accounts_user_change", args=[inviter.pk])
    if change == "removal":
        form = user_form(inviter, **{"memberships-0-DELETE": "on"})
    else:
        form = user_form(inviter, **{"memberships-0-role": Membership.Role.MEMBER})
    saving = Paused(saved_in_the_admin(superuser, url, form))
    saving.thread.start()
    waited = waits_for_a_lock(saving.thread)
    join.released.set()
    join.thread.join(10)
    saving.thread.join(10)
    assert not saving.thread.is_alive() and not join.thread.is_alive()
    assert join.errors == saving.errors == []
    assert waited, "the admin's save did not wait for the join under way"
    # The join came first: its member stays, and the accepted invitation is not revoked after it.
    assert Membership.objects.get(user=invitee, organization=organization).role == Membership.Role.MEMBER
    sent = Invitation.objects.get(pk=sent.pk)
    assert sent.accepted_at is not None and sent.revoked_at is None
    assert not AuditLog.objects.filter(action="invitation.revoked").exists()
    assert audit_verify_chain().ok


@pytest.mark.parametrize("change", ["memberships changed", "account deleted"])
def test_an_admin_change_audited_in_several_organizations_takes_their_rows_before_the_audit_chain(
    superuser, organization, other_organization, change
):
    """A user's page writes an entry in each organization whose membership it changes (and whose
    invitations it revokes). Each organization's row was taken at its entry, after the audit chain's
    lock: while an organization's deletion held its row (and would take that lock next), the save held
    the lock and waited for the row, a deadlock. The rows are taken first, before the lock."""
    inviter = get_user_model().objects.create_user("admin@acme.example")
    for tenant in (organization, other_organization):
        Membership.objects.create(user=inviter, organization=tenant, role=Membership.Role.ADMIN)
        team.invitation_create(
            organization=tenant, actor=inviter, email="invitee@example.com", role=Membership.Role.ADMIN
        )
    last = max(organization, other_organization, key=lambda tenant: tenant.pk)

    def deletion_holding_the_row():
        with transaction.atomic():
            Organization.objects.select_for_update().get(pk=last.pk)
            holding.pause()

    holding = Paused(deletion_holding_the_row)
    holding.thread.start()
    assert holding.reached.wait(10)
    if change == "memberships changed":
        url = reverse("admin:accounts_user_change", args=[inviter.pk])
        form = user_form(inviter, **{f"memberships-{index}-role": Membership.Role.MEMBER for index in (0, 1)})
    else:
        url, form = reverse("admin:accounts_user_delete", args=[inviter.pk]), {"post": "yes"}
    saving = Paused(saved_in_the_admin(superuser, url, form))
    saving.thread.start()
    waited = waits_for_a_lock(saving.thread)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_AUDIT_CHAIN_LOCK])
        audit_chain_free = cursor.fetchone()[0]
        if audit_chain_free:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_AUDIT_CHAIN_LOCK])
    holding.released.set()
    holding.thread.join(10)
    saving.thread.join(10)
    assert not saving.thread.is_alive() and not holding.thread.is_alive()
    assert holding.errors == saving.errors == []
    assert waited, "the admin's save did not wait for the organization's row"
    assert audit_chain_free, "the admin's save held the audit chain's lock while it waited for the row"
    assert not Invitation.objects.open().exists()
    assert audit_verify_chain().ok
