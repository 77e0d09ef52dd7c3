"""The audit log's retention (AUDIT_LOG_RETENTION_DAYS) in the hourly retention run."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from organizations.models import AuditLog
from organizations.services import PURGE_ACTION, audit_record, audit_verify_chain
from webhooks.services import lifecycle


def older_and_newer_entries(organization, older: int, newer: int):
    """``older`` entries, then the time between them, then ``newer`` entries (with those of the fixtures
    before the older). The run is handed a ``now`` a retention after that time: entries cannot be
    back-dated without breaking their hashes."""
    for number in range(older):
        audit_record(action=f"old.{number}", organization=organization)
    between = timezone.now()
    kept = [audit_record(action=f"new.{number}", organization=organization).pk for number in range(newer)]
    return between, kept


def ids_except_purges() -> list[int]:
    return list(AuditLog.objects.exclude(action=PURGE_ACTION).order_by("id").values_list("id", flat=True))


def test_the_hourly_run_deletes_entries_past_the_audit_log_retention_and_the_chain_verifies(organization, settings):
    # The audit log only shrank when an operator ran purge_audit_log: it grew forever everywhere else.
    assert settings.AUDIT_LOG_RETENTION_DAYS == 365  # the default
    between, kept = older_and_newer_entries(organization, older=3, newer=2)

    lifecycle.purge_expired_events(now=between + timedelta(days=365))

    assert ids_except_purges() == kept
    purge = AuditLog.objects.get(action=PURGE_ACTION)
    assert purge.actor_type == AuditLog.ActorType.SYSTEM and purge.changes["first_kept_id"] == kept[0]
    assert audit_verify_chain().ok
    # Nothing more past the retention: the next run adds no entry.
    lifecycle.purge_expired_events(now=between + timedelta(days=365))
    assert AuditLog.objects.filter(action=PURGE_ACTION).count() == 1


def test_entries_within_the_audit_log_retention_are_kept(organization, settings):
    settings.AUDIT_LOG_RETENTION_DAYS = 30
    before = ids_except_purges()
    lifecycle.purge_expired_events(now=timezone.now() + timedelta(days=29))
    assert ids_except_purges() == before and not AuditLog.objects.filter(action=PURGE_ACTION).exists()


def test_an_audit_log_retention_of_zero_keeps_the_entries_forever(organization, settings):
    settings.AUDIT_LOG_RETENTION_DAYS = 0
    before = ids_except_purges()
    lifecycle.purge_expired_events(now=timezone.now() + timedelta(days=3650))
    assert ids_except_purges() == before and not AuditLog.objects.filter(action=PURGE_ACTION).exists()


def test_a_large_audit_backlog_is_purged_a_batch_per_run_once_the_time_is_out(organization, settings):
    # A first purge of a years-old log in one run (one statement) would outlast Celery's time limits.
    between, kept = older_and_newer_entries(organization, older=4, newer=1)
    backlog = len(ids_except_purges()) - len(kept)
    now = between + timedelta(days=settings.AUDIT_LOG_RETENTION_DAYS)

    runs = 0
    while True:
        left_before = len(ids_except_purges()) - len(kept)
        run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
        runs += 1
        # One batch per run, each committed with its own purge entry: the chain verifies between runs.
        assert len(ids_except_purges()) - len(kept) == max(left_before - 2, 0)
        assert audit_verify_chain().ok
        if not run.stopped_in_cleanup:
            break
        assert runs <= backlog
    assert ids_except_purges() == kept
    purges = list(AuditLog.objects.filter(action=PURGE_ACTION).order_by("id").values_list("changes", flat=True))
    assert [purge["deleted"] for purge in purges] == [2] * (backlog // 2) + [backlog % 2] * (backlog % 2)
    assert purges[-1]["first_kept_id"] == kept[0]


def test_the_admin_and_the_dashboard_say_how_long_entries_are_kept(client, organization, owner, settings):
    # The organization's deletion page said the audit log "keeps its entries", as if forever.
    from django.contrib.auth import get_user_model
    from django.urls import reverse

    settings.AUDIT_LOG_RETENTION_DAYS = 90
    client.force_login(owner)
    assert (
        "Entries are kept for 90 days after they are written."
        in client.get(reverse("dashboard:audit", args=[organization.slug])).content.decode()
    )

    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    listing = client.get(reverse("admin:organizations_auditlog_changelist")).content.decode()
    assert "Entries are kept for 90 days after they are written" in listing
    deletion = client.get(reverse("admin:organizations_organization_delete", args=[organization.pk])).content.decode()
    assert "the audit log keeps its entries, as any organization's, for 90 days after they are written." in deletion

    settings.AUDIT_LOG_RETENTION_DAYS = 0
    deletion = client.get(reverse("admin:organizations_organization_delete", args=[organization.pk])).content.decode()
    assert "the audit log keeps its entries, as any organization's, forever." in deletion
