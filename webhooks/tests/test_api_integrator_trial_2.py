"""A second integrator's trial of the REST API (from the README and the document alone): refusals in
the framework's generic words, a document that let a generated client send what the server refuses,
OPTIONS answers naming the code's views, cursors made by hand, times in two spellings, and a name
quoted as nothing."""

import base64
import re

import pytest

from organizations.models import ApiKey
from webhooks.api.schema_view import api_document

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


def _auth(key):
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def _body_contains_schema() -> dict:
    parameters = api_document()["paths"]["/api/v1/events"]["get"]["parameters"]
    (body_contains,) = [parameter for parameter in parameters if parameter["name"] == "body_contains"]
    return body_contains["schema"]


# Under, at and over 3 bytes of UTF-8, with spaces around them (cut: they do not count) and within.
BODY_SEARCHES = [
    "ab",
    "abc",
    " ab ",
    "\tabc\n",
    "a b",
    "é",
    "éa",
    "€",
    "😀",
    "\u3000ab\u3000",
    "ab\u00a0",
    "\ufeffab",
    "a\x00b",
    "   ",
    "x" * 200,
]


@pytest.mark.parametrize("text", BODY_SEARCHES, ids=range(len(BODY_SEARCHES)))
def test_the_document_takes_the_body_searches_the_list_takes(client, key, organization, text):
    # Documented as 1 character or more, when the list takes 3 bytes or more: a client generated from
    # the document sent "ab" or " ab " as valid, and got a 400 every time.
    make_source(organization)
    schema = _body_contains_schema()
    response = client.get("/api/v1/events", {"body_contains": text}, **_auth(key))
    assert response.status_code in (200, 400), response.content
    taken = response.status_code == 200
    if not taken:
        assert list(response.json()["fields"]) == ["body_contains"], response.content
    allowed = bool(re.search(schema["pattern"], text)) and schema["minLength"] <= len(text) <= schema["maxLength"]
    assert allowed == taken, (text, response.content)


@pytest.mark.parametrize(
    ("path", "body", "field", "says"),
    [
        ("/api/v1/events?source=abc", None, "source", "is not an id: write it in the digits 0-9"),
        ("/api/v1/deliveries?destination=3x", None, "destination", "is not an id: write it in the digits 0-9"),
        ("/api/v1/deliveries?event=abc", None, "event", "a UUID such as"),
        ("/api/v1/destinations", {"name": "Billing", "url": "billing.example.com/hooks"}, "url", "https://"),
        (
            "/api/v1/destinations",
            {"name": "Billing", "url": "http://receiver/hooks"},
            "url",
            "a domain name with a dot",
        ),
        ("/api/v1/destinations", {"name": "Billing", "url": "https://exa mple.com/"}, "url", "without spaces"),
    ],
)
def test_a_value_refused_says_what_the_field_takes(client, key, path, body, field, says):
    # "A valid integer is required.", "Must be a valid UUID.", "Enter a valid URL.": DRF's own words
    # said the value was wrong, not what to send (nor that only http and https URLs with a host are taken).
    if body is None:
        response = client.get(path, **_auth(key))
    else:
        response = client.post(path, body, content_type="application/json", **_auth(key))
    assert response.status_code == 400, response.content
    (message,) = response.json()["fields"][field]
    assert says in message
    assert not message.startswith(("A valid", "Enter a valid", "Must be a valid"))


def test_every_request_field_says_what_it_takes_not_drfs_words():
    # Centrally, for every field of every request body and filter (their items' too): a field added
    # later gets the same words without a line of its own.
    from rest_framework import serializers as drf

    from webhooks.api import serializers, serializers_manage
    from webhooks.api.serializers import KnownFieldsOnly

    generic = {
        str(message)
        for kind in (drf.IntegerField, drf.FloatField, drf.BooleanField, drf.UUIDField, drf.URLField)
        for code, message in kind.default_error_messages.items()
        if code in ("invalid", "max_string_length")
    }
    requests = [
        value
        for module in (serializers, serializers_manage)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, KnownFieldsOnly)
    ]
    assert len(requests) > 10
    for request in requests:
        for name, field in request(context={"source": None, "destination": None}).fields.items():
            for each in (field, getattr(field, "child", None)):
                if isinstance(each, drf.Field):
                    assert not generic & {str(message) for message in each.error_messages.values()}, (request, name)


@pytest.mark.parametrize("path", ["/api/v1/destinations/{destination}", "/api/v1/events", "/api/v1/schema"])
def test_options_answers_the_methods_taken_and_nothing_of_the_code(client, key, organization, path):
    # DRF's metadata answered {"name": "Destination Detail Manage", "renders": …}: the code's view names,
    # which the document, the reference for each endpoint, never says.
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks")
    response = client.options(path.format(destination=destination.pk), **_auth(key))
    assert response.status_code == 204, response.content
    assert response.content == b""
    assert "GET" in response["Allow"] and "OPTIONS" in response["Allow"]
    if "{destination}" in path:
        assert response["Allow"] == "GET, PATCH, DELETE, HEAD, OPTIONS"


def _cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("made", ["o=1", "o=1000", "r=1&o=5", "r=1", "o=3&p=00000000-0000-0000-0000-000000000000"])
def test_a_cursor_made_by_hand_is_refused(client, key, organization, made):
    # What a made cursor can do: its position only bounds the list as received_before does (the
    # organization's and the filters' rows only, whatever it holds); but "o=N" made the database read
    # through N rows (DRF caps it at 1,000) and answered a next link of an empty cursor, itself a 400.
    # The pages' own cursors hold a position and no offset: any other is refused.
    source = make_source(organization)
    for _ in range(3):
        make_event(source)
    response = client.get("/api/v1/events", {"limit": 1, "cursor": _cursor(made)}, **_auth(key))
    assert response.status_code == 400, response.content
    assert response.json()["fields"]["cursor"] == ["not a cursor from this API: follow next or previous"]


def test_the_pages_own_cursors_are_still_followed_both_ways(client, key, organization):
    source = make_source(organization)
    events = [make_event(source) for _ in range(3)]
    first = client.get("/api/v1/events?limit=1", **_auth(key)).json()
    second = client.get(first["next"], **_auth(key)).json()
    third = client.get(second["next"], **_auth(key)).json()
    back = client.get(third["previous"], **_auth(key)).json()
    shown = [page["results"][0]["id"] for page in (first, second, third, back)]
    assert shown == [str(events[2].pk), str(events[1].pk), str(events[0].pk), str(events[1].pk)]


def test_a_bulk_retrys_filters_write_their_times_as_every_other_time(client, key, organization):
    # "received_after": "2026-11-30T22:00:00+00:00" beside "created_at": "…Z": a client comparing the
    # range it sent (in Z) with the one it reads back saw two different texts.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks", sources=[source])
    make_delivery(make_event(source), destination)
    body = {"received_after": "2020-01-01T00:00:00+02:00", "received_before": "2099-01-01"}
    created = client.post("/api/v1/deliveries/retry", body, content_type="application/json", **_auth(key))
    assert created.status_code == 202, created.content
    for answer in (created.json(), client.get(created["Location"], **_auth(key)).json()):
        assert answer["filters"]["received_after"] == "2019-12-31T22:00:00Z"
        assert answer["filters"]["received_before"] == "2099-01-01T00:00:00Z"
        assert answer["created_at"].endswith("Z")


@pytest.mark.parametrize("name", ["", " "])
def test_an_unknown_option_without_visible_characters_is_quoted(client, key, name):
    # "unknown option for stripe: " ended with nothing: an empty name (a script's unset variable) read
    # as no name at all.
    response = client.post(
        "/api/v1/sources",
        {"provider": "stripe", "name": "Stripe", "options": {name: 1}},
        content_type="application/json",
        **_auth(key),
    )
    assert response.status_code == 400, response.content
    assert response.json()["fields"]["options"] == [f"unknown option for stripe: “{name}”"]
