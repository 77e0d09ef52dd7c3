"""Writes for organizations, memberships and the audit log."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import validate_email, validate_slug
from django.db import connections, transaction
from django.utils import timezone

from accounts.http import client_ip

from .middleware import current_request
from .models import AuditLog, Membership, Organization
from .names import name_problem

SECRET_MASK = "********"

# The previous_hash of the very first entry; after a purge, the chain starts from the anchor
# recorded (and itself hashed) in the purge's own entry instead.
GENESIS_HASH = "0" * 64
PURGE_ACTION = "audit.purged"
# Any fixed 64-bit number: every writer of the chain takes this transaction-level lock.
_AUDIT_CHAIN_LOCK = 0x686F6F6B6C696E65  # "hookline"
# Keys whose values are never stored in an entry's before/after (hints such as secret_hint are fine).
_SECRET_KEY_PARTS = ("secret", "password", "token", "api_key")


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    return not key.endswith("_hint") and any(part in key for part in _SECRET_KEY_PARTS)


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` where anything stored under a secret-looking key is replaced by SECRET_MASK."""
    if isinstance(value, dict):
        return {
            key: (SECRET_MASK if _is_secret_key(str(key)) and item not in (None, "") else mask_secrets(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    return value


def _stable_json(value: Any) -> Any:
    """Values that read back from PostgreSQL's jsonb exactly as they were hashed.

    jsonb prints numbers without exponents (1e100 comes back as an integer) and has no NaN or
    infinity, so such floats are stored as the integer or the text they stand for.
    """
    if isinstance(value, dict):
        return {key: _stable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stable_json(item) for item in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and "e" in repr(value):
            return int(Decimal(repr(value)))  # 1e+100 as PostgreSQL spells it out, not the binary float
    return value


def audit_entry_content(entry: AuditLog) -> dict[str, Any]:
    """The fields an entry's hash covers, in a form that reads back identically from the database."""
    return {
        "organization_id": entry.organization_id,
        "organization_label": entry.organization_label,
        "actor_type": entry.actor_type,
        "actor_user_id": entry.actor_user_id,
        "actor_label": entry.actor_label,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "target_label": entry.target_label,
        "changes": entry.changes,
        "ip_address": entry.ip_address,
        "user_agent": entry.user_agent,
        "created_at": entry.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "previous_hash": entry.previous_hash,
    }


def audit_entry_hash(entry: AuditLog) -> str:
    canonical = json.dumps(audit_entry_content(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lock_audit_chain(organization_id: int | None = None) -> None:
    """Serialize appends until the caller's transaction ends, so two writers never fork the chain.

    The entry's organization row is first locked FOR KEY SHARE (a no-op if it is gone): the lock a
    row referencing it takes when its foreign key is checked, at the commit, after this lock. An
    organization's deletion locks its row FOR UPDATE and then this lock; taken only at the commit,
    the key share would be the other order, a deadlock. Taken here, every audited transaction
    orders them organization, then the audit chain, and at worst waits for the deletion to end.

    SQLite (the embedded mode) already runs one writing transaction at a time.
    """
    connection = connections[AuditLog.objects.db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            if organization_id is not None:
                table, key = (connection.ops.quote_name(name) for name in (Organization._meta.db_table, "id"))
                cursor.execute(f"SELECT 1 FROM {table} WHERE {key} = %s FOR KEY SHARE", [organization_id])
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_CHAIN_LOCK])


def audit_lock_organizations(organization_ids) -> dict[int, Organization]:
    """For a transaction that writes entries for several organizations: every one's row locked FOR
    KEY SHARE now, in id order, before its first entry takes the audit lock. Taken entry by entry
    (_lock_audit_chain), the second organization's key share would come after the first entry's
    audit lock, while that organization's deletion holds its row and waits for the audit lock: each
    would wait for the other. Returns the organizations still there, by id: one whose deletion
    ended meanwhile was waited for, and its entry is written without it. Call it inside the transaction."""
    ids = sorted({pk for pk in organization_ids if pk is not None})
    connection = connections[AuditLog.objects.db]
    if ids and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            table, key = (connection.ops.quote_name(name) for name in (Organization._meta.db_table, "id"))
            cursor.execute(f"SELECT {key} FROM {table} WHERE {key} = ANY(%s) ORDER BY {key} FOR KEY SHARE", [ids])
    return Organization.objects.in_bulk(ids)


def _last_entry_hash() -> str | None:
    return AuditLog.objects.order_by("-id").values_list("entry_hash", flat=True).first()


# What an entry written with no actor names: "system" (tasks, the sweeper), or the management
# command an operator ran (see audit_system_actor).
_system_actor_label: ContextVar[str] = ContextVar("hookline_audit_system_actor", default="system")


@contextmanager
def audit_system_actor(label: str) -> Iterator[None]:
    """Entries written without an actor inside this block name ``label`` instead of "system", so that
    the log tells an operator's command from the platform's own work."""
    token = _system_actor_label.set(label[:200])
    try:
        yield
    finally:
        _system_actor_label.reset(token)


def command_actor_label(command: str) -> str:
    """ "manage.py <command>". Not the OS account that ran it: tenants read the label in their own log."""
    return f"manage.py {command}"


def audit_record(
    *,
    action: str,
    organization: Organization | None = None,
    actor=None,
    actor_label: str = "",
    target=None,
    target_label: str = "",
    changes: dict[str, Any] | None = None,
    ip_address: str | None = None,
    user_agent: str = "",
    request=None,
) -> AuditLog:
    """The one way an audit entry is written, chained to the previous one.

    ``actor`` is a User, another credential such as an API key (anything with a ``str``), or
    None for the system. ``target_label`` names the target where its ``str`` would say less to a
    tenant (a delivery by its event and destination rather than their ids). ``request`` (by
    default the one being served, see organizations.middleware) supplies the IP address and user
    agent.
    Secret-looking keys in ``changes`` are masked.
    """
    user_model = get_user_model()
    if actor is None:
        actor_type, actor_user = AuditLog.ActorType.SYSTEM, None
        actor_label = actor_label or _system_actor_label.get()
    elif isinstance(actor, user_model):
        actor_type, actor_user, actor_label = AuditLog.ActorType.USER, actor, actor_label or str(actor)
    else:
        actor_type, actor_user, actor_label = AuditLog.ActorType.API_KEY, None, actor_label or str(actor)
    request = request if request is not None else current_request()
    if request is not None:
        ip_address = ip_address or client_ip(request)
        user_agent = user_agent or request.META.get("HTTP_USER_AGENT", "")
    if ip_address:
        try:
            ip_address = str(ipaddress.ip_address(ip_address))
        except ValueError:
            ip_address = None  # an unparsable address must not cost the entry
    # Round-trip through JSON now, so what is hashed is exactly what the database gives back.
    stored_changes = _stable_json(json.loads(json.dumps(mask_secrets(changes or {}), cls=DjangoJSONEncoder)))
    with transaction.atomic(using=AuditLog.objects.db):
        _lock_audit_chain(organization.pk if organization is not None else None)
        entry = AuditLog(
            organization=organization,
            organization_label=str(organization)[:200] if organization is not None else "",
            actor_type=actor_type,
            actor_user=actor_user,
            actor_label=actor_label[:200],
            action=action,
            target_type=target._meta.label if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            target_label=(target_label or str(target))[:300] if target is not None else "",
            changes=stored_changes,
            ip_address=ip_address,
            user_agent=user_agent[:300],
            created_at=timezone.now(),
            previous_hash=_last_entry_hash() or GENESIS_HASH,
        )
        entry.entry_hash = audit_entry_hash(entry)
        entry.save(force_insert=True)
    return entry


@dataclass
class ChainReport:
    ok: bool
    checked: int
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    last_entry_hash: str = ""
    broken_entry_id: int | None = None
    reason: str = ""


def audit_chain_anchor() -> str:
    """What the oldest kept entry must point back to: the genesis, or the latest purge's recorded anchor."""
    purge = AuditLog.objects.filter(action=PURGE_ACTION).order_by("-id").only("changes").first()
    return purge.changes.get("chain_anchor", GENESIS_HASH) if purge else GENESIS_HASH


def audit_verify_chain(*, chunk_size: int = 2000) -> ChainReport:
    """Walk the whole log in order and report the first entry whose hash or link does not hold."""
    expected_previous = audit_chain_anchor()
    checked = 0
    first_id = last_id = None
    for entry in AuditLog.objects.order_by("id").iterator(chunk_size=chunk_size):
        first_id = first_id or entry.pk
        if entry.previous_hash != expected_previous:
            reason = (
                "the oldest entry does not start the chain (entries before it were removed outside a purge)"
                if checked == 0
                else "its previous_hash does not match the entry before it (an entry was removed or inserted)"
            )
            return ChainReport(False, checked, first_id, last_id, broken_entry_id=entry.pk, reason=reason)
        if audit_entry_hash(entry) != entry.entry_hash:
            return ChainReport(
                False,
                checked,
                first_id,
                last_id,
                broken_entry_id=entry.pk,
                reason="its content does not match its hash",
            )
        expected_previous = entry.entry_hash
        last_id = entry.pk
        checked += 1
    # The head hash, kept somewhere else, also proves later that no newest entries were cut off.
    return ChainReport(True, checked, first_id, last_id, last_entry_hash=expected_previous if checked else "")


def _audit_purge_split(before: datetime):
    """The oldest entry a purge before ``before`` keeps (None: none is kept), and the entries it deletes:
    every one older than that entry, so that what is left stays one contiguous chain."""
    first_kept = AuditLog.objects.filter(created_at__gte=before).order_by("id").first()
    doomed = AuditLog.objects.all() if first_kept is None else AuditLog.objects.filter(id__lt=first_kept.pk)
    return first_kept, doomed


def audit_purge_count(*, before: datetime) -> int:
    """How many entries audit_purge(before=...) would delete now; deletes nothing."""
    return _audit_purge_split(before)[1].count()


def audit_purge(*, before: datetime, actor=None, request=None) -> int:
    """Delete the entries older than ``before`` (a contiguous oldest part of the chain) in one
    transaction, audited (manage.py purge_audit_log); returns how many it deleted.

    The purge's own entry records the hash the oldest kept entry points back to, so the
    shortened chain still verifies. Only here does the trigger let rows be deleted.
    """
    return _audit_purge_batch(before=before, batch_size=None, actor=actor, request=request)[0]


@dataclass
class AuditPurge:
    deleted: int
    finished: bool  # False: ``deadline`` came with entries older than ``before`` left


def audit_purge_in_batches(
    *, before: datetime, batch_size: int, deadline: float = math.inf, actor=None, request=None
) -> AuditPurge:
    """audit_purge, the oldest ``batch_size`` entries per transaction (the hourly retention run, with
    AUDIT_LOG_RETENTION_DAYS), until none older than ``before`` is left or a batch ends past
    ``deadline`` (time.monotonic).

    Each batch is audited with its own entry: every commit leaves a chain that verifies. A first run
    on a large log writes one entry per batch; later runs at most one an hour, none with nothing to delete.
    """
    deleted = 0
    while True:
        batch_deleted, more = _audit_purge_batch(before=before, batch_size=batch_size, actor=actor, request=request)
        deleted += batch_deleted
        if not more:
            return AuditPurge(deleted=deleted, finished=True)
        if time.monotonic() > deadline:
            return AuditPurge(deleted=deleted, finished=False)


def _audit_purge_batch(*, before: datetime, batch_size: int | None, actor, request) -> tuple[int, bool]:
    """One purge transaction: every entry older than ``before``, or only the oldest ``batch_size`` of
    them (nothing at all, not even the purge's entry, when there are none). Returns how many it
    deleted, and whether older entries are left for another batch."""
    more = False
    with transaction.atomic(using=AuditLog.objects.db):
        _lock_audit_chain()
        first_kept, doomed = _audit_purge_split(before)
        if batch_size is not None:
            # The entry after the batch is kept for now: the chain still starts where it points back to.
            after_batch = list(doomed.order_by("id")[batch_size : batch_size + 1])
            if after_batch:
                first_kept, more = after_batch[0], True
                doomed = AuditLog.objects.filter(id__lt=first_kept.pk)
            elif not doomed.exists():
                return 0, False  # an hourly run with nothing to delete must not add an entry each time
        # When nothing is kept, the purge's own entry starts a new chain from the genesis.
        anchor = first_kept.previous_hash if first_kept is not None else GENESIS_HASH
        connection = connections[AuditLog.objects.db]
        purging_allowed = connection.vendor == "postgresql"
        if purging_allowed:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('hookline.audit_purge', 'on', true)")
        try:
            deleted, _ = doomed.delete()
        finally:
            if purging_allowed:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('hookline.audit_purge', 'off', true)")
        audit_record(
            action=PURGE_ACTION,
            actor=actor,
            request=request,
            changes={
                "deleted": deleted,
                "before": before.isoformat(),
                "first_kept_id": first_kept.pk if first_kept is not None else None,
                "chain_anchor": anchor,
            },
        )
    return deleted, more


@transaction.atomic
def organization_create(*, name: str, slug: str, owner_email: str, actor=None) -> Organization:
    """Create an organization with its owner (the user is created when new)."""
    if not name.strip():
        raise ValidationError("the organization needs a name")
    if problem := name_problem(name):
        raise ValidationError(problem)  # the name goes into email subjects (quota notices, invitations)
    for field, value in (("name", name), ("slug", slug)):
        max_length = Organization._meta.get_field(field).max_length
        if len(value) > max_length:
            raise ValidationError(f"the {field} is longer than {max_length} characters")
    validate_slug(slug)  # it is part of the dashboard's URLs
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError(f"an organization with the slug {slug} already exists")
    user_model = get_user_model()
    email = user_model.objects.normalize_email(owner_email).lower()
    validate_email(email)
    owner = user_model.objects.filter(email=email).first() or user_model.objects.create_user(email)
    organization = Organization.objects.create(name=name, slug=slug)
    Membership.objects.create(user=owner, organization=organization, role=Membership.Role.OWNER)
    audit_record(
        action="organization.created",
        organization=organization,
        actor=actor,
        target=organization,
        changes={"name": name, "slug": slug, "owner": owner.email},
    )
    return organization


ORGANIZATION_SUSPENDED = "organization.suspended"
ORGANIZATION_REACTIVATED = "organization.reactivated"


@transaction.atomic
def organization_set_active(*, organization: Organization, active: bool, actor=None, request=None) -> Organization:
    """Suspend an organization (its ingest URLs answer 404, nothing is delivered, its members are told
    it is suspended) or make it active again, audited as organization.suspended or .reactivated.

    Its deliveries wait meanwhile, SUSPENDED_ORGANIZATION_HOLD_DAYS at most from the suspension (then
    the retention run marks them dead: webhooks.services.lifecycle); made active again, the dispatcher
    sends what waits (at the next sweep) in its usual order, within the destinations' and the
    organization's caps."""
    locked = Organization.objects.select_for_update(no_key=True).get(pk=organization.pk)
    if active and locked.being_deleted:
        # Its deletion made it inactive for good (see organization_deletion).
        raise ValidationError("this organization is being deleted: it cannot be made active again")
    was_active = locked.is_active
    organization.is_active = active
    if was_active == active:
        return organization
    # The hold of its deliveries counts from the suspension (SUSPENDED_ORGANIZATION_HOLD_DAYS): under
    # the row's lock, so that the retention run's give-up (which locks it too) sees both or neither.
    organization.suspended_at = None if active else timezone.now()
    organization.save(update_fields=["is_active", "suspended_at"])
    audit_record(
        action=ORGANIZATION_REACTIVATED if active else ORGANIZATION_SUSPENDED,
        organization=organization,
        actor=actor,
        target=organization,
        # As the admin's change entries hold a field: before and after.
        changes={"fields": {"is_active": [was_active, active]}},
        request=request,
    )
    return organization
