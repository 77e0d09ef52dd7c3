from django.conf import settings
from django.urls import reverse

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
            raise ValueError(f'an organization with slug "{options["slug"]}" already exists')
        organization = organization_create(
            name=options["name"], slug=options["slug"], owner_email=options["owner_email"]
        )
        # Creating the organization mails nobody: the owner asks for a sign-in link on this page, so
        # the operator needs its address to hand on (a tenant has no password to be told).
        sign_in_url = settings.PUBLIC_BASE_URL.rstrip("/") + reverse("accounts:sign_in")
        result = {"id": organization.pk, "slug": organization.slug, "sign_in_url": sign_in_url}
        return result, (
            f"Created organization {organization.name} ({organization.slug}), owner {options['owner_email']}\n"
            f"Nothing was emailed: the owner signs in at {sign_in_url} with that address (a link and a code are "
            "sent to it there)."
        )
