"""API keys: made (the plaintext shown once), revoked and checked. Each change is audited."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .models import ApiKey, Membership, Organization
from .names import name_problem
from .services import audit_record

KEY_PREFIX = "hl"
# 32 bytes from the operating system's generator: the secret part, of which only a hash is kept.
SECRET_BYTES = 32
PREFIX_BYTES = 5  # ten hex characters: enough to tell keys apart, not to guess one
# last_used_at is written at most this often per key, so that a busy script costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_KEY_SHAPE = re.compile(r"hl_([0-9a-f]{10})_([A-Za-z0-9_-]{43})")


class ApiKeyError(ValueError):
    """The presented key does not authenticate (message is safe to show)."""


# A key outlives whoever made it (it belongs to the organization): who may make or revoke one is
# checked here, as team.py checks its writes, not only by the views in front.
KEY_MANAGING_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


def _require_key_manager(*, organization: Organization, actor) -> None:
    """Admins and owners of ``organization`` manage its keys; ``actor=None`` is the platform (the
    create_api_key command) and staff act from the Django admin under its own permissions.

    Checked again here, just before the write, whatever the caller checked: an admin demoted or
    removed since a view let their request in must not come away with a read-write key.
    """
    if actor is None or getattr(actor, "is_staff", False):
        return
    if not isinstance(actor, get_user_model()) or not (
        Membership.objects.filter(user=actor, organization=organization, role__in=KEY_MANAGING_ROLES).exists()
    ):
        raise PermissionDenied("Only admins and owners of this organization manage its API keys.")


def _secret_hash(secret: str) -> str:
    # The secret has 256 bits of randomness: a plain SHA-256 is enough, no slow hash is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_create(
    *, organization: Organization, name: str, access: str = ApiKey.Access.READ_ONLY, actor=None
) -> tuple[ApiKey, str]:
    """Make a key; returns it and its plaintext, which is never stored and cannot be shown again.

    PermissionDenied unless ``actor`` is an admin or owner of ``organization`` (_require_key_manager)."""
    _require_key_manager(organization=organization, actor=actor)
    name = name.strip()
    if not name:
        raise ValidationError("the key needs a name")
    if problem := name_problem(name):
        raise ValidationError(problem)
    max_length = ApiKey._meta.get_field("name").max_length
    if len(name) > max_length:
        raise ValidationError(f"the name is longer than {max_length} characters")
    if access not in ApiKey.Access.values:
        raise ValidationError(f"the access is one of {', '.join(ApiKey.Access.values)}")
    for _ in range(5):  # a prefix already taken is redrawn
        prefix, secret = secrets.token_hex(PREFIX_BYTES), secrets.token_urlsafe(SECRET_BYTES)
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(
                    organization=organization,
                    name=name,
                    prefix=prefix,
                    secret_hash=_secret_hash(secret),
                    access=access,
                    created_by=actor if getattr(actor, "is_authenticated", False) else None,
                )
                audit_record(
                    action="api_key.created",
                    organization=organization,
                    actor=actor,
                    target=key,
                    changes={"name": name, "prefix": prefix, "access": access},
                )
        except IntegrityError:
            if ApiKey.objects.filter(prefix=prefix).exists():
                continue
            raise  # not the prefix: the organization deleted meanwhile (its reference fails at the commit)
        return key, f"{KEY_PREFIX}_{prefix}_{secret}"
    raise RuntimeError("could not draw an unused key prefix")  # pragma: no cover - 2**40 prefixes


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor=None) -> ApiKey:
    """Revoke a key for good; revoking one already revoked changes nothing and is not audited again.

    PermissionDenied unless ``actor`` is an admin or owner of the key's organization."""
    _require_key_manager(organization=api_key.organization, actor=actor)
    if ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        audit_record(
            action="api_key.revoked",
            organization=api_key.organization,
            actor=actor,
            target=api_key,
            changes={"name": api_key.name, "prefix": api_key.prefix},
        )
    api_key.refresh_from_db()
    return api_key


def api_key_authenticate(*, key: str) -> ApiKey:
    """The active key ``key`` stands for, with its organization; ApiKeyError otherwise.

    A revoked key is told apart only once its secret matched: guessing learns nothing.
    """
    match = _KEY_SHAPE.fullmatch(key)
    if match is None:
        raise ApiKeyError("the key is malformed: API keys look like hl_<prefix>_<secret>")
    prefix, secret = match.groups()
    api_key = ApiKey.objects.select_related("organization").filter(prefix=prefix).first()
    # Compared even when no key has the prefix, so that the answer takes as long either way.
    stored = api_key.secret_hash if api_key is not None else "0" * 64
    if not hmac.compare_digest(stored, _secret_hash(secret)) or api_key is None:
        raise ApiKeyError("unknown API key")
    if api_key.revoked_at is not None:
        raise ApiKeyError("this API key has been revoked")
    now = timezone.now()
    if api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key
