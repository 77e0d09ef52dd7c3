"""From a REST API trial: every Location is an absolute URL to follow as it is, and a list filtered by
an id the organization does not have is a 400 on that filter, as a bulk retry answers it."""

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from organizations.models import ApiKey, IdempotencyKey
from webhooks import fields
from webhooks.api.views import _known_ids_or_invalid
from webhooks.services import operations

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source

PUBLIC = "https://hooks.example.com"


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr("webhooks.services.delivery.schedule_dispatch", lambda *args, **kwargs: None)


@pytest.fixture
def writer_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")[1]


@pytest.fixture
def reader_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")[1]


def _post_behind_proxy(client, key, path, data=None, **headers):
    # The proxy reached Django over plain HTTP with its own Host, as in the pagination links' test.
    return client.post(
        path,
        data or {},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_HOST="localhost",
        **headers,
    )


def test_every_location_is_absolute_from_public_base_url_and_followed_as_it_is(
    client, organization, writer_key, settings
):
    settings.PUBLIC_BASE_URL = PUBLIC
    source = _post_behind_proxy(client, writer_key, "/api/v1/sources", {"provider": "github", "name": "GitHub"})
    destination = _post_behind_proxy(
        client,
        writer_key,
        "/api/v1/destinations",
        {"name": "Billing", "url": "http://127.0.0.1:9/hook", "sources": [source.json()["id"]]},
    )
    assert destination.status_code == 201, destination.content
    own_source = make_source(organization, name="Made directly")
    own_destination, _ = make_destination(organization, "http://127.0.0.1:9/b", sources=[own_source])
    event = make_event(own_source)
    dead = make_delivery(event, own_destination)
    retried = _post_behind_proxy(client, writer_key, f"/api/v1/deliveries/{dead.pk}/retry")
    replayed = _post_behind_proxy(
        client, writer_key, f"/api/v1/events/{event.pk}/replay", {"destination": own_destination.pk}
    )
    make_delivery(make_event(own_source), own_destination)
    job = _post_behind_proxy(client, writer_key, "/api/v1/deliveries/retry", {"destination": own_destination.pk})
    expected = {
        "source": (source, f"{PUBLIC}/api/v1/sources/{source.json()['id']}"),
        "destination": (destination, f"{PUBLIC}/api/v1/destinations/{destination.json()['id']}"),
        "retry": (retried, f"{PUBLIC}/api/v1/deliveries/{dead.pk}"),
        "replay": (replayed, f"{PUBLIC}/api/v1/deliveries/{replayed.json()['id']}"),
        "bulk retry": (job, f"{PUBLIC}/api/v1/bulk_retries/{job.json()['id']}"),
    }
    for name, (response, location) in expected.items():
        assert response.status_code in (201, 202) and response["Location"] == location, name
        # What requests.get(r.headers["Location"]) does: the URL as it is (the test client sends
        # its path to the application, whatever the host).
        followed = client.get(response["Location"], HTTP_AUTHORIZATION=f"Bearer {writer_key}")
        assert followed.status_code == 200 and followed.json()["id"] == response.json()["id"], name


def test_a_kept_answer_replays_its_location_absolute_even_one_kept_as_a_path_before(client, writer_key):
    first = client.post(
        "/api/v1/sources",
        {"provider": "github", "name": "GitHub"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {writer_key}",
        HTTP_IDEMPOTENCY_KEY="create-1",
    )
    absolute = f"http://testserver/api/v1/sources/{first.json()['id']}"
    assert first.status_code == 201 and first["Location"] == absolute

    def replayed():
        again = client.post(
            "/api/v1/sources",
            {"provider": "github", "name": "GitHub"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {writer_key}",
            HTTP_IDEMPOTENCY_KEY="create-1",
        )
        assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()
        return again["Location"]

    assert replayed() == absolute
    # Kept by the release before (a path): a retry across the upgrade gets the absolute URL.
    kept = IdempotencyKey.objects.get(key="create-1")
    kept.response_location = f"/api/v1/sources/{first.json()['id']}"
    kept.save()
    assert replayed() == absolute
    # An absolute one is answered as it was kept.
    kept.response_location = f"{PUBLIC}/api/v1/sources/{first.json()['id']}"
    kept.save()
    assert replayed() == f"{PUBLIC}/api/v1/sources/{first.json()['id']}"


@pytest.fixture
def theirs(other_organization):
    source = make_source(other_organization, name="Theirs")
    destination, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs", sources=[source])
    event = make_event(source)
    make_delivery(event, destination)
    return {"source": source.pk, "destination": destination.pk, "event": event.pk}


@pytest.mark.parametrize(
    ("path", "field", "params"),
    [
        ("/api/v1/events", "source", {}),
        ("/api/v1/events", "destination", {}),
        ("/api/v1/events", "source", {"body_contains": "evt_1"}),  # a body search reads the filters too
        ("/api/v1/deliveries", "destination", {}),
        ("/api/v1/deliveries", "event", {}),
    ],
)
def test_a_list_filtered_by_an_id_not_ours_is_a_400_as_a_bulk_retry_says_it(
    client, organization, reader_key, theirs, path, field, params
):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/ours", sources=[source])
    event = make_event(source)
    make_delivery(event, destination)
    ours = {"source": source.pk, "destination": destination.pk, "event": event.pk}
    never_existed = {"source": 987654321, "destination": 987654321, "event": uuid.uuid4()}

    listed = api_get(client, reader_key, path, **params, **{field: ours[field]})
    assert listed.status_code == 200 and len(listed.json()["results"]) == 1
    answers = []
    for unknown in (theirs[field], never_existed[field]):
        response = api_get(client, reader_key, path, **params, **{field: unknown})
        assert response.status_code == 400, response.content
        assert response.json()["fields"] == {field: [f"no such {field}"]}
        answers.append(response.json())
    # Another organization's id and one that never existed get the same answer: nothing tells them apart.
    assert answers[0] == answers[1]


def test_the_id_check_of_a_filter_asks_only_whether_the_row_is_there(organization, monkeypatch):
    # Loading the row would decrypt a source's or a destination's secrets, and read an event's body,
    # on every filtered list request.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/ours", sources=[source])
    event = make_event(source)
    given = {"source": source.pk, "destination": destination.pk, "event": event.pk}

    def no_decryption(value):
        raise AssertionError("a secret was decrypted to check an id")

    monkeypatch.setattr(fields, "decrypt", no_decryption)
    with CaptureQueriesContext(connection) as queries:
        _known_ids_or_invalid(organization, given, ("source", "destination", "event"))
    assert len(queries) == 3
    assert not [query["sql"] for query in queries if '"body"' in query["sql"] or '"secret"' in query["sql"]]
