from webhooks.services.encryption import reencrypt_all_secrets

from ._base import OperatorCommand

NEXT_STEP = (
    "deploy FIELD_ENCRYPTION_KEYS with the new key alone (without the old one) to retire the old key; "
    "every stored secret is now encrypted with the new one."
)


class Command(OperatorCommand):
    help = "Re-encrypt every stored secret under the newest key of FIELD_ENCRYPTION_KEYS."

    def run(self, **options):
        counts = reencrypt_all_secrets()
        lines = [f"{label}: {count} rows re-encrypted" for label, count in counts.items()]
        text = "\n".join([*lines, f"Next step: {NEXT_STEP}"])
        return {"reencrypted": counts, "next_step": NEXT_STEP[0].upper() + NEXT_STEP[1:]}, text
