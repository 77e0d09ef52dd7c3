from webhooks.services.encryption import reencrypt_all_secrets

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = "Re-encrypt every stored secret under the newest key of FIELD_ENCRYPTION_KEYS."

    def run(self, **options):
        counts = reencrypt_all_secrets()
        text = "\n".join(f"{label}: {count} rows re-encrypted" for label, count in counts.items())
        return {"reencrypted": counts}, text
