"""Telling an organization's admins when delivery goes wrong, without flooding them."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import Case, CharField, Count, Q, Value, When
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from organizations.models import Membership
from organizations.names import one_line
from webhooks.models import Delivery, Destination
from webhooks.selectors import EVENT_STATUS_FAILED

from .dashboard_stats import destination_health
from .delivery import DESTINATION_ENCRYPTED_FIELDS, INACTIVE_DESTINATION_ERROR, SOURCE_BEING_DELETED_ERROR
from .lifecycle import PAUSED_HOLD_ERROR_START, SUSPENDED_HOLD_ERROR_START

logger = logging.getLogger(__name__)


def organization_admin_emails(organization_id: int) -> list[str]:
    return list(
        Membership.objects.filter(
            organization_id=organization_id,
            role__in=(Membership.Role.OWNER, Membership.Role.ADMIN),
            user__is_active=True,
        ).values_list("user__email", flat=True)
    )


# How long a sender holds an owed pause notice before the sweeper may take it over: its email went
# out or failed within that time, or its process is gone (then the email may go out twice, never not).
PAUSE_NOTICE_HOLD = timedelta(minutes=10)


def alert_destination_paused(destination_id: int, now=None) -> bool:
    """Send the email that an automatic pause owes the organization's admins, if it is due and still
    owed (Destination.pause_notice_due_at); True if it was sent.

    Called after the pause's commit and by the sweeper: the one that moves the owed notice's due time
    ahead sends it, the other finds it no longer due. It is cleared once sent, or when there is nothing
    to say: the destination was resumed meanwhile, or its admins had a pause email within
    ALERT_INTERVAL_SECONDS. An email that failed stays owed and is tried again after PAUSE_NOTICE_HOLD.
    """
    now = now or timezone.now()
    held_until = now + PAUSE_NOTICE_HOLD
    claimed = Destination.objects.filter(pk=destination_id, pause_notice_due_at__lte=now).update(
        pause_notice_due_at=held_until
    )
    if not claimed:
        return False
    ours = Destination.objects.filter(pk=destination_id, pause_notice_due_at=held_until)
    destination = (
        Destination.objects.select_related("organization").defer(*DESTINATION_ENCRYPTED_FIELDS).get(pk=destination_id)
    )
    interval = timedelta(seconds=settings.ALERT_INTERVAL_SECONDS)
    if (
        destination.paused_at is None
        or destination.being_deleted  # asked since the pause: no news to its admins
        or (destination.last_alerted_at is not None and destination.last_alerted_at > now - interval)
    ):
        ours.update(pause_notice_due_at=None)
        return False
    context = {
        "destination": destination,
        "organization_name": destination.organization.name,
        # The same count as the destination page's "Waiting" card.
        "waiting": destination_health(destination=destination, now=now).waiting,
        # From then on, the retention run marks dead what it held longer (services.lifecycle).
        "hold_days": settings.PAUSED_DESTINATION_HOLD_DAYS,
        "destination_link": settings.PUBLIC_BASE_URL
        + reverse("dashboard:destination_detail", args=[destination.organization.slug, destination.pk]),
    }
    message = EmailMultiAlternatives(
        subject=f"[Hookline] Destination paused: {one_line(destination.name)}",
        body=render_to_string("emails/destination_paused.txt", context),
        to=organization_admin_emails(destination.organization_id),
    )
    message.attach_alternative(render_to_string("emails/destination_paused.html", context), "text/html")
    message.send()
    Destination.objects.filter(pk=destination_id).update(last_alerted_at=now)
    ours.update(pause_notice_due_at=None)  # unless a pause since (resumed and paused again) owes its own
    return True


def send_owed_pause_emails(now=None, *, most: int = 100) -> int:
    """The sweeper's part: send the pause emails still owed (their after-commit step never ran, or
    their email failed), the longest owed first; how many were sent."""
    now = now or timezone.now()
    owed = Destination.objects.filter(pause_notice_due_at__lte=now).order_by("pause_notice_due_at")
    sent = 0
    for destination_id in owed.values_list("pk", flat=True)[:most]:
        try:
            sent += alert_destination_paused(destination_id, now=now)
        except Exception:  # one destination's mail trouble must not hold back the others
            logger.exception("could not send the paused-destination alert of destination %s", destination_id)
    return sent


def send_dead_letter_digests(now=None) -> int:
    """One email per destination that has newly dead deliveries, at most once per ALERT_INTERVAL."""
    now = now or timezone.now()
    interval = timedelta(seconds=settings.ALERT_INTERVAL_SECONDS)
    sent = 0
    candidates = Destination.objects.filter(
        Q(dead_digest_sent_at__isnull=True) | Q(dead_digest_sent_at__lt=now - interval),
        deliveries__status=Delivery.Status.DEAD,
        is_active=True,  # an operator turned it off: its dead-lettered backlog is no news to report
    ).distinct()
    # Not the secrets: one that no key decrypts would otherwise stop every digest after its destination's.
    for destination in candidates.select_related("organization").defer(*DESTINATION_ENCRYPTED_FIELDS):
        try:
            sent += _send_dead_letter_digest_if_due(destination, now)
        except Exception:  # one destination's trouble (its mail, a value a template trips on) holds back no other
            logger.exception("could not send the dead-letter digest of destination %s", destination.pk)
    return sent


def _send_dead_letter_digest_if_due(destination: Destination, now) -> bool:
    """Send the destination's digest if it has newly dead deliveries and no other run took it; whether it did."""
    since = destination.dead_digest_sent_at or destination.created_at
    dead = destination.deliveries.filter(status=Delivery.Status.DEAD, completed_at__gt=since).exclude(
        last_error__in=(INACTIVE_DESTINATION_ERROR, SOURCE_BEING_DELETED_ERROR)
    )
    # Given up behind a long pause or suspension: not sent, whatever status code an older attempt left.
    held = Case(
        When(last_error__startswith=PAUSED_HOLD_ERROR_START, then=Value("pause")),
        When(last_error__startswith=SUSPENDED_HOLD_ERROR_START, then=Value("suspension")),
        default=Value(""),
        output_field=CharField(),
    )
    summary = dead.annotate(held=held).values("last_status_code", "held").annotate(n=Count("id")).order_by("-n")
    total = sum(row["n"] for row in summary)
    if not total:
        return False
    claimed = Destination.objects.filter(pk=destination.pk, dead_digest_sent_at=destination.dead_digest_sent_at).update(
        dead_digest_sent_at=now
    )
    if not claimed:
        return False  # another beat process sent it
    try:
        _send_dead_letter_digest(destination=destination, since=since, total=total, summary=list(summary))
    except Exception:
        # Still owed: the next run sends it (unless another run claimed it since).
        Destination.objects.filter(pk=destination.pk, dead_digest_sent_at=now).update(
            dead_digest_sent_at=destination.dead_digest_sent_at
        )
        raise
    return True


def _send_dead_letter_digest(*, destination: Destination, since, total: int, summary: list[dict]) -> None:
    organization = destination.organization
    slug = organization.slug
    context = {
        "destination": destination,
        "organization_name": organization.name,
        "since": since,
        "total": total,
        "summary": summary,
        # What a retry waits for, in the closing line: the organization active again while it is
        # suspended (its dashboard is closed meanwhile, and nothing is sent), and the endpoint working
        # again for those that failed there (or were held behind its pause); those held while it was
        # suspended and reactivated since can be retried now.
        "organization_suspended": not organization.is_active and not organization.being_deleted,
        "failed_at_the_endpoint": any(row["held"] != "suspension" for row in summary),
        # The events list filtered to what failed at this destination, and its page with "Retry failed".
        "events_link": settings.PUBLIC_BASE_URL
        + reverse("dashboard:events", args=[slug])
        + "?"
        + urlencode({"status": EVENT_STATUS_FAILED, "destination": destination.pk}),
        "destination_link": settings.PUBLIC_BASE_URL
        + reverse("dashboard:destination_detail", args=[slug, destination.pk]),
    }
    subject = (
        f"[Hookline] {total} {'delivery' if total == 1 else 'deliveries'} to {one_line(destination.name)} "
        "failed permanently"
    )
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("emails/dead_letter.txt", context),
        to=organization_admin_emails(destination.organization_id),
    )
    message.attach_alternative(render_to_string("emails/dead_letter.html", context), "text/html")
    message.send()
