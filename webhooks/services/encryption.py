"""Re-encrypting stored secrets after a key rotation."""

from __future__ import annotations

from django.apps import apps
from django.db import transaction

from organizations.services import audit_record
from webhooks.fields import EncryptedTextField


def reencrypt_all_secrets(batch_size: int = 500) -> dict[str, int]:
    """Load and save every encrypted column, so each is written under the newest key.

    Recorded in the audit log as one system entry (no organization) with the count per model.
    """
    counts: dict[str, int] = {}
    for model in apps.get_models():
        fields = [field.name for field in model._meta.get_fields() if isinstance(field, EncryptedTextField)]
        if not fields:
            continue
        count = 0
        for pk in model._default_manager.values_list("pk", flat=True).iterator(chunk_size=batch_size):
            with transaction.atomic():
                # Read under a row lock: a secret rotated since the listing must not be written back
                # with its old value. Decrypting accepts any configured key; saving encrypts with the
                # first (newest).
                row = model._default_manager.select_for_update().only("pk", *fields).filter(pk=pk).first()
                if row is None:  # deleted meanwhile
                    continue
                row.save(update_fields=fields)
            count += 1
        counts[model._meta.label] = count
    audit_record(action="secrets.reencrypted", changes={"reencrypted": counts})
    return counts
