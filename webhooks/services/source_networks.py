"""A source's allowed networks: the addresses its provider sends from, as defense in depth.

Many providers publish them (Stripe, GitHub, Shopify, PayPal…). With a list set, ingest refuses
a request from any other address before its signature is checked (see ingest._ingest); an empty
list lets every address through. The client address is accounts.http.client_ip's: the peer's, or
with TRUST_X_FORWARDED_FOR the right-most X-Forwarded-For entry, which the platform's router adds
(behind a CDN, the entry TRUSTED_PROXY_HOPS from the right).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .text import echoable_text

MAX_ALLOWED_NETWORKS = 100
# Longer than any address with its prefix; a longer entry is shown cut in an error.
_SHOWN_LENGTH = 60

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedNetworksError(ValueError):
    """A list of networks that cannot be saved as given (the message names the entry at fault)."""


def _shown(entry: str) -> str:
    return echoable_text(entry, _SHOWN_LENGTH)


def _as_ipv4(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (::ffff:192.0.2.1) as the IPv4 network it is: client
    addresses are compared in that form too (see address_allowed)."""
    if network.version == 6 and network.prefixlen >= 96 and network.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((network.network_address.ipv4_mapped, network.prefixlen - 96))
    return network


def check_network(entry: str) -> Network:
    """One entry (an IPv4 or IPv6 address, or a network in CIDR notation), parsed and checked."""
    if not isinstance(entry, str):
        raise AllowedNetworksError(f"“{_shown(str(entry))}” is not text: give each network as a string")
    given = entry.strip()
    if not given:
        raise AllowedNetworksError("an entry is empty: give an address or a network such as 192.0.2.0/24")
    if len(given.replace(",", " ").split()) > 1:
        # The dashboard's box splits on commas and spaces; an API list item or a --allowed-network
        # flag is one entry, and "neither an IP address nor a network" would not say why.
        raise AllowedNetworksError(
            f"“{_shown(given)}” holds more than one entry: give each address or network as an entry of its own"
        )
    if "%" in given:
        raise AllowedNetworksError(
            f"“{_shown(given)}” names a network interface (after the %), which says nothing of where a request "
            "comes from: give the address without it"
        )
    try:
        network = ipaddress.ip_network(given, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(given, strict=False)
        except ValueError:
            raise AllowedNetworksError(
                f"“{_shown(given)}” is neither an IP address nor a network: write an address (192.0.2.10, "
                "2001:db8::10) or a network in CIDR notation (192.0.2.0/24, 2001:db8::/32)"
            ) from None
        address = given.partition("/")[0]
        raise AllowedNetworksError(
            f"“{_shown(given)}” has bits set after its prefix: the network is {loose.compressed}; for the one "
            f"address, write {address} alone"
        ) from None
    return _as_ipv4(network)


def check_allowed_networks(entries: Iterable[str] | None) -> list[str]:
    """A whole list, checked (AllowedNetworksError) and normalised: each entry as its network in
    CIDR notation (a single address becomes /32 or /128), in the order given, without repeats.
    None and [] are the empty list: any address."""
    entries = list(entries or [])
    if len(entries) > MAX_ALLOWED_NETWORKS:
        raise AllowedNetworksError(
            f"at most {MAX_ALLOWED_NETWORKS} allowed networks, {len(entries)} given: merge neighbouring ones "
            "into wider networks"
        )
    normalised = [check_network(entry).compressed for entry in entries]
    return list(dict.fromkeys(normalised))


def parse_allowed_networks(stored) -> tuple[Network, ...]:
    """The stored list as networks, for the ingest path. An entry that no longer parses (the
    column changed by hand) is left out: the list is still not empty, so the source stays
    restricted, never opened to every address."""
    if not isinstance(stored, list):
        return ()
    networks = []
    for entry in stored:
        try:
            networks.append(_as_ipv4(ipaddress.ip_network(entry, strict=False)))
        except (TypeError, ValueError):
            continue
    return tuple(networks)


def address_allowed(networks: tuple[Network, ...], address: str | None) -> bool:
    """Whether ``address`` (client_ip's text, or None) is in one of ``networks``. No address, or
    one that cannot be read, is in none."""
    if not address:
        return False
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        # A dual-stack socket shows an IPv4 peer as ::ffff:192.0.2.1.
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in networks)
