"""Team services: an organization's members, their roles and invitations.

Every write takes the acting user, checks their role here (views check too, but these are the rule),
and writes the audit log. Members read; admins invite and revoke invitations up to their own role;
owners also change roles and remove members; an organization always keeps at least one owner.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connections, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.emails import send_templated_email
from accounts.models import Invitation, canonical_email

from .middleware import current_request
from .models import LAST_OWNER, AuditLog, Membership, Organization
from .names import one_line
from .services import audit_lock_organizations, audit_record

logger = logging.getLogger(__name__)

ROLE_RANK = {Membership.Role.MEMBER: 0, Membership.Role.ADMIN: 1, Membership.Role.OWNER: 2}


class TeamRuleError(Exception):
    """A change the rules refuse whoever asks (the last owner, an existing member…); the message says why."""


class InvitationUnavailable(Exception):
    """The invitation link cannot be used; ``status`` says whether it was accepted, revoked or expired
    (None: its organization is suspended or being deleted, and its invitations are not offered)."""

    def __init__(self, status: str | None):
        super().__init__(status)
        self.status = status


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _membership_of(organization: Organization, user) -> Membership:
    membership = Membership.objects.filter(organization=organization, user=user).first()
    if membership is None:
        raise PermissionDenied("Not a member of this organization.")
    return membership


def _require_rank(membership: Membership, role: str) -> None:
    if ROLE_RANK[membership.role] < ROLE_RANK[role]:
        raise PermissionDenied("Your role in this organization does not allow this change.")


def roles_assignable_by(role: str) -> list[tuple[str, str]]:
    """The roles someone with ``role`` may give: never above their own."""
    return [(value, label) for value, label in Membership.Role.choices if ROLE_RANK[value] <= ROLE_RANK[role]]


def team_members(organization: Organization) -> list[Membership]:
    """Memberships with their users, owners first."""
    memberships = list(Membership.objects.filter(organization=organization).select_related("user"))
    return sorted(memberships, key=lambda m: (-ROLE_RANK[m.role], m.user.email))


def team_open_invitations(organization: Organization):
    """Invitations not yet accepted or revoked, including expired ones (shown so they can be replaced)."""
    return Invitation.objects.open().filter(organization=organization).select_related("invited_by")


def invitation_link(invitation: Invitation, token: str) -> str:
    return settings.PUBLIC_BASE_URL + reverse("team:invitation_accept", args=[invitation.organization.slug, token])


def invitation_create(
    *, organization: Organization, actor, email: str, role: str, ip_address: str | None = None
) -> Invitation:
    """Invite ``email`` with ``role`` and email them a single-use link; an open invitation to them is replaced.

    Raises PermissionDenied (members; admins inviting owners) or TeamRuleError (already a member, too many invitations this hour, mail failed).
    """
    actor_membership = _membership_of(organization, actor)
    _require_rank(actor_membership, Membership.Role.ADMIN)
    if role not in ROLE_RANK:
        raise TeamRuleError("Choose a role: member, admin or owner.")
    _require_rank(actor_membership, role)
    email = canonical_email(email)
    if Membership.objects.filter(organization=organization, user__email=email).exists():
        raise TeamRuleError(f"{email} is already a member.")
    last_hour = Invitation.objects.filter(
        organization=organization, created_at__gte=timezone.now() - timedelta(hours=1)
    )
    sent_last_hour = last_hour.count()
    if sent_last_hour >= settings.INVITATIONS_PER_HOUR:
        oldest = last_hour.order_by("created_at").values_list("created_at", flat=True).first()
        raise TeamRuleError(
            f"{organization.name} has sent {sent_last_hour} invitations in the last hour, the most allowed. "
            f"The next can be sent from {oldest + timedelta(hours=1, seconds=59):%H:%M} UTC."  # rounded up
        )

    token = secrets.token_urlsafe(32)
    now = timezone.now()
    try:
        invitation = _replace_open_invitation(
            organization=organization,
            actor=actor,
            actor_membership=actor_membership,
            email=email,
            role=role,
            token=token,
            now=now,
            ip_address=ip_address,
        )
    except IntegrityError as exc:  # the same address invited at the same moment by someone else
        raise TeamRuleError(f"{email} was just invited by someone else.") from exc
    # Sent after the commit: the link must never reach anyone before the invitation exists.
    try:
        send_templated_email(
            to=email,
            subject=f"{actor.email} invited you to {one_line(organization.name)} on Hookline",
            template="invitation",
            context={
                "inviter": actor.email,
                "organization_name": organization.name,
                "role_label": Membership.Role(role).label,
                "link": invitation_link(invitation, token),
                "expires_at": invitation.expires_at,
            },
        )
    except (smtplib.SMTPException, OSError) as exc:
        logger.warning("invitation %s saved but its email failed: %s", invitation.pk, exc)
        raise TeamRuleError(
            f"The invitation to {email} is saved, but the email could not be sent. Invite them again to retry."
        ) from exc
    return invitation


@transaction.atomic
def _replace_open_invitation(
    *, organization, actor, actor_membership, email, role, token, now, ip_address
) -> Invitation:
    # The inviter's role again, under a lock of their membership, in the transaction that writes the
    # invitation: a demotion or removal committed since the first check is seen here, and one under
    # way waits for this invitation and then revokes it with their others (_lock_invitations_sent_by).
    # Checked only before, an invitation written just after a demotion's revocations outlived it.
    # The organization first, active (see _lock_organization_while_active): the dashboard read it so
    # when the page was asked for, and a suspension or a deletion's request committed since must not
    # be followed by an invitation (and its email) to an organization nobody can join.
    if not _lock_organization_while_active(organization.pk):
        raise TeamRuleError(f"{organization.name} is suspended or being deleted: no one can be invited now.")
    actor_membership = Membership.objects.select_for_update().filter(pk=actor_membership.pk).first()
    if actor_membership is None:
        raise PermissionDenied("Not a member of this organization.")
    # The account read again after its membership's lock: a deactivation locks the memberships
    # (invitations_lock_sent_by_accounts) after saving the account, so one under way when the request
    # came is committed by now, and an invitation written after it would outlive its revocations.
    if not get_user_model().objects.filter(pk=actor.pk, is_active=True).exists():
        raise PermissionDenied("This account has been deactivated.")
    _require_rank(actor_membership, Membership.Role.ADMIN)
    _require_rank(actor_membership, role)
    for previous in Invitation.objects.open().select_for_update().filter(organization=organization, email=email):
        # Replacing is revoking: an admin may not replace an owner's invitation with a lesser one.
        _require_rank(actor_membership, previous.role)
        previous.revoked_at = now
        previous.save(update_fields=["revoked_at"])
        audit_record(
            action="invitation.revoked",
            organization=organization,
            actor=actor,
            target=previous,
            changes={"email": email, "reason": "replaced by a new invitation"},
            ip_address=ip_address,
        )
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        token_digest=_token_digest(token),
        invited_by=actor,
        created_at=now,
        expires_at=now + timedelta(days=settings.INVITATION_TTL_DAYS),
    )
    audit_record(
        action="invitation.created",
        organization=organization,
        actor=actor,
        target=invitation,
        changes={"email": email, "role": role},
        ip_address=ip_address,
    )
    return invitation


def invitation_revoke(
    *, organization: Organization, actor, invitation: Invitation, ip_address: str | None = None
) -> None:
    """Revoke an open invitation so its link stops working. Admins may revoke invitations up to their own role."""
    if invitation.organization_id != organization.pk:
        raise PermissionDenied("Not an invitation of this organization.")
    actor_membership = _membership_of(organization, actor)
    _require_rank(actor_membership, Membership.Role.ADMIN)
    _require_rank(actor_membership, invitation.role)
    revoked = Invitation.objects.open().filter(pk=invitation.pk).update(revoked_at=timezone.now())
    if not revoked:
        raise TeamRuleError("This invitation was already accepted or revoked.")
    audit_record(
        action="invitation.revoked",
        organization=organization,
        actor=actor,
        target=invitation,
        changes={"email": invitation.email, "role": invitation.role},
        ip_address=ip_address,
    )


def _lock_owners(organization: Organization) -> list[int]:
    """Lock the owners' memberships, always first and in one order, so that two owners demoting or removing
    each other at once queue up instead of both succeeding (or deadlocking)."""
    return list(
        Membership.objects.select_for_update()
        .filter(organization=organization, role=Membership.Role.OWNER)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _require_owner(organization: Organization, actor, locked_owner_ids: list[int]) -> None:
    # Checked against the locked rows, so an owner demoted a moment ago cannot still act as one.
    if _membership_of(organization, actor).pk not in locked_owner_ids:
        raise PermissionDenied("Only owners manage members and roles.")


def _locked_membership(membership: Membership) -> Membership:
    # OF the membership alone: the user's row, read with it, is theirs (a sign-in or a profile change updates it).
    locked = Membership.objects.select_for_update(of=("self",)).select_related("user").filter(pk=membership.pk).first()
    if locked is None:
        raise TeamRuleError("This person is no longer a member.")
    return locked


@transaction.atomic
def member_role_change(
    *, organization: Organization, actor, membership: Membership, role: str, ip_address: str | None = None
) -> Membership:
    """Give a member another role (owners only); the last owner cannot be demoted."""
    if membership.organization_id != organization.pk:
        raise PermissionDenied("Not a member of this organization.")
    if role not in ROLE_RANK:
        raise TeamRuleError("Choose a role: member, admin or owner.")
    owners = _lock_owners(organization)
    _require_owner(organization, actor, owners)
    membership = _locked_membership(membership)
    previous = membership.role
    if previous == role:
        return membership
    if owners == [membership.pk]:
        raise TeamRuleError(LAST_OWNER)
    sent = _lock_invitations_sent_by(membership)
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        action="member.role_changed",
        organization=organization,
        actor=actor,
        target=membership,
        changes={"email": membership.user.email, "role": [previous, role]},
        ip_address=ip_address,
    )
    _revoke_invitations_sent_by(
        membership, sent, above_role=role, actor=actor, ip_address=ip_address, reason="the inviter's role was lowered"
    )
    return membership


@transaction.atomic
def member_remove(*, organization: Organization, actor, membership: Membership, ip_address: str | None = None) -> None:
    """Remove someone from the organization (owners only), or leave it (anyone, for themselves); the
    last owner can do neither."""
    if membership.organization_id != organization.pk:
        raise PermissionDenied("Not a member of this organization.")
    owners = _lock_owners(organization)
    if membership.user_id != actor.pk:
        _require_owner(organization, actor, owners)
    membership = _locked_membership(membership)
    if owners == [membership.pk]:
        raise TeamRuleError(LAST_OWNER)
    sent = _lock_invitations_sent_by(membership)
    audit_record(
        action="member.removed",
        organization=organization,
        actor=actor,
        target=membership,
        changes={"email": membership.user.email, "role": membership.role},
        ip_address=ip_address,
    )
    _revoke_invitations_sent_by(
        membership, sent, above_role=None, actor=actor, ip_address=ip_address, reason="the inviter was removed"
    )
    membership.delete()


def _lock_invitations_sent_by(membership: Membership) -> list[Invitation]:
    """The open invitations a member sent, locked until the transaction ends.

    Taken before the transaction's first audit entry: a join holds its invitation's row and then
    takes the audit chain's lock (_accept), so a removal or demotion that locked the inviter's
    invitations only after its own entry held that lock while it waited for the join's row, and
    PostgreSQL failed one of the two as a deadlock. A join that claimed one meanwhile is waited
    for, and its invitation, read again, is no longer open."""
    return list(
        Invitation.objects.open()
        .select_for_update()
        .filter(organization_id=membership.organization_id, invited_by_id=membership.user_id)
        .order_by("pk")
    )


def _revoke_invitations_sent_by(
    membership: Membership,
    sent: list[Invitation],
    *,
    above_role: str | None,
    actor,
    ip_address: str | None,
    reason: str,
) -> None:
    """Revoke the open invitations a member sent (``sent``, _lock_invitations_sent_by) that grant more
    than the role they now have (all of them when they leave): otherwise a removed admin could come
    back through an invitation they sent to another address of theirs before being removed."""
    for invitation in sent:
        if above_role is not None and ROLE_RANK[invitation.role] <= ROLE_RANK[above_role]:
            continue
        _revoke_locked_invitation(
            invitation, membership.organization, actor=actor, reason=reason, ip_address=ip_address
        )


@dataclass(frozen=True)
class InviterChange:
    """A member an operator removed or demoted in the admin (a membership edited on an organization's
    or a user's page), with the open invitations they sent there, locked (invitations_lock_for_inviter_changes)."""

    membership: Membership  # as it was: its organization, user and role before the change
    role: str | None  # the role they have there now; None once they are no longer a member
    sent: list[Invitation]


def invitations_lock_for_inviter_changes(changes: list[tuple[Membership, str | None]]) -> list[InviterChange]:
    """For an operator's change of memberships, each ``(membership as it was, its role now or None)``:
    the open invitations each removed or demoted member sent in that organization, locked until the
    transaction ends, as the Team page's removal and demotion lock them.

    Call it once the memberships are written (their rows locked, after the owners'), and before the
    transaction's first audit entry (see _lock_invitations_sent_by); revoke them with
    invitations_revoke_for_inviter_changes after the memberships' own entries."""
    locked = []
    for membership, role in sorted(changes, key=lambda change: change[0].pk):
        if role is not None and ROLE_RANK.get(role, 0) >= ROLE_RANK.get(membership.role, 0):
            continue  # not lowered: what they sent grants no more than they have
        locked.append(InviterChange(membership=membership, role=role, sent=_lock_invitations_sent_by(membership)))
    return locked


def invitations_revoke_for_inviter_changes(
    changes: list[InviterChange], *, actor, ip_address: str | None = None
) -> None:
    """Revoke what invitations_lock_for_inviter_changes locked, as the Team page's removal and demotion
    do: all a removed member sent, and those granting more than a demoted member's new role."""
    for change in changes:
        _revoke_invitations_sent_by(
            change.membership,
            change.sent,
            above_role=change.role,
            actor=actor,
            ip_address=ip_address,
            reason="the inviter was removed" if change.role is None else "the inviter's role was lowered",
        )


def invitations_revoke_sent_by_deactivated(*, user) -> None:
    """Revoke every open invitation a just-deactivated account sent, in every organization: as with
    a removed member's, the person shut out could otherwise come back in through an invitation they
    sent to another address of theirs. Audited as done by the operator who deactivated it."""
    acting = getattr(current_request(), "user", None)
    operator = acting if acting is not None and acting.is_authenticated else None
    with transaction.atomic():
        sent = invitations_lock_sent_by_accounts(users=[user])
        invitations_revoke_sent_by_accounts(sent, actor=operator, reason="the inviter's account was deactivated")


def invitations_lock_sent_by_accounts(*, users) -> list[Invitation]:
    """The open invitations ``users`` sent, in every organization, locked until the transaction ends:
    for an account that is deactivated or deleted. Their memberships are locked first, in id order,
    as the Team page locks a member's row before the invitations they sent (_lock_invitations_sent_by),
    and both before the transaction's first audit entry. Call it inside the transaction."""
    user_ids = [user.pk for user in users]
    # Their organizations' rows first (FOR KEY SHARE, in id order; see audit_lock_organizations): an
    # organization's deletion holds its row and then deletes its invitations, so taking the key share
    # only at the first audit entry, after the invitations, each would wait for the other.
    audit_lock_organizations(
        [
            *Membership.objects.filter(user_id__in=user_ids).values_list("organization_id", flat=True),
            *Invitation.objects.open().filter(invited_by_id__in=user_ids).values_list("organization_id", flat=True),
        ]
    )
    list(Membership.objects.select_for_update(of=("self",)).filter(user_id__in=user_ids).order_by("pk").values("pk"))
    return list(
        Invitation.objects.open()
        .select_for_update(of=("self",))
        .filter(invited_by_id__in=user_ids)
        .select_related("organization")
        .order_by("pk")
    )


def invitations_revoke_sent_by_accounts(sent: list[Invitation], *, actor, reason: str) -> None:
    """Revoke what invitations_lock_sent_by_accounts locked, each audited in its organization's log."""
    audit_lock_organizations({invitation.organization_id for invitation in sent})
    for invitation in sent:
        _revoke_locked_invitation(invitation, invitation.organization, actor=actor, reason=reason)


def _revoke_locked_invitation(
    invitation: Invitation, organization: Organization, *, actor, reason: str, ip_address: str | None = None
) -> None:
    """Revoke an invitation its caller locked (open when locked), audited with why: its inviter left,
    was demoted, deactivated or deleted."""
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        action="invitation.revoked",
        organization=organization,
        actor=actor,
        target=invitation,
        changes={"email": invitation.email, "reason": reason},
        ip_address=ip_address,
    )


def invitation_for_token(*, organization_slug: str, token: str) -> Invitation | None:
    """The invitation a link's token names (in any state), or None if there is none for that organization."""
    digest = _token_digest(token)
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_digest=digest, organization__slug=organization_slug, organization__is_active=True)
        .first()
    )
    if invitation is None or not hmac.compare_digest(invitation.token_digest, digest):
        return None
    return invitation


@dataclass(frozen=True)
class AcceptedInvitation:
    user: object
    # Whether accepting created the account. Only then may the link sign in: an account that existed
    # may belong to other organizations, which a week-long link (forwarded, left in a mailbox) must
    # not open; its owner signs in as usual, with a link or code that lives minutes.
    account_created: bool


def invitation_accept(*, invitation: Invitation, ip_address: str | None = None) -> AcceptedInvitation:
    """Use an invitation once: its address gets an account if it has none and joins with the role.

    Raises InvitationUnavailable when it was already accepted, revoked, or has expired.
    """
    status = invitation.status()
    if status != Invitation.Status.PENDING:
        raise InvitationUnavailable(status)  # before creating anyone's account
    with transaction.atomic():
        user, created = _user_for_email(invitation.email)
        if not user.is_active:
            # A deactivated account stays out, as it does at sign-in.
            raise InvitationUnavailable(Invitation.Status.REVOKED)
        _accept(invitation, user, ip_address)
    return AcceptedInvitation(user=user, account_created=created)


def invitation_replaced(invitation: Invitation) -> bool:
    """Whether a newer invitation to the same address replaced this one (inviting again does)."""
    return Invitation.objects.filter(
        organization_id=invitation.organization_id, email=invitation.email, created_at__gt=invitation.created_at
    ).exists()


def invitations_pending_for(*, user) -> list[Invitation]:
    """The invitations to ``user``'s address still open, of active organizations: shown after sign-in,
    each joined by choice. One of a suspended organization waits until it is active again, as its
    link does (invitation_for_token)."""
    return list(
        Invitation.objects.pending()
        .filter(email=user.email, organization__is_active=True)
        .select_related("organization", "invited_by")
        .order_by("created_at")
    )


def invitation_join(*, user, invitation_id: int, ip_address: str | None = None) -> Invitation:
    """``user`` accepts an invitation to their own address (signing in proved it, as the link would).

    Signing in no longer joins on its own: an organization that invites an address would
    otherwise make its holder a member, and see their sign-ins, without their say.
    Raises InvitationUnavailable when it is not open to this user any more.
    """
    # Not into an organization an operator suspended or is deleting: its link refuses it too.
    invitation = (
        Invitation.objects.pending()
        .filter(pk=invitation_id, email=user.email, organization__is_active=True)
        .select_related("organization")
        .first()
    )
    if invitation is None:
        raise InvitationUnavailable(Invitation.Status.REVOKED)
    with transaction.atomic():
        _accept(invitation, user, ip_address)
    return invitation


def _user_for_email(email: str) -> tuple[object, bool]:
    """The account of ``email``, and whether this call created it."""
    user_model = get_user_model()
    user = user_model.objects.filter(email=email).first()
    if user is not None:
        return user, False
    try:
        with transaction.atomic():
            return user_model.objects.create_user(email), True
    except IntegrityError:  # created meanwhile by a concurrent request
        return user_model.objects.get(email=email), False


def _lock_organization_while_active(organization_id: int) -> bool:
    """Whether the organization is active (neither suspended nor being deleted), its row locked FOR
    SHARE until the transaction ends so that it stays so.

    Suspending it and asking for its deletion lock the row FOR NO KEY UPDATE, which FOR SHARE
    conflicts with (a key share would not): one under way is waited for, and the row read again
    then says it is inactive; one that comes after waits for this transaction's commit. Read plainly,
    a suspension committed between the check and the membership let someone join a suspended
    organization (or an invitation, and its email, to one nobody can join). Taken first, before the
    invitations' and the memberships' row locks and the audit chain's lock, as suspension takes the
    organization's row before its audit entry."""
    connection = connections[Organization.objects.db]
    if connection.vendor != "postgresql":
        return Organization.objects.filter(pk=organization_id, is_active=True).exists()
    table, key, active = (connection.ops.quote_name(name) for name in (Organization._meta.db_table, "id", "is_active"))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {table} WHERE {key} = %s AND {active} FOR SHARE", [organization_id])
        return cursor.fetchone() is not None


def _accept(invitation: Invitation, user, ip_address: str | None) -> None:
    if not _lock_organization_while_active(invitation.organization_id):
        # Suspended or being deleted since the invitation was looked up: as the link and the home page
        # say of such an organization's invitation, there is none to use (it stays open for later).
        raise InvitationUnavailable(None)
    now = timezone.now()
    # The conditional update is what makes the link single use, even when two requests race.
    claimed = Invitation.objects.pending(now).filter(pk=invitation.pk).update(accepted_at=now, accepted_by=user)
    if not claimed:
        invitation.refresh_from_db()
        raise InvitationUnavailable(invitation.status(now))
    organization = invitation.organization
    membership, created = Membership.objects.select_for_update().get_or_create(
        user=user, organization=organization, defaults={"role": invitation.role}
    )
    audit_record(
        action="invitation.accepted",
        organization=organization,
        actor=user,
        target=invitation,
        changes={"email": invitation.email, "role": invitation.role},
        ip_address=ip_address,
    )
    if created:
        audit_record(
            action="member.added",
            organization=organization,
            actor=user,
            target=membership,
            changes={"email": user.email, "role": membership.role, "via": "invitation"},
            ip_address=ip_address,
        )
    elif ROLE_RANK[invitation.role] > ROLE_RANK[membership.role]:
        # Already a member: the invitation may raise the role, never lower it.
        previous = membership.role
        membership.role = invitation.role
        membership.save(update_fields=["role"])
        audit_record(
            action="member.role_changed",
            organization=organization,
            actor=user,
            target=membership,
            changes={"email": user.email, "role": [previous, invitation.role], "via": "invitation"},
            ip_address=ip_address,
        )


def audit_sign_in_event(*, user, action: str, ip_address: str | None) -> None:
    """Record a sign-in or sign-out in the audit log of each of the user's organizations (or platform-wide)."""
    organization_ids = list(Membership.objects.filter(user=user).values_list("organization_id", flat=True))
    if not organization_ids:
        audit_record(action=action, actor=user, target=user, ip_address=ip_address)
        return
    for organization in Organization.objects.filter(pk__in=organization_ids):
        audit_record(action=action, organization=organization, actor=user, target=user, ip_address=ip_address)


SIGN_IN_FAILED = "user.sign_in_failed"
SIGN_IN_THROTTLED = "user.sign_in_throttled"
# Who acted, for an attempt by someone who never proved who they are.
NOT_SIGNED_IN = "not signed in"
UNRECORDED_NAME = "(not an email address: not recorded)"


def _typed_address(username: str | None) -> str | None:
    """The name typed at a password sign-in when it is an email address.

    Anything else is not kept: it is often a password typed in the wrong box.
    """
    email = canonical_email(username or "")
    try:
        validate_email(email)
    except ValidationError:
        return None
    return email


def _failure_reason(user) -> str:
    if user is None:
        return "no such account"
    if not user.is_active:
        return "account deactivated"
    if not user.has_usable_password():
        return "account signs in without a password"
    return "wrong password"


def _account_typed(username: str | None):
    """The address typed into the sign-in form (None unless it is one) and its account, if any."""
    email = _typed_address(username)
    return email, (get_user_model().objects.filter(email=email).first() if email else None)


def audit_sign_in_failure(
    *, username: str | None, ip_address: str | None, reason: str = "", device: str | None = None, request=None
) -> None:
    """Record a refused password platform-wide, whoever's address was typed: the address and network, never the password.

    ``reason`` is for a refusal after the password was right (an account that may not use the admin).
    ``device`` is the admin's known browser it came from (accounts.services.ADMIN_DEVICE_COOKIE), kept
    as a digest so that its failures can be counted on their own while the cache is down.
    """
    email, user = _account_typed(username)
    changes = {"email": email or UNRECORDED_NAME, "reason": reason or _failure_reason(user)}
    if device is not None:
        changes["device"] = _device_digest(device)
    audit_record(
        action=SIGN_IN_FAILED,
        actor_label=NOT_SIGNED_IN,
        target=user,
        changes=changes,
        ip_address=ip_address,
        request=request,
    )


def audit_sign_in_throttled(
    *, username: str | None, limit: str, refused_until: datetime, ip_address: str | None, request=None
) -> None:
    """Record that passwords are refused for an address or a network (``limit``) until ``refused_until``.

    Written once per lock, not per refused attempt, so that hammering a locked door does not grow the log.
    """
    email, user = _account_typed(username)
    audit_record(
        action=SIGN_IN_THROTTLED,
        actor_label=NOT_SIGNED_IN,
        target=user,
        changes={"email": email or UNRECORDED_NAME, "limit": limit, "refused_until": refused_until},
        ip_address=ip_address,
        request=request,
    )


def _device_digest(device: str) -> str:
    return hashlib.sha256(f"admin-device:{device}".encode()).hexdigest()[:32]


# Namespaces of the advisory locks that serialize counting a network's or an address's refused
# passwords with recording the next one (the two-key form: apart from the audit chain's lock, and a
# network's key can never be an address's).
_SIGN_IN_NETWORK_LOCK_SPACE = 0x686C706E  # "hlpn"
_SIGN_IN_ADDRESS_LOCK_SPACE = 0x686C7061  # "hlpa"


def lock_sign_in_failures(*, username: str | None, ip_address: str | None, device: str | None = None) -> None:
    """Until the caller's transaction ends, hold what sign_in_failure_times counts for this network
    and this address (or this known browser of it), so that a count, the password check it allows
    and the recording of its failure happen for one attempt at a time.

    Without it, concurrent guesses all count the failures recorded so far, all pass, and together
    get more passwords checked than the limit. Call it inside a transaction; the network first, then
    the address, in every caller, so that two attempts cannot wait for each other. SQLite (the
    embedded mode) needs none: its transactions begin IMMEDIATE, one writer at a time.
    """
    connection = connections[AuditLog.objects.db]
    if connection.vendor != "postgresql":
        return
    subjects = [(_SIGN_IN_NETWORK_LOCK_SPACE, ip_address or "")]
    email = _typed_address(username)
    if email is not None:  # another name is not counted per address (sign_in_failure_times)
        subject = f"device:{_device_digest(device)}" if device is not None else f"address:{email}"
        subjects.append((_SIGN_IN_ADDRESS_LOCK_SPACE, subject))
    with connection.cursor() as cursor:
        for space, subject in subjects:
            key = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "big", signed=True)
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [space, key])


def sign_in_failure_times(
    *,
    since: datetime,
    most: int,
    username: str | None = None,
    ip_address: str | None = None,
    device: str | None = None,
) -> list[datetime]:
    """When passwords were refused since ``since``, newest first (at most ``most``), for the address typed
    as ``username`` (only those from the known browser ``device`` if given) or else from ``ip_address``;
    empty for a name that is not an address (it is not recorded).

    The admin counts these instead of its cache counters when the cache is down.
    """
    failures = AuditLog.objects.filter(action=SIGN_IN_FAILED, created_at__gte=since)
    if username is not None:
        email = _typed_address(username)
        if email is None:
            return []
        failures = failures.filter(changes__email=email)
        if device is not None:
            failures = failures.filter(changes__device=_device_digest(device))
    else:
        failures = failures.filter(ip_address=ip_address) if ip_address else failures.filter(ip_address__isnull=True)
    return list(failures.order_by("-created_at").values_list("created_at", flat=True)[:most])
