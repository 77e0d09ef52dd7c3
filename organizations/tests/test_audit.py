"""The audit log's hash chain, its append-only trigger, the verification command and the purge."""

import json
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import RequestFactory
from django.utils import timezone

from conftest import UserFactory
from organizations.models import AuditLog, Organization
from organizations.services import (
    GENESIS_HASH,
    PURGE_ACTION,
    SECRET_MASK,
    audit_entry_hash,
    audit_purge,
    audit_record,
    audit_verify_chain,
)

pytestmark = pytest.mark.django_db


def verify_json() -> tuple[dict, bool]:
    from io import StringIO

    out = StringIO()
    try:
        call_command("verify_audit_log", "--json", stdout=out)
        failed = False
    except CommandError:
        failed = True
    return json.loads(out.getvalue()), failed


def tamper(sql: str, params=()) -> None:
    # The test role is a superuser: replica mode skips ordinary triggers, as an attacker with
    # direct database access could.
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")


def test_entries_chain_to_each_other_and_mask_secrets(organization):
    user = UserFactory()
    request = RequestFactory().post("/", REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="pytest-agent")
    entry = audit_record(
        action="source.changed",
        organization=organization,
        actor=user,
        target=organization,
        changes={"name": ["a", "b"], "secret": ["old", "new"], "nested": {"api_token": "t"}, "secret_hint": "…abcd"},
        request=request,
    )
    previous = AuditLog.objects.filter(id__lt=entry.pk).order_by("-id").first()
    assert entry.previous_hash == previous.entry_hash
    assert entry.entry_hash == audit_entry_hash(AuditLog.objects.get(pk=entry.pk))
    assert entry.changes == {
        "name": ["a", "b"],
        "secret": SECRET_MASK,
        "nested": {"api_token": SECRET_MASK},
        "secret_hint": "…abcd",
    }
    assert (entry.ip_address, entry.user_agent, entry.actor_user_id) == ("203.0.113.9", "pytest-agent", user.pk)
    assert entry.organization_label == "Acme"
    report = audit_verify_chain()
    assert report.ok and report.checked == AuditLog.objects.count() and report.last_entry_hash == entry.entry_hash


def test_behind_the_router_the_forwarded_address_is_recorded(settings):
    settings.TRUST_X_FORWARDED_FOR = True
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.1.1.1, 198.51.100.4")
    assert audit_record(action="seen", request=request).ip_address == "198.51.100.4"
    settings.TRUST_X_FORWARDED_FOR = False
    assert audit_record(action="seen", request=request).ip_address == "10.0.0.2"


def test_odd_numbers_in_changes_still_verify_after_reading_back(organization):
    entry = audit_record(
        action="numbers",
        changes={"huge": 1e100, "tiny": 1e-7, "ratio": 0.1, "whole": 3.0, "nan": float("nan"), "big": 2**70},
    )
    assert entry.changes["huge"] == 10**100 and entry.changes["nan"] == "nan"
    assert AuditLog.objects.get(pk=entry.pk).entry_hash == audit_entry_hash(AuditLog.objects.get(pk=entry.pk))
    assert audit_verify_chain().ok


def test_the_first_entry_starts_from_the_genesis_hash(organization):
    assert AuditLog.objects.order_by("id").first().previous_hash == GENESIS_HASH


def test_the_database_refuses_update_and_delete(organization):
    entry = AuditLog.objects.first()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.filter(pk=entry.pk).update(action="nothing.happened")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.filter(pk=entry.pk).delete()
    assert AuditLog.objects.get(pk=entry.pk).action == entry.action


def test_deleting_users_and_organizations_keeps_their_entries(organization):
    user = UserFactory()
    audit_record(action="user.did_something", organization=organization, actor=user)
    user.delete()
    Organization.objects.filter(pk=organization.pk).delete()
    entry = AuditLog.objects.get(action="user.did_something")
    assert entry.actor_label == user.email and entry.organization_label == "Acme"
    assert audit_verify_chain().ok


def test_changing_a_row_in_sql_is_detected(organization):
    for number in range(3):
        audit_record(action=f"step.{number}", organization=organization)
    target = AuditLog.objects.get(action="step.1")
    tamper("UPDATE organizations_auditlog SET actor_label = 'someone else' WHERE id = %s", [target.pk])
    report, failed = verify_json()
    assert failed and not report["ok"]
    assert report["broken_entry_id"] == target.pk and "content" in report["reason"]


def test_removing_a_row_in_sql_is_detected(organization):
    for number in range(3):
        audit_record(action=f"step.{number}", organization=organization)
    removed = AuditLog.objects.get(action="step.1")
    tamper("DELETE FROM organizations_auditlog WHERE id = %s", [removed.pk])
    report, failed = verify_json()
    assert failed and report["broken_entry_id"] == AuditLog.objects.get(action="step.2").pk


def test_removing_the_oldest_rows_in_sql_is_detected(organization):
    audit_record(action="later", organization=organization)
    oldest = AuditLog.objects.order_by("id").first()
    tamper("DELETE FROM organizations_auditlog WHERE id = %s", [oldest.pk])
    report, failed = verify_json()
    assert failed and "oldest" in report["reason"]


def test_an_intact_log_verifies_with_exit_zero(organization, capsys):
    call_command("verify_audit_log")
    assert capsys.readouterr().out.startswith("OK:")


def test_purge_deletes_old_entries_is_audited_and_the_chain_still_verifies(organization):
    old_entries = AuditLog.objects.count()
    cutoff = timezone.now()
    kept = [audit_record(action=f"kept.{number}", organization=organization) for number in range(2)]
    admin = UserFactory()
    deleted = audit_purge(before=cutoff, actor=admin)
    assert deleted == old_entries
    assert list(AuditLog.objects.order_by("id").values_list("pk", flat=True))[:2] == [entry.pk for entry in kept]
    purge = AuditLog.objects.get(action=PURGE_ACTION)
    assert purge.actor_user_id == admin.pk and purge.changes["deleted"] == old_entries
    assert purge.changes["chain_anchor"] == kept[0].previous_hash
    assert audit_verify_chain().ok
    # A later entry still chains, and a second purge of everything starts over from the genesis.
    audit_record(action="after.purge")
    assert audit_verify_chain().ok
    audit_purge(before=timezone.now() + timedelta(seconds=1))
    assert list(AuditLog.objects.values_list("action", flat=True)) == [PURGE_ACTION]
    assert audit_verify_chain().ok


def test_the_purge_permission_ends_with_the_purge(organization):
    audit_purge(before=timezone.now() - timedelta(days=1))
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.all().delete()


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_do_not_fork_the_chain():
    from django.db import connections

    errors = []

    def write(worker: int) -> None:
        try:
            for number in range(15):
                audit_record(action=f"worker{worker}.{number}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert AuditLog.objects.count() == 60
    assert AuditLog.objects.values("previous_hash").distinct().count() == 60
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_flush_still_empties_the_audit_table(organization):
    # pytest-django and `manage.py flush` truncate tables; the trigger guards rows, not TRUNCATE.
    call_command("flush", "--noinput")
    assert not AuditLog.objects.exists()


def test_two_entries_cannot_claim_the_same_predecessor(organization):
    from django.db import IntegrityError

    last = AuditLog.objects.order_by("-id").first()
    fork = AuditLog(action="forked", previous_hash=last.previous_hash, created_at=timezone.now())
    fork.entry_hash = audit_entry_hash(fork)
    with pytest.raises(IntegrityError), transaction.atomic():
        fork.save(force_insert=True)


def test_purge_command(organization, capsys):
    call_command("purge_audit_log", "--older-than-days", "30")
    assert "Deleted 0 audit entries older than 30 days." in capsys.readouterr().out
    assert AuditLog.objects.filter(action=PURGE_ACTION, actor_type="system").exists()
    with pytest.raises(CommandError):
        call_command("purge_audit_log", "--older-than-days", "0")
    call_command("purge_audit_log", "--older-than-days", "30", "--json")
    assert json.loads(capsys.readouterr().out)["deleted"] == 0


def test_a_dry_run_of_the_purge_counts_what_it_would_delete_and_deletes_nothing(organization, capsys):
    old_entries = list(AuditLog.objects.order_by("id").values_list("id", flat=True))
    tamper("UPDATE organizations_auditlog SET created_at = created_at - interval '40 days'")
    audit_record(action="kept.recent", organization=organization)
    before = AuditLog.objects.count()

    call_command("purge_audit_log", "--older-than-days", "30", "--dry-run")
    assert f"Would delete {len(old_entries)} audit entries older than 30 days; none deleted." in capsys.readouterr().out
    call_command("purge_audit_log", "--older-than-days", "30", "--dry-run", "--json")
    assert json.loads(capsys.readouterr().out)["would_delete"] == len(old_entries)
    assert AuditLog.objects.count() == before and not AuditLog.objects.filter(action=PURGE_ACTION).exists()

    call_command("purge_audit_log", "--older-than-days", "30", "--json")
    assert json.loads(capsys.readouterr().out)["deleted"] == len(old_entries)


def test_verify_command_reports_the_broken_entry_in_plain_text(organization):
    from io import StringIO

    entry = AuditLog.objects.first()
    tamper("UPDATE organizations_auditlog SET changes = '{}' WHERE id = %s", [entry.pk])
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_audit_log", stdout=out)
    assert out.getvalue().startswith(f"BROKEN at entry {entry.pk}: its content does not match its hash")
