from django.conf import settings
from django.urls import reverse

from organizations.models import Organization
from webhooks.selectors import sources_for_organization
from webhooks.services.destinations import destination_create

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = "Create a destination URL that receives the events of the given sources."

    def add_command_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--url", required=True)
        parser.add_argument("--source", action="append", type=int, default=[], metavar="ID")
        parser.add_argument("--event-types", default="", help="comma-separated patterns such as invoice.*")
        parser.add_argument("--timeout", type=float, help="seconds (default 15)")

    def run(self, **options):
        organization = Organization.objects.get(slug=options["org"])
        sources = list(sources_for_organization(organization=organization).filter(pk__in=options["source"]))
        missing = set(options["source"]) - {source.pk for source in sources}
        if missing:
            raise ValueError(f"no source {sorted(missing)} in organization {organization.slug}")
        destination, secret = destination_create(
            organization=organization,
            name=options["name"],
            url=options["url"],
            sources=sources,
            event_types=options["event_types"].split(","),
            timeout_seconds=options.get("timeout"),
        )
        result = {"id": destination.pk, "secret": secret, "sources": [source.pk for source in sources]}
        text = f"Created destination {destination.pk} → {destination.url}\nSigning secret (shown once): {secret}"
        if not sources:
            # No command links a source to an existing destination: only the dashboard does.
            edit_page = settings.PUBLIC_BASE_URL + reverse(
                "dashboard:destination_edit", kwargs={"org_slug": organization.slug, "destination_id": destination.pk}
            )
            result["warning"] = (
                "It receives nothing until a source is linked to it. No command links a source to an existing "
                f"destination: link one on the dashboard's destination edit page ({edit_page})."
            )
            text += "\n" + result["warning"]
        return result, text
