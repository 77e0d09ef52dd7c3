"""Request signatures made by the providers' own packages, never by Hookline's code."""

import time
from datetime import UTC, datetime

import stripe
from standardwebhooks.webhooks import Webhook


def stripe_headers(body: str, secret: str, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body}", secret)
    return {"HTTP_STRIPE_SIGNATURE": f"t={timestamp},v1={signature}"}


def standard_webhooks_headers(
    body: str | bytes, secret: str, message_id: str, timestamp: int | None = None, prefix: str = "webhook"
) -> dict[str, str]:
    # The package signs bytes as they are (a str as its UTF-8), so a body that is not UTF-8 is signed as sent.
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    return {
        f"HTTP_{prefix.upper()}_ID": message_id,
        f"HTTP_{prefix.upper()}_TIMESTAMP": str(timestamp),
        f"HTTP_{prefix.upper()}_SIGNATURE": signature,
    }


def post_stripe(client, source, body: str, secret: str, **extra):
    """POST ``body`` to the source's ingest URL with the Django test client, signed as Stripe signs."""
    return client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, secret),
        **extra,
    )
