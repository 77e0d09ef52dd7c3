"""Small request helpers shared by the sign-in and team views."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme


def client_ip(request) -> str | None:
    """The client's address; behind a trusted router, the right-most X-Forwarded-For entry (the one it vouches for).

    None when that is not an IP address (a router that appends ``ip:port``, or garbage). A link-local
    IPv6 address loses its zone ("fe80::1%eth0" is "fe80::1"): the zone names an interface of the
    machine that saw it, says nothing of the client, and PostgreSQL's inet refuses it (the ingest
    writer casts the text, so a signed webhook from such a peer was refused as unstorable).
    Under gunicorn, a request that sent X-Forwarded-For on several lines arrives with one unreadable
    entry (config/gunicorn.conf.py), so its address is None here.
    """
    address = request.META.get("REMOTE_ADDR") or None
    if settings.TRUST_X_FORWARDED_FOR:
        address = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip() or address
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
        parsed = ipaddress.IPv6Address(parsed.packed)
    return str(parsed)


def safe_next_url(request, candidate: str | None) -> str:
    """``candidate`` when it stays on this site, else the home page: a sign-in link must not become an open redirect."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)
