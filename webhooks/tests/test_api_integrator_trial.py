"""What trying the REST API as a tenant's developer would (from the README and the document alone,
against a running server) found, each reproduced here: refusals must say what to send instead, and
quote the caller's value as every other refusal does."""

import pytest

from organizations.models import ApiKey
from webhooks.models import Destination
from webhooks.providers.registry import PROVIDERS
from webhooks.services.source_deletion import source_request_deletion

from .api_helpers import make_key
from .factories import make_destination, make_source


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


def _auth(key):
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("path", "field", "a_choice"),
    [
        ("/api/v1/events?status=faild", "status", "failed"),
        ("/api/v1/deliveries?status=deadd", "status", "dead"),
        ("/api/v1/bulk_retries?status=finished", "status", "done"),
    ],
)
def test_a_filter_value_not_taken_names_the_values_taken(client, key, path, field, a_choice):
    # DRF's own refusal ("\"faild\" is not a valid choice.") left the caller to guess the spelling.
    response = client.get(path, **_auth(key))
    assert response.status_code == 400, response.content
    (message,) = response.json()["fields"][field]
    assert "is not one of" in message
    assert a_choice in message


def test_an_unknown_provider_names_the_providers(client, key):
    response = client.post(
        "/api/v1/sources", {"provider": "githb", "name": "CI"}, content_type="application/json", **_auth(key)
    )
    assert response.status_code == 400, response.content
    (message,) = response.json()["fields"]["provider"]
    assert message.startswith("“githb” is not one of: ")
    assert all(provider in message for provider in PROVIDERS)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/sources", {"name": "CI"}, "provider"),
        ("/api/v1/deliveries/retry", {}, "status"),
    ],
)
def test_a_choice_not_taken_is_quoted_cut_and_escaped_not_sent_back_whole(client, key, path, body, field):
    # The whole value came back, a 200 KB one in a 200 KB answer with its terminal controls (an
    # OSC sequence that sets a terminal's title, a bidirectional override), where every other
    # refusal quotes at most 60 characters with them escaped.
    value = "\u202e\x1b]0;owned\x07" + "x" * 200_000
    response = client.post(path, {**body, field: value}, content_type="application/json", **_auth(key))
    assert response.status_code == 400, response.content
    assert len(response.content) < 2_000
    (message,) = response.json()["fields"][field]
    assert message.startswith("“\\u202e\\x1b]0;owned\\x07xxx")
    assert "…” is not one of" in message
    assert "\x1b" not in message and "\u202e" not in message


def test_a_source_being_deleted_is_not_among_a_destinations_subscriptions(client, key, organization):
    # The API hides a source being deleted (GET /sources/<id> is a 404, a destination's "sources"
    # cannot name it), but a destination's read still listed it while the deletion ran, which can take
    # long for a busy source: the PATCH a script builds from what it read ("sources": the ids read,
    # plus one) was a 400 "no such source", and the destination read as linked when it received nothing.
    staying = make_source(organization, name="Stripe live")
    leaving = make_source(organization, name="Stripe old")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks", sources=[staying, leaving])
    source_request_deletion(source=leaving)

    for read in (
        client.get(f"/api/v1/destinations/{destination.pk}", **_auth(key)).json(),
        client.get("/api/v1/destinations", **_auth(key)).json()["results"][0],
    ):
        assert [subscription["source"] for subscription in read["subscriptions"]] == [staying.pk]

    sources = [subscription["source"] for subscription in read["subscriptions"]]
    added = make_source(organization, name="Stripe new")
    response = client.patch(
        f"/api/v1/destinations/{destination.pk}",
        {"sources": [*sources, added.pk]},
        content_type="application/json",
        **_auth(key),
    )
    assert response.status_code == 200, response.content
    assert [subscription["source"] for subscription in response.json()["subscriptions"]] == [staying.pk, added.pk]


def test_a_body_too_large_says_how_large_a_body_may_be(client, key, settings):
    # "larger than this API takes" left the caller to find the limit by halving its body.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 12_000
    body = {"name": "Billing", "url": "http://127.0.0.1:9/hooks", "custom_headers": {"X-Big": "x" * 20_000}}
    response = client.post("/api/v1/destinations", body, content_type="application/json", **_auth(key))
    assert response.status_code == 413, response.content
    assert response.json()["error"] == "request_too_large"
    assert "12,000 bytes" in response.json()["detail"]


def test_a_request_without_a_key_is_told_how_to_send_one(client):
    # DRF's "Authentication credentials were not provided." named neither the credential nor its header.
    response = client.get("/api/v1/events")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"] == "not_authenticated"
    assert "Authorization: Bearer hl_<prefix>_<secret>" in body["detail"]


def test_an_accept_header_the_api_cannot_answer_is_told_it_answers_json(client, key):
    # DRF's "Could not satisfy the request Accept header." did not say what it could answer.
    response = client.get("/api/v1/events", HTTP_ACCEPT="application/xml", **_auth(key))
    assert response.status_code == 406
    assert response.json()["error"] == "not_acceptable"
    assert "application/json" in response.json()["detail"]


def test_the_document_gives_a_cursor_a_value_as_the_lists_require(client, key):
    # An empty cursor is a 400 ("not a cursor from this API"), but the document took any string, so a
    # client generated from it (or a fuzzer, schemathesis here) sent "?cursor=" as a valid request.
    document = client.get("/api/v1/schema").json()
    lists = [path for path, operations in document["paths"].items() if "get" in operations and "{" not in path]
    assert len(lists) == 5
    for path in lists:
        (cursor,) = [
            parameter for parameter in document["paths"][path]["get"]["parameters"] if parameter["name"] == "cursor"
        ]
        assert cursor["schema"] == {"type": "string", "minLength": 1}, path
        response = client.get(f"{path}?cursor=", **_auth(key))
        assert response.status_code == 400 and list(response.json()["fields"]) == ["cursor"], path


def test_a_body_naming_a_field_twice_is_refused_not_read_as_its_last_value(client, key, organization):
    # Python's json keeps the last value: {"name": "Billing", …, "name": "CRM"} made "CRM" without a
    # word ({"destination": 3, "destination": 4} replayed to 4), where the API refuses every other
    # name it would otherwise ignore.
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/first", sources=[source])
    body = '{"name": "Billing", "url": "http://127.0.0.1:9/b", "name": "CRM"}'
    response = client.post("/api/v1/destinations", body, content_type="application/json", **_auth(key))
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_json"
    assert "“name” is given twice" in response.json()["detail"]
    assert not Destination.objects.filter(name__in=["Billing", "CRM"]).exists()

    nested = '{"custom_headers": {"X-Token": "a", "X-Token": "b"}}'
    response = client.patch(
        f"/api/v1/destinations/{destination.pk}", nested, content_type="application/json", **_auth(key)
    )
    assert response.status_code == 400, response.content
    assert "“X-Token” is given twice" in response.json()["detail"]
