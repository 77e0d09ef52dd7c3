"""A source's allowed networks: ingest refuses other addresses, and every entry point sets the list
through the same check (dashboard, REST API, admin, create_source)."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from organizations.models import ApiKey, AuditLog
from webhooks.models import Source, WebhookEvent
from webhooks.services import ingest
from webhooks.services.source_networks import MAX_ALLOWED_NETWORKS
from webhooks.services.sources import (
    SourceNetworksError,
    source_check_allowed_networks,
    source_create,
    source_update,
)

from .api_helpers import api_get, api_patch, api_post, make_key
from .factories import STRIPE_SECRET, make_source
from .processes import free_port, wait_for_port
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


def test_refused_addresses_are_recorded_at_most_the_rejected_records_limit(client, organization, settings, monkeypatch):
    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 2
    monkeypatch.setattr(ingest, "rejection_clock", lambda: 1_800_000_000.0)  # one minute throughout
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


@pytest.mark.django_db(transaction=True)
def test_a_second_forwarded_line_from_the_client_never_passes_for_the_routers_entry(organization, tmp_path):
    # A router that appends the address it saw to the first X-Forwarded-For line passes a second
    # line from the client on as it is, and gunicorn joins the lines in order: that line's last
    # entry came last, where client_ip reads the router's. Over real gunicorn (config/gunicorn.conf.py).
    from .test_ingest_batch_fuzz import _raw_status, _raw_stripe_request, _stripe_body
    from .test_ingest_writer_process import _start_gunicorn

    source = restricted_source(organization)
    port = free_port()
    private_tmp = Path(tempfile.mkdtemp(prefix="hln-"))

    def status(event_id: str, *forwarded: str) -> int:
        lines = [f"X-Forwarded-For: {line}".encode() for line in forwarded]
        return _raw_status(port, _raw_stripe_request(source.ingest_token, _stripe_body(event_id), lines))

    with (tmp_path / "gunicorn.log").open("w") as log:
        gunicorn = _start_gunicorn(port, private_tmp, log, "--workers", "1", TRUST_X_FORWARDED_FOR="true")
        try:
            wait_for_port(port, process=gunicorn)
            # As such a router passes them on: the outsider's address appended to its first line.
            smuggled = status("evt_smuggled", f"{INSIDE_V4}, {OUTSIDE}", INSIDE_V4)
            genuine = status("evt_genuine", f"{OUTSIDE}, {INSIDE_V4}")
        finally:
            gunicorn.terminate()
            gunicorn.wait(30)
            shutil.rmtree(private_tmp, ignore_errors=True)

    assert smuggled == 403
    assert genuine == 200
    assert [event.remote_ip for event in stored(source)] == [INSIDE_V4]
    [record] = rejected(source)
    assert record.rejection_code == "address_not_allowed"
    assert record.remote_ip is None  # unknown: neither the client's pick nor the router's entry guessed at


CDN_EDGE = "192.0.2.77"  # the address a CDN in front of the router connects from


def test_behind_a_cdn_the_entry_as_many_hops_from_the_right_is_the_client(client, organization, settings):
    # Cloudflare → Heroku: the CDN appends the provider's address, the router the CDN's.
    settings.TRUST_X_FORWARDED_FOR = True
    settings.TRUSTED_PROXY_HOPS = 2
    source = restricted_source(organization)

    genuine = post(
        client,
        source,
        "evt_genuine",
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR=f"{OUTSIDE}, {INSIDE_V4}, {CDN_EDGE}",
    )
    forged = post(
        client, source, "evt_forged", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"{INSIDE_V4}, {OUTSIDE}, {CDN_EDGE}"
    )

    assert genuine.status_code == 200
    assert forged.status_code == 403 and OUTSIDE in forged.json()["detail"]
    assert [event.remote_ip for event in stored(source)] == [INSIDE_V4]
    assert [record.remote_ip for record in rejected(source)] == [OUTSIDE]


def test_behind_a_cdn_with_one_trusted_hop_every_request_comes_from_the_cdn(client, organization, settings):
    # Why the setting exists: with the default, the router's entry (the CDN's address) is the client.
    settings.TRUST_X_FORWARDED_FOR = True
    source = restricted_source(organization)

    response = post(
        client,
        source,
        "evt_via_cdn",
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR=f"{OUTSIDE}, {INSIDE_V4}, {CDN_EDGE}",
    )

    assert response.status_code == 403 and CDN_EDGE in response.json()["detail"]


def test_fewer_forwarded_entries_than_trusted_hops_leave_the_address_unknown(client, organization, settings):
    # A request that reached the router without passing the CDN: its one entry before the router's
    # would be the client's own pick, so no entry is taken for its address.
    settings.TRUST_X_FORWARDED_FOR = True
    settings.TRUSTED_PROXY_HOPS = 3
    source = restricted_source(organization)

    short = post(client, source, "evt_short", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"{INSIDE_V4}, {INSIDE_V4}")

    assert short.status_code == 403
    assert "could not be read" in short.json()["detail"]
    [record] = rejected(source)
    assert record.remote_ip is None


def test_a_blank_entry_where_the_client_should_be_leaves_the_address_unknown(client, organization, settings):
    # With two hops the client's entry is the second from the right; a blank one there is no
    # address, and the router's own (the peer) must not stand in for it.
    settings.TRUST_X_FORWARDED_FOR = True
    settings.TRUSTED_PROXY_HOPS = 2
    source = restricted_source(organization)

    blank = post(client, source, "evt_blank", REMOTE_ADDR=INSIDE_V4, HTTP_X_FORWARDED_FOR=f" , {INSIDE_V4}")

    assert blank.status_code == 403
    assert "could not be read" in blank.json()["detail"]
    [record] = rejected(source)
    assert record.remote_ip is None


def test_with_several_trusted_hops_a_request_without_the_header_is_the_peers(client, organization, settings):
    # The router always adds the header: without one, nothing stood between the peer and gunicorn.
    settings.TRUST_X_FORWARDED_FOR = True
    settings.TRUSTED_PROXY_HOPS = 2
    source = restricted_source(organization)

    assert post(client, source, "evt_direct", REMOTE_ADDR=INSIDE_V4).status_code == 200
    assert post(client, source, "evt_direct_outside", REMOTE_ADDR=OUTSIDE).status_code == 403
    assert [event.remote_ip for event in stored(source)] == [INSIDE_V4]


@pytest.mark.django_db(transaction=True)
def test_over_real_gunicorn_behind_a_cdn_the_provider_is_let_in_and_a_short_header_is_not(organization, tmp_path):
    from .test_ingest_batch_fuzz import _raw_status, _raw_stripe_request, _stripe_body
    from .test_ingest_writer_process import _start_gunicorn

    source = restricted_source(organization)
    port = free_port()
    private_tmp = Path(tempfile.mkdtemp(prefix="hln-"))

    def status(event_id: str, *forwarded: str) -> int:
        lines = [f"X-Forwarded-For: {line}".encode() for line in forwarded]
        return _raw_status(port, _raw_stripe_request(source.ingest_token, _stripe_body(event_id), lines))

    with (tmp_path / "gunicorn.log").open("w") as log:
        gunicorn = _start_gunicorn(
            port, private_tmp, log, "--workers", "1", TRUST_X_FORWARDED_FOR="true", TRUSTED_PROXY_HOPS="2"
        )
        try:
            wait_for_port(port, process=gunicorn)
            genuine = status("evt_genuine", f"{OUTSIDE}, {INSIDE_V4}, {CDN_EDGE}")
            # Past the CDN, straight to the router, with no header of its own: the router's entry alone.
            short = status("evt_short", OUTSIDE)
            # Two lines are one unreadable entry (config/gunicorn.conf.py), whatever they hold.
            two_lines = status("evt_two_lines", f"{OUTSIDE}, {INSIDE_V4}", CDN_EDGE)
        finally:
            gunicorn.terminate()
            gunicorn.wait(30)
            shutil.rmtree(private_tmp, ignore_errors=True)

    assert genuine == 200
    assert [event.remote_ip for event in stored(source)] == [INSIDE_V4]
    assert (short, two_lines) == (403, 403)
    assert [record.remote_ip for record in rejected(source)] == [None, None]


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
        # The dashboard's box separates entries by commas and spaces; one list item does not.
        (["10.0.0.0/8, 192.0.2.1"], "“10.0.0.0/8, 192.0.2.1” holds more than one entry: give each address or"),
        (["10.0.0.0/8 192.0.2.1"], "“10.0.0.0/8 192.0.2.1” holds more than one entry"),
    ],
    ids=["host bits", "a host name", "prefix too long", "zone", "empty", "too many", "comma", "space"],
)
def test_refused_entries_are_named(entries, message):
    with pytest.raises(SourceNetworksError) as refused:
        source_check_allowed_networks(entries)
    assert message in str(refused.value)


# --- Dashboard ---------------------------------------------------------------------------------


def test_owners_set_the_list_on_the_dashboard_and_the_change_is_audited(client, owner, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    source = make_source(organization)
    client.force_login(owner)
    edit_url = reverse("dashboard:source_edit", args=["acme", source.pk])
    assert 'name="allowed_networks"' in client.get(edit_url).content.decode()

    response = client.post(
        edit_url,
        {"name": source.name, "option_tolerance": "300", "allowed_networks": "203.0.113.0/24\r\n\r\n2001:db8::5\r\n"},
        follow=True,
    )

    assert response.status_code == 200
    assert "its allowed networks apply" in response.content.decode()
    source.refresh_from_db()
    assert source.allowed_networks == ["203.0.113.0/24", "2001:db8::5/128"]
    assert "203.0.113.0/24, 2001:db8::5/128" in response.content.decode()  # the source page shows it
    entry = AuditLog.objects.get(action="source.updated", organization=organization)
    assert entry.actor_user == owner
    assert entry.changes == {"allowed_networks": [[], ["203.0.113.0/24", "2001:db8::5/128"]]}
    assert post(client, source, "evt_outside", REMOTE_ADDR=OUTSIDE).status_code == 403

    # The page shows the list back; clearing it lets any address in again.
    assert "2001:db8::5/128" in client.get(edit_url).content.decode()
    test_page = client.get(reverse("dashboard:source_test", args=["acme", source.pk])).content.decode()
    assert "sent from Hookline's own server, so it is refused" in test_page
    client.post(edit_url, {"name": source.name, "option_tolerance": "300", "allowed_networks": ""})
    source.refresh_from_db()
    assert source.allowed_networks == []
    assert post(client, source, "evt_anywhere", REMOTE_ADDR=OUTSIDE).status_code == 200


def test_the_dashboard_refuses_a_bad_entry_on_the_field_and_saves_nothing(client, owner, organization):
    source = restricted_source(organization)
    client.force_login(owner)

    response = client.post(
        reverse("dashboard:source_edit", args=["acme", source.pk]),
        {"name": "renamed", "option_tolerance": "300", "allowed_networks": "203.0.113.0/24\n192.0.2.1/24"},
    )

    assert response.status_code == 200
    assert "“192.0.2.1/24” has bits set after its prefix: the network is 192.0.2.0/24" in response.content.decode()
    source.refresh_from_db()
    assert source.name == "Stripe live" and source.allowed_networks == PROVIDER_NETWORKS
    assert not AuditLog.objects.filter(action="source.updated").exists()


def test_a_source_can_be_created_on_the_dashboard_with_its_list(client, owner, organization):
    client.force_login(owner)
    client.post(
        reverse("dashboard:source_create", args=["acme", "stripe"]),
        {"name": "Stripe live", "secret": STRIPE_SECRET, "option_tolerance": "300", "allowed_networks": INSIDE_V4},
    )
    source = Source.objects.get(organization=organization, name="Stripe live")
    assert source.allowed_networks == [f"{INSIDE_V4}/32"]
    assert AuditLog.objects.get(action="source.created").changes["allowed_networks"] == [f"{INSIDE_V4}/32"]


def test_members_read_the_list_but_cannot_change_it(client, member, organization):
    source = restricted_source(organization)
    client.force_login(member)

    detail = client.get(reverse("dashboard:source_detail", args=["acme", source.pk])).content.decode()
    refused = client.post(
        reverse("dashboard:source_edit", args=["acme", source.pk]),
        {"name": source.name, "option_tolerance": "300", "allowed_networks": ""},
    )

    assert "203.0.113.0/24, 2001:db8::/32" in detail
    assert refused.status_code == 403
    source.refresh_from_db()
    assert source.allowed_networks == PROVIDER_NETWORKS


def test_another_organizations_source_list_cannot_be_read_or_changed(client, outsider, organization):
    source = restricted_source(organization)
    client.force_login(outsider)

    assert client.get(reverse("dashboard:source_detail", args=["acme", source.pk])).status_code == 404
    refused = client.post(
        reverse("dashboard:source_edit", args=["acme", source.pk]),
        {"name": source.name, "option_tolerance": "300", "allowed_networks": ""},
    )
    # Their own organization's URL with this source's id: not found either.
    assert refused.status_code == 404
    assert client.get(reverse("dashboard:source_edit", args=["globex", source.pk])).status_code == 404
    source.refresh_from_db()
    assert source.allowed_networks == PROVIDER_NETWORKS


def test_the_source_pages_show_why_a_request_was_refused_and_where_it_came_from(client, member, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    source = restricted_source(organization)
    assert post(client, source, "evt_outside", REMOTE_ADDR=OUTSIDE).status_code == 403
    client.force_login(member)

    detail = client.get(reverse("dashboard:source_detail", args=["acme", source.pk])).content.decode()
    listing = client.get(reverse("dashboard:source_rejected", args=["acme", source.pk])).content.decode()

    for page in (detail, listing):
        assert "address_not_allowed" in page and OUTSIDE in page


# --- REST API ----------------------------------------------------------------------------------


def test_the_api_sets_shows_replaces_and_clears_the_list(client, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    api_key, key = make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops")
    created = api_post(
        client,
        key,
        "/api/v1/sources",
        {"provider": "stripe", "name": "Stripe", "secret": STRIPE_SECRET, "allowed_networks": [INSIDE_V4]},
    )
    assert created.status_code == 201, created.content
    assert created.json()["allowed_networks"] == [f"{INSIDE_V4}/32"]
    source_id = created.json()["id"]
    url = f"/api/v1/sources/{source_id}"
    assert api_get(client, key, url).json()["allowed_networks"] == [f"{INSIDE_V4}/32"]
    listed = api_get(client, key, "/api/v1/sources").json()["results"]
    assert [item["allowed_networks"] for item in listed] == [[f"{INSIDE_V4}/32"]]

    replaced = api_patch(client, key, url, {"allowed_networks": PROVIDER_NETWORKS})
    assert replaced.status_code == 200 and replaced.json()["allowed_networks"] == PROVIDER_NETWORKS
    source = Source.objects.get(pk=source_id)
    assert source.allowed_networks == PROVIDER_NETWORKS and source.name == "Stripe"
    assert post(client, source, "evt_outside", REMOTE_ADDR=OUTSIDE).status_code == 403

    # A PATCH without the field leaves the list alone.
    renamed = api_patch(client, key, url, {"name": "Stripe live"})
    assert renamed.json()["allowed_networks"] == PROVIDER_NETWORKS

    for clearing in (None, []):
        api_patch(client, key, url, {"allowed_networks": PROVIDER_NETWORKS})
        cleared = api_patch(client, key, url, {"allowed_networks": clearing})
        assert cleared.status_code == 200 and cleared.json()["allowed_networks"] == []
    assert post(client, Source.objects.get(pk=source_id), "evt_anywhere", REMOTE_ADDR=OUTSIDE).status_code == 200

    changes = [
        entry.changes["allowed_networks"]
        for entry in AuditLog.objects.filter(action="source.updated").order_by("id")
        if "allowed_networks" in entry.changes
    ]
    assert changes[0] == [[f"{INSIDE_V4}/32"], PROVIDER_NETWORKS]
    assert changes[-1] == [PROVIDER_NETWORKS, []]
    last = AuditLog.objects.filter(action="source.updated").latest("id")
    assert last.actor_type == AuditLog.ActorType.API_KEY and api_key.prefix in last.actor_label


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["203.0.113.0/24", "bad"], "“bad” is neither an IP address nor a network"),
        (["10.0.0.1/8"], "has bits set after its prefix: the network is 10.0.0.0/8"),
        ([""], "an entry is empty"),
        ("203.0.113.0/24", "must be a list, not a string"),
        ([f"10.0.{n // 256}.{n % 256}" for n in range(MAX_ALLOWED_NETWORKS + 1)], "at most 100 allowed networks"),
    ],
    ids=["garbage", "host bits", "empty entry", "not a list", "too many"],
)
def test_the_api_refuses_a_bad_list_with_a_400_naming_the_field(client, organization, value, message):
    _, key = make_key(organization)
    source = restricted_source(organization)

    patched = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"allowed_networks": value})
    created = api_post(
        client,
        key,
        "/api/v1/sources",
        {"provider": "stripe", "name": "other", "secret": STRIPE_SECRET, "allowed_networks": value},
    )

    for response in (patched, created):
        assert response.status_code == 400, response.content
        assert message in json.dumps(response.json()["fields"]["allowed_networks"], ensure_ascii=False)
    source.refresh_from_db()
    assert source.allowed_networks == PROVIDER_NETWORKS
    assert list(Source.objects.filter(organization=organization)) == [source]


def test_a_read_only_key_reads_the_list_and_another_organizations_key_finds_nothing(
    client, organization, other_organization
):
    source = restricted_source(organization)
    _, reader = make_key(organization, access=ApiKey.Access.READ_ONLY)
    _, theirs = make_key(other_organization)
    url = f"/api/v1/sources/{source.pk}"

    assert api_get(client, reader, url).json()["allowed_networks"] == PROVIDER_NETWORKS
    assert api_patch(client, reader, url, {"allowed_networks": []}).status_code == 403
    assert api_get(client, theirs, url).status_code == 404
    assert api_patch(client, theirs, url, {"allowed_networks": []}).status_code == 404
    source.refresh_from_db()
    assert source.allowed_networks == PROVIDER_NETWORKS


# --- Admin -------------------------------------------------------------------------------------


@pytest.fixture
def admin(client, db):
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    return client


def admin_source_form(source, **changes):
    return {"name": source.name, "options": json.dumps(source.options), "is_active": "on", "new_secret": "", **changes}


def test_the_admin_sets_the_list_with_the_same_check_and_audits_it(admin, organization, settings):
    settings.TRUST_X_FORWARDED_FOR = False
    settings.INGEST_SOURCE_CACHE_SECONDS = 60
    source = make_source(organization)
    assert post(admin, source, "evt_cached", REMOTE_ADDR=OUTSIDE).status_code == 200  # cached, open
    url = reverse("admin:webhooks_source_change", args=[source.pk])

    refused = admin.post(url, admin_source_form(source, allowed_networks="203.0.113.0/24\nnonsense"))
    assert refused.status_code == 200
    assert "“nonsense” is neither an IP address nor a network" in refused.content.decode()
    source.refresh_from_db()
    assert source.allowed_networks == []

    saved = admin.post(url, admin_source_form(source, allowed_networks="203.0.113.0/24\n2001:db8::/32"))
    assert saved.status_code == 302, saved.content[:800]
    source.refresh_from_db()
    assert source.allowed_networks == PROVIDER_NETWORKS
    entry = AuditLog.objects.get(action="admin.webhooks.source.changed")
    assert entry.changes["fields"]["allowed_networks"] == [[], PROVIDER_NETWORKS]
    assert post(admin, source, "evt_outside", REMOTE_ADDR=OUTSIDE).status_code == 403
    assert "2001:db8::/32" in admin.get(url).content.decode()

    # The same list written another way is no change.
    admin.post(url, admin_source_form(source, allowed_networks="203.0.113.0/24, 2001:DB8::/32"))
    latest = AuditLog.objects.filter(action="admin.webhooks.source.changed").latest("id")
    assert "allowed_networks" not in latest.changes["fields"]


def test_the_admin_creates_a_source_with_its_list(admin, organization):
    response = admin.post(
        reverse("admin:webhooks_source_add"),
        {
            "organization": organization.pk,
            "provider": "stripe",
            "name": "Stripe via admin",
            "options": "{}",
            "secret": STRIPE_SECRET,
            "allowed_networks": INSIDE_V4,
        },
    )
    assert response.status_code == 302, response.content[:800]
    source = Source.objects.get(name="Stripe via admin")
    assert source.allowed_networks == [f"{INSIDE_V4}/32"]
    assert AuditLog.objects.get(action="source.created").changes["allowed_networks"] == [f"{INSIDE_V4}/32"]


# --- create_source -----------------------------------------------------------------------------


def run_create_source(organization, *flags) -> dict:
    from io import StringIO

    out = StringIO()
    call_command(
        "create_source",
        "--org",
        organization.slug,
        "--provider",
        "stripe",
        "--name",
        "cli",
        "--secret",
        STRIPE_SECRET,
        "--json",
        *flags,
        stdout=out,
    )
    return json.loads(out.getvalue())


def test_create_source_takes_allowed_networks(organization):
    result = run_create_source(organization, "--allowed-network", INSIDE_V4, "--allowed-network", "2001:DB8::/32")
    assert result["allowed_networks"] == [f"{INSIDE_V4}/32", "2001:db8::/32"]
    assert Source.objects.get(pk=result["id"]).allowed_networks == [f"{INSIDE_V4}/32", "2001:db8::/32"]


def test_create_source_names_the_flag_and_the_entry_it_refuses(organization):
    with pytest.raises(CommandError) as refused:
        run_create_source(organization, "--allowed-network", "203.0.113.0/24", "--allowed-network", "192.0.2.9/24")
    assert str(refused.value).startswith("--allowed-network: “192.0.2.9/24” has bits set after its prefix")
    # Several in one flag, as the dashboard's box takes them: said so, not "neither an IP address nor a network".
    with pytest.raises(CommandError) as refused:
        run_create_source(organization, "--allowed-network", "203.0.113.0/24,192.0.2.0/24")
    assert str(refused.value).startswith("--allowed-network: “203.0.113.0/24,192.0.2.0/24” holds more than one entry")
    assert not Source.objects.exists()
