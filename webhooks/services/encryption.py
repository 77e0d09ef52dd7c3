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
from webhooks.fields import MALFORMED, EncryptedTextField, diagnose, fernet, newest_key_fernet
from webhooks.services import secret_health


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
        pass
    before = sum(done.reencrypted.values()) + count
    unreadable = diagnose(token)
    secret_health.note_unreadable("rotation", unreadable)
    if unreadable.reason == MALFORMED:
        raise UnreadableSecretError(
            f"{label} {pk}: a stored secret is not a well-formed Fernet token (damaged, or written outside "
            "Hookline), so no key can decrypt it: give that row a new secret and run the command again; "
            f"{before} rows were re-encrypted before it"
        )
    raise UnreadableSecretError(
        f"{label} {pk}: a stored secret cannot be decrypted with any key of FIELD_ENCRYPTION_KEYS "
        f"({done.keys} configured): add the key it was encrypted with after the new one (NEW,OLD) and run "
        f"the command again; {before} rows were re-encrypted before it (rotate_encryption_keys --verify "
        "counts every such row without writing anything)"
    )


@dataclass
class ModelVerification:
    """One model's stored secrets, as the current keys read them (rows, and tokens within them)."""

    rows: int = 0
    tokens: int = 0
    under_newest_key: int = 0
    under_older_key: int = 0
    unknown_key: int = 0  # well-formed, but no configured key opens it
    malformed: int = 0  # not a Fernet token
    # Up to VERIFY_EXAMPLES rows that cannot be read: "pk" and "organization_id" only.
    unreadable_rows: list[dict] = field(default_factory=list)

    @property
    def unreadable(self) -> int:
        return self.unknown_key + self.malformed


VERIFY_EXAMPLES = 10


def verify_stored_secrets(
    *, batch_size: int = 500, limit: int | None = None, organization_id: int | None = None
) -> dict[str, ModelVerification]:
    """How many stored secrets the current FIELD_ENCRYPTION_KEYS can read, per model; nothing written.

    For checking keys before retiring one, or after a deploy. Reads the tokens as stored (no
    model instance, no row lock), ``batch_size`` rows per query in primary-key order, and decrypts
    each in memory only to see whether it can: no plaintext leaves this function, and a row that
    cannot be read is named by its primary key and organization, never its token. ``limit`` rows
    per model at most (the first ones); ``organization_id`` keeps to one organization's rows.
    Failures found here are not counted in the health figures: they are this function's answer.
    """
    newest, every_key = newest_key_fernet(), fernet()
    found: dict[str, ModelVerification] = {}
    for model in apps.get_models():
        fields = [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
        if not fields:
            continue
        owned = any(f.name == "organization" for f in model._meta.concrete_fields)
        if organization_id is not None and not owned:
            continue
        rows = model._default_manager.order_by("pk")
        if organization_id is not None:
            rows = rows.filter(organization_id=organization_id)
        raw = {f"_stored_{name}": Cast(name, output_field=TextField()) for name in fields}
        columns = ["pk", "organization_id" if owned else "pk", *raw]
        result = found[model._meta.label] = ModelVerification()
        last_pk = None
        while limit is None or result.rows < limit:
            batch = rows if last_pk is None else rows.filter(pk__gt=last_pk)
            size = batch_size if limit is None else min(batch_size, limit - result.rows)
            chunk = list(batch.annotate(**raw).values_list(*columns)[:size])
            if not chunk:
                break
            for pk, organization, *tokens in chunk:
                result.rows += 1
                readable = True
                for token in filter(None, tokens):
                    result.tokens += 1
                    kind = _read_with(token, newest, every_key)
                    setattr(result, kind, getattr(result, kind) + 1)
                    readable &= kind in ("under_newest_key", "under_older_key")
                if not readable and len(result.unreadable_rows) < VERIFY_EXAMPLES:
                    result.unreadable_rows.append({"pk": pk, "organization_id": organization if owned else None})
            last_pk = chunk[-1][0]
    return found


def _read_with(token: str, newest, every_key) -> str:
    try:
        newest.decrypt(token.encode())
        return "under_newest_key"
    except InvalidToken:
        pass
    try:
        every_key.decrypt(token.encode())
        return "under_older_key"
    except InvalidToken:
        return diagnose(token).reason  # "unknown_key" or "malformed", the ModelVerification fields
