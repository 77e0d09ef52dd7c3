"""The admin's password sign-in: limited per address and per network, every refused password audited.

The limits are the passwordless sign-in's counters in the cache (accounts.services). When the cache
is down the admin must still let its operators in, so the same limits are counted instead from the
refused passwords in the audit log, which every refusal writes to PostgreSQL anyway (Redis holds
nothing that cannot be rebuilt from PostgreSQL); each attempt is then counted, checked and recorded
while it holds its address and its network (admin_password_check). Only two things are lost
meanwhile: a right password does not clear its address's earlier failures, and a lock's first
refusal is not audited.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import services as sign_in
from accounts.http import client_ip
from organizations.team import (
    audit_sign_in_failure,
    audit_sign_in_throttled,
    lock_sign_in_failures,
    sign_in_failure_times,
)

logger = logging.getLogger(__name__)


@contextmanager
def admin_password_check(
    *, username: str, ip_address: str | None, device: str | None = None, request=None
) -> Iterator[datetime | None]:
    """Until when passwords are refused for this address or network (or this known browser, see
    accounts.services.ADMIN_DEVICE_COOKIE), or None: then the password is checked within the block.

    The attempt is counted in the cache. With the cache down, the failures the audit log holds are
    counted, and the block runs in a transaction that holds those counts (lock_sign_in_failures) until
    the failure it records is in: concurrent guesses are counted one after another, none of them
    before the one ahead of it is recorded, so together they get no more passwords checked than the
    limit. An exception out of the block undoes what it recorded then: catch what is to be kept.
    """
    try:
        attempt = sign_in.admin_password_attempt(email=username, ip_address=ip_address, device=device)
    except sign_in.SignInUnavailable:
        attempt = None
    if attempt is None:
        with transaction.atomic():
            lock_sign_in_failures(username=username, ip_address=ip_address, device=device)
            yield _refused_until_by_the_audit_log(username=username, ip_address=ip_address, device=device)
        return
    if attempt.refused_until is None:
        yield None
        return
    refused_until = datetime.fromtimestamp(attempt.refused_until, tz=UTC)
    for limit in attempt.newly_locked:
        audit_sign_in_throttled(
            username=username, limit=limit, refused_until=refused_until, ip_address=ip_address, request=request
        )
    yield refused_until


def admin_password_accepted(*, username: str, ip_address: str | None, device: str | None = None) -> None:
    try:
        sign_in.admin_password_accepted(email=username, ip_address=ip_address, device=device)
    except sign_in.SignInUnavailable:
        pass  # the audit log's count has no reset: the failures age out of the window instead


def _refused_until_by_the_audit_log(*, username: str, ip_address: str | None, device: str | None) -> datetime | None:
    # A sliding window here: the latest failures within the window, and the oldest of them leaving it.
    # A known browser is held to its network's limit and to the address's limit counted over its own
    # failures only, so that a stranger's failures for the address do not lock the admin out during the
    # outage either, while a stolen cookie still gets no more guesses than an address.
    window = timedelta(seconds=settings.SIGN_IN_RATE_WINDOW_SECONDS)
    since = _now() - window
    limits = sign_in.admin_password_limits()
    failures = {"network": sign_in_failure_times(since=since, most=limits["network"], ip_address=ip_address)}
    failures["address"] = sign_in_failure_times(since=since, most=limits["address"], username=username, device=device)
    reached = [times[-1] + window for scope, times in failures.items() if len(times) >= limits[scope]]
    if not reached:
        return None
    logger.warning("admin password refused: the audit log holds too many recent failures (the cache is down)")
    return max(reached)


class AdminLoginForm(AdminAuthenticationForm):
    """Django's admin sign-in form, limited per address and per network before the password is checked."""

    # Set when the attempt was refused without checking the password.
    refused_until: datetime | None = None

    def clean(self):
        username = self.cleaned_data.get("username")
        if username is None or not self.cleaned_data.get("password"):
            return super().clean()  # a field is missing: nothing is checked, so nothing is counted
        ip_address = client_ip(self.request)
        device = sign_in.admin_device_for(self.request.COOKIES.get(sign_in.ADMIN_DEVICE_COOKIE), username)
        setattr(self.request, sign_in.ADMIN_DEVICE_ATTRIBUTE, device)  # for the audit of a wrong password
        with admin_password_check(
            username=username, ip_address=ip_address, device=device, request=self.request
        ) as refused_until:
            self.refused_until = refused_until
            # Checked within the block, and its failure recorded there (the refusal is raised after it).
            wrong = self._check_password(username, ip_address) if refused_until is None else None
        if self.refused_until is not None:
            raise ValidationError(
                refusal_message(self.refused_until, known_browser=device is not None), code="throttled"
            )
        if wrong is not None:
            raise wrong
        admin_password_accepted(username=username, ip_address=ip_address, device=device)
        return self.cleaned_data

    def _check_password(self, username: str, ip_address: str | None) -> ValidationError | None:
        """Django's check of the password and the account, its refusal returned rather than raised."""
        try:
            super().clean()  # a wrong password sends user_login_failed, which organizations audits
        except ValidationError as refusal:
            if self.user_cache is not None:  # the password was right, but the account may not use the admin
                audit_sign_in_failure(
                    username=username, ip_address=ip_address, reason="not a staff account", request=self.request
                )
            return refusal
        return None

    def retry_after_seconds(self) -> int | None:
        if self.refused_until is None:
            return None
        return max(1, math.ceil((self.refused_until - _now()).total_seconds()))


def _now() -> datetime:
    # The sign-in counters' clock, which tests move instead of sleeping.
    return datetime.fromtimestamp(sign_in.clock(), tz=UTC)


def refusal_message(refused_until: datetime, *, known_browser: bool = False) -> str:
    minutes = max(1, math.ceil((refused_until - _now()).total_seconds() / 60))
    # Rounded up to the minute shown: trying at the minute named must work.
    shown = refused_until + timedelta(seconds=59, microseconds=999_999)
    when = f"Try again after {timezone.localtime(shown):%H:%M %Z} (in {minutes} minute{'s' if minutes != 1 else ''})."
    if known_browser:
        # Counted for this browser alone (or, with the cache down, its network): other browsers are not held back.
        return (
            f"Too many failed sign-in attempts from this browser or from your network. {when} "
            "Until then every attempt from here is refused, even with the right password."
        )
    return (
        f"Too many failed sign-in attempts for this address or from your network. {when} "
        "Until then every attempt is refused, even with the right password, except from a browser "
        "this address has signed in from before."
    )
