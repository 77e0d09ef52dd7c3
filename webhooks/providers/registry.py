"""The one place where provider kinds are listed.

Model choices, forms, admin filters, docs and tests are all derived from
PROVIDERS; adding a provider means one module and one line here.
"""

from __future__ import annotations

from .apple import AppleAppStoreProvider
from .base import Provider
from .bitbucket import BitbucketProvider
from .discord import DiscordProvider
from .flutterwave import FlutterwaveProvider
from .generic_hmac import GenericHmacProvider
from .github import GitHubProvider
from .gitlab import GitLabProvider
from .google_play import GooglePlayProvider
from .linear import LinearProvider
from .mailgun import MailgunProvider
from .paypal import PayPalProvider
from .paystack import PaystackProvider
from .sendgrid import SendGridProvider
from .shared_token import SharedTokenProvider
from .shopify import ShopifyProvider
from .slack import SlackProvider
from .square import SquareProvider
from .standard_webhooks import StandardWebhooksProvider
from .stripe import StripeProvider
from .supabase import SupabaseProvider
from .twilio import TwilioProvider
from .twitter import XProvider
from .zoom import ZoomProvider

PROVIDERS: dict[str, Provider] = {
    provider.kind: provider
    for provider in (
        StripeProvider(),
        GitHubProvider(),
        ShopifyProvider(),
        StandardWebhooksProvider(),
        GenericHmacProvider(),
        SharedTokenProvider(),
        SlackProvider(),
        TwilioProvider(),
        SquareProvider(),
        ZoomProvider(),
        XProvider(),
        PayPalProvider(),
        AppleAppStoreProvider(),
        GooglePlayProvider(),
        PaystackProvider(),
        FlutterwaveProvider(),
        GitLabProvider(),
        BitbucketProvider(),
        SendGridProvider(),
        MailgunProvider(),
        LinearProvider(),
        DiscordProvider(),
        SupabaseProvider(),
    )
}


# Lower-cased name -> the provider's documented spelling (Provider.header_names).
_DOCUMENTED_HEADER_NAMES = {name.lower(): name for provider in PROVIDERS.values() for name in provider.header_names}


def documented_header_name(name: str) -> str:
    """A header's name as its provider documents it ("X-GitHub-Delivery"); any other name unchanged.

    Names are case-insensitive and WSGI keeps no case at all: this is only what we show and send on."""
    return _DOCUMENTED_HEADER_NAMES.get(name.lower(), name)


class UnknownProvider(LookupError):
    pass


def get_provider(kind: str) -> Provider:
    """The provider for ``kind``; an unknown kind is an error, never a pass."""
    try:
        return PROVIDERS[kind]
    except KeyError:
        raise UnknownProvider(kind) from None


def provider_choices() -> list[tuple[str, str]]:
    return [(kind, provider.label) for kind, provider in PROVIDERS.items()]


# Providers whose request carries no id of its own get one made of a digest (the body's, or a
# batch's ids'): such an id says so rather than naming the provider's usual source.
DIGEST_ID_PREFIX = "sha256:"


def event_id_origin(kind: str, event_id: str) -> str:
    """Where an event's provider id came from, in a few words (the provider's event_id_from);
    empty for a provider no longer known."""
    if event_id.startswith(DIGEST_ID_PREFIX):
        return "a digest: the request carried no id of its own"
    try:
        return get_provider(kind).event_id_from
    except UnknownProvider:
        return ""
