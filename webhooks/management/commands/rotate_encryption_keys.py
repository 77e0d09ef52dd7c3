from django.core.management.base import CommandError

from organizations.models import Organization
from webhooks.services.encryption import reencrypt_all_secrets, verify_stored_secrets

from ._base import WHOLE_NUMBER, OperatorCommand

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
    help = (
        "Re-encrypt every stored secret under the newest (first) key of FIELD_ENCRYPTION_KEYS; with --verify, "
        "only count the stored secrets these keys can and cannot read, writing nothing."
    )
    unreadable_found = 0

    def add_command_arguments(self, parser):
        parser.add_argument(
            "--verify",
            action="store_true",
            help="write nothing: count per model the secrets readable under the newest key, under an older one, "
            "and not at all (exits 1 if any cannot be read)",
        )
        parser.add_argument("--limit", type=WHOLE_NUMBER, help="with --verify: at most this many rows per model")
        parser.add_argument("--org", help="with --verify: only this organization's rows (its slug)")
        parser.add_argument("--batch-size", type=WHOLE_NUMBER, default=500, help="rows read per query (default 500)")

    def handle(self, *args, **options):
        super().handle(*args, **options)
        if self.unreadable_found:
            # After the report (one JSON object with --json): the exit status tells a deploy script.
            raise CommandError(f"{self.unreadable_found} stored secrets cannot be read with FIELD_ENCRYPTION_KEYS")

    def run(self, **options):
        if options["batch_size"] < 1 or (options["limit"] is not None and options["limit"] < 1):
            raise ValueError("--batch-size and --limit must be 1 or more")
        if options["verify"]:
            return self.verify(options)
        if options["limit"] is not None or options["org"] is not None:
            raise ValueError("--limit and --org go with --verify: a rotation re-encrypts every row")
        done = reencrypt_all_secrets(batch_size=options["batch_size"])
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

    def verify(self, options):
        organization_id = None
        if options["org"] is not None:
            organization_id = Organization.objects.filter(slug=options["org"]).values_list("pk", flat=True).first()
            if organization_id is None:
                raise ValueError(f'no organization has the slug "{options["org"]}"')
        found = verify_stored_secrets(
            batch_size=options["batch_size"], limit=options["limit"], organization_id=organization_id
        )
        self.unreadable_found = sum(model.unreadable for model in found.values())
        lines = []
        for label, model in found.items():
            rows = "row" if model.rows == 1 else "rows"
            secrets = "secret" if model.tokens == 1 else "secrets"
            line = (
                f"{label}: {model.rows} {rows}, {model.tokens} {secrets}: "
                f"{model.under_newest_key} under the newest key, {model.under_older_key} under an older one, "
                f"{model.unknown_key} under no key configured, {model.malformed} not a Fernet token"
            )
            if model.unreadable_rows:
                named = ", ".join(
                    f"{row['pk']}" + (f" (organization {row['organization_id']})" if row["organization_id"] else "")
                    for row in model.unreadable_rows
                )
                line += f"; rows that cannot be read: {named}" + (
                    ", …" if model.unreadable > len(model.unreadable_rows) else ""
                )
            lines.append(line)
        if self.unreadable_found:
            lines.append(
                "Some secrets cannot be read with these keys. Under no key configured: add the key they were "
                "encrypted with to FIELD_ENCRYPTION_KEYS (after the newest: NEW,OLD); Fernet tokens do not say "
                "which key made them. Not a Fernet token: the value is damaged and its owner must set a new secret."
            )
        elif any(model.under_older_key for model in found.values()):
            lines.append("Every secret can be read; some are under an older key: run this command without --verify.")
        else:
            lines.append("Every secret can be read, and all are under the newest key.")
        result = {
            "verified": {
                label: {
                    "rows": model.rows,
                    "secrets": model.tokens,
                    "under_newest_key": model.under_newest_key,
                    "under_older_key": model.under_older_key,
                    "unknown_key": model.unknown_key,
                    "malformed": model.malformed,
                    "unreadable_rows": model.unreadable_rows,
                }
                for label, model in found.items()
            },
            "unreadable": self.unreadable_found,
            "limit": options["limit"],
        }
        return result, "\n".join(lines)
