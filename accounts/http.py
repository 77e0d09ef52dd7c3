"""Small request helpers shared by the sign-in and team views."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme


def client_ip(request) -> str | None:
    """The client's address; behind a trusted router, the X-Forwarded-For entry it vouches for: the
    right-most, or with TRUSTED_PROXY_HOPS proxies in a row (a CDN in front of the router), the entry
    that many from the right.

    None when that is not an IP address (a router that appends ``ip:port``, or garbage), or when the
    header holds fewer entries than trusted hops: every entry then may be the client's own (a request
    that reached the router without the CDN), and none is taken for the address. A link-local
    IPv6 address loses its zone ("fe80::1%eth0" is "fe80::1"): the zone names an interface of the
    machine that saw it, says nothing of the client, and PostgreSQL's inet refuses it (the ingest
    writer casts the text, so a signed webhook from such a peer was refused as unstorable).
    Under gunicorn, a request that sent X-Forwarded-For on several lines arrives with one unreadable
    entry (config/gunicorn.conf.py), so its address is None here.
    """
    address = request.META.get("REMOTE_ADDR") or None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if settings.TRUST_X_FORWARDED_FOR and forwarded.strip():
        # Without the header no proxy stood in between (the router always adds it): the peer is the client.
        entries = forwarded.split(",")
        hops = settings.TRUSTED_PROXY_HOPS
        if len(entries) < hops:
            return None
        # A blank entry there is no address; the peer (the router itself) must not stand in for it.
        address = entries[-hops].strip()
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
