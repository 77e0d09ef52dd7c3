"""The REST API's delivery list as a dead-letter list: each row with its event's context, filtered by
the time its event was received, and pages linked in a Link header as in the JSON."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from organizations.models import ApiKey
from webhooks.models import Delivery, Destination

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source


@pytest.fixture
def reader_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")[1]


@pytest.fixture
def destination(organization):
    source = make_source(organization, name="Stripe live")
    return make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])[0]


def test_each_delivery_carries_its_event_context_in_the_list_and_the_detail(client, destination, reader_key):
    source = destination.subscriptions.get().source
    received = datetime(2026, 11, 3, 9, 30, 15, 123000, tzinfo=UTC)
    event = make_event(source, provider_event_id="evt_ctx", event_type="invoice.payment_failed", received_at=received)
    delivery = make_delivery(event, destination)
    context = {
        "event": str(event.pk),
        "provider_event_id": "evt_ctx",
        "event_type": "invoice.payment_failed",
        "source": source.pk,
        "received_at": "2026-11-03T09:30:15.123000Z",
    }
    [listed] = api_get(client, reader_key, "/api/v1/deliveries", status="dead").json()["results"]
    assert listed["id"] == str(delivery.pk) and {key: listed[key] for key in context} == context
    detail = api_get(client, reader_key, f"/api/v1/deliveries/{delivery.pk}").json()
    assert {key: detail[key] for key in context} == context and len(detail["attempts"]) == 1
    # An event without a provider id (some providers send none) shows null.
    bare = make_delivery(make_event(source, provider_event_id=None), destination)
    assert api_get(client, reader_key, f"/api/v1/deliveries/{bare.pk}").json()["provider_event_id"] is None


def test_the_event_context_costs_no_query_per_row(client, destination, reader_key):
    source = destination.subscriptions.get().source

    def queries():
        with CaptureQueriesContext(connection) as captured:
            response = api_get(client, reader_key, "/api/v1/deliveries", limit=50)
            assert response.status_code == 200
        assert all(item["event_type"] == "invoice.paid" for item in response.json()["results"])
        # The event's body and headers are never read for a list.
        assert not any('"body"' in query["sql"] for query in captured.captured_queries)
        return len(response.json()["results"]), len(captured)

    make_delivery(make_event(source), destination)
    api_get(client, reader_key, "/api/v1/sources")  # the key's last use is written once a minute: not here
    rows, one = queries()
    assert rows == 1
    for _ in range(19):
        make_delivery(make_event(source), destination)
    rows, twenty = queries()
    assert rows == 20 and twenty == one


def test_deliveries_filtered_by_the_time_their_event_was_received(client, destination, reader_key):
    source = destination.subscriptions.get().source
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    old = make_delivery(make_event(source, received_at=now - timedelta(days=3)), destination)
    middle = make_delivery(make_event(source, received_at=now - timedelta(hours=5)), destination)
    recent = make_delivery(
        make_event(source, received_at=now - timedelta(minutes=1)), destination, status=Delivery.Status.SUCCEEDED
    )

    def ids(**params):
        response = api_get(client, reader_key, "/api/v1/deliveries", **params)
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    day_ago = (now - timedelta(days=1)).isoformat()
    assert ids(received_after=day_ago) == [str(recent.pk), str(middle.pk)]
    assert ids(received_before=day_ago) == [str(old.pk)]
    assert ids(received_after=day_ago, received_before=(now - timedelta(hours=1)).isoformat()) == [str(middle.pk)]
    assert ids(received_after=day_ago, status="dead") == [str(middle.pk)]
    # Bounds are inclusive at the start and exclusive at the end, as the event list's.
    assert ids(received_after=(now - timedelta(hours=5)).isoformat()) == [str(recent.pk), str(middle.pk)]
    assert ids(received_before=(now - timedelta(hours=5)).isoformat()) == [str(old.pk)]


@pytest.mark.parametrize(
    "params",
    [
        {"received_after": "yesterday"},
        {"received_before": "2026-13-01T00:00:00Z"},
        {"received_before": "2026-12-01T00:00:00Z", "received_after": "12:00"},
    ],
)
def test_bad_times_are_a_400_naming_the_field(client, organization, reader_key, params):
    response = api_get(client, reader_key, "/api/v1/deliveries", **params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid" and set(body["fields"]) <= set(params) and body["fields"]


def test_time_filters_never_reach_another_organizations_deliveries(
    client, organization, other_organization, destination
):
    theirs_source = make_source(other_organization, name="Theirs")
    theirs_destination, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs", sources=[theirs_source])
    theirs = make_delivery(make_event(theirs_source), theirs_destination)
    ours = make_delivery(make_event(destination.subscriptions.get().source), destination)
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    results = api_get(client, key, "/api/v1/deliveries", received_after=since).json()["results"]
    assert [item["id"] for item in results] == [str(ours.pk)] and str(theirs.pk) not in str(results)


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/deliveries", "/api/v1/sources", "/api/v1/destinations"])
def test_list_pages_are_linked_in_a_link_header_as_in_the_json(
    client, organization, destination, reader_key, settings, path
):
    settings.PUBLIC_BASE_URL = "https://hooks.example.com"
    source = destination.subscriptions.get().source
    for number in range(3):
        make_delivery(make_event(source), destination)
        make_destination(organization, f"http://127.0.0.1:9/more{number}", sources=[source])
        make_source(organization, name=f"More {number}")

    first = api_get(client, reader_key, path, limit=1)
    assert first.json()["previous"] is None
    assert first["Link"] == f'<{first.json()["next"]}>; rel="next"'
    assert first.json()["next"].startswith(f"https://hooks.example.com{path}?")
    middle = client.get(
        first.json()["next"].removeprefix("https://hooks.example.com"), HTTP_AUTHORIZATION=f"Bearer {reader_key}"
    )
    body = middle.json()
    assert body["next"] and body["previous"]
    assert middle["Link"] == f'<{body["next"]}>; rel="next", <{body["previous"]}>; rel="prev"'


def test_a_single_page_has_no_link_header(client, destination, reader_key):
    make_delivery(make_event(destination.subscriptions.get().source), destination)
    response = api_get(client, reader_key, "/api/v1/deliveries")
    assert response.json()["next"] is None and response.json()["previous"] is None
    assert not response.has_header("Link")


def test_each_delivery_names_its_destination_at_no_query_per_row(client, organization, destination, reader_key):
    source = destination.subscriptions.get().source
    other, _ = make_destination(organization, "http://127.0.0.1:9/other", sources=[source])
    Destination.objects.filter(pk=other.pk).update(name="Billing backup")
    first = make_delivery(make_event(source), destination)
    api_get(client, reader_key, "/api/v1/sources")  # the key's last use is written once a minute: not here

    def listed():
        with CaptureQueriesContext(connection) as captured:
            response = api_get(client, reader_key, "/api/v1/deliveries", limit=50)
            assert response.status_code == 200
        # Never a destination's secrets for a list.
        assert not any("_secret" in query["sql"].split(" FROM ")[0] for query in captured.captured_queries)
        return response.json()["results"], len(captured)

    [row], one = listed()
    assert (row["destination"], row["destination_name"]) == (destination.pk, destination.name)
    for index in range(10):
        make_delivery(make_event(source), other if index % 2 else destination)
    rows, eleven = listed()
    assert len(rows) == 11 and eleven == one
    assert {(row["destination"], row["destination_name"]) for row in rows} == {
        (destination.pk, destination.name),
        (other.pk, "Billing backup"),
    }
    detail = api_get(client, reader_key, f"/api/v1/deliveries/{first.pk}").json()
    assert detail["destination_name"] == destination.name


def test_an_events_deliveries_name_their_destinations_at_no_query_per_delivery(client, organization, reader_key):
    # A client showing one event needs each delivery's destination by name, as the delivery list gives it.
    source = make_source(organization)
    event = make_event(source)

    def shown():
        with CaptureQueriesContext(connection) as captured:
            response = api_get(client, reader_key, f"/api/v1/events/{event.pk}")
            assert response.status_code == 200
        return {(row["destination"], row["destination_name"]) for row in response.json()["deliveries"]}, len(captured)

    names = ["Billing", "CRM", "Warehouse"]
    destination, _ = make_destination(organization, "http://127.0.0.1:9/billing", sources=[source])
    Destination.objects.filter(pk=destination.pk).update(name=names[0])
    make_delivery(event, destination)
    api_get(client, reader_key, "/api/v1/sources")  # the key's last use is written once a minute: not here
    one, queries = shown()
    assert one == {(destination.pk, "Billing")}
    for name in names[1:]:
        other, _ = make_destination(organization, f"http://127.0.0.1:9/{name}", sources=[source])
        Destination.objects.filter(pk=other.pk).update(name=name)
        make_delivery(event, other)
    three, same_queries = shown()
    assert sorted(name for _, name in three) == names and same_queries == queries
