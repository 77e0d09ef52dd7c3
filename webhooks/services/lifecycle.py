"""Usage counting, quota notices, retention, and forgetting secrets whose rotation window ended."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from organizations.models import MIN_RETENTION_DAYS, Membership, MonthlyUsage, Organization
from organizations.names import one_line
from organizations.services import audit_record
from webhooks.models import Delivery, Destination, PurgedEventKey, SignatureNonce, Source, WebhookEvent

from .ingest_writer import event_id_digest
from .sender_marks import hookline_test_events

logger = logging.getLogger(__name__)


def record_usage(events: list[WebhookEvent]) -> None:
    """Count processed events per organization and month (called inside the processing transaction).

    Over quota nothing is refused: a webhook is never dropped for billing
    reasons. The owners are told once per month, and again if the quota is changed
    (Organization.save re-arms the notice). Hookline's own test sends are not counted.
    """
    tests = _hookline_test_event_ids(events)
    counts = Counter(
        (event.organization_id, event.received_at.date().replace(day=1)) for event in events if event.id not in tests
    )
    if not counts:
        return
    # In one order for every batch: two processing tasks counting the same organizations lock
    # their rows in the same order and cannot deadlock.
    keys = sorted(counts)
    MonthlyUsage.objects.bulk_create(
        [MonthlyUsage(organization_id=org_id, month=month) for org_id, month in keys],
        ignore_conflicts=True,
    )
    for org_id, month in keys:
        count = counts[(org_id, month)]
        MonthlyUsage.objects.filter(organization_id=org_id, month=month).update(events=F("events") + count)
        over = MonthlyUsage.objects.filter(
            organization_id=org_id,
            month=month,
            quota_notified_at__isnull=True,
            events__gt=F("organization__monthly_event_quota"),
        )
        if over.update(quota_notified_at=timezone.now()):
            transaction.on_commit(lambda org_id=org_id, month=month: _notify_quota_exceeded(org_id, month))


def _hookline_test_event_ids(events: list[WebhookEvent]) -> set:
    return {row["id"] for row in hookline_test_events(WebhookEvent.objects.filter(id__in=[e.id for e in events]), "id")}


def _notify_quota_exceeded(organization_id: int, month: date) -> None:
    organization = Organization.objects.get(pk=organization_id)
    owners = list(
        Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).values_list(
            "user__email", flat=True
        )
    )
    try:
        send_mail(
            subject=f"[Hookline] {one_line(organization.name)} is over its monthly event quota",
            message=(
                f"{organization.name} has received more than {organization.monthly_event_quota} events in "
                f"{month:%B %Y}. Nothing is refused or delayed: every webhook is still accepted and delivered. "
                "Consider a larger plan.\n"
            ),
            from_email=None,
            recipient_list=owners,
        )
    except Exception:
        logger.exception("could not send the quota notice")


RETENTION_PURGED_ACTION = "retention.purged"


def purge_expired_events(*, batch_size: int | None = None, now=None) -> int:
    """Delete events past their organization's retention, with deliveries and attempts, in small batches.

    An event that is not finished (not yet fanned out, or with a delivery still waiting or
    being sent, say to a paused destination) is kept until it is: retention must never drop
    a webhook that was acknowledged but not yet delivered. Nothing younger than
    MIN_RETENTION_DAYS is deleted, whatever the stored retention says. Each run records one
    audit entry per organization whose events it deleted.
    """
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    now = now or timezone.now()
    # Signed tokens past the age at which their signatures are refused anyway (see SignatureNonce).
    kept = timedelta(seconds=SignatureNonce.KEPT_SECONDS + SignatureNonce.CLOCK_SKEW_SECONDS)
    SignatureNonce.objects.filter(created_at__lt=now - kept).delete()
    _forget_expired_keys(now, batch_size)
    deleted = 0
    for organization in Organization.objects.only("pk", "name", "retention_days"):
        # The model refuses less than a day; a value stored past it (an UPDATE, an old row) must
        # still not wipe the tenant's history at the next run.
        retention_days = max(organization.retention_days, MIN_RETENTION_DAYS)
        cutoff = now - timedelta(days=retention_days)
        counts = Counter()
        try:
            _purge_organization(organization, cutoff, batch_size, counts, now)
        finally:
            # Also after a failed batch: what the earlier batches deleted is gone for good.
            if counts["events"] or counts["rejected_requests"]:
                audit_record(
                    action=RETENTION_PURGED_ACTION,
                    organization=organization,
                    changes={
                        "events": counts["events"],
                        "rejected_requests": counts["rejected_requests"],
                        "deliveries": counts["deliveries"],
                        "retention_days": retention_days,
                        "cutoff": cutoff.isoformat(),
                    },
                )
        deleted += counts["events"] + counts["rejected_requests"]
    return deleted


def _forget_expired_keys(now, batch_size: int) -> None:
    """Delete the PurgedEventKey rows past their forget_after, ``batch_size`` at a time: a run's keys
    all expire together, as many as the events it purged."""
    expired = PurgedEventKey.objects.filter(forget_after__lt=now).order_by()
    while True:
        ids = list(expired.values_list("pk", flat=True)[:batch_size])
        if ids:
            PurgedEventKey.objects.filter(pk__in=ids).delete()
        if len(ids) < batch_size:
            return


def _purge_organization(organization: Organization, cutoff, batch_size: int, counts: Counter, now) -> None:
    """Delete the organization's finished events received before ``cutoff``; adds what it deleted to ``counts``.

    Each deleted event with a provider event id leaves its key (PurgedEventKey) for KEPT_DAYS more,
    in the same transaction: a redelivery is still a duplicate once the body is gone."""
    while True:
        ids = list(_expired_and_finished(organization, cutoff).order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            return
        # One short transaction per batch: no long locks, bounded memory. The events and their
        # deliveries are locked and looked at again first, so that an event retried since the
        # ids were read is kept, and a replay started now waits and then finds it gone.
        with transaction.atomic():
            # In id order, as recording locks deliveries (delivery._lock_in_id_order): the models'
            # newest-first default would lock them the other way round, a lock cycle with it.
            list(
                WebhookEvent.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True)
            )
            list(
                Delivery.objects.select_for_update()
                .filter(event_id__in=ids)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            batch = _expired_and_finished(organization, cutoff).filter(pk__in=ids)
            rejected = batch.filter(status=WebhookEvent.Status.REJECTED).count()
            _keep_keys(batch, forget_after=now + timedelta(days=PurgedEventKey.KEPT_DAYS))
            removed = batch.delete()[1]
        events = removed.get(WebhookEvent._meta.label, 0)
        counts["rejected_requests"] += rejected
        counts["events"] += events - rejected
        counts["deliveries"] += removed.get(Delivery._meta.label, 0)
        if len(ids) < batch_size:
            return


def _keep_keys(events, *, forget_after) -> None:
    keyed = events.exclude(status=WebhookEvent.Status.REJECTED).filter(provider_event_id__isnull=False)
    PurgedEventKey.objects.bulk_create(
        [
            PurgedEventKey(
                source_id=source_id,
                event_id_digest=event_id_digest(provider_event_id),
                original_id=event_id,
                received_at=received_at,
                forget_after=forget_after,
            )
            for event_id, source_id, provider_event_id, received_at in keyed.values_list(
                "id", "source_id", "provider_event_id", "received_at"
            )
        ],
        ignore_conflicts=True,  # a key left by a redelivery stored in the instant of an earlier purge
    )


def _expired_and_finished(organization: Organization, cutoff):
    return (
        WebhookEvent.objects.filter(organization=organization, received_at__lt=cutoff)
        .exclude(status=WebhookEvent.Status.RECEIVED)
        .exclude(deliveries__status__in=(Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT))
    )


def forget_expired_previous_secrets(now=None) -> int:
    """Erase the previous secrets of rotations whose overlap has ended; returns how many were erased.

    Once its window is over a previous secret neither verifies nor signs anything, so keeping
    it would only leave one more secret to leak. A rotation running at the same time is safe:
    the UPDATE waits for its row lock and then re-checks the expiry it set.
    """
    now = now or timezone.now()
    return sum(
        model.objects.filter(previous_secret_expires_at__lte=now).update(
            previous_secret="", previous_secret_expires_at=None
        )
        for model in (Source, Destination)
    )
