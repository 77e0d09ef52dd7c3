"""Secrets encrypted at rest with MultiFernet (keys from FIELD_ENCRYPTION_KEYS, newest first)."""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.functions import Cast

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS must hold at least one Fernet key")
    try:
        return MultiFernet([Fernet(key.strip().encode()) for key in keys])
    except (ValueError, TypeError):
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key") from None


def fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.FIELD_ENCRYPTION_KEYS))


def newest_key_fernet() -> Fernet:
    """The first (newest) key alone: what encrypt() writes with, and what a rotation moves secrets to."""
    keys = tuple(settings.FIELD_ENCRYPTION_KEYS)
    _fernet_for(keys)  # refuses a missing or malformed key with its message
    return Fernet(keys[0].strip().encode())


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


# Why a stored secret cannot be decrypted, as far as the token itself tells.
UNKNOWN_KEY = "unknown_key"  # a well-formed Fernet token that no configured key opens
MALFORMED = "malformed"  # not a Fernet token at all: no key could ever open it
UNREADABLE_REASONS = (UNKNOWN_KEY, MALFORMED)

# Fernet's layout: version 0x80, an 8-byte timestamp, a 16-byte IV, the AES-CBC ciphertext (whole
# 16-byte blocks, at least one) and a 32-byte HMAC.
_FERNET_VERSION = 0x80
_FERNET_OVERHEAD = 1 + 8 + 16 + 32

# Where a decryption happens, for the health figures (services.secret_health): set by whoever
# knows (the request's middleware, the dispatcher, the idempotency check), "other" otherwise.
_decrypting_for: ContextVar[str] = ContextVar("decrypting_for", default="other")


@contextmanager
def decrypting_for(place: str):
    """Name the place of the decryptions made inside the block, for the health figures."""
    token = _decrypting_for.set(place)
    try:
        yield
    finally:
        _decrypting_for.reset(token)


def current_place() -> str:
    return _decrypting_for.get()


@dataclass(frozen=True)
class Unreadable:
    """What the token of a secret that no key decrypts says about itself: never the token or the secret.

    A Fernet token does not name the key that made it, so "a key this process does not have" is
    what a well-formed token whose HMAC no configured key verifies most likely means (the other
    reading is a token altered in the database). Its timestamp, which every Fernet token carries
    in the clear, says when it was made: after this process started, most likely by a process
    that already has a new key (a rolling deploy); before, this process lacks a key it needs."""

    reason: str
    encrypted_at: float | None = None  # a well-formed token's own timestamp (Unix time)

    def made_after(self, process_started_at: float) -> bool:
        """A well-formed token made after this process started: most likely by a process that has a
        new key being deployed, which reads it (and this process, once replaced, will)."""
        # Whole seconds: a token keeps only those.
        return (
            self.reason == UNKNOWN_KEY
            and self.encrypted_at is not None
            and self.encrypted_at >= int(process_started_at)
        )

    def explanation(self, process_started_at: float, *, dated: bool = True) -> str:
        """In words; ``dated`` False leaves out when the token was made (for an unauthenticated probe)."""
        if self.reason == MALFORMED:
            return (
                "it is not a well-formed Fernet token (damaged, or written outside Hookline): no key can "
                "decrypt it, and waiting does not fix it"
            )
        made = ""
        if self.encrypted_at is not None and dated:
            made = datetime.fromtimestamp(self.encrypted_at, tz=UTC).strftime(" on %Y-%m-%d at %H:%M:%S UTC,")
        if self.made_after(process_started_at):
            likely = (
                "after this process started: most likely by a process that already has a new key, "
                "during a rolling deploy of FIELD_ENCRYPTION_KEYS=NEW,OLD, which passes once this process "
                "is replaced"
            )
        else:
            likely = (
                "before this process started: this process's FIELD_ENCRYPTION_KEYS most likely lacks the key "
                "it was made with (a key replaced instead of put first as NEW,OLD, or an old key removed before "
                "rotate_encryption_keys ran), which waiting does not fix"
            )
        return (
            "it is a well-formed Fernet token that no key of this process's "
            f"FIELD_ENCRYPTION_KEYS opens; it was encrypted{made} {likely} (a Fernet token does not name "
            "its key, so this is inferred; a token altered in the database looks the same)"
        )


def diagnose(token: str) -> Unreadable:
    """Why ``token`` cannot be decrypted, from its form alone (it is known not to decrypt)."""
    try:
        data = base64.urlsafe_b64decode(token.encode("ascii"))
    except (ValueError, UnicodeError, binascii.Error):
        return Unreadable(MALFORMED)
    ciphertext = len(data) - _FERNET_OVERHEAD
    if not data or data[0] != _FERNET_VERSION or ciphertext < 16 or ciphertext % 16:
        return Unreadable(MALFORMED)
    encrypted_at = float(struct.unpack(">Q", data[1:9])[0])
    try:
        # The timestamp is in the clear and unauthenticated until a key opens the token: one altered
        # in the database may be no date at all, which explanation() could not write.
        datetime.fromtimestamp(encrypted_at, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return Unreadable(UNKNOWN_KEY)
    return Unreadable(UNKNOWN_KEY, encrypted_at)


class SecretNotReadable(ImproperlyConfigured):
    """A stored secret that no key of this process's FIELD_ENCRYPTION_KEYS decrypts: during a rolling
    deploy of a new key, written by a process that had it; otherwise a key missing from this
    process's list, or a damaged value (``unreadable`` says which is likelier)."""

    def __init__(self, message: str, unreadable: Unreadable | None = None, place: str = "other"):
        super().__init__(message)
        self.unreadable = unreadable or Unreadable(UNKNOWN_KEY)
        self.place = place
        # The column whose read raised it (EncryptedTextField.from_db_value), where one did.
        self.field_name: str | None = None

    @property
    def malformed(self) -> bool:
        return self.unreadable.reason == MALFORMED


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        pass
    # Never include the token: it is the secret, encrypted, and says where to attack.
    from webhooks.services import secret_health

    unreadable = diagnose(token)
    place = current_place()
    secret_health.note_unreadable(place, unreadable)
    raise SecretNotReadable(
        f"a stored secret cannot be decrypted (while reading it for {place}): "
        f"{unreadable.explanation(secret_health.PROCESS_STARTED_AT)}",
        unreadable,
        place,
    ) from None


def encrypted_field_names(model) -> tuple[str, ...]:
    """The model's encrypted columns: what a read that does not need them defers, so that a secret
    no key decrypts does not stop it (a deletion, a health count)."""
    return tuple(field.name for field in model._meta.concrete_fields if isinstance(field, EncryptedTextField))


def secrets_deferred(queryset, *relations: str):
    """``queryset`` without the encrypted columns of its model nor of the models at ``relations``
    (select_related paths: "destination", "delivery__destination"): for a page or list that shows
    none of them, so that one row whose secret no key of this process decrypts does not stop it.
    A related path not selected with the row is ignored by Django: this adds no join."""
    deferred = list(encrypted_field_names(queryset.model))
    for path in relations:
        model = queryset.model
        for part in path.split("__"):
            model = model._meta.get_field(part).related_model
        deferred += [f"{path}__{name}" for name in encrypted_field_names(model)]
    return queryset.defer(*deferred) if deferred else queryset


# Where with_stored_tokens() puts a column's token beside the row (popped by take_readable_secrets()).
_STORED_TOKEN = "_stored_token_{}"


def with_stored_tokens(queryset, *names: str):
    """``queryset`` with its model's encrypted columns deferred and each one's (or those of ``names``)
    token read beside the row as stored (cast to plain text: not decrypted), for
    take_readable_secrets(): a page for one source or destination then opens with a secret that no
    key decrypts, and says so, instead of stopping at it."""
    deferred = encrypted_field_names(queryset.model)
    tokens = {_STORED_TOKEN.format(name): Cast(name, output_field=models.TextField()) for name in names or deferred}
    return queryset.defer(*deferred).annotate(**tokens)


def take_readable_secrets(instance, *, load: bool = True) -> dict[str, Unreadable]:
    """The secrets of ``instance`` (read through with_stored_tokens()) that no key decrypts, by field
    name; also kept as ``instance.unreadable_secrets``. With ``load``, each one a key decrypts is set
    on ``instance`` as a plain read would have; the others stay deferred, so that code reading one
    anyway still stops at SecretNotReadable, and a save() leaves their stored value alone. Each one
    that cannot be decrypted is noted in the health figures, as any failed decryption."""
    unreadable = {}
    for name in encrypted_field_names(type(instance)):
        stored = _STORED_TOKEN.format(name)
        if stored not in instance.__dict__:
            continue
        token = instance.__dict__.pop(stored)  # the token: never left on an object a template sees
        try:
            value = decrypt(token) if token else token
        except SecretNotReadable as exc:
            unreadable[name] = exc.unreadable
            continue
        if load:
            setattr(instance, name, value)
    instance.unreadable_secrets = unreadable
    return unreadable


def unreadable_secrets(instance) -> dict[str, Unreadable]:
    """What take_readable_secrets() found on ``instance``: empty when its secrets were read as usual."""
    return getattr(instance, "unreadable_secrets", None) or {}


def reencrypt(token: str) -> str:
    """The same secret under the newest key (MultiFernet.rotate)."""
    return fernet().rotate(token.encode()).decode()


SECRET_NOT_READABLE_YET = (
    "This secret cannot be shown by this server at the moment: it cannot decrypt it with its encryption keys "
    "(FIELD_ENCRYPTION_KEYS), most likely because a new key is being deployed. It is kept until it has been "
    "shown: reload this page in a minute. If it lasts, this server's keys are wrong: its health check reports "
    "it to the operator."
)


def decrypt_for_one_look(tokens: list[str]) -> list[str] | None:
    """The secrets kept (encrypted) in a session for one look, or None if this process cannot read
    them: during a rolling deploy of a new key, the process that made them may have had the new key
    and this one not yet. The caller then keeps them for a reload, rather than lose them to a 500."""
    try:
        return [decrypt(token) for token in tokens]
    except ImproperlyConfigured as exc:
        # For the operator, as every other page's 503 (views.one_look): a process whose keys stay
        # wrong, rather than one a deploy has not reached yet, answers this page 503 until fixed.
        logger.error("a secret kept to be shown once: %s", exc)
        return None


class EncryptedTextField(models.TextField):
    """A text column that holds a Fernet token; Python code sees the plaintext."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        try:
            return decrypt(value)
        except SecretNotReadable as exc:
            exc.field_name = self.name  # which secret of the row, for a caller that can do without it
            raise

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)
