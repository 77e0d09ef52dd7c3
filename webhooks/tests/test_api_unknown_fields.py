"""A name the REST API does not take, in a body or a query string, is a 400 that names it and says what
the request takes, instead of being ignored: a misspelt filter would otherwise widen a bulk retry to
every dead delivery, and a PATCH of a field that cannot be written would answer 200 and change nothing."""

import pytest

from organizations.models import ApiKey
from webhooks.models import BulkRetry, Destination, Source

from .api_helpers import api_get, api_patch, api_post, make_delivery, make_event, make_key
from .factories import STRIPE_SECRET, make_destination, make_source


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


@pytest.fixture
def world(organization):
    source = make_source(organization, name="Stripe live")
    billing, _ = make_destination(organization, "http://127.0.0.1:9/billing", sources=[source])
    crm, _ = make_destination(organization, "http://127.0.0.1:9/crm", sources=[source])
    for destination in (billing, crm):
        make_delivery(make_event(source), destination)
    return {"source": source, "billing": billing, "crm": crm}


def _refused(response, field: str) -> str:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid"
    assert list(body["fields"]) == [field]
    return body["fields"][field][0]


def test_a_misspelt_bulk_retry_filter_retries_nothing(client, key, world):
    # {"destination_id": …} for {"destination": …} would have retried both destinations' dead deliveries.
    message = _refused(
        api_post(client, key, "/api/v1/deliveries/retry", {"destination_id": world["billing"].pk}), "destination_id"
    )
    assert "destination" in message and "event_type" in message  # what the request takes
    assert not BulkRetry.objects.exists()


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ({"secret": "whsec_new"}, "/rotate_secret"),
        ({"is_active": False}, "send it as active"),
        ({"provider": "github"}, "cannot be changed"),
    ],
)
def test_a_source_patch_of_a_field_it_cannot_write_is_refused_not_ignored(client, key, world, body, hint):
    source = world["source"]
    response = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"name": "Renamed", **body})
    assert hint in _refused(response, next(iter(body)))
    source = Source.objects.get(pk=source.pk)
    assert (source.name, source.is_active, source.provider, source.secret) == (
        "Stripe live",
        True,
        "stripe",
        STRIPE_SECRET,
    )


def test_a_destination_created_with_a_misspelt_filter_is_not_created(client, key, world):
    # Without "event_types" it would have been created taking every event type.
    body = {
        "name": "Invoices",
        "url": "http://127.0.0.1:9/inv",
        "sources": [world["source"].pk],
        "event_type": ["invoice.*"],
    }
    assert "event_types" in _refused(api_post(client, key, "/api/v1/destinations", body), "event_type")
    assert not Destination.objects.filter(name="Invoices").exists()


def test_a_destination_patch_of_its_secret_points_to_rotate_secret(client, key, world):
    billing = world["billing"]
    response = api_patch(client, key, f"/api/v1/destinations/{billing.pk}", {"secret": "whsec_mine"})
    assert "/rotate_secret" in _refused(response, "secret")
    assert Destination.objects.get(pk=billing.pk).secret == billing.secret


def test_a_rotation_with_a_misspelt_field_rotates_nothing(client, key, world):
    source = world["source"]
    response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {"new_secret": "whsec_next"})
    _refused(response, "new_secret")
    assert Source.objects.get(pk=source.pk).secret == STRIPE_SECRET


def test_actions_without_a_body_refuse_fields_and_take_an_empty_one(client, key, world):
    billing = world["billing"]
    path = f"/api/v1/destinations/{billing.pk}/pause"
    assert "nothing" in _refused(api_post(client, key, path, {"reason": "maintenance"}), "reason")
    assert Destination.objects.get(pk=billing.pk).paused_at is None
    assert api_post(client, key, path, {}).status_code == 200
    response = client.post(path, HTTP_AUTHORIZATION=f"Bearer {key}")  # no body, no Content-Type
    assert response.status_code == 200
    assert Destination.objects.get(pk=billing.pk).paused_at is not None
    delivery = billing.deliveries.get()
    response = api_post(client, key, f"/api/v1/deliveries/{delivery.pk}/retry", {"force": True})
    _refused(response, "force")


@pytest.mark.parametrize("kind", ["source", "billing"])
def test_a_delete_refuses_fields_in_its_body_and_deletes_nothing(client, key, world, kind):
    # Seen with a script: DELETE with {"force": true} (or {"keep_events": true}) answered 202 and
    # deleted, the field unread. As for an action without a body: none, or {}.
    plural = "sources" if kind == "source" else "destinations"
    path = f"/api/v1/{plural}/{world[kind].pk}"
    headers = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert "nothing" in _refused(client.delete(path, {"keep_events": True}, **headers), "keep_events")
    model = Source if kind == "source" else Destination
    assert model.objects.get(pk=world[kind].pk).deletion_requested_at is None
    assert client.delete(path, {}, **headers).status_code == 202


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/events", {"type": "invoice.*"}, "type"),
        ("/api/v1/deliveries", {"destination_id": 1, "limit": 5}, "destination_id"),
        ("/api/v1/sources", {"provider": "stripe"}, "provider"),
    ],
)
def test_a_list_refuses_a_filter_it_does_not_have(client, key, world, path, params, field):
    message = _refused(api_get(client, key, path, **params), field)
    assert "cursor" in message and "limit" in message


def test_following_next_still_works(client, key, world):
    first = api_get(client, key, "/api/v1/deliveries", status="dead", limit=1).json()
    second = client.get(first["next"], HTTP_AUTHORIZATION=f"Bearer {key}")
    assert second.status_code == 200
    assert len(first["results"]) == len(second.json()["results"]) == 1


def test_a_filter_given_twice_is_refused_not_read_as_its_last_value(client, key, world):
    response = client.get(
        "/api/v1/deliveries?status=dead&status=pending&destination=1", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert "once" in _refused(response, "status")
    response = client.get("/api/v1/events?event_type=invoice.*,customer.*", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200  # several patterns: comma-separated


def test_a_query_parameter_of_a_request_that_takes_none_is_refused_not_ignored(client, key, world):
    # The bulk retry's filters in the query string, as the delivery list takes them: ignored, they
    # retried every dead delivery of the organization, both destinations'.
    response = api_post(client, key, f"/api/v1/deliveries/retry?destination={world['billing'].pk}")
    assert "no query parameters" in _refused(response, "destination")
    assert not BulkRetry.objects.exists()
    crm = world["crm"]
    response = client.patch(
        f"/api/v1/destinations/{crm.pk}?name=Renamed",
        {"url": "http://127.0.0.1:9/crm2"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    _refused(response, "name")
    assert Destination.objects.get(pk=crm.pk).url == "http://127.0.0.1:9/crm"
    # A read of one object takes none either; a list's GET and HEAD still take their filters.
    _refused(api_get(client, key, f"/api/v1/destinations/{crm.pk}", expand="subscriptions"), "expand")
    assert api_get(client, key, "/api/v1/destinations", limit=1).status_code == 200
    assert client.head("/api/v1/deliveries?status=dead", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    # A key's refusal comes first: the query string of a request without a key is not looked at.
    assert client.get(f"/api/v1/destinations/{crm.pk}?expand=x").status_code == 401


def test_thousands_of_names_not_taken_are_not_all_sent_back(client, key, world):
    """A body naming thousands of fields, or of a provider's options, is refused naming the first few
    and counting the rest: each listed, a 700 KB body got a 4 MB answer."""
    fields = {f"field_{n}": 1 for n in range(2000)}
    response = api_post(client, key, "/api/v1/sources", {"provider": "stripe", "name": "many", **fields})
    refused = response.json()["fields"]
    assert response.status_code == 400 and len(refused) == 10, response.content[:300]
    assert refused["field_9"][-1] == "and 1990 more names not taken here"

    options = {f"option_{n}": "x" for n in range(2000)}
    response = api_post(client, key, "/api/v1/sources", {"provider": "stripe", "name": "many", "options": options})
    [refusal] = response.json()["fields"]["options"]
    assert response.status_code == 400 and refusal.endswith("“option_1005” and 1990 more"), refusal
    assert not Source.objects.filter(name="many").exists()
