from organizations.services import organization_create

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = "Create an organization (a tenant) and its owner."

    def add_command_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--slug", required=True)
        parser.add_argument("--owner-email", required=True)

    def run(self, **options):
        from organizations.models import Organization

        if Organization.objects.filter(slug=options["slug"]).exists():
            raise ValueError(f"an organization with slug '{options['slug']}' already exists")
        organization = organization_create(
            name=options["name"], slug=options["slug"], owner_email=options["owner_email"]
        )
        result = {"id": organization.pk, "slug": organization.slug}
        return result, f"Created organization {organization.name} ({organization.slug}), owner {options['owner_email']}"
