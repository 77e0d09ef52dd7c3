"""A request body's values must have the JSON type their field takes: DRF's fields would convert
them ("yes" to true, which stopped a rotation's previous secret; "3" or 2.0 to 3; true to 1; 123 to
"123"). Each wrong type is a 400 on its field saying what it takes; query strings, all text by
nature, are read as before."""

import pytest

from organizations.models import ApiKey, AuditLog
from webhooks.api.serializers import API_URL_FORM
from webhooks.models import BulkRetry, Delivery, Destination, Source

from .api_helpers import api_get, api_patch, api_post, make_delivery, make_event, make_key
from .factories import STRIPE_SECRET, make_destination, make_source

BOOLEAN = "must be true or false (a JSON boolean, without quotes)"
WHOLE_NUMBER = "must be a whole number (a JSON integer: no quotes, no fraction)"
NUMBER = "must be a number (without quotes)"
STRING = "must be a string (in double quotes)"
LIST = "must be a list"
OBJECT = "must be an object"

WRONG_BOOLEANS = [("yes", "not a string"), ("true", "not a string"), (1, "not a whole number"), (0, "not a whole")]
WRONG_WHOLE_NUMBERS = [
    ("3", "not a string"),
    (2.0, "not a number with a fraction or an exponent"),
    (2.5, "not a number with a fraction"),
    (True, "not a boolean"),
    ([3], "not a list"),
]
WRONG_NUMBERS = [("5", "not a string"), (True, "not a boolean")]
WRONG_STRINGS = [
    (None, "not null"),
    (123, "not a whole number"),
    (True, "not a boolean"),
    (["x"], "not a list"),
    ({"a": "b"}, "not an"),
]
WRONG_LISTS = [("x", "not a string"), ({"0": "x"}, "not an object")]
WRONG_OBJECTS = [(["a"], "not a list"), ("a=b", "not a string")]


def _cases(kind: str, wrong: list) -> list[tuple]:
    return [(kind, value, said) for value, said in wrong]


KINDS = {
    "boolean": [(value, f"{BOOLEAN}, {said}") for value, said in WRONG_BOOLEANS],
    "whole number": [(value, f"{WHOLE_NUMBER}, {said}") for value, said in WRONG_WHOLE_NUMBERS],
    "number": [(value, f"{NUMBER}, {said}") for value, said in WRONG_NUMBERS],
    "string": [(value, f"{STRING}, {said}") for value, said in WRONG_STRINGS],
    "list": [(value, f"{LIST}, {said}") for value, said in WRONG_LISTS],
    "object": [(value, f"{OBJECT}, {said}") for value, said in WRONG_OBJECTS],
    "list of whole numbers": [
        (["1"], f"item 1 {WHOLE_NUMBER}, not a string"),
        ([10, 60.0], f"item 2 {WHOLE_NUMBER}, not a number with a fraction"),
        ([True], f"item 1 {WHOLE_NUMBER}, not a boolean"),
        ("1", f"{LIST}, not a string"),
    ],
    "list of strings": [
        ([1], f"item 1 {STRING}, not a whole number"),
        (["ok", None], f"item 2 {STRING}, not null"),
        ("x", f"{LIST}, not a string"),
    ],
}

# Every write endpoint, every field of its body, and the rest of a body it would otherwise take.
# Paths name the world's objects by key; "{event}" and "{source}" are filled in by the test.
ENDPOINTS = [
    (
        "POST",
        "/api/v1/sources",
        {"provider": "stripe", "name": "New"},
        {
            "provider": "string",
            "name": "string",
            "secret": "string",
            "options": "object",
            "allowed_networks": "list of strings",
        },
    ),
    (
        "PATCH",
        "/api/v1/sources/{source}",
        {},
        {"name": "string", "options": "object", "active": "boolean", "allowed_networks": "list of strings"},
    ),
    (
        "POST",
        "/api/v1/sources/{source}/rotate_secret",
        {"secret": "whsec_rotated"},
        {"secret": "string", "keep_previous_for": "whole number", "stop_previous": "boolean"},
    ),
    (
        "POST",
        "/api/v1/destinations/{destination}/rotate_secret",
        {},
        {"keep_previous_for": "whole number", "stop_previous": "boolean"},
    ),
    ("POST", "/api/v1/events/{event}/replay", {}, {"destination": "whole number"}),
    (
        "POST",
        "/api/v1/deliveries/retry",
        {},
        {
            "status": "string",
            "destination": "whole number",
            "source": "whole number",
            "event_type": "string",
            "received_after": "string",
            "received_before": "string",
        },
    ),
]
DESTINATION_FIELDS = {
    "name": "string",
    "url": "string",
    "sources": "list of whole numbers",
    "event_types": "list of strings",
    "timeout_seconds": "number",
    "retry_client_errors": "boolean",
    "max_concurrency": "whole number",
    "rate_limit_per_second": "whole number",
    "retry_schedule": "list of whole numbers",
    "max_attempts": "whole number",
    "max_retry_age_seconds": "whole number",
    "custom_headers": "object",
}
ENDPOINTS += [
    ("POST", "/api/v1/destinations", {"name": "New", "url": "http://127.0.0.1:9/new"}, DESTINATION_FIELDS),
    ("PATCH", "/api/v1/destinations/{destination}", {}, DESTINATION_FIELDS),
]

CASES = [
    pytest.param(method, path, base, field, value, message, id=f"{method} {path} {field}={value!r}")
    for method, path, base, fields in ENDPOINTS
    for field, kind in fields.items()
    for value, message in KINDS[kind]
]


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


@pytest.fixture
def world(organization):
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/billing", sources=[source])
    event = make_event(source)
    make_delivery(event, destination)
    return {"source": source.pk, "destination": destination.pk, "event": event.pk}


def _send(client, key, method, path, body):
    return (api_post if method == "POST" else api_patch)(client, key, path, body)


def _state():
    # What any of these requests would change: each change is audited, a bulk retry is a job, a
    # replay a delivery.
    return (
        AuditLog.objects.count(),
        BulkRetry.objects.count(),
        Delivery.objects.count(),
        list(Source.objects.order_by("pk").values()),
        list(Destination.objects.order_by("pk").values()),
    )


@pytest.mark.parametrize(("method", "path", "base", "field", "value", "message"), CASES)
def test_a_value_of_another_json_type_is_a_400_on_its_field(
    client, key, world, method, path, base, field, value, message
):
    before = _state()
    response = _send(client, key, method, path.format(**world), {**base, field: value})
    assert response.status_code == 400, response.content
    body = response.json()
    assert (body["error"], body["detail"]) == ("invalid", "the request is not valid")
    assert list(body["fields"]) == [field], body
    assert message in body["fields"][field][0], body
    assert _state() == before


def test_a_wrong_type_is_named_with_the_other_mistakes_of_the_body(client, key, world):
    response = api_post(
        client, key, "/api/v1/destinations", {"name": 7, "url": "not a url", "max_attempts": "3", "nope": 1}
    )
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["nope"]  # unknown names first, as before
    response = api_post(client, key, "/api/v1/destinations", {"name": 7, "url": "not a url", "max_attempts": "3"})
    fields = response.json()["fields"]
    assert set(fields) == {"name", "url", "max_attempts"}
    assert fields["name"] == [f"{STRING}, not a whole number"]
    assert fields["max_attempts"] == [f"{WHOLE_NUMBER}, not a string"]
    assert fields["url"] == [f"is not a URL this API takes: give {API_URL_FORM}"]


def test_a_secret_of_another_type_is_not_repeated_in_the_refusal(client, key, world):
    response = api_post(client, key, "/api/v1/sources", {"provider": "stripe", "name": "x", "secret": 98765432123})
    assert response.status_code == 400 and "98765432123" not in response.content.decode()


def test_stop_previous_as_a_string_does_not_stop_the_previous_secret(client, key, world):
    path = f"/api/v1/sources/{world['source']}/rotate_secret"
    first = api_post(client, key, path, {"secret": "whsec_second", "keep_previous_for": 3600})
    assert first.status_code == 200 and first.json()["previous_secret_valid_until"]
    refused = api_post(client, key, path, {"secret": "whsec_third", "stop_previous": "yes"})
    assert refused.status_code == 400
    source = Source.objects.get(pk=world["source"])
    assert (source.secret, source.previous_secret) == ("whsec_second", STRIPE_SECRET)
    assert api_post(client, key, path, {"secret": "whsec_third", "stop_previous": True}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        (
            "POST",
            "/api/v1/sources",
            {
                "provider": "stripe",
                "name": "Typed",
                "secret": "whsec_typed",
                "options": {"tolerance": 300},
                "allowed_networks": ["203.0.113.0/24"],
            },
            201,
        ),
        (
            "PATCH",
            "/api/v1/sources/{source}",
            {"name": "Renamed", "options": {}, "active": True, "allowed_networks": None},
            200,
        ),
        (
            "POST",
            "/api/v1/sources/{source}/rotate_secret",
            {"secret": "whsec_rotated", "keep_previous_for": 60, "stop_previous": False},
            200,
        ),
        (
            "POST",
            "/api/v1/destinations/{destination}/rotate_secret",
            {"keep_previous_for": 0, "stop_previous": True},
            200,
        ),
        ("POST", "/api/v1/events/{event}/replay", {"destination": "{destination}"}, 202),
        (
            "POST",
            "/api/v1/deliveries/retry",
            {
                "status": "dead",
                "destination": "{destination}",
                "source": "{source}",
                "event_type": "invoice.*",
                "received_after": "2000-01-01T00:00:00Z",
                "received_before": "2100-01-01T00:00:00Z",
            },
            202,
        ),
        (
            "POST",
            "/api/v1/destinations",
            {
                "name": "Typed",
                "url": "http://127.0.0.1:9/typed",
                "sources": ["{source}"],
                "event_types": ["invoice.*"],
                "timeout_seconds": 5,
                "retry_client_errors": True,
                "max_concurrency": 2,
                "rate_limit_per_second": None,
                "retry_schedule": [10, 60],
                "max_attempts": 3,
                "max_retry_age_seconds": None,
                "custom_headers": {"X-Team": "billing"},
                "payload_filters": [{"path": "livemode", "op": "equals", "value": True}],
            },
            201,
        ),
        (
            "PATCH",
            "/api/v1/destinations/{destination}",
            {
                "timeout_seconds": 2.5,
                "retry_client_errors": False,
                "max_attempts": None,
                "custom_headers": {"X-A": None},
            },
            200,
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and value.startswith("/") else None,
)
def test_values_of_the_right_json_types_are_taken(client, key, world, method, path, body, status):
    ids = {f"{{{name}}}": pk for name, pk in world.items()}

    def filled(value):
        if isinstance(value, list):
            return [filled(item) for item in value]
        return ids.get(value, value) if isinstance(value, str) else value

    body = {name: filled(value) for name, value in body.items()}
    response = _send(client, key, method, path.format(**world), body)
    assert response.status_code == status, response.content


def test_query_strings_are_read_as_text_as_before(client, key, world):
    response = api_get(client, key, f"/api/v1/deliveries?destination={world['destination']}&status=dead")
    assert response.status_code == 200 and len(response.json()["results"]) == 1
