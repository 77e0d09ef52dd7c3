import os
import secrets

from django.db import transaction

from organizations.models import Organization
from organizations.services import organization_create
from webhooks.models import Destination, Source
from webhooks.services.destinations import destination_create
from webhooks.services.sources import ingest_url, source_create

from ._base import OperatorCommand

DEMO_SLUG = "demo"
DEMO_SOURCE = "Stripe (test mode)"
DEMO_DESTINATION = "Demo receiver"


class Command(OperatorCommand):
    help = (
        "Create (once) a demo organization with a Stripe source and a destination on the local demo receiver; "
        "later runs report what is left of them and re-create nothing."
    )

    def add_command_arguments(self, parser):
        parser.add_argument(
            "--receiver-url",
            default=os.environ.get("DEMO_RECEIVER_URL", "http://127.0.0.1:8001/hooks"),
            help="where the demo destination points",
        )

    # One transaction: a first run that fails half-way (say, the receiver's address refused)
    # leaves nothing, so the next run creates everything instead of reporting it deleted.
    @transaction.atomic
    def run(self, **options):
        organization = Organization.objects.filter(slug=DEMO_SLUG).first()
        created = organization is None
        if created:
            organization = organization_create(name="Demo Inc.", slug=DEMO_SLUG, owner_email="owner@demo.example")
            # Stripe issues the secret; for the demo we make one in Stripe's format.
            source, _ = source_create(
                organization=organization,
                provider="stripe",
                name=DEMO_SOURCE,
                secret="whsec_" + secrets.token_hex(24),
            )
            destination, _ = destination_create(
                organization=organization, name=DEMO_DESTINATION, url=options["receiver_url"], sources=[source]
            )
        else:
            # Created once: what the tenant deleted since stays deleted.
            source = Source.objects.filter(organization=organization, name=DEMO_SOURCE).first()
            destination = Destination.objects.filter(organization=organization, name=DEMO_DESTINATION).first()
        result = {
            "organization": organization.slug,
            "created": created,
            "source_id": source.pk if source else None,
            "ingest_url": ingest_url(source) if source else None,
            "destination_id": destination.pk if destination else None,
            "destination_url": destination.url if destination else None,
        }
        if created:
            # For `make run`'s demo receiver, which verifies each delivery's signature with it, and
            # which keeps it (var/, readable by its owner only). Only in the JSON, which `make run`
            # reads, and only by the run that made it: a secret is never shown once it is set.
            result["destination_secret"] = destination.secret
        lines = [f'Demo organization "{organization.slug}" {"created" if created else "already there"}.']
        lines.append(f"  Stripe source {source.pk}: {ingest_url(source)}" if source else "  Stripe source: deleted")
        lines.append(f"  Destination {destination.pk}: {destination.url}" if destination else "  Destination: deleted")
        return result, "\n".join(lines)
