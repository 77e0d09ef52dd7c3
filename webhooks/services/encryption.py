"""Re-encrypting stored secrets after a key rotation."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.fernet import InvalidToken
from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.db.models import TextField
from django.db.models.functions import Cast

from organizations.services import audit_record
from webhooks.fields import EncryptedTextField, fernet, newest_key_fernet


class UnreadableSecretError(ValueError):
    """A stored secret that no key of FIELD_ENCRYPTION_KEYS decrypts (the message names its row, never the value)."""


@dataclass
class Reencryption:
    """Rows re-encrypted per model, and how many of them were under an older key than the newest."""

    reencrypted: dict[str, int] = field(default_factory=dict)
    from_older_key: dict[str, int] = field(default_factory=dict)
    keys: int = 0


def reencrypt_all_secrets(batch_size: int = 500) -> Reencryption:
    """Load and save every encrypted column, so each is written under the newest key.

    Stops at a row that no configured key decrypts (UnreadableSecretError), before writing it.
    Recorded in the audit log as one system entry (no organization) with the count per model.
    """
    result = Reencryption(keys=len(settings.FIELD_ENCRYPTION_KEYS))
    for model in apps.get_models():
        fields = [field.name for field in model._meta.get_fields() if isinstance(field, EncryptedTextField)]
        if not fields:
            continue
        label = model._meta.label
        count = older = 0
        # The stored tokens as they are, without EncryptedTextField's decryption.
        raw = {f"_stored_{name}": Cast(name, output_field=TextField()) for name in fields}
        for pk in model._default_manager.values_list("pk", flat=True).iterator(chunk_size=batch_size):
            with transaction.atomic():
                # Read under a row lock: a secret rotated since the listing must not be written back
                # with its old value. Decrypting accepts any configured key; saving encrypts with the
                # first (newest).
                # NO KEY: new events and deliveries, which take a key share on their source at their
                # commit, do not wait. Ordered by pk: Source's and Destination's ordering joins their
                # organization, whose row would be locked too (the values_list below ignores of=).
                locked = model._default_manager.select_for_update(no_key=True).filter(pk=pk).order_by("pk")
                tokens = locked.annotate(**raw).values_list(*raw).first()
                if tokens is None:  # deleted meanwhile
                    continue
                under_older_key = False
                for token in filter(None, tokens):
                    under_older_key |= _under_older_key(token, label=label, pk=pk, done=result, count=count)
                row = locked.only("pk", *fields).first()
                row.save(update_fields=fields)
            count += 1
            older += under_older_key
        result.reencrypted[label] = count
        result.from_older_key[label] = older
    audit_record(
        action="secrets.reencrypted",
        changes={"reencrypted": result.reencrypted, "from_older_key": result.from_older_key},
    )
    return result


def _under_older_key(token: str, *, label: str, pk, done: Reencryption, count: int) -> bool:
    try:
        newest_key_fernet().decrypt(token.encode())
        return False
    except InvalidToken:
        pass
    try:
        fernet().decrypt(token.encode())
        return True
    except InvalidToken:
        before = sum(done.reencrypted.values()) + count
        raise UnreadableSecretError(
            f"{label} {pk}: a stored secret cannot be decrypted with any key of FIELD_ENCRYPTION_KEYS "
            f"({done.keys} configured): add the key it was encrypted with after the new one (NEW,OLD) and run "
            f"the command again; {before} rows were re-encrypted before it"
        ) from None
