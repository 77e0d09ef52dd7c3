"""A source's allowed networks: ingest refuses other addresses, and every entry point sets the list
through the same check (dashboard, REST API, admin, create_source)."""

import json

import pytest

from webhooks.models import Source, WebhookEvent
from webhooks.services import ingest
from webhooks.services.source_networks import MAX_ALLOWED_NETWORKS
from webhooks.services.sources import (
    SourceNetworksError,
    source_check_allowed_networks,
    source_create,
    source_update,
)

from .factories import STRIPE_SECRET, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db

PROVIDER_NETWORKS = ["203.0.113.0/24", "2001:db8::/32"]
INSIDE_V4 = "203.0.113.9"
INSIDE_V6 = "2001:db8::5"
OUTSIDE = "198.51.100.7"


def restricted_source(organization, networks=PROVIDER_NETWORKS, name="Stripe live"):
    source, _ = source_create(
        organization=organization, provider="stripe", name=name, secret=STRIPE_SECRET, allowed_networks=networks
    )
    return source


def stripe_body(event_id: str) -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})


def post(client, source, event_id: str, *, secret: str = STRIPE_SECRET, **extra):
    body = stripe_body(event_id)
    return client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, secret),
        **extra,
    )


def rejected(source) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(source=source, status=WebhookEvent.Status.REJECTED).order_by("id"))


def stored(source) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(source=source).exclude(status=WebhookEvent.Status.REJECTED))


# --- Ingest ------------------------------------------------------------------------------------


def test_requests_from_allowed_ipv4_and_ipv6_addresses_are_stored(client, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    source = restricted_source(organization)

    from_v4 = post(client, source, "evt_v4", REMOTE_ADDR=INSIDE_V4)
    from_v6 = post(client, source, "evt_v6", REMOTE_ADDR=INSIDE_V6)
    # A dual-stack socket shows an IPv4 peer as an IPv4-mapped IPv6 address.
    from_mapped = post(client, source, "evt_mapped", REMOTE_ADDR="::ffff:203.0.113.10")

    assert (from_v4.status_code, from_v6.status_code, from_mapped.status_code) == (200, 200, 200)
    assert sorted(event.remote_ip for event in stored(source)) == sorted([INSIDE_V4, INSIDE_V6, "::ffff:203.0.113.10"])
    assert rejected(source) == []


def test_a_request_from_outside_the_list_is_403_and_recorded_as_rejected(client, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    settings.REJECTED_BODY_MAX_BYTES = 20
    source = restricted_source(organization)

    response = post(client, source, "evt_outside", REMOTE_ADDR=OUTSIDE)

    assert response.status_code == 403
    answer = response.json()
    assert answer["error"] == "address_not_allowed"
    assert OUTSIDE in answer["detail"]
    # Nothing about the list or the secret: only the address the request came from.
    assert STRIPE_SECRET not in response.content.decode()
    assert not any(network in response.content.decode() for network in PROVIDER_NETWORKS)
    assert stored(source) == []
    [record] = rejected(source)
    assert record.rejection_code == "address_not_allowed" and OUTSIDE in record.rejection_detail
    assert record.remote_ip == OUTSIDE
    assert bytes(record.body) == stripe_body("evt_outside").encode()[:20]
    assert record.claimed_event_id == "evt_outside"


def test_the_address_is_checked_before_the_signature(client, organization, settings):
    # A badly signed request from outside is refused for its address: it costs no verification, and
    # the answer tells a sender outside the list nothing about its signature.
    settings.TRUST_X_FORWARDED_FOR = False
    source = restricted_source(organization)

    badly_signed = post(client, source, "evt_bad", secret="whsec_not_the_secret", REMOTE_ADDR=OUTSIDE)
    unsigned = client.post(f"/in/{source.ingest_token}/", "{}", content_type="application/json", REMOTE_ADDR=OUTSIDE)
    inside_badly_signed = post(client, source, "evt_bad_inside", secret="whsec_not_the_secret", REMOTE_ADDR=INSIDE_V4)

    assert (badly_signed.status_code, badly_signed.json()["error"]) == (403, "address_not_allowed")
    assert (unsigned.status_code, unsigned.json()["error"]) == (403, "address_not_allowed")
    assert (inside_badly_signed.status_code, inside_badly_signed.json()["error"]) == (401, "no_matching_secret")
    assert [record.rejection_code for record in rejected(source)] == [
        "address_not_allowed",
        "address_not_allowed",
        "no_matching_secret",
    ]


def test_refused_addresses_are_recorded_at_most_the_rejected_records_limit(client, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 2
    source = restricted_source(organization)

    answers = [post(client, source, f"evt_{n}", REMOTE_ADDR=OUTSIDE).status_code for n in range(5)]

    assert answers == [403] * 5
    assert len(rejected(source)) == 2


@pytest.mark.parametrize(
    ("trust", "meta"),
    [
        (False, {"REMOTE_ADDR": ""}),
        (True, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": f"{INSIDE_V4}, not-an-address"}),
        (True, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": f"{INSIDE_V4}, {INSIDE_V4}:443"}),
    ],
    ids=["no peer address", "garbage from the router", "address with a port"],
)
def test_a_request_whose_address_cannot_be_read_is_refused_not_a_500(client, organization, settings, trust, meta):
    settings.TRUST_X_FORWARDED_FOR = trust
    source = restricted_source(organization)

    response = post(client, source, "evt_unknown_address", **meta)

    assert response.status_code == 403
    assert response.json()["error"] == "address_not_allowed"
    assert "could not be read" in response.json()["detail"]
    [record] = rejected(source)
    assert record.remote_ip is None


def test_behind_the_router_only_the_right_most_forwarded_entry_counts(client, organization, settings):
    # The router appends the address it saw; whatever the client put to its left is the client's own.
    settings.TRUST_X_FORWARDED_FOR = True
    source = restricted_source(organization)

    forged = post(client, source, "evt_forged", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"{INSIDE_V4}, {OUTSIDE}")
    genuine = post(
        client, source, "evt_genuine", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"{OUTSIDE}, {INSIDE_V4}"
    )

    assert forged.status_code == 403 and OUTSIDE in forged.json()["detail"]
    assert genuine.status_code == 200
    assert [event.remote_ip for event in stored(source)] == [INSIDE_V4]


def test_without_a_trusted_router_the_forwarded_header_is_ignored(client, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    source = restricted_source(organization)

    claimed = post(client, source, "evt_claimed", REMOTE_ADDR=OUTSIDE, HTTP_X_FORWARDED_FOR=INSIDE_V4)
    direct = post(client, source, "evt_direct", REMOTE_ADDR=INSIDE_V4, HTTP_X_FORWARDED_FOR=OUTSIDE)

    assert claimed.status_code == 403 and OUTSIDE in claimed.json()["detail"]
    assert direct.status_code == 200


def test_a_change_of_the_list_applies_to_this_processs_cached_source_at_once(client, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_SOURCE_CACHE_SECONDS = 60
    source = make_source(organization)
    assert post(client, source, "evt_open", REMOTE_ADDR=OUTSIDE).status_code == 200
    assert ingest._source_cache[source.ingest_token][1] is not None  # cached, with its empty list

    source_update(source=source, name=source.name, options=source.options, allowed_networks=PROVIDER_NETWORKS)
    assert post(client, source, "evt_restricted", REMOTE_ADDR=OUTSIDE).status_code == 403
    assert post(client, source, "evt_inside", REMOTE_ADDR=INSIDE_V4).status_code == 200

    source_update(source=source, name=source.name, options=source.options, allowed_networks=[])
    assert post(client, source, "evt_open_again", REMOTE_ADDR=OUTSIDE).status_code == 200


def test_a_change_made_in_another_process_applies_once_the_cached_copy_is_read_again(client, organization, settings):
    # The parsed networks go with the copy of the source: when the copy is read again (after
    # INGEST_SOURCE_CACHE_SECONDS; 0 here), so is the list. update() sends no signal, as in another process.
    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_SOURCE_CACHE_SECONDS = 0
    source = restricted_source(organization)
    assert post(client, source, "evt_inside", REMOTE_ADDR=INSIDE_V4).status_code == 200

    Source.objects.filter(pk=source.pk).update(allowed_networks=[f"{OUTSIDE}/32"])
    assert post(client, source, "evt_old_range", REMOTE_ADDR=INSIDE_V4).status_code == 403
    assert post(client, source, "evt_new_range", REMOTE_ADDR=OUTSIDE).status_code == 200


def test_a_stored_list_that_no_longer_parses_keeps_the_source_closed_never_a_500(client, organization, settings):
    # Changed by hand in the database: the entries that cannot be read are left out, and the source
    # stays restricted rather than open to every address.
    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_SOURCE_CACHE_SECONDS = 0
    source = restricted_source(organization)
    Source.objects.filter(pk=source.pk).update(allowed_networks=["not a network", 5, None, f"{INSIDE_V4}/32"])

    assert post(client, source, "evt_outside", REMOTE_ADDR=OUTSIDE).status_code == 403
    assert post(client, source, "evt_inside", REMOTE_ADDR=INSIDE_V4).status_code == 200
    Source.objects.filter(pk=source.pk).update(allowed_networks=["not a network"])
    assert post(client, source, "evt_inside_2", REMOTE_ADDR=INSIDE_V4).status_code == 403


def test_the_list_is_parsed_once_per_cached_copy_of_the_source_and_never_when_empty(
    client, organization, settings, monkeypatch
):
    from webhooks.services import source_networks

    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_SOURCE_CACHE_SECONDS = 60
    parsed = []
    parse = source_networks.parse_allowed_networks
    monkeypatch.setattr(
        source_networks, "parse_allowed_networks", lambda stored: parsed.append(stored) or parse(stored)
    )
    open_source = make_source(organization, name="open")
    source = restricted_source(organization)

    for n in range(3):
        assert post(client, open_source, f"evt_open_{n}", REMOTE_ADDR=OUTSIDE).status_code == 200
        assert post(client, source, f"evt_inside_{n}", REMOTE_ADDR=INSIDE_V4).status_code == 200
        assert post(client, source, f"evt_outside_{n}", REMOTE_ADDR=OUTSIDE).status_code == 403

    assert parsed == [PROVIDER_NETWORKS]


# --- The check every entry point uses ----------------------------------------------------------


def test_entries_are_normalised_to_networks_in_cidr_notation():
    given = ["203.0.113.7", "2001:DB8::/32", "::ffff:192.0.2.1", " 198.51.100.0/24 ", "203.0.113.7/32", "10.0.0.0/8"]
    assert source_check_allowed_networks(given) == [
        "203.0.113.7/32",
        "2001:db8::/32",
        "192.0.2.1/32",
        "198.51.100.0/24",
        "10.0.0.0/8",
    ]
    assert source_check_allowed_networks(None) == source_check_allowed_networks([]) == []


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["203.0.113.0/24", "10.0.0.5/24"], "“10.0.0.5/24” has bits set after its prefix: the network is 10.0.0.0/24"),
        (["stripe.com"], "“stripe.com” is neither an IP address nor a network"),
        (["203.0.113.0/33"], "“203.0.113.0/33” is neither an IP address nor a network"),
        (["fe80::1%eth0"], "“fe80::1%eth0” names a network interface"),
        ([""], "an entry is empty"),
        ([f"10.0.{n // 256}.{n % 256}" for n in range(MAX_ALLOWED_NETWORKS + 1)], "at most 100 allowed networks"),
    ],
    ids=["host bits", "a host name", "prefix too long", "zone", "empty", "too many"],
)
def test_refused_entries_are_named(entries, message):
    with pytest.raises(SourceNetworksError) as refused:
        source_check_allowed_networks(entries)
    assert message in str(refused.value)
