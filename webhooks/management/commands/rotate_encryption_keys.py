from webhooks.services.encryption import reencrypt_all_secrets

from ._base import OperatorCommand

NEXT_STEP = (
    "deploy FIELD_ENCRYPTION_KEYS with the new key alone (without the old one) to retire the old key; "
    "every stored secret is now encrypted with the new one."
)
ONE_KEY = (
    "FIELD_ENCRYPTION_KEYS holds one key, so there is no older key to retire. To rotate: give every process "
    "FIELD_ENCRYPTION_KEYS=NEW,OLD (the new key first), run this command, then deploy NEW alone."
)
NONE_FROM_OLDER_KEY = (
    "no secret was under an older key: a run before this one moved them all, or the new key is not first in "
    "FIELD_ENCRYPTION_KEYS (it must be: the first key is the one secrets are written with)."
)


class Command(OperatorCommand):
    help = "Re-encrypt every stored secret under the newest (first) key of FIELD_ENCRYPTION_KEYS."

    def run(self, **options):
        done = reencrypt_all_secrets()
        lines = [
            f"{label}: {count} {'row' if count == 1 else 'rows'} re-encrypted, "
            f"{done.from_older_key[label]} of them from an older key"
            for label, count in done.reencrypted.items()
        ]
        result = {"reencrypted": done.reencrypted, "from_older_key": done.from_older_key}
        if done.keys == 1:
            # Re-encrypted under the same key: the usual next step would tell them to retire a key they do not have.
            result["next_step"] = ONE_KEY
            return result, "\n".join([*lines, f"Next step: {ONE_KEY}"])
        if any(done.reencrypted.values()) and not any(done.from_older_key.values()):
            result["warning"] = NONE_FROM_OLDER_KEY[0].upper() + NONE_FROM_OLDER_KEY[1:]
            lines.append(f"Warning: {NONE_FROM_OLDER_KEY}")
        result["next_step"] = NEXT_STEP[0].upper() + NEXT_STEP[1:]
        return result, "\n".join([*lines, f"Next step: {NEXT_STEP}"])
