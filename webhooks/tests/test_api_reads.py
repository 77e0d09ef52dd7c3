"""The REST API's reads: every list and object, filters, cursor pages, viewer rules and tenancy."""

import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from organizations.models import ApiKey
from webhooks.models import BulkRetry, Delivery, WebhookEvent
from webhooks.services.destinations import destination_create
from webhooks.services.payload_filters import parse_payload_filter_lines

from .api_helpers import api_get, api_post, make_delivery, make_event, make_key
from .factories import STRIPE_SECRET, make_destination, make_source

SECRET_URL = "http://127.0.0.1:9/services/T000/B000/secret-path?token=abc"


@pytest.fixture
def world(organization):
    source = make_source(organization, name="Stripe live")
    destination, destination_secret = make_destination(organization, SECRET_URL, sources=[source])
    event = make_event(
        source,
        provider_event_id="evt_1",
        headers={"content-type": "application/json", "stripe-signature": "t=1,v1=abc"},
    )
    delivery = make_delivery(event, destination)
    return {
        "source": source,
        "destination": destination,
        "destination_secret": destination_secret,
        "event": event,
        "delivery": delivery,
    }


@pytest.fixture
def writer_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


@pytest.fixture
def reader_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")[1]


def test_event_list_shows_events_with_their_deliveries(client, world, reader_key):
    body = api_get(client, reader_key, "/api/v1/events").json()
    assert body["previous"] is None and body["next"] is None
    [item] = body["results"]
    assert item["id"] == str(world["event"].pk)
    assert item["source"] == world["source"].pk and item["provider_event_id"] == "evt_1"
    assert item["deliveries"] == [
        {
            "id": str(world["delivery"].pk),
            "destination": world["destination"].pk,
            "status": "dead",
            "is_replay": False,
            "attempt_count": 1,
        }
    ]
    assert "body" not in item and "headers" not in item


def test_event_list_filters(client, organization, world, reader_key):
    source = world["source"]
    other_source = make_source(organization, name="Second")
    now = timezone.now()
    old = make_event(
        source, event_type="customer.created", provider_event_id="evt_old", received_at=now - timedelta(days=2)
    )
    rejected = make_event(other_source, event_type="", status=WebhookEvent.Status.REJECTED)

    def ids(**params):
        response = api_get(client, reader_key, "/api/v1/events", **params)
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["results"]}

    event = str(world["event"].pk)
    # Accepted events unless rejected requests are asked for (or both, with "all").
    assert ids() == {event, str(old.pk)}
    assert ids(status="all") == {event, str(old.pk), str(rejected.pk)}
    assert ids(status="rejected") == {str(rejected.pk)}
    assert ids(status="failed") == {event}  # one of its deliveries is dead
    assert ids(source=other_source.pk) == set()
    assert ids(source=other_source.pk, status="rejected") == {str(rejected.pk)}
    assert ids(event_type="invoice.*") == {event}
    assert ids(event_type="customer") == {str(old.pk)}
    assert ids(provider_event_id="evt_old") == {str(old.pk)}
    assert ids(received_before=(now - timedelta(days=1)).isoformat()) == {str(old.pk)}
    assert ids(received_after=(now - timedelta(days=1)).isoformat()) == {event}
    assert ids(received_after=(now - timedelta(days=1)).isoformat(), status="all") == {event, str(rejected.pk)}


def test_event_list_filters_by_destination_failing_there(client, organization, other_organization, world, reader_key):
    source, first = world["source"], world["destination"]  # world's event: dead at the first destination
    second, _ = make_destination(organization, "http://127.0.0.1:9/second", sources=[source])
    fine_at_first = make_event(source)
    make_delivery(fine_at_first, first, status=Delivery.Status.SUCCEEDED)
    make_delivery(fine_at_first, second)  # dead at the second
    foreign, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs")

    def ids(**params):
        response = api_get(client, reader_key, "/api/v1/events", **params)
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["results"]}

    assert ids(destination=first.pk) == {str(world["event"].pk), str(fine_at_first.pk)}
    assert ids(destination=first.pk, status="failed") == {str(world["event"].pk)}
    assert ids(destination=second.pk, status="failed") == {str(fine_at_first.pk)}
    # Another organization's destination is unknown here: a 400 on the filter, as in a bulk retry.
    for params in ({"destination": foreign.pk}, {"destination": foreign.pk, "status": "failed"}):
        refused = api_get(client, reader_key, "/api/v1/events", **params)
        assert refused.status_code == 400 and refused.json()["fields"] == {"destination": ["no such destination"]}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "lost"},
        {"destination": "0"},
        {"source": "abc"},
        {"source": "99999999999999999999"},
        {"received_after": "yesterday"},
        {"event_type": "invoice.*,[bad"},
    ],
)
def test_event_list_refuses_bad_filters_with_400(client, organization, reader_key, params):
    response = api_get(client, reader_key, "/api/v1/events", **params)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid" and set(response.json()["fields"]) == set(params)


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/deliveries"])
def test_a_time_whose_plus_became_a_space_is_refused_saying_how_to_write_it(client, organization, reader_key, path):
    # curl "…?received_after=2026-12-01T10:00:00+02:00" sends the "+" as typed: the server reads a space.
    raw = client.get(f"{path}?received_after=2026-12-01T10:00:00+02:00", HTTP_AUTHORIZATION=f"Bearer {reader_key}")
    assert raw.status_code == 400
    assert "%2B" in raw.json()["fields"]["received_after"][0]
    encoded = client.get(
        f"{path}?received_before=2026-12-01T10:00:00%2B02:00", HTTP_AUTHORIZATION=f"Bearer {reader_key}"
    )
    assert encoded.status_code == 200, encoded.content
    # A space between date and time is RFC 3339's other separator: no hint where none is needed,
    # and without an offset the refusal says that is what is missing.
    assert api_get(client, reader_key, path, received_after="2026-12-01 10:00Z").status_code == 200
    naive = api_get(client, reader_key, path, received_after="2026-12-01 10:00")
    assert naive.status_code == 400 and "needs its offset" in naive.json()["fields"]["received_after"][0]
    # Other scripts' digits are no time, rather than a time that lacks its offset.
    arabic = api_get(client, reader_key, path, received_after="2026-12-01T١٠:00")
    assert (
        arabic.status_code == 400
        and "not a date and time as this API takes them" in (arabic.json()["fields"]["received_after"][0])
    )
    other = api_get(client, reader_key, path, received_after="yesterday")
    assert other.status_code == 400 and "%2B" not in other.json()["fields"]["received_after"][0]


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/deliveries", "/api/v1/events?body_contains=cus_ABC"])
@pytest.mark.parametrize("before", ["2026-12-01T10:00:00Z", "2026-12-01T09:00:00Z"])
def test_a_received_range_that_holds_nothing_is_refused_as_a_bulk_retry_refuses_it(
    client, organization, world, reader_key, writer_key, path, before
):
    # Not a 200 with nothing: the ends were swapped, or given the same (after is taken, before is not).
    params = {"received_after": "2026-12-01T10:00:00Z", "received_before": before}
    response = api_get(client, reader_key, path, **params)
    assert response.status_code == 400, response.content
    refusal = {"received_before": ["must be later than received_after"]}
    assert response.json()["fields"] == refusal
    assert api_post(client, writer_key, "/api/v1/deliveries/retry", params).json()["fields"] == refusal
    params["received_before"] = "2026-12-01T10:00:01Z"
    assert api_get(client, reader_key, path, **params).status_code == 200


def test_event_pages_are_stable_while_new_events_arrive(client, organization, reader_key):
    source = make_source(organization)
    start = timezone.now() - timedelta(minutes=10)
    first_five = [make_event(source, received_at=start + timedelta(seconds=n)) for n in range(5)]
    seen = []
    response = api_get(client, reader_key, "/api/v1/events", limit=2).json()
    seen += [item["id"] for item in response["results"]]
    for _ in range(3):  # newer events arrive between the pages
        make_event(source)
    while response["next"]:
        response = client.get(response["next"], HTTP_AUTHORIZATION=f"Bearer {reader_key}").json()
        seen += [item["id"] for item in response["results"]]
    assert seen == [str(event.pk) for event in reversed(first_five)]  # newest first, each once


def test_event_detail_utf8_body_headers_and_attempts(client, world, reader_key, writer_key):
    path = f"/api/v1/events/{world['event'].pk}"
    as_reader = api_get(client, reader_key, path).json()
    assert as_reader["body"] == '{"id": "evt_1", "type": "invoice.paid"}' and as_reader["body_encoding"] == "utf-8"
    assert as_reader["headers"]["content-type"] == "application/json"
    assert as_reader["headers"]["stripe-signature"] == "(a signature: shown to read-and-write keys)"  # as from members
    [delivery] = as_reader["deliveries"]
    [attempt] = delivery["attempts"]
    assert attempt["response_status"] == 503 and attempt["response_body"] == "upstream unavailable"
    assert attempt["request_headers"]["webhook-signature"] == "(a signature: shown to read-and-write keys)"
    as_writer = api_get(client, writer_key, path).json()
    assert as_writer["headers"]["stripe-signature"] == "t=1,v1=abc"
    assert as_writer["deliveries"][0]["attempts"][0]["request_headers"]["webhook-signature"] == "v1,c2lnbmVk"


def test_event_detail_gives_a_binary_body_in_base64(client, organization, reader_key):
    raw = b"\x00\xff\xfe binary \x80"
    event = make_event(make_source(organization), body=raw)
    data = api_get(client, reader_key, f"/api/v1/events/{event.pk}").json()
    assert data["body_encoding"] == "base64" and base64.b64decode(data["body"]) == raw


def test_event_detail_names_the_destinations_whose_payload_filters_left_it_out(client, organization, reader_key):
    # The dashboard's event page said why; the API showed only an empty list of deliveries.
    source = make_source(organization)
    taken, _ = make_destination(organization, "http://127.0.0.1:9/all", sources=[source])
    live_only, _ = destination_create(
        organization=organization,
        name="Live only",
        url="http://127.0.0.1:9/live",
        sources=[source],
        payload_filters=parse_payload_filter_lines("data.object.livemode == true"),
    )
    event = make_event(source, body=b'{"type": "invoice.paid", "data": {"object": {"livemode": false}}}')
    make_delivery(event, taken)
    data = api_get(client, reader_key, f"/api/v1/events/{event.pk}").json()
    assert [delivery["destination"] for delivery in data["deliveries"]] == [taken.pk]
    assert data["left_out_by_payload_filters"] == [
        {
            "destination": live_only.pk,
            "destination_name": "Live only",
            "reason": "“data.object.livemode == true” does not hold",
        }
    ]
    # A destination with a delivery of it, or without payload filters, is not listed.
    make_delivery(event, live_only)
    assert api_get(client, reader_key, f"/api/v1/events/{event.pk}").json()["left_out_by_payload_filters"] == []


def test_a_destination_made_after_the_event_was_processed_is_not_named_as_leaving_it_out(
    client, organization, reader_key
):
    source = make_source(organization)
    event = make_event(source, body=b'{"type": "invoice.paid", "data": {"object": {"livemode": false}}}')
    WebhookEvent.objects.filter(pk=event.pk).update(processed_at=timezone.now() - timedelta(minutes=5))
    destination_create(
        organization=organization,
        name="Made later",
        url="http://127.0.0.1:9/later",
        sources=[source],
        payload_filters=parse_payload_filter_lines("data.object.livemode == true"),
    )
    assert api_get(client, reader_key, f"/api/v1/events/{event.pk}").json()["left_out_by_payload_filters"] == []


def test_delivery_list_filters_and_detail(client, organization, world, reader_key):
    second_event = make_event(world["source"], provider_event_id="evt_2")
    succeeded = make_delivery(second_event, world["destination"], status=Delivery.Status.SUCCEEDED)
    other_destination, _ = make_destination(organization, "http://127.0.0.1:9/other", sources=[world["source"]])
    pending = make_delivery(second_event, other_destination, status=Delivery.Status.PENDING, attempts=0)

    def ids(**params):
        response = api_get(client, reader_key, "/api/v1/deliveries", **params)
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    assert ids() == [str(pending.pk), str(succeeded.pk), str(world["delivery"].pk)]
    assert ids(status="dead") == [str(world["delivery"].pk)]
    assert ids(destination=other_destination.pk) == [str(pending.pk)]
    assert ids(event=str(second_event.pk)) == [str(pending.pk), str(succeeded.pk)]
    assert api_get(client, reader_key, "/api/v1/deliveries", status="lost").status_code == 400
    detail = api_get(client, reader_key, f"/api/v1/deliveries/{world['delivery'].pk}").json()
    assert detail["status"] == "dead" and detail["webhook_id"] == str(world["event"].pk)
    assert [attempt["attempt_number"] for attempt in detail["attempts"]] == [1]


def test_sources_show_the_hint_and_ingest_url_never_the_secret(client, world, writer_key):
    source = world["source"]
    response = api_get(client, writer_key, "/api/v1/sources")
    assert STRIPE_SECRET not in response.content.decode()
    [item] = response.json()["results"]
    assert item["secret_hint"] == source.secret_hint and item["provider"] == "stripe"
    assert item["ingest_url"] == f"http://testserver/in/{source.ingest_token}/"
    detail = api_get(client, writer_key, f"/api/v1/sources/{source.pk}")
    assert detail.json() == item and STRIPE_SECRET not in detail.content.decode()


def test_destinations_never_show_the_secret_and_cut_the_url_for_read_only_keys(client, world, reader_key, writer_key):
    destination = world["destination"]
    for key in (reader_key, writer_key):
        for path in ("/api/v1/destinations", f"/api/v1/destinations/{destination.pk}"):
            assert world["destination_secret"] not in api_get(client, key, path).content.decode()
    as_reader = api_get(client, reader_key, f"/api/v1/destinations/{destination.pk}").json()
    assert as_reader["url"] == "http://127.0.0.1:9/…"
    assert as_reader["subscriptions"] == [{"source": world["source"].pk, "event_types": []}]
    [listed] = api_get(client, reader_key, "/api/v1/destinations").json()["results"]
    assert listed["url"] == "http://127.0.0.1:9/…"
    as_writer = api_get(client, writer_key, f"/api/v1/destinations/{destination.pk}").json()
    assert as_writer["url"] == SECRET_URL and as_writer["secret_hint"] == destination.secret_hint


def test_a_key_never_reaches_another_organizations_rows(client, organization, other_organization, world):
    theirs_source = make_source(other_organization, name="Theirs")
    theirs_destination, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs", sources=[theirs_source])
    theirs_event = make_event(theirs_source, provider_event_id="evt_theirs")
    theirs_delivery = make_delivery(theirs_event, theirs_destination)
    _, our_key = make_key(organization)
    for path in (
        f"/api/v1/events/{theirs_event.pk}",
        f"/api/v1/deliveries/{theirs_delivery.pk}",
        f"/api/v1/sources/{theirs_source.pk}",
        f"/api/v1/destinations/{theirs_destination.pk}",
    ):
        response = api_get(client, our_key, path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path
    lists = {
        "/api/v1/events": {"source": theirs_source.pk},
        "/api/v1/deliveries": {"destination": theirs_destination.pk},
    }
    for path in ("/api/v1/events", "/api/v1/deliveries", "/api/v1/sources", "/api/v1/destinations"):
        for params in ({}, lists.get(path, {})):
            content = api_get(client, our_key, path, **params).content.decode()
            assert "theirs" not in content.lower() and str(theirs_event.pk) not in content
    assert api_get(client, our_key, "/api/v1/events", provider_event_id="evt_theirs").json()["results"] == []
    # And the other organization's key sees only its own.
    _, their_key = make_key(other_organization)
    [only] = api_get(client, their_key, "/api/v1/events").json()["results"]
    assert only["id"] == str(theirs_event.pk)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/events/not-a-uuid",
        "/api/v1/events/123",
        "/api/v1/deliveries/%00",
        "/api/v1/deliveries/00000000-0000-0000-0000-000000000000",
        "/api/v1/sources/abc",
        "/api/v1/sources/-1",
        "/api/v1/sources/0",
        "/api/v1/sources/99999999999999999999",
        "/api/v1/sources/1.5",
        "/api/v1/destinations/9223372036854775808",
        "/api/v1/destinations/%D9%A3",  # an Arabic-Indic digit
    ],
)
def test_malformed_or_unknown_ids_are_404_never_500(client, organization, path):
    _, key = make_key(organization)
    response = api_get(client, key, path)
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def _cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "path", ["/api/v1/events", "/api/v1/deliveries", "/api/v1/sources", "/api/v1/destinations", "/api/v1/bulk_retries"]
)
@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        _cursor("p=abc"),
        _cursor("r=1&p=not-an-id"),
        _cursor("o=-5&p=1"),
        _cursor("p=1\x00"),
        # Nothing of base64 in them, so DRF alone would take them for the first page, again and again.
        "",
        "!!!!",
        "\x00",
        _cursor("x=1"),
    ],
)
def test_a_cursor_that_is_not_ours_is_a_400_never_a_500(client, organization, reader_key, path, cursor):
    response = api_get(client, reader_key, path, cursor=cursor)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid" and list(response.json()["fields"]) == ["cursor"]


LIST_PATHS = ["/api/v1/events", "/api/v1/deliveries", "/api/v1/sources", "/api/v1/destinations", "/api/v1/bulk_retries"]


@pytest.mark.parametrize("path", [*LIST_PATHS, "/api/v1/events?body_contains=cus_ABC"])
@pytest.mark.parametrize("limit", ["abc", "0", "-1", "201", "1.5", "", " 5", "9" * 5000])
def test_a_limit_out_of_bounds_is_a_400_naming_the_bounds(client, organization, reader_key, path, limit):
    # Not the default 50, nor 200, in its place without a word: a script would page on believing its limit.
    response = client.get(path, {"limit": limit}, HTTP_AUTHORIZATION=f"Bearer {reader_key}")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"
    assert response.json()["fields"] == {"limit": ["must be a whole number from 1 to 200 (50 when not given)"]}


@pytest.mark.parametrize("path", LIST_PATHS)
def test_a_limit_within_bounds_sets_the_page(client, organization, reader_key, path):
    source = make_source(organization)
    make_source(organization, name="Second")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/a", sources=[source])
    make_destination(organization, "http://127.0.0.1:9/b", sources=[source])
    for _ in range(2):  # two of each
        make_delivery(make_event(source), destination)
        BulkRetry.objects.create(organization=organization, filters={"statuses": ["dead"]})
    assert len(api_get(client, reader_key, path, limit=1).json()["results"]) == 1
    assert len(api_get(client, reader_key, path, limit=200).json()["results"]) == 2


def test_page_links_start_with_public_base_url_behind_a_proxy(client, organization, reader_key, settings):
    settings.PUBLIC_BASE_URL = "https://hooks.example.com"
    source = make_source(organization)
    events = {str(make_event(source).pk) for _ in range(3)}
    # The proxy reached Django over plain HTTP with its own Host and said nothing of the scheme.
    first = client.get("/api/v1/events?limit=1", HTTP_AUTHORIZATION=f"Bearer {reader_key}", HTTP_HOST="localhost")
    next_link = first.json()["next"]
    assert next_link.startswith("https://hooks.example.com/api/v1/events?")
    second = client.get(next_link.removeprefix("https://hooks.example.com"), HTTP_AUTHORIZATION=f"Bearer {reader_key}")
    assert second.json()["previous"].startswith("https://hooks.example.com/api/v1/events?")
    # The link is the next page: another of the events, not the first one again.
    [on_first], [on_second] = first.json()["results"], second.json()["results"]
    assert on_first["id"] != on_second["id"] and {on_first["id"], on_second["id"]} <= events


def test_list_queries_do_not_grow_with_the_page(client, organization, reader_key):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])

    def queries(path):
        with CaptureQueriesContext(connection) as captured:
            assert api_get(client, reader_key, path).status_code == 200
        return len(captured)

    make_delivery(make_event(source), destination)
    api_get(client, reader_key, "/api/v1/sources")  # the key's last use is written once a minute: not here
    few = {path: queries(path) for path in ("/api/v1/events", "/api/v1/deliveries", "/api/v1/destinations")}
    for _ in range(10):
        make_delivery(make_event(source), destination)
        make_destination(organization, "http://127.0.0.1:9/more", sources=[source])
    many = {path: queries(path) for path in few}
    assert many == few


def test_what_happened_to_webhook_x_for_a_webhook_received_through_ingest(client, organization, reader_key):
    from .dashboard_helpers import ingest_stripe

    source = make_source(organization)
    event_id = ingest_stripe(client, source, "evt_through_ingest", "charge.refunded")
    [found] = api_get(client, reader_key, "/api/v1/events", provider_event_id="evt_through_ingest").json()["results"]
    assert found["id"] == event_id and found["event_type"] == "charge.refunded" and found["source"] == source.pk
    detail = api_get(client, reader_key, f"/api/v1/events/{event_id}").json()
    assert detail["body"] == json.dumps({"id": "evt_through_ingest", "object": "event", "type": "charge.refunded"})
    assert detail["headers"]["Stripe-Signature"] == "(a signature: shown to read-and-write keys)"


def test_the_provider_event_id_filter_finds_a_rejected_request_that_claims_it(client, organization, reader_key):
    # The dashboard's search and list_events find it; the API answered an empty list, which reads
    # as "Hookline never got it" when it refused it for a wrong secret.
    from .signing import stripe_headers

    source = make_source(organization)
    forged = '{"id": "evt_wrong_secret", "object": "event", "type": "invoice.paid"}'
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        forged,
        content_type="application/json",
        **stripe_headers(forged, "whsec_x"),
    )
    assert response.status_code == 401

    [found] = api_get(client, reader_key, "/api/v1/events", provider_event_id="evt_wrong_secret").json()["results"]

    assert (found["status"], found["rejection_code"]) == ("rejected", "no_matching_secret")
    assert (found["provider_event_id"], found["claimed_event_id"]) == (None, "evt_wrong_secret")
    assert api_get(client, reader_key, f"/api/v1/events/{found['id']}").json()["claimed_event_id"] == "evt_wrong_secret"
