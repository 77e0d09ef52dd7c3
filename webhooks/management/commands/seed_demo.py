import os
import secrets

from organizations.models import Organization
from organizations.services import organization_create
from webhooks.models import Destination, Source
from webhooks.services.destinations import destination_create
from webhooks.services.sources import ingest_url, source_create

from ._base import OperatorCommand

DEMO_SLUG = "demo"


class Command(OperatorCommand):
    help = "Create (once) a demo organization with a Stripe source and a destination on the local demo receiver."

    def add_command_arguments(self, parser):
        parser.add_argument(
            "--receiver-url",
            default=os.environ.get("DEMO_RECEIVER_URL", "http://127.0.0.1:8001/hooks"),
            help="where the demo destination points",
        )

    def run(self, **options):
        organization = Organization.objects.filter(slug=DEMO_SLUG).first()
        created = organization is None
        if created:
            organization = organization_create(name="Demo Inc.", slug=DEMO_SLUG, owner_email="owner@demo.example")
        source = Source.objects.filter(organization=organization, name="Stripe (test mode)").first()
        if source is None:
            # Stripe issues the secret; for the demo we make one in Stripe's format.
            source, _ = source_create(
                organization=organization,
                provider="stripe",
                name="Stripe (test mode)",
                secret="whsec_" + secrets.token_hex(24),
            )
        destination = Destination.objects.filter(organization=organization, name="Demo receiver").first()
        if destination is None:
            destination, _ = destination_create(
                organization=organization, name="Demo receiver", url=options["receiver_url"], sources=[source]
            )
        result = {
            "organization": organization.slug,
            "created": created,
            "source_id": source.pk,
            "ingest_url": ingest_url(source),
            "destination_id": destination.pk,
            "destination_url": destination.url,
        }
        text = (
            f"Demo organization '{organization.slug}' {'created' if created else 'already there'}.\n"
            f"  Stripe source {source.pk}: {ingest_url(source)}\n"
            f"  Destination {destination.pk}: {destination.url}"
        )
        return result, text
