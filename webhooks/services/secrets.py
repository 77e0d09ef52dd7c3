"""Generating and describing secrets without ever echoing them."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from django.db import models
from django.utils import timezone


def generate_standard_webhooks_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def generate_token_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hint(secret: str) -> str:
    """The last four characters: enough to recognise a secret, not to use it."""
    return "…" + secret[-4:] if len(secret) >= 12 else "…"


ROTATED_SECRET_FIELDS = ["secret", "secret_hint", "previous_secret", "previous_secret_expires_at", "updated_at"]


class SecretNotReplaced(ValueError):
    """A rotation that cannot be made (the message is safe to show)."""


def replace_secret(instance: models.Model, new_secret: str, overlap_seconds: int) -> None:
    """Make ``new_secret`` current on a Source or Destination; the one it replaces stays usable for ``overlap_seconds``.

    The row is locked and its current secret read again first: of two rotations at once, the
    second then keeps the first one's new secret (the one its user was shown) as the previous
    one, instead of a secret that was already replaced. Call it inside the transaction that
    audits the rotation (select_for_update refuses to run outside one).
    """
    locked = type(instance).objects.select_for_update(no_key=True).only("secret").filter(pk=instance.pk).first()
    if locked is None:
        raise SecretNotReplaced(f"this {instance._meta.verbose_name} has been deleted")
    if new_secret == locked.secret:
        raise SecretNotReplaced("that is the current secret; a rotation needs a new one")
    instance.previous_secret = locked.secret if overlap_seconds > 0 else ""
    instance.previous_secret_expires_at = (
        timezone.now() + timedelta(seconds=overlap_seconds) if overlap_seconds > 0 else None
    )
    instance.secret = new_secret
    instance.secret_hint = secret_hint(new_secret)
    instance.save(update_fields=ROTATED_SECRET_FIELDS)
