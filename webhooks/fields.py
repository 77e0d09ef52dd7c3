"""Secrets encrypted at rest with MultiFernet (keys from FIELD_ENCRYPTION_KEYS, newest first)."""

from __future__ import annotations

import logging
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

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


class SecretNotReadable(ImproperlyConfigured):
    """A stored secret that no key of this process's FIELD_ENCRYPTION_KEYS decrypts: during a rolling
    deploy of a new key, written by a process that had it; after one, a key retired too soon."""


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        # Never include the token: it is the secret, encrypted, and says where to attack.
        raise SecretNotReadable("a stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS") from None


def encrypted_field_names(model) -> tuple[str, ...]:
    """The model's encrypted columns: what a read that does not need them defers, so that a secret
    no key decrypts does not stop it (a deletion, a health count)."""
    return tuple(field.name for field in model._meta.concrete_fields if isinstance(field, EncryptedTextField))


def reencrypt(token: str) -> str:
    """The same secret under the newest key (MultiFernet.rotate)."""
    return fernet().rotate(token.encode()).decode()


SECRET_NOT_READABLE_YET = (
    "This secret cannot be shown by this server at the moment: it is being given a new encryption key "
    "(FIELD_ENCRYPTION_KEYS is being deployed). It is kept until it has been shown: reload this page in a minute."
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
        logger.error("a secret kept to be shown once: %s; is FIELD_ENCRYPTION_KEYS the same on every process?", exc)
        return None


class EncryptedTextField(models.TextField):
    """A text column that holds a Fernet token; Python code sees the plaintext."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)
