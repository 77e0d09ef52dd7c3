"""Receivers of accounts' and Django's auth signals: accounts does not import organizations, so the
audit entries for signing in and out are connected from here."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from accounts.http import client_ip
from accounts.signals import account_deactivated, sessions_revoked

# accounts.services and .team are imported by each receiver, when someone signs in or out: at
# start-up (every process, each operator command included) they cost more than the rest of this
# app's set-up, for signals only the web process sends.


def _ip(request) -> str | None:
    return client_ip(request) if request is not None else None


@receiver(user_logged_in, dispatch_uid="organizations.audit_sign_in")
def on_sign_in(sender, request, user, **kwargs):
    from .team import audit_sign_in_event

    # Pending invitations are offered on the home page, not accepted here (team.invitation_join).
    audit_sign_in_event(user=user, action="user.signed_in", ip_address=_ip(request))


@receiver(user_logged_out, dispatch_uid="organizations.audit_sign_out")
def on_sign_out(sender, request, user, **kwargs):
    from .team import audit_sign_in_event

    if user is not None:
        audit_sign_in_event(user=user, action="user.signed_out", ip_address=_ip(request))


@receiver(sessions_revoked, dispatch_uid="organizations.audit_sessions_revoked")
def on_sessions_revoked(sender, user, request=None, **kwargs):
    from .team import audit_sign_in_event

    audit_sign_in_event(user=user, action="user.signed_out_everywhere", ip_address=_ip(request))


@receiver(account_deactivated, dispatch_uid="organizations.revoke_invitations_of_deactivated")
def on_account_deactivated(sender, user, **kwargs):
    from .team import invitations_revoke_sent_by_deactivated

    invitations_revoke_sent_by_deactivated(user=user)


@receiver(user_login_failed, dispatch_uid="organizations.audit_sign_in_failed")
def on_sign_in_failed(sender, credentials, request=None, **kwargs):
    from accounts.services import ADMIN_DEVICE_ATTRIBUTE

    from .team import audit_sign_in_failure

    # Only the name typed is taken from ``credentials``: Django masks the password there, but
    # another backend's secret could travel under a name it does not know to mask.
    username = credentials.get(get_user_model().USERNAME_FIELD, credentials.get("username"))
    # The admin's sign-in form notes which known browser this was (webhooks.admin.login.AdminLoginForm).
    device = getattr(request, ADMIN_DEVICE_ATTRIBUTE, None) if request is not None else None
    audit_sign_in_failure(username=username, ip_address=_ip(request), device=device, request=request)
