"""Generating and describing secrets without ever echoing them."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.db import models
from django.utils import timezone

from config.formats import to_the_second
from webhooks.fields import (
    MALFORMED,
    SecretNotReadable,
    Unreadable,
    current_place,
    take_readable_secrets,
    unreadable_secrets,
    with_stored_tokens,
)

from . import secret_health


def generate_standard_webhooks_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def generate_token_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hint(secret: str) -> str:
    """The last four characters: enough to recognise a secret, not to use it; empty when there is none."""
    if not secret:
        return ""
    return "…" + secret[-4:] if len(secret) >= 12 else "…"


ROTATED_SECRET_FIELDS = ["secret", "secret_hint", "previous_secret", "previous_secret_expires_at", "updated_at"]


class SecretNotReplaced(ValueError):
    """A rotation that cannot be made (the message is safe to show)."""


# A Source's or Destination's signing secrets: the current one, and the one a rotation kept.
SIGNING_SECRET_FIELDS = ("secret", "previous_secret")


def readable_elsewhere(why: Unreadable) -> bool:
    """A secret this process cannot decrypt that was stored after it started: most likely by a process
    that already has a new key being deployed, which reads it (as this one will once replaced). Not
    lost, then: nothing may replace it from here as if it were (see replace_secret)."""
    return why.made_after(secret_health.PROCESS_STARTED_AT)


def current_secret_replaceable_unread(instance: models.Model) -> bool:
    """Whether a rotation of ``instance`` (read with fields.take_readable_secrets) replaces its current
    secret without reading it: one that no key decrypts, and not one stored by a process with a key
    being deployed (which a rotation here would drop, with the overlap its tenant may ask for)."""
    why = unreadable_secrets(instance).get("secret")
    return why is not None and not readable_elsewhere(why)


def secret_is_set(instance: models.Model) -> bool:
    """Whether a Source or Destination has a signing secret, whether or not this process can read it."""
    return "secret" in unreadable_secrets(instance) or bool(instance.secret)


def signing_secret_unreadable(instance: models.Model) -> bool:
    """Whether a signing secret of a Source or Destination (read with fields.take_readable_secrets)
    is one that no key decrypts: its ingest, or its deliveries, wait until a new one is set."""
    return any(name in unreadable_secrets(instance) for name in SIGNING_SECRET_FIELDS)


@dataclass(frozen=True)
class UnreadableSecrets:
    """What a Source's or Destination's pages say of its secrets that no key decrypts."""

    signing_secret: bool  # the current secret, or the previous one a rotation kept
    custom_headers: bool  # a destination's custom headers (encrypted as its secrets are)
    damaged: bool  # one is not a Fernet token at all: no key will ever read it
    passing: bool  # each was stored after this process started (readable_elsewhere): a key being deployed
    previous_only: bool  # of the signing secrets, only the previous one (a rotation's overlap): the current one reads
    current_replaced_unread: (
        bool  # a rotation replaces the current one unread, with no overlap (current_secret_replaceable_unread)
    )

    @property
    def named(self) -> str:
        """What cannot be read, in words: "signing secret", "previous signing secret and custom headers"."""
        signing = ["previous signing secret" if self.previous_only else "signing secret"] if self.signing_secret else []
        return " and ".join([*signing, *(["custom headers"] if self.custom_headers else [])])


def unreadable_secrets_found(instance: models.Model) -> UnreadableSecrets | None:
    """What of ``instance`` (read with fields.take_readable_secrets) no key decrypts; None when all is readable."""
    found = unreadable_secrets(instance)
    if not found:
        return None
    return UnreadableSecrets(
        signing_secret=signing_secret_unreadable(instance),
        custom_headers="custom_headers" in found,
        damaged=any(why.reason == MALFORMED for why in found.values()),
        passing=all(readable_elsewhere(why) for why in found.values()),
        previous_only="previous_secret" in found and "secret" not in found,
        current_replaced_unread=current_secret_replaceable_unread(instance),
    )


def previous_secret_described(instance: models.Model) -> str:
    """The previous secret in a sentence: "ending …a1b2", or that it cannot be read."""
    if "previous_secret" in unreadable_secrets(instance):
        return "which can no longer be read"
    return f"ending {secret_hint(instance.previous_secret)}"


def secret_hint_shown(instance: models.Model) -> str:
    """A Source's or Destination's secret hint (…a1b2) where a page shows it: "unreadable" for a
    secret that no key decrypts, whose hint would name a secret that no longer works."""
    return "unreadable" if "secret" in unreadable_secrets(instance) else instance.secret_hint


def previous_secret_valid_until(instance: models.Model):
    """When a Source's or Destination's previous secret stops working, while it still does; else None.
    Told by its expiry alone for one that this process cannot decrypt: other processes may (a key
    being deployed), and a rotation stops it all the same."""
    expires_at = instance.previous_secret_expires_at
    previous = "previous_secret" in unreadable_secrets(instance) or instance.previous_secret
    if previous and expires_at and expires_at > timezone.now():
        return expires_at
    return None


class PreviousSecretStillValid(SecretNotReplaced):
    """A rotation during another one's overlap: it would stop the older secret at once."""


def replace_secret(
    instance: models.Model,
    new_secret: str,
    overlap_seconds: int,
    *,
    stop_previous: bool = False,
    cleared_fields: Sequence[str] = (),
) -> int:
    """Make ``new_secret`` current on a Source or Destination; the one it replaces stays usable for ``overlap_seconds``.

    Returns the overlap given to the replaced secret: 0 when there was none to replace (a source
    created before its provider showed the secret) or when no key decrypts it, whatever was asked for.

    The row is locked and its current secret read again first: of two rotations at once, the
    second then keeps the first one's new secret (the one its user was shown) as the previous
    one, instead of a secret that was already replaced. Call it inside the transaction that
    audits the rotation (select_for_update refuses to run outside one).

    Only one previous secret is kept, so rotating again while an earlier rotation's overlap
    runs stops the older secret at once, perhaps while the provider (or receiver) still uses
    it: refused with PreviousSecretStillValid unless ``stop_previous`` says that is meant.

    A stored secret that no key decrypts (a key dropped too early) is replaced without being
    read: it verifies and signs nothing, so it is neither kept for an overlap nor a reason to
    refuse; its row stays unreadable until this replaces it. Except one stored after this process
    started (readable_elsewhere): SecretNotReadable, nothing changed, to be sent again.

    ``cleared_fields`` are set to None in the same save: what they said was about the secrets
    this rotation replaces (a Source's last-matched times).
    """
    # OF the row itself: the model's ordering joins its organization, whose row would be locked too.
    locked = with_stored_tokens(
        type(instance)
        .objects.select_for_update(no_key=True, of=("self",))
        .only("previous_secret_expires_at")
        .filter(pk=instance.pk),
        *SIGNING_SECRET_FIELDS,
    ).first()
    if locked is None:
        raise SecretNotReplaced(f"this {instance._meta.verbose_name} has been deleted")
    unreadable = take_readable_secrets(locked)
    if "secret" in unreadable and readable_elsewhere(unreadable["secret"]):
        # Most likely a process with a key being deployed stored it and reads it: replaced from here,
        # it would be lost with the overlap asked for. A 503 (views.one_look): sent again, on a process
        # that has the key (or this one replaced), the rotation keeps it as any other.
        raise SecretNotReadable(
            "a rotation needs the current secret, stored after this process started under a key it lacks",
            unreadable["secret"],
            current_place(),
        )
    current = "" if "secret" in unreadable else locked.secret
    if current and new_secret == current:
        raise SecretNotReplaced("that is the current secret; a rotation needs a new one")
    still_valid_until = previous_secret_valid_until(locked)
    if still_valid_until is not None and not stop_previous:
        raise PreviousSecretStillValid(
            f"the secret before the current one ({previous_secret_described(locked)}) still works until "
            f"{to_the_second(still_valid_until)}, and rotating again stops it at once; confirm that it may stop now"
        )
    if not current:
        # Nothing to keep: a window without a previous secret would have the source's page (and
        # the admin) say that one still works until then.
        overlap_seconds = 0
    instance.previous_secret = current if overlap_seconds > 0 else ""
    instance.previous_secret_expires_at = (
        timezone.now() + timedelta(seconds=overlap_seconds) if overlap_seconds > 0 else None
    )
    instance.secret = new_secret
    instance.secret_hint = secret_hint(new_secret)
    for name in cleared_fields:
        setattr(instance, name, None)
    if unreadable_secrets(instance):
        # Both written now: what is left unreadable is what this did not replace (custom headers).
        instance.unreadable_secrets = {
            name: why for name, why in instance.unreadable_secrets.items() if name not in SIGNING_SECRET_FIELDS
        }
    instance.save(update_fields=[*ROTATED_SECRET_FIELDS, *cleared_fields])
    return overlap_seconds
