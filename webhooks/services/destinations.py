"""Creating destinations and linking them to sources."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from organizations.models import Organization
from organizations.services import SECRET_MASK, audit_record
from webhooks.models import Destination, Source, Subscription

from .outbound import DestinationNotAllowed, resolve_destination
from .secrets import generate_standard_webhooks_secret, secret_hint


class DestinationError(ValueError):
    """A destination cannot be saved as asked (message is safe to show)."""


def destination_check_url(url: str) -> None:
    """Refuse URLs that resolve to private or reserved addresses (unless allowed by settings)."""
    try:
        resolve_destination(url)
    except DestinationNotAllowed as exc:
        raise DestinationError(str(exc)) from None


@transaction.atomic
def destination_create(
    *,
    organization: Organization,
    name: str,
    url: str,
    sources: Iterable[Source] = (),
    event_types: list[str] | None = None,
    timeout_seconds: float | None = None,
    actor=None,
) -> tuple[Destination, str]:
    """Create a destination with a new signing secret; returns it and the secret (shown once)."""
    destination_check_url(url)
    secret = generate_standard_webhooks_secret()
    destination = Destination.objects.create(
        organization=organization,
        name=name,
        url=url,
        secret=secret,
        secret_hint=secret_hint(secret),
        **({"timeout_seconds": timeout_seconds} if timeout_seconds else {}),
    )
    for source in sources:
        subscription_create(destination=destination, source=source, event_types=event_types or [], actor=actor)
    audit_record(
        action="destination.created",
        organization=organization,
        actor=actor,
        target=destination,
        changes={"name": name, "url": url, "secret": SECRET_MASK},
    )
    return destination, secret


def subscription_create(
    *, destination: Destination, source: Source, event_types: list[str], actor=None
) -> Subscription:
    if source.organization_id != destination.organization_id:
        # Never let one tenant route another tenant's events.
        raise DestinationError("the source belongs to another organization")
    subscription = Subscription.objects.create(
        organization_id=destination.organization_id,
        source=source,
        destination=destination,
        event_types=[pattern.strip() for pattern in event_types if pattern.strip()],
    )
    audit_record(
        action="subscription.created",
        organization=destination.organization,
        actor=actor,
        target=subscription,
        changes={"source": source.pk, "destination": destination.pk, "event_types": subscription.event_types},
    )
    return subscription
