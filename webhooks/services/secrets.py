"""Generating and describing secrets without ever echoing them."""

from __future__ import annotations

import base64
import secrets


def generate_standard_webhooks_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def generate_token_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hint(secret: str) -> str:
    """The last four characters: enough to recognise a secret, not to use it."""
    return "…" + secret[-4:] if len(secret) >= 12 else "…"
