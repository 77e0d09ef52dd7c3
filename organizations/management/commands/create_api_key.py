from organizations.api_keys import api_key_create
from organizations.models import ApiKey, Organization
from webhooks.management.commands._base import OperatorCommand, find_given


class Command(OperatorCommand):
    help = "Create an API key for an organization; the key is printed once and never stored."

    def add_command_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--name", required=True, help="what the key is for, e.g. deploy-script")
        parser.add_argument("--read-only", action="store_true", help="the key may only read")

    def run(self, **options):
        organization = find_given(Organization.objects.all(), options["org"], field="slug")
        access = ApiKey.Access.READ_ONLY if options["read_only"] else ApiKey.Access.READ_WRITE
        api_key, key = api_key_create(organization=organization, name=options["name"], access=access)
        text = f"Created API key {api_key.pk} ({api_key.get_access_display().lower()}) for {organization.slug}\nKey (shown once): {key}"
        return {"id": api_key.pk, "key": key, "access": access}, text
