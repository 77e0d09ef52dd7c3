"""What fuzzing the REST API against its own OpenAPI document (schemathesis, by hand) found, each
reproduced here without it: the document and the answers must agree on what a request may hold."""

import json

import pytest

from organizations.models import ApiKey
from webhooks.models import Delivery

from .api_helpers import make_delivery, make_event, make_key
from .chunked import wsgi_request_chunked
from .factories import make_destination, make_source


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


@pytest.fixture
def world(organization):
    source = make_source(organization, name="Stripe live")
    billing, _ = make_destination(organization, "http://127.0.0.1:9/billing", sources=[source])
    crm, _ = make_destination(organization, "http://127.0.0.1:9/crm", sources=[source])
    make_delivery(make_event(source), billing, status=Delivery.Status.DEAD)
    make_delivery(make_event(source), crm, status=Delivery.Status.SUCCEEDED)
    return {"source": source, "billing": billing, "crm": crm}


def _get(client, key, url):
    return client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/events?status=", "status"),
        ("/api/v1/events?source=", "source"),
        ("/api/v1/events?destination=&status=failed", "destination"),
        ("/api/v1/events?event_type=", "event_type"),
        ("/api/v1/events?search=", "search"),
        ("/api/v1/events?provider_event_id=", "provider_event_id"),
        ("/api/v1/events?received_after=", "received_after"),
        ("/api/v1/events?body_contains=", "body_contains"),
        ("/api/v1/deliveries?status=", "status"),
        ("/api/v1/deliveries?destination=&status=succeeded", "destination"),
        ("/api/v1/deliveries?event=", "event"),
        ("/api/v1/deliveries?received_before=", "received_before"),
        ("/api/v1/bulk_retries?status=", "status"),
    ],
)
def test_an_empty_filter_is_a_400_not_a_filter_left_out(client, key, world, path, field):
    # The document gives each filter a value (minLength 1, an enum, an integer); read as not given, a
    # "?destination=$DEST" with DEST unset listed every destination's deliveries instead.
    response = _get(client, key, path)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid"
    assert list(body["fields"]) == [field]
    assert "empty" in body["fields"][field][0]


@pytest.mark.parametrize("patterns", [",", " , ,", ",%20"])
def test_event_type_of_commas_alone_is_a_400_not_every_event_type(client, key, world, patterns):
    # Read as no pattern, "?event_type=$A,$B" with both unset listed every event, and a bulk retry
    # with it retried every dead delivery whatever its event's type.
    response = _get(client, key, f"/api/v1/events?event_type={patterns}")
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == ["event_type"]

    response = client.post(
        "/api/v1/deliveries/retry",
        {"event_type": patterns.replace("%20", " ")},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == ["event_type"]
    assert Delivery.objects.get(destination=world["billing"]).status == Delivery.Status.DEAD


def test_a_filter_with_a_value_still_filters(client, key, world):
    response = _get(client, key, f"/api/v1/deliveries?destination={world['billing'].pk}&status=dead")
    assert response.status_code == 200
    assert [row["destination"] for row in response.json()["results"]] == [world["billing"].pk]


@pytest.mark.parametrize("method", ["put", "delete", "trace"])
@pytest.mark.parametrize(
    "path", ["/api/v1/events?limit=5", "/api/v1/deliveries?status=dead", "/api/v1/bulk_retries?status=done"]
)
def test_a_method_a_list_does_not_take_is_a_405_whatever_its_query(client, key, world, method, path):
    # It was a 400 on the query parameters ("this request takes no query parameters"): fixing them
    # would only have led to the 405.
    response = client.generic(method.upper(), path, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 405, response.content
    assert response.json()["error"] == "method_not_allowed"


def test_a_method_an_object_does_not_take_is_a_405_whatever_its_query(client, key, world):
    source = world["source"]
    response = client.put(
        f"/api/v1/sources/{source.pk}?name=x", "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 405, response.content
    # A method it takes still refuses the query string, and a request without a key is still a 401.
    response = client.patch(
        f"/api/v1/sources/{source.pk}?name=x", "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 400 and list(response.json()["fields"]) == ["name"]
    assert client.generic("TRACE", "/api/v1/events?limit=5").status_code == 401


def test_the_document_bounds_body_contains_as_the_list_does(client, key, world):
    # Documented as any string of 1 character or more: a client generating requests from the document
    # sent 201 characters and more, always a 400. At most 200 bytes is at most 200 characters.
    document = client.get("/api/v1/schema", HTTP_ACCEPT="application/json").json()
    parameters = document["paths"]["/api/v1/events"]["get"]["parameters"]
    (body_contains,) = [parameter for parameter in parameters if parameter["name"] == "body_contains"]
    assert body_contains["schema"]["maxLength"] == 200
    assert body_contains["schema"]["minLength"] == 1  # "€" alone is 3 bytes: a search the list takes
    assert _get(client, key, "/api/v1/events?body_contains=€").status_code == 200
    assert _get(client, key, "/api/v1/events?body_contains=" + "x" * 200).status_code == 200
    assert _get(client, key, "/api/v1/events?body_contains=" + "x" * 201).status_code == 400


def test_a_chunked_body_is_read_not_taken_for_none(organization, key, world, settings):
    """A client streaming its body (Transfer-Encoding: chunked, no Content-Length) had it read as
    empty: a bulk retry of one destination retried every dead delivery of the organization, and a
    PATCH answered 200 having changed nothing."""
    auth = {"Authorization": f"Bearer {key}"}
    status, answer = wsgi_request_chunked(
        "POST", "/api/v1/deliveries/retry", json.dumps({"destination": 999999}).encode(), auth
    )
    assert status.startswith("400"), answer
    assert answer["fields"] == {"destination": ["no such destination"]}

    path = f"/api/v1/destinations/{world['crm'].pk}"
    status, answer = wsgi_request_chunked("PATCH", path, json.dumps({"name": "CRM (streamed)"}).encode(), auth)
    assert status.startswith("200") and answer["name"] == "CRM (streamed)", answer

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64
    status, answer = wsgi_request_chunked("PATCH", path, json.dumps({"name": "x" * 100}).encode(), auth)
    assert status.startswith("413") and answer["error"] == "request_too_large", answer
    world["crm"].refresh_from_db()
    assert world["crm"].name == "CRM (streamed)"
