"""Building sources and destinations through the same services the product uses."""

from webhooks.services.destinations import destination_create
from webhooks.services.sources import source_create

STRIPE_SECRET = "whsec_test_secret"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def make_source(organization, provider="stripe", secret=STRIPE_SECRET, name=None, **options):
    source, _ = source_create(
        organization=organization, provider=provider, name=name or f"{provider} source", secret=secret, options=options
    )
    return source


def make_destination(organization, url, sources=(), event_types=None, **extra):
    destination, secret = destination_create(
        organization=organization, name="endpoint", url=url, sources=sources, event_types=event_types, **extra
    )
    return destination, secret
