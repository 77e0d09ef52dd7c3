"""Joining an organization while an operator suspends it or asks for its deletion: the join's check
that the organization is active and the membership it makes are one with respect to the
suspension. Either the join comes first (a member before the suspension, held as any other) or it
is refused and the invitation stays open; never a new member of an organization suspended meanwhile."""

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.test import Client

from accounts.models import Invitation
from organizations import services, team
from organizations.models import Membership, Organization
from webhooks import tasks
from webhooks.services import organization_deletion
from webhooks.tests.lock_waits import waits_for_a_lock
from webhooks.tests.test_destination_delete_races import Paused

pytestmark = pytest.mark.django_db(transaction=True)

INVITEE = "invitee@example.com"


@pytest.fixture(autouse=True)
def no_deletion_run(monkeypatch):
    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: None)


@pytest.fixture
def invitation(organization, owner):
    return team.invitation_create(organization=organization, actor=owner, email=INVITEE, role=Membership.Role.ADMIN)


@pytest.fixture
def invitee(invitation):
    return get_user_model().objects.create_user(INVITEE)


def close(organization, closed_by: str) -> None:
    if closed_by == "suspension":
        services.organization_set_active(organization=organization, active=False)
    else:
        organization_deletion.organization_request_deletion(organization=organization)


def closing_under_way(organization, closed_by: str, monkeypatch) -> Paused:
    """The suspension or deletion request, started and held with the organization's row marked
    inactive and locked, before its audit entry and commit."""
    closing = Paused(lambda: close(organization, closed_by))
    module = services if closed_by == "suspension" else organization_deletion
    real_audit = module.audit_record

    def marked_then_pause(**kwargs):
        closing.pause()
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", marked_then_pause)
    closing.thread.start()
    assert closing.reached.wait(10)
    return closing


def finish(first: Paused, second: Paused) -> None:
    first.released.set()
    first.thread.join(10)
    second.thread.join(10)
    assert not first.thread.is_alive() and not second.thread.is_alive()


@pytest.mark.parametrize("closed_by", ["suspension", "deletion"])
def test_a_join_while_the_organization_is_closed_waits_for_it_and_is_refused(
    organization, invitation, invitee, closed_by, monkeypatch
):
    closing = closing_under_way(organization, closed_by, monkeypatch)
    join = Paused(lambda: team.invitation_join(user=invitee, invitation_id=invitation.pk))
    join.thread.start()
    waited = waits_for_a_lock(join.thread)
    finish(closing, join)
    assert closing.errors == []
    assert [type(error) for error in join.errors] == [team.InvitationUnavailable]
    assert waited
    assert not Membership.objects.filter(user=invitee, organization=organization).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None  # still open: it works once the organization is active again


@pytest.mark.parametrize("closed_by", ["suspension", "deletion"])
def test_a_suspension_or_deletion_asked_for_during_a_join_waits_for_it(
    organization, invitation, invitee, closed_by, monkeypatch
):
    join = Paused(lambda: team.invitation_join(user=invitee, invitation_id=invitation.pk))
    real_audit = team.audit_record

    def joined_then_pause(**kwargs):
        join.pause()  # the organization checked, the membership made, nothing committed yet
        return real_audit(**kwargs)

    monkeypatch.setattr(team, "audit_record", joined_then_pause)
    join.thread.start()
    assert join.reached.wait(10)
    closing = Paused(lambda: close(organization, closed_by))
    closing.thread.start()
    waited = waits_for_a_lock(closing.thread)
    finish(join, closing)
    assert join.errors == closing.errors == []
    # Not waited for, the organization was closed before the member it never saw joined.
    assert waited, "the suspension did not wait for the join under way"
    assert Membership.objects.get(user=invitee, organization=organization).role == Membership.Role.ADMIN
    assert not Organization.objects.get(pk=organization.pk).is_active


def test_the_invitation_link_used_during_a_suspension_makes_no_account_and_answers_404(
    organization, invitation, monkeypatch
):
    path = urlsplit(re.search(r"https?://\S+/team/join/\S+/", mail.outbox[0].body).group(0)).path
    closing = closing_under_way(organization, "suspension", monkeypatch)
    answers = []
    accept = Paused(lambda: answers.append(Client().post(path)))
    accept.thread.start()
    waited = waits_for_a_lock(accept.thread)
    finish(closing, accept)
    assert closing.errors == accept.errors == []
    assert waited
    assert answers[0].status_code == 404
    assert not get_user_model().objects.filter(email=INVITEE).exists()
    assert not Membership.objects.filter(organization=organization, user__email=INVITEE).exists()
    assert Invitation.objects.get(pk=invitation.pk).accepted_at is None


# --- Inviting while the organization is closed -------------------------------------------------


def invite(organization, owner):
    return team.invitation_create(organization=organization, actor=owner, email=INVITEE, role=Membership.Role.MEMBER)


@pytest.mark.parametrize("closed_by", ["suspension", "deletion"])
def test_an_invitation_while_the_organization_is_closed_waits_for_it_and_is_refused(
    organization, owner, closed_by, monkeypatch
):
    closing = closing_under_way(organization, closed_by, monkeypatch)
    inviting = Paused(lambda: invite(organization, owner))
    inviting.thread.start()
    waited = waits_for_a_lock(inviting.thread)
    finish(closing, inviting)
    assert closing.errors == []
    assert [type(error) for error in inviting.errors] == [team.TeamRuleError]
    assert "suspended or being deleted" in str(inviting.errors[0])
    assert waited
    assert not Invitation.objects.exists()
    assert mail.outbox == []


def test_a_suspension_during_an_invitation_waits_for_it(organization, owner, monkeypatch):
    inviting = Paused(lambda: invite(organization, owner))
    real_audit = team.audit_record

    def written_then_pause(**kwargs):
        inviting.pause()  # the organization checked, the invitation written, nothing committed yet
        return real_audit(**kwargs)

    monkeypatch.setattr(team, "audit_record", written_then_pause)
    inviting.thread.start()
    assert inviting.reached.wait(10)
    closing = Paused(lambda: close(organization, "suspension"))
    closing.thread.start()
    waited = waits_for_a_lock(closing.thread)
    finish(inviting, closing)
    assert inviting.errors == closing.errors == []
    assert waited, "the suspension did not wait for the invitation under way"
    assert Invitation.objects.count() == 1


# --- Joining while the inviter is removed or demoted -------------------------------------------


@pytest.fixture
def admin_and_invitation(organization, owner):
    """An admin, an invitation to INVITEE sent by that admin, and INVITEE's account."""
    admin = get_user_model().objects.create_user("admin@acme.example")
    Membership.objects.create(user=admin, organization=organization, role=Membership.Role.ADMIN)
    sent = team.invitation_create(organization=organization, actor=admin, email=INVITEE, role=Membership.Role.MEMBER)
    return admin, sent, get_user_model().objects.create_user(INVITEE)


def remove_or_demote(organization, owner, admin, change: str) -> None:
    membership = Membership.objects.get(user=admin, organization=organization)
    if change == "removal":
        team.member_remove(organization=organization, actor=owner, membership=membership)
    else:
        team.member_role_change(
            organization=organization, actor=owner, membership=membership, role=Membership.Role.MEMBER
        )


@pytest.mark.parametrize("change", ["removal", "demotion"])
def test_the_inviters_removal_during_a_join_of_their_invitation_waits_for_it_without_a_deadlock(
    organization, owner, admin_and_invitation, change, monkeypatch
):
    """The join holds the invitation's row when it writes its audit entry; the removal (or demotion)
    must not hold the audit chain's lock while it waits for that row to revoke the inviter's
    invitations: each would wait for the other, and PostgreSQL would fail one of them."""
    admin, sent, invitee = admin_and_invitation
    join = Paused(lambda: team.invitation_join(user=invitee, invitation_id=sent.pk))
    real_audit = team.audit_record

    def claimed_then_pause(**kwargs):
        join.pause()  # the invitation claimed (its row locked), its audit entry not written yet
        return real_audit(**kwargs)

    monkeypatch.setattr(team, "audit_record", claimed_then_pause)
    join.thread.start()
    assert join.reached.wait(10)
    changing = Paused(lambda: remove_or_demote(organization, owner, admin, change))
    changing.thread.start()
    waited = waits_for_a_lock(changing.thread)
    finish(join, changing)
    assert join.errors == changing.errors == []
    assert waited, "the removal did not wait for the join under way"
    # The join came first: its member stays, and the accepted invitation is not revoked after it.
    assert Membership.objects.get(user=invitee, organization=organization).role == Membership.Role.MEMBER
    sent.refresh_from_db()
    assert sent.accepted_at is not None and sent.revoked_at is None


def deactivate(user) -> None:
    """As the admin's change page does: the account saved inactive, in the page's transaction."""
    with transaction.atomic():
        user.is_active = False
        user.save()


def test_an_invitation_sent_while_its_inviters_account_is_deactivated_waits_for_it_and_is_refused(
    organization, owner, admin_and_invitation, monkeypatch
):
    """The deactivation revokes the invitations the account sent; one it was sending at that moment
    (its session still good when the request came) waited for the deactivation's lock of its
    membership, then was written, open, after the revocations: the way back in they close."""
    admin = admin_and_invitation[0]
    deactivating = Paused(lambda: deactivate(admin))
    real_revoke = team.invitations_revoke_sent_by_accounts

    def locked_then_pause(*args, **kwargs):
        deactivating.pause()  # the account saved inactive, its memberships and invitations locked
        return real_revoke(*args, **kwargs)

    monkeypatch.setattr(team, "invitations_revoke_sent_by_accounts", locked_then_pause)
    deactivating.thread.start()
    assert deactivating.reached.wait(10)
    inviting = Paused(
        lambda: team.invitation_create(
            organization=organization, actor=admin, email="second-self@example.com", role=Membership.Role.ADMIN
        )
    )
    inviting.thread.start()
    waited = waits_for_a_lock(inviting.thread)
    finish(deactivating, inviting)
    assert deactivating.errors == []
    assert waited, "the invitation did not wait for the deactivation under way"
    assert [type(error) for error in inviting.errors] == [PermissionDenied]
    assert not Invitation.objects.open().filter(invited_by=admin).exists()
    assert not [message for message in mail.outbox if "second-self@example.com" in message.to]
