"""The Team page: invitations, roles, removal, the last-owner rule and tenancy, through views and services."""

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation
from accounts.tests.test_admin_accounts import post_change_page
from conftest import UserFactory
from organizations import team
from organizations.models import AuditLog, Membership
from organizations.tests.admin_forms import organization_change_form

pytestmark = pytest.mark.django_db

TEAM = "/o/acme/team/"


@pytest.fixture
def admin(organization):
    user = UserFactory(email="admin@acme.example")
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.ADMIN)
    return user


def browser_for(user) -> Client:
    browser = Client(REMOTE_ADDR="198.51.100.4")
    browser.force_login(user)
    return browser


def invitation_path(message) -> str:
    return urlsplit(re.search(r"https?://\S+/team/join/\S+/", message.body).group(0)).path


def membership_of(user, organization):
    return Membership.objects.get(user=user, organization=organization)


def invite(browser, email, role="member"):
    return browser.post(reverse("team:invite", args=["acme"]), {"email": email, "role": role})


# --- Inviting and accepting -------------------------------------------------------------------


def test_owner_invites_and_a_new_person_joins_through_the_link(organization, owner, django_user_model):
    response = invite(browser_for(owner), "New@Acme.example", "admin")
    assert response.status_code == 302 and response["Location"] == TEAM
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.invited_by) == ("new@acme.example", "admin", owner)
    assert mail.outbox[0].to == ["new@acme.example"] and "Acme" in mail.outbox[0].subject
    token = invitation_path(mail.outbox[0]).rstrip("/").rsplit("/", 1)[1]
    assert token not in invitation.token_digest and len(invitation.token_digest) == 64

    invitee = Client(REMOTE_ADDR="203.0.113.9")
    page = invitee.get(invitation_path(mail.outbox[0]))
    assert page.status_code == 200 and "Join Acme" in page.content.decode()
    assert not django_user_model.objects.filter(email="new@acme.example").exists()  # a GET changes nothing

    response = invitee.post(invitation_path(mail.outbox[0]))

    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview", args=["acme"])
    user = django_user_model.objects.get(email="new@acme.example")
    assert membership_of(user, organization).role == Membership.Role.ADMIN
    assert not user.has_usable_password()
    assert invitee.get(TEAM).status_code == 200
    actions = set(AuditLog.objects.filter(organization=organization).values_list("action", flat=True))
    assert {"invitation.created", "invitation.accepted", "member.added", "user.signed_in"} <= actions
    accepted = AuditLog.objects.get(action="invitation.accepted")
    assert (accepted.actor_user, accepted.ip_address) == (user, "203.0.113.9")


def test_an_existing_user_of_another_organization_accepts(organization, owner, outsider, other_organization):
    invitee = browser_for(outsider)  # signed in already, in their own organization
    invite(browser_for(owner), outsider.email)
    assert invitee.post(invitation_path(mail.outbox[0])).status_code == 302
    assert membership_of(outsider, organization).role == Membership.Role.MEMBER
    assert membership_of(outsider, other_organization).role == Membership.Role.OWNER
    assert invitee.get(TEAM).status_code == 200


def test_an_invitation_link_does_not_sign_in_an_account_that_already_existed(
    organization, owner, outsider, other_organization
):
    """The link is a week long and may be forwarded: it joins the address's account to Acme, but
    opening that account (and Globex, which it owns) takes the usual minutes-long link or code."""
    invite(browser_for(owner), outsider.email, "admin")
    holder = Client(REMOTE_ADDR="203.0.113.9")  # not signed in: whoever has the email

    response = holder.post(invitation_path(mail.outbox[0]))

    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("accounts:sign_in") and "next=%2Fo%2Facme%2F" in location.query
    assert membership_of(outsider, organization).role == Membership.Role.ADMIN
    assert "_auth_user_id" not in holder.session
    for path in (TEAM, "/o/globex/", "/o/globex/team/"):
        assert urlsplit(holder.get(path)["Location"]).path == reverse("accounts:sign_in"), path
    page = holder.get(response["Location"])
    assert f"Sign in as {outsider.email} to open it" in page.content.decode()


def test_an_invitation_accepted_while_signed_in_as_someone_else_keeps_them_themselves(
    organization, owner, outsider, member
):
    invite(browser_for(owner), outsider.email)
    someone_else = browser_for(member)
    page = someone_else.get(invitation_path(mail.outbox[0]))
    assert f"This invitation is for {outsider.email}" in page.content.decode()

    response = someone_else.post(invitation_path(mail.outbox[0]))

    assert urlsplit(response["Location"]).path == reverse("accounts:sign_in")
    assert membership_of(outsider, organization).role == Membership.Role.MEMBER
    assert someone_else.session["_auth_user_id"] == str(member.pk)
    assert someone_else.get("/o/globex/").status_code == 404  # still the member of Acme only


def test_an_invitation_for_a_new_address_accepted_while_signed_in_as_someone_else_keeps_them_themselves(
    organization, owner, member
):
    # The page tells them that accepting adds the invited address, not theirs: it must not then
    # swap their session for the new account.
    invite(browser_for(owner), "new@acme.example")
    someone_else = browser_for(member)

    response = someone_else.post(invitation_path(mail.outbox[0]))

    new_user = get_user_model().objects.get(email="new@acme.example")
    assert membership_of(new_user, organization).role == Membership.Role.MEMBER
    assert someone_else.session["_auth_user_id"] == str(member.pk)
    assert urlsplit(response["Location"]).path == reverse("accounts:sign_in")
    page = someone_else.get(response["Location"], follow=True)
    assert "Sign in as new@acme.example to open it" in page.content.decode()


def test_an_invitation_works_once(organization, owner):
    invite(browser_for(owner), "new@acme.example")
    path = invitation_path(mail.outbox[0])
    assert Client().post(path).status_code == 302
    again = Client()
    assert again.post(path).status_code == 410
    assert "already used" in again.get(path).content.decode()


def test_an_expired_invitation_is_refused_and_creates_no_account(organization, owner, django_user_model):
    invite(browser_for(owner), "late@acme.example")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    invitee = Client()
    assert invitee.get(invitation_path(mail.outbox[0])).status_code == 410
    response = invitee.post(invitation_path(mail.outbox[0]))
    assert response.status_code == 410 and "expired" in response.content.decode()
    assert not django_user_model.objects.filter(email="late@acme.example").exists()


def test_a_revoked_invitation_is_refused(organization, owner, admin):
    invite(browser_for(owner), "gone@acme.example")
    invitation = Invitation.objects.get()
    response = browser_for(admin).post(reverse("team:invitation_revoke", args=["acme", invitation.pk]))
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status() == Invitation.Status.REVOKED
    assert Client().post(invitation_path(mail.outbox[0])).status_code == 410
    assert AuditLog.objects.filter(action="invitation.revoked", actor_user=admin).exists()


def test_invitations_of_a_removed_or_demoted_member_stop_granting_more_than_they_now_have(organization, owner, admin):
    # An admin about to be removed could otherwise come back through an invitation sent to
    # another address of theirs.
    invite(browser_for(admin), "second-self@acme.example", "admin")
    invite(browser_for(admin), "colleague@acme.example", "member")
    invite(browser_for(owner), "owners-guest@acme.example", "admin")
    links = {message.to[0]: invitation_path(message) for message in mail.outbox}
    owners = browser_for(owner)
    target = membership_of(admin, organization)
    owners.post(reverse("team:member_role", args=["acme", target.pk]), {"role": "member"})
    open_emails = set(Invitation.objects.open().values_list("email", flat=True))
    assert open_emails == {"colleague@acme.example", "owners-guest@acme.example"}

    owners.post(reverse("team:member_remove", args=["acme", target.pk]))
    assert set(Invitation.objects.open().values_list("email", flat=True)) == {"owners-guest@acme.example"}
    assert Client().post(links["second-self@acme.example"]).status_code == 410
    assert Client().post(links["colleague@acme.example"]).status_code == 410
    assert Client().post(links["owners-guest@acme.example"]).status_code == 302
    reasons = AuditLog.objects.filter(action="invitation.revoked").values_list("changes__reason", flat=True)
    assert sorted(reasons) == ["the inviter was removed", "the inviter's role was lowered"]


def operator_browser() -> Client:
    operator = Client()
    operator.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return operator


def organization_page_form(organization, *, roles: dict[int, str], deleted: set[int] = frozenset()) -> dict:
    """The organization's change page as the admin posts it, memberships given new roles or deleted."""
    return organization_change_form(organization, roles=roles, deleted=deleted)


@pytest.mark.parametrize("page", ["organization", "user"])
def test_an_operator_removing_or_demoting_a_member_in_the_admin_revokes_their_invitations_as_the_team_page_does(
    organization, owner, admin, page
):
    # Demoted or removed in the admin, an admin kept the invitations they had sent: one to another
    # address of theirs let them back in, with the role they had lost.
    invite(browser_for(admin), "second-self@acme.example", "admin")
    invite(browser_for(admin), "colleague@acme.example", "member")
    invite(browser_for(owner), "owners-guest@acme.example", "admin")
    links = {message.to[0]: invitation_path(message) for message in mail.outbox}
    operator = operator_browser()
    target = membership_of(admin, organization)

    def saved(**change):
        if page == "organization":
            url = reverse("admin:organizations_organization_change", args=[organization.pk])
            if change.get("delete"):
                form = organization_page_form(organization, roles={}, deleted={target.pk})
            else:
                form = organization_page_form(organization, roles={target.pk: change["role"]})
            return operator.post(url, form)
        if change.get("delete"):
            return post_change_page(operator, admin, **{"memberships-0-DELETE": "on"})
        return post_change_page(operator, admin, **{"memberships-0-role": change["role"]})

    response = saved(role="member")
    assert response.status_code == 302, response.content.decode()[:3000]
    assert membership_of(admin, organization).role == "member"
    assert set(Invitation.objects.open().values_list("email", flat=True)) == {
        "colleague@acme.example",
        "owners-guest@acme.example",
    }

    response = saved(delete=True)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert not Membership.objects.filter(user=admin).exists()
    assert set(Invitation.objects.open().values_list("email", flat=True)) == {"owners-guest@acme.example"}
    assert Client().post(links["second-self@acme.example"]).status_code == 410
    assert Client().post(links["colleague@acme.example"]).status_code == 410
    revoked = AuditLog.objects.filter(action="invitation.revoked").order_by("pk")
    assert [(entry.changes["reason"], entry.actor_label, entry.organization_id) for entry in revoked] == [
        ("the inviter's role was lowered", "root@hookline.example", organization.pk),
        ("the inviter was removed", "root@hookline.example", organization.pk),
    ]
    # Each after the entry of the change that caused it, as on the Team page.
    changed = AuditLog.objects.filter(action__startswith="admin.organizations.membership.").order_by("pk")
    assert [entry.action.rsplit(".", 1)[1] for entry in changed] == ["changed", "deleted"]
    assert changed[0].pk < revoked[0].pk < changed[1].pk < revoked[1].pk


def test_an_operator_raising_a_members_role_or_moving_it_to_another_account_in_the_admin(
    organization, owner, admin, member
):
    """A promotion revokes nothing; a membership given to another account is its member's removal."""
    invite(browser_for(admin), "second-self@acme.example", "admin")
    operator = operator_browser()
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    target = membership_of(admin, organization)
    assert operator.post(url, organization_page_form(organization, roles={target.pk: "owner"})).status_code == 302
    assert Invitation.objects.open().count() == 1

    form = organization_page_form(organization, roles={})
    index = list(organization.memberships.order_by("pk")).index(target)
    outsider = get_user_model().objects.create_user("outsider@example.com")
    form[f"memberships-{index}-user"] = outsider.pk
    assert operator.post(url, form).status_code == 302
    assert Membership.objects.get(pk=target.pk).user == outsider
    assert not Invitation.objects.open().exists()
    assert AuditLog.objects.get(action="invitation.revoked").changes["reason"] == "the inviter was removed"


def test_invitations_of_an_account_an_operator_deactivates_are_revoked(organization, owner, admin):
    # Deactivated, an admin kept their memberships and their open invitations: one sent to another
    # address of theirs let them back in, with a new account, as the removal rule above prevents.
    invite(browser_for(admin), "second-self@acme.example", "admin")
    invite(browser_for(owner), "owners-guest@acme.example", "member")
    links = {message.to[0]: invitation_path(message) for message in mail.outbox}
    operator = Client()
    operator.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))

    response = post_change_page(operator, admin, is_active=False)

    assert response.status_code == 302
    assert Client().post(links["second-self@acme.example"]).status_code == 410
    assert not Membership.objects.filter(user__email="second-self@acme.example").exists()
    revoked = AuditLog.objects.get(action="invitation.revoked")
    assert revoked.actor_label == "root@hookline.example" and revoked.organization == organization
    assert revoked.changes["reason"] == "the inviter's account was deactivated"
    assert Client().post(links["owners-guest@acme.example"]).status_code == 302  # others' stay open


@pytest.mark.parametrize("deleted_by", ["its delete page", "delete selected"])
def test_invitations_of_an_account_an_operator_deletes_are_revoked(organization, owner, admin, deleted_by):
    # Deleted, an account's invitations stayed open with no inviter: one sent to another address of
    # theirs let the person back in with a new account, as deactivating it no longer does.
    invite(browser_for(admin), "second-self@acme.example", "admin")
    invite(browser_for(owner), "owners-guest@acme.example", "member")
    links = {message.to[0]: invitation_path(message) for message in mail.outbox}
    operator = operator_browser()

    if deleted_by == "its delete page":
        response = operator.post(reverse("admin:accounts_user_delete", args=[admin.pk]), {"post": "yes"})
    else:
        response = operator.post(
            reverse("admin:accounts_user_changelist"),
            {"action": "delete_selected", "_selected_action": [admin.pk], "post": "yes"},
        )

    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=admin.pk).exists()
    assert Client().post(links["second-self@acme.example"]).status_code == 410
    assert not get_user_model().objects.filter(email="second-self@acme.example").exists()
    revoked = AuditLog.objects.get(action="invitation.revoked")
    assert revoked.actor_label == "root@hookline.example" and revoked.organization == organization
    assert revoked.changes["reason"] == "the inviter's account was deleted"
    assert revoked.pk > AuditLog.objects.get(action="admin.accounts.user.deleted").pk
    assert Client().post(links["owners-guest@acme.example"]).status_code == 302  # others' stay open


def test_a_made_up_or_misplaced_invitation_link_is_404(organization, other_organization, owner):
    invite(browser_for(owner), "new@acme.example")
    token = invitation_path(mail.outbox[0]).rstrip("/").rsplit("/", 1)[1]
    assert Client().get(reverse("team:invitation_accept", args=["acme", "x" * 43])).status_code == 404
    assert Client().post(reverse("team:invitation_accept", args=["globex", token])).status_code == 404


def test_inviting_again_replaces_the_open_invitation(organization, owner):
    browser = browser_for(owner)
    invite(browser, "twice@acme.example")
    invite(browser, "twice@acme.example", "admin")
    first, second = Invitation.objects.order_by("id")
    assert first.status() == Invitation.Status.REVOKED and second.status() == Invitation.Status.PENDING
    assert Client().post(invitation_path(mail.outbox[0])).status_code == 410
    assert Client().post(invitation_path(mail.outbox[1])).status_code == 302


def test_inviting_a_member_again_is_refused(organization, owner, member):
    browser = browser_for(owner)
    response = invite(browser, member.email)
    assert response.status_code == 400  # on the form, the address kept
    assert not Invitation.objects.exists() and mail.outbox == []
    assert "already a member" in response.content.decode()


def test_the_invite_address_opened_again_goes_back_to_the_team_page(organization, owner, member):
    # A refused invitation leaves the invite URL in the address bar; opening it again (Enter,
    # a bookmark) used to answer an empty 405 page.
    browser = browser_for(owner)
    assert invite(browser, member.email).status_code == 400
    response = browser.get(reverse("team:invite", args=["acme"]), follow=True)
    assert response.status_code == 200 and response.redirect_chain == [(TEAM, 302)]
    assert "Invite someone" in response.content.decode()
    assert not Invitation.objects.exists()  # a GET invites nobody


def test_a_failed_invitation_email_is_reported_and_can_be_retried(organization, owner, monkeypatch):
    import smtplib

    from django.core.mail import EmailMultiAlternatives

    def refuse(message, fail_silently=False):
        raise smtplib.SMTPServerDisconnected("mail server went away")

    browser = browser_for(owner)
    with monkeypatch.context() as patched:
        patched.setattr(EmailMultiAlternatives, "send", refuse)
        response = invite(browser, "late@acme.example")
    assert response.status_code == 400 and "could not be sent" in response.content.decode()
    assert invite(browser, "late@acme.example").status_code == 302
    first, second = Invitation.objects.order_by("id")
    assert (first.status(), second.status()) == (Invitation.Status.REVOKED, Invitation.Status.PENDING)
    assert len(mail.outbox) == 1 and Client().post(invitation_path(mail.outbox[0])).status_code == 302


def test_an_invalid_address_shows_the_form_again(organization, owner):
    response = invite(browser_for(owner), "not an address")
    assert response.status_code == 400
    assert "Enter a valid email address" in response.content.decode()


def test_signing_in_offers_pending_invitations_and_joins_only_when_asked(organization, owner, outsider):
    # Joining on sign-in alone would make anyone an organization's member (and put their
    # sign-ins in its audit log) just because it invited their address.
    invite(browser_for(owner), outsider.email)
    browser = Client()
    browser.force_login(outsider)  # sends user_logged_in, as every way of signing in does
    assert not Membership.objects.filter(user=outsider, organization=organization).exists()

    home = browser.get(reverse("home"))
    assert home.status_code == 200  # not sent straight into their own organization
    html = home.content.decode()
    invitation = Invitation.objects.get(email=outsider.email)
    join_url = reverse("invitation_join", args=[invitation.pk])
    assert "Join Acme" in html and f'action="{join_url}"' in html

    response = browser.post(join_url)
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview", args=["acme"])
    assert membership_of(outsider, organization).role == Membership.Role.MEMBER
    assert browser.post(join_url).status_code == 302  # used: refused with a message, nothing changes
    # The link, opened afterwards by the same person, just leads into the organization.
    response = browser.get(invitation_path(mail.outbox[0]))
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview", args=["acme"])


def test_an_invitation_to_another_address_cannot_be_joined(organization, owner, outsider):
    invite(browser_for(owner), outsider.email)
    invitation = Invitation.objects.get(email=outsider.email)
    stranger = UserFactory(email="stranger@elsewhere.example")
    browser = Client()
    browser.force_login(stranger)
    assert "Join Acme" not in browser.get(reverse("home")).content.decode()
    browser.post(reverse("invitation_join", args=[invitation.pk]))
    assert not Membership.objects.filter(user=stranger).exists()
    assert Invitation.objects.get(pk=invitation.pk).accepted_by is None


# --- Roles ------------------------------------------------------------------------------------


def test_members_read_the_team_but_cannot_change_it(organization, owner, member):
    browser = browser_for(member)
    html = browser.get(TEAM).content.decode()
    assert owner.email in html
    assert "Send invitation" not in html and "Change role" not in html and "Remove" not in html
    owner_membership = membership_of(owner, organization)
    assert invite(browser, "friend@acme.example").status_code == 403
    assert (
        browser.post(reverse("team:member_role", args=["acme", owner_membership.pk]), {"role": "member"}).status_code
        == 403
    )
    assert browser.post(reverse("team:member_remove", args=["acme", owner_membership.pk])).status_code == 403
    assert not Invitation.objects.exists()
    with pytest.raises(PermissionDenied):
        team.invitation_create(organization=organization, actor=member, email="friend@acme.example", role="member")


def test_admins_invite_up_to_their_role_but_do_not_manage_members(organization, owner, admin, member):
    browser = browser_for(admin)
    html = browser.get(TEAM).content.decode()
    assert "Send invitation" in html and "Change role" not in html
    assert '<option value="owner"' not in html.split("Send invitation")[0].split('id="invite-title"')[1]
    assert invite(browser, "helper@acme.example", "admin").status_code == 302
    assert invite(browser, "boss@acme.example", "owner").status_code == 400  # not a choice an admin has
    with pytest.raises(PermissionDenied):
        team.invitation_create(organization=organization, actor=admin, email="boss@acme.example", role="owner")
    owner_membership = membership_of(owner, organization)
    response = browser.post(reverse("team:member_role", args=["acme", owner_membership.pk]), {"role": "member"})
    assert response.status_code == 403
    with pytest.raises(PermissionDenied):
        team.member_role_change(organization=organization, actor=admin, membership=owner_membership, role="member")
    with pytest.raises(PermissionDenied):
        team.member_remove(organization=organization, actor=admin, membership=membership_of(member, organization))
    assert membership_of(owner, organization).role == Membership.Role.OWNER


def test_admins_cannot_revoke_an_owner_invitation(organization, owner, admin):
    invitation = team.invitation_create(organization=organization, actor=owner, email="co@acme.example", role="owner")
    assert browser_for(admin).post(reverse("team:invitation_revoke", args=["acme", invitation.pk])).status_code == 403
    invitation.refresh_from_db()
    assert invitation.status() == Invitation.Status.PENDING
    with pytest.raises(PermissionDenied):
        team.invitation_revoke(organization=organization, actor=admin, invitation=invitation)


def test_owner_changes_roles_and_removes_members_with_an_audit_trail(organization, owner, member):
    browser = browser_for(owner)
    target = membership_of(member, organization)
    response = browser.post(reverse("team:member_role", args=["acme", target.pk]), {"role": "admin"})
    assert response.status_code == 302
    assert membership_of(member, organization).role == Membership.Role.ADMIN
    changed = AuditLog.objects.get(action="member.role_changed")
    assert changed.changes["role"] == ["member", "admin"] and changed.ip_address == "198.51.100.4"

    assert browser.post(reverse("team:member_remove", args=["acme", target.pk])).status_code == 302
    assert not Membership.objects.filter(user=member, organization=organization).exists()
    assert AuditLog.objects.get(action="member.removed").actor_user == owner
    assert browser_for(member).get(TEAM).status_code == 404


def test_the_last_owner_can_be_neither_demoted_nor_removed(organization, owner, member):
    browser = browser_for(owner)
    own = membership_of(owner, organization)
    browser.post(reverse("team:member_role", args=["acme", own.pk]), {"role": "admin"})
    browser.post(reverse("team:member_remove", args=["acme", own.pk]))
    assert membership_of(owner, organization).role == Membership.Role.OWNER
    assert "at least one owner" in browser.get(TEAM).content.decode()
    with pytest.raises(team.TeamRuleError):
        team.member_role_change(organization=organization, actor=owner, membership=own, role="member")
    with pytest.raises(team.TeamRuleError):
        team.member_remove(organization=organization, actor=owner, membership=own)

    # With a second owner, the first may step down.
    team.member_role_change(
        organization=organization, actor=owner, membership=membership_of(member, organization), role="owner"
    )
    team.member_role_change(organization=organization, actor=owner, membership=own, role="admin")
    assert membership_of(owner, organization).role == Membership.Role.ADMIN


def test_team_actions_refuse_rows_of_another_organization(organization, owner, other_organization, outsider):
    foreign = membership_of(outsider, other_organization)
    browser = browser_for(owner)
    assert browser.post(reverse("team:member_role", args=["acme", foreign.pk]), {"role": "member"}).status_code == 404
    assert browser.post(reverse("team:member_remove", args=["acme", foreign.pk])).status_code == 404
    foreign_invitation = team.invitation_create(
        organization=other_organization, actor=outsider, email="x@globex.example", role="member"
    )
    assert browser.post(reverse("team:invitation_revoke", args=["acme", foreign_invitation.pk])).status_code == 404
    with pytest.raises(PermissionDenied):
        team.member_remove(organization=organization, actor=owner, membership=foreign)
    assert membership_of(outsider, other_organization).role == Membership.Role.OWNER


def test_the_team_page_says_what_members_do_not_see(organization, member):
    """Not "Members see everything": signatures, destination URL paths and colleagues' addresses
    and browsers are hidden from them (README, "The tenant dashboard")."""
    page = " ".join(browser_for(member).get(reverse("team:members", args=["acme"])).content.decode().split())
    assert "see everything" not in page
    assert (
        "Members read events, deliveries, sources, destinations and the audit log, except signatures, the path and "
        "query of destination URLs, and the audit log's addresses and browsers." in page
    )
    assert "Admins see those too" in page and "manage API keys" in page


# --- Tenancy ----------------------------------------------------------------------------------


def test_every_team_url_is_404_for_non_members(organization, owner, member, outsider):
    invitation = team.invitation_create(organization=organization, actor=owner, email="x@acme.example", role="member")
    target = membership_of(member, organization)
    urls = [
        reverse("team:members", args=["acme"]),
        reverse("team:invite", args=["acme"]),
        reverse("team:member_role", args=["acme", target.pk]),
        reverse("team:member_remove", args=["acme", target.pk]),
        reverse("team:invitation_revoke", args=["acme", invitation.pk]),
    ]
    browser = browser_for(outsider)
    for url in urls:
        assert browser.get(url).status_code == 404, url
        assert browser.post(url, {"role": "owner", "email": "me@globex.example"}).status_code == 404, url
    assert membership_of(member, organization).role == Membership.Role.MEMBER
    assert Invitation.objects.get().status() == Invitation.Status.PENDING
    anonymous = Client()
    for url in urls:
        assert anonymous.get(url)["Location"].startswith(reverse("accounts:sign_in")), url


@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(organization, owner, member):
    import threading

    from django.db import connection

    Membership.objects.filter(user=member).update(role=Membership.Role.OWNER)
    first, second = membership_of(owner, organization), membership_of(member, organization)
    start = threading.Barrier(2)
    outcomes = []

    def demote(actor, target):
        try:
            start.wait()
            team.member_role_change(organization=organization, actor=actor, membership=target, role="member")
            outcomes.append("demoted")
        except (team.TeamRuleError, PermissionDenied) as refused:
            outcomes.append(type(refused).__name__)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(owner, second)),
        threading.Thread(target=demote, args=(member, first)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("demoted") == 1
    assert Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).count() == 1


def test_an_admin_cannot_replace_an_owners_invitation(organization, owner, admin):
    team.invitation_create(organization=organization, actor=owner, email="boss@acme.example", role="owner")
    with pytest.raises(PermissionDenied):
        team.invitation_create(organization=organization, actor=admin, email="boss@acme.example", role="member")
    assert Invitation.objects.get(email="boss@acme.example", revoked_at__isnull=True).role == "owner"


def test_a_deactivated_account_cannot_join_by_invitation(client, organization, owner):
    invited = UserFactory(email="gone@acme.example", is_active=False)
    team.invitation_create(organization=organization, actor=owner, email=invited.email, role="member")
    response = client.post(invitation_path(mail.outbox[-1]))
    assert response.status_code in (200, 410)
    assert not Membership.objects.filter(user=invited, organization=organization).exists()


# --- Confirming a removal ---------------------------------------------------------------------


def test_remove_and_leave_ask_for_confirmation_before_acting(organization, owner, member):
    browser = browser_for(owner)
    target = membership_of(member, organization)
    team_page = browser.get(TEAM).content.decode()
    remove_url = reverse("team:member_remove", args=["acme", target.pk])
    # The Team page links to a confirmation: no form there removes anyone in one click.
    assert f'href="{remove_url}"' in team_page and f'action="{remove_url}"' not in team_page

    page = browser.get(remove_url)
    assert page.status_code == 200
    content = page.content.decode()
    assert "Remove member@acme.example?" in content and "csrfmiddlewaretoken" in content
    assert Membership.objects.filter(pk=target.pk).exists()  # a GET changes nothing

    response = browser.post(remove_url)
    assert response.status_code == 302 and response["Location"] == TEAM
    assert not Membership.objects.filter(pk=target.pk).exists()

    # Leaving, for an owner who is not the last one.
    Membership.objects.create(user=member, organization=organization, role=Membership.Role.OWNER)
    own = membership_of(owner, organization)
    leave_url = reverse("team:member_remove", args=["acme", own.pk])
    content = browser.get(leave_url).content.decode()
    assert "Leave Acme?" in content and "You lose access" in content
    assert Membership.objects.filter(pk=own.pk).exists()
    assert browser.post(leave_url).status_code == 302
    assert not Membership.objects.filter(pk=own.pk).exists()


def test_the_removal_confirmation_needs_csrf(organization, owner, member):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    target = membership_of(member, organization)
    url = reverse("team:member_remove", args=["acme", target.pk])
    assert browser.get(url).status_code == 200
    assert browser.post(url).status_code == 403
    assert Membership.objects.filter(pk=target.pk).exists()


def test_the_removal_confirmation_is_for_owners_and_this_organization_only(
    organization, owner, member, other_organization, outsider
):
    target = membership_of(owner, organization)
    url = reverse("team:member_remove", args=["acme", target.pk])
    assert browser_for(member).get(url).status_code == 403
    assert browser_for(outsider).get(url).status_code == 404
    foreign = membership_of(outsider, other_organization)
    assert browser_for(owner).get(reverse("team:member_remove", args=["acme", foreign.pk])).status_code == 404


@pytest.mark.parametrize("role", ["member", "admin"])
def test_members_and_admins_can_leave_but_not_remove_others(organization, owner, member, admin, role):
    leaver = member if role == "member" else admin
    other = admin if role == "member" else member
    browser = browser_for(leaver)
    own = membership_of(leaver, organization)
    leave_url = reverse("team:member_remove", args=["acme", own.pk])
    team_page = browser.get(TEAM).content.decode()
    assert f'href="{leave_url}"' in team_page  # their way out, though they manage no one

    other_url = reverse("team:member_remove", args=["acme", membership_of(other, organization).pk])
    assert browser.get(other_url).status_code == 403
    assert browser.post(other_url).status_code == 403
    assert Membership.objects.filter(user=other, organization=organization).exists()

    assert "Leave Acme?" in browser.get(leave_url).content.decode()
    assert browser.post(leave_url).status_code == 302
    assert not Membership.objects.filter(pk=own.pk).exists()
    entry = AuditLog.objects.get(action="member.removed", organization=organization)
    assert entry.actor_user == leaver and entry.changes["email"] == leaver.email
    assert browser.get(TEAM).status_code == 404  # no longer theirs to see


def test_the_service_lets_anyone_leave_but_only_owners_remove(organization, owner, member, admin):
    with pytest.raises(PermissionDenied):
        team.member_remove(organization=organization, actor=member, membership=membership_of(admin, organization))
    team.member_remove(organization=organization, actor=admin, membership=membership_of(admin, organization))
    assert not Membership.objects.filter(user=admin, organization=organization).exists()
    with pytest.raises(team.TeamRuleError):  # the last owner stays, even when asking to leave
        team.member_remove(organization=organization, actor=owner, membership=membership_of(owner, organization))


def test_an_organization_sends_a_bounded_number_of_invitations_an_hour(organization, owner, settings):
    settings.INVITATIONS_PER_HOUR = 3
    browser = browser_for(owner)
    for n in range(3):
        invite(browser, f"person{n}@elsewhere.example")
    assert len(mail.outbox) == 3
    response = invite(browser, "one-more@elsewhere.example")
    assert response.status_code == 400
    html = response.content.decode()
    assert "3 invitations in the last hour" in html and "The next can be sent from" in html
    assert 'value="one-more@elsewhere.example"' in html  # kept for the next try
    assert len(mail.outbox) == 3 and not Invitation.objects.filter(email="one-more@elsewhere.example").exists()
    # An hour later the organization may invite again.
    Invitation.objects.update(created_at=timezone.now() - timedelta(hours=1, seconds=1))
    invite(browser, "one-more@elsewhere.example")
    assert Invitation.objects.filter(email="one-more@elsewhere.example").exists() and len(mail.outbox) == 4


def test_the_last_owner_is_not_offered_leave(organization, owner, member):
    own = membership_of(owner, organization)
    leave_url = reverse("team:member_remove", args=["acme", own.pk])
    assert f'href="{leave_url}"' not in browser_for(owner).get(TEAM).content.decode()
    Membership.objects.filter(user=member).update(role=Membership.Role.OWNER)
    assert f'href="{leave_url}"' in browser_for(owner).get(TEAM).content.decode()


def test_an_invitation_replaced_by_a_newer_one_says_so(organization, owner):
    browser = browser_for(owner)
    invite(browser, "twice@elsewhere.example")
    first_link = invitation_path(mail.outbox[0])
    invite(browser, "twice@elsewhere.example")
    page = Client().get(first_link)
    assert page.status_code == 410
    assert "A newer invitation replaced this one" in page.content.decode()
