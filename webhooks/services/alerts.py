"""Telling an organization's admins when delivery goes wrong, without flooding them."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Count, Q
from django.utils import timezone

from organizations.models import Membership
from webhooks.models import Delivery, Destination


def organization_admin_emails(organization_id: int) -> list[str]:
    return list(
        Membership.objects.filter(
            organization_id=organization_id,
            role__in=(Membership.Role.OWNER, Membership.Role.ADMIN),
            user__is_active=True,
        ).values_list("user__email", flat=True)
    )


def alert_destination_paused(destination_id: int) -> bool:
    """Email the admins that a destination was paused; at most once per ALERT_INTERVAL per destination."""
    now = timezone.now()
    interval = timedelta(seconds=settings.ALERT_INTERVAL_SECONDS)
    # The conditional update is the once-per-interval guard, even with several workers.
    claimed = (
        Destination.objects.filter(pk=destination_id)
        .filter(Q(last_alerted_at__isnull=True) | Q(last_alerted_at__lt=now - interval))
        .update(last_alerted_at=now)
    )
    if not claimed:
        return False
    destination = Destination.objects.select_related("organization").get(pk=destination_id)
    waiting = destination.deliveries.filter(status=Delivery.Status.PENDING).count()
    send_mail(
        subject=f"[Hookline] Destination paused: {destination.name}",
        message=(
            f"Deliveries to {destination.name} ({destination.url}) in {destination.organization.name} are paused.\n\n"
            f"Reason: {destination.pause_reason}\n"
            f"Waiting deliveries: {waiting}. Nothing is lost: they are sent, in order of arrival, "
            "when the destination is resumed.\n"
        ),
        from_email=None,
        recipient_list=organization_admin_emails(destination.organization_id),
    )
    return True


def send_dead_letter_digests(now=None) -> int:
    """One email per destination that has newly dead deliveries, at most once per ALERT_INTERVAL."""
    now = now or timezone.now()
    interval = timedelta(seconds=settings.ALERT_INTERVAL_SECONDS)
    sent = 0
    candidates = Destination.objects.filter(
        Q(dead_digest_sent_at__isnull=True) | Q(dead_digest_sent_at__lt=now - interval),
        deliveries__status=Delivery.Status.DEAD,
    ).distinct()
    for destination in candidates.select_related("organization"):
        since = destination.dead_digest_sent_at or destination.created_at
        dead = destination.deliveries.filter(status=Delivery.Status.DEAD, completed_at__gt=since)
        summary = dead.values("last_status_code").annotate(n=Count("id")).order_by("-n")
        total = sum(row["n"] for row in summary)
        if not total:
            continue
        claimed = Destination.objects.filter(
            pk=destination.pk, dead_digest_sent_at=destination.dead_digest_sent_at
        ).update(dead_digest_sent_at=now)
        if not claimed:
            continue  # another beat process sent it
        lines = [f"  {row['n']} × {row['last_status_code'] or 'no response'}" for row in summary]
        send_mail(
            subject=f"[Hookline] {total} deliveries to {destination.name} failed permanently",
            message=(
                f"Since {since:%Y-%m-%d %H:%M} UTC, {total} deliveries to {destination.name} ({destination.url}) "
                f"in {destination.organization.name} ran out of retries or were refused:\n"
                + "\n".join(lines)
                + "\n\nThey are kept: retry them from the dashboard, the admin or `retry_delivery`.\n"
            ),
            from_email=None,
            recipient_list=organization_admin_emails(destination.organization_id),
        )
        sent += 1
    return sent
