"""The OpenAPI document at /api/v1/schema: valid, complete, and true to what the API answers.

Real requests with real keys against real rows are checked against the document's schema for
their status (keys exactly the documented properties, recursively, $refs resolved), so that a field
added to or dropped from a serializer without the document following fails here.
"""

from __future__ import annotations

import copy
import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime

import psycopg
import pytest
import yaml
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.fields import DateTimeField

from organizations.models import ApiKey, IdempotencyKey
from organizations.services import organization_create
from webhooks.api import schema_view
from webhooks.api.authentication import ApiView
from webhooks.api.schema_view import ApiSchemaView
from webhooks.fields import _fernet_for
from webhooks.models import BulkRetry, Delivery, Destination, WebhookEvent
from webhooks.providers.registry import PROVIDERS
from webhooks.services import body_search_slots
from webhooks.services.destinations import (
    MAX_EVENT_TYPE_PATTERN_CHARS,
    MIN_ATTEMPTS,
    destination_create,
    destination_rotate_secret,
    max_attempts_with_any_schedule,
)
from webhooks.services.payload_filters import (
    MAX_PATH_CHARS,
    MAX_PAYLOAD_FILTERS,
    OPERATORS,
    parse_payload_filter_lines,
)
from webhooks.services.source_networks import MAX_ALLOWED_NETWORKS

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source
from .processes import ROOT, wait_until
from .test_event_body_search import events_table_locked

API_PREFIX = "api/v1/"


@pytest.fixture
def document(client, db):
    response = client.get("/api/v1/schema")
    assert response.status_code == 200
    return response.json()


# --- Checking a value against the document -------------------------------------------------------


class Mismatch(AssertionError):
    pass


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        *_, kind, name = schema["$ref"].split("/")
        schema = document["components"][kind][name]
    return schema


def _composed(schema: dict) -> bool:
    return any(keyword in schema for keyword in ("allOf", "oneOf", "anyOf"))


def _takes_null(schema: dict) -> bool:
    """Null as OpenAPI 3.0.3 has it, as strict validators (openapi-core) and generated clients read
    it: ``nullable`` adds null only to the ``type`` beside it in the same schema object, so a
    ``nullable`` next to an ``allOf`` of a reference (and no type) lets no null through; an ``enum``
    takes null only when it lists it; a schema that says neither takes any value."""
    if "type" in schema:
        return schema.get("nullable", False)
    if "enum" in schema:
        return None in schema["enum"]
    return True


_TYPES = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "boolean": lambda value: isinstance(value, bool),
}


def check(document: dict, schema: dict, value, where: str = "$", seen: set | None = None) -> set[str]:
    """Raise Mismatch where ``value`` is not as ``schema`` says; the names of the components it
    went through with an object (to tell which parts of the document a test covered)."""
    seen = set() if seen is None else seen
    if "$ref" in schema:
        seen.add(schema["$ref"].rsplit("/", 1)[-1])
    schema = _resolve(document, schema)
    if value is None and not _composed(schema):
        if not _takes_null(schema):
            raise Mismatch(f"{where}: null, which the document does not allow")
        return seen
    if "allOf" in schema:
        for part in schema["allOf"]:
            check(document, part, value, where, seen)
        return seen
    if "oneOf" in schema:
        for option in schema["oneOf"]:
            try:
                check(document, option, value, where, set())
            except Mismatch:
                continue
            return check(document, option, value, where, seen)
        raise Mismatch(f"{where}: {value!r} matches none of oneOf")
    kind = schema.get("type")
    if kind and not _TYPES[kind](value):
        raise Mismatch(f"{where}: {value!r} is not of type {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise Mismatch(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if properties or extra is False:
            missing = set(schema.get("required", ())) - set(value)
            undocumented = set(value) - set(properties)
            if missing:
                raise Mismatch(f"{where}: required but absent: {sorted(missing)}")
            if undocumented and not extra:
                raise Mismatch(f"{where}: not in the document: {sorted(undocumented)}")
        for key, item in value.items():
            if key in properties:
                check(document, properties[key], item, f"{where}.{key}", seen)
            elif isinstance(extra, dict):
                check(document, extra, item, f"{where}.{key}", seen)
    if isinstance(value, list) and "items" in schema:
        for position, item in enumerate(value):
            check(document, schema["items"], item, f"{where}[{position}]", seen)
    return seen


def operation(document: dict, template: str, method: str) -> dict:
    return document["paths"][template][method.lower()]


def answer_as_documented(document: dict, response, template: str, method: str) -> set[str]:
    """The response's status is one the operation documents, with its body as documented."""
    documented = operation(document, template, method)["responses"]
    assert str(response.status_code) in documented, (response.status_code, response.content)
    content = documented[str(response.status_code)].get("content")
    if content is None:
        assert response.content == b""
        return set()
    return check(document, content["application/json"]["schema"], response.json())


def request_as_documented(document: dict, body: dict, template: str, method: str) -> None:
    request_body = operation(document, template, method).get("requestBody")
    if request_body is None:
        assert body in (None, {}), f"{method} {template} documents no body"
        return
    check(document, request_body["content"]["application/json"]["schema"], body, "request")


class Api:
    """Requests with a key, each checked against the document (its request body too)."""

    def __init__(self, client, document: dict, key: str):
        self.client, self.document, self.key = client, document, key
        self.components: set[str] = set()

    def headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key}"}

    def call(self, method: str, template: str, body: dict | None = None, query: dict | None = None, **ids):
        path = template.format(**ids)
        headers = self.headers()
        if method == "GET":
            response = self.client.get(path, query or {}, **headers)
        else:
            request_as_documented(self.document, body or {}, template, method)
            send = getattr(self.client, method.lower())
            response = send(path, body or {}, content_type="application/json", **headers)
        self.components |= answer_as_documented(self.document, response, template, method)
        return response


# --- The document itself ---------------------------------------------------------------------------


def test_document_validates_without_a_warning(tmp_path):
    # --fail-on-warn: a view or field drf-spectacular could not read (a guessed type, an unknown
    # serializer) fails here rather than become a vague "object" in the document.
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    written = yaml.safe_load(target.read_text())
    assert written["openapi"].startswith("3.")
    assert written["info"]["title"] == "Hookline REST API"
    assert "README" in written["info"]["description"]


def _api_patterns() -> list[URLPattern]:
    [api] = [
        entry
        for entry in get_resolver().url_patterns
        if isinstance(entry, URLResolver) and str(entry.pattern) == API_PREFIX
    ]
    return list(api.url_patterns)


def _template(pattern: URLPattern) -> str:
    """``^events/(?P<event_id>[^/]+)/?$`` → ``/api/v1/events/{event_id}``."""
    regex = pattern.pattern.regex.pattern
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex.removeprefix("^").removesuffix("/?$"))
    return f"/{API_PREFIX}{path}"


def test_every_api_route_is_in_the_document_with_its_methods(document):
    patterns = _api_patterns()
    endpoints = [pattern for pattern in patterns if issubclass(getattr(pattern.callback, "cls", object), ApiView)]
    # Only the catch-all (the API's 404) and the document itself are not API views.
    others = [pattern for pattern in patterns if pattern not in endpoints]
    assert {getattr(pattern.callback, "cls", pattern.callback) for pattern in others} == {
        ApiSchemaView,
        pattern_catch_all(patterns).callback,
    }
    assert len(endpoints) >= 18
    documented = {}
    for pattern in endpoints:
        view = pattern.callback.cls
        methods = {method for method in ("get", "post", "patch", "put", "delete") if hasattr(view, method)}
        documented[_template(pattern)] = methods
    assert {path: set(operations) for path, operations in document["paths"].items()} == documented


def pattern_catch_all(patterns):
    [catch_all] = [pattern for pattern in patterns if pattern.pattern.regex.pattern == "^.*$"]
    return catch_all


def test_every_operation_documents_the_refusals_every_view_may_answer(document):
    for path, operations in document["paths"].items():
        for method, described in operations.items():
            codes = set(described["responses"])
            assert {"400", "401", "403", "406", "429"} <= codes, (method, path)
            assert described["security"] == [{"apiKey": []}]
            if "{" in path:
                assert "404" in codes, (method, path)
            headers = {
                parameter["name"] for parameter in described.get("parameters", ()) if parameter["in"] == "header"
            }
            if method in ("post", "patch"):
                # 503: a stored secret the change needs, saved under a key this process lacks yet.
                assert {"413", "415", "503"} <= codes, (method, path)
            if method == "post":
                assert {"409", "422"} <= codes and "Idempotency-Key" in headers, (method, path)
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "hl_<prefix>_<secret>",
        "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }


def test_every_list_documents_the_414_of_a_query_string_over_the_request_line_limit(document):
    # gunicorn answers it before Django (config/gunicorn.conf.py, in the API's error shape); a long
    # event_type list or body_contains on a list's filters reaches it. Only lists take a query string.
    lists = [
        path
        for path, operations in document["paths"].items()
        if "get" in operations
        and "{" not in path
        and "next" in _resolve(document, _ok_schema(operations["get"]))["properties"]
    ]
    assert {"/api/v1/events", "/api/v1/deliveries", "/api/v1/sources", "/api/v1/destinations"} <= set(lists)
    for path, operations in document["paths"].items():
        for method, described in operations.items():
            if path in lists and method == "get":
                _documents_code(document, path, method, 414, "request_line_too_long")
                assert "4,094 bytes" in described["responses"]["414"]["description"]
            else:
                assert "414" not in described["responses"], (method, path)


def _ok_schema(described: dict) -> dict:
    return described["responses"]["200"]["content"]["application/json"]["schema"]


def test_the_checker_fails_when_a_field_leaves_the_document(client, organization, document):
    # What every test below relies on: a field the API answers and the document lacks is a failure.
    source = make_source(organization)
    key = make_key(organization)[1]
    answer = client.get(f"/api/v1/sources/{source.pk}", HTTP_AUTHORIZATION=f"Bearer {key}")
    answer_as_documented(document, answer, "/api/v1/sources/{source_id}", "GET")
    for field in ("ingest_url", "allowed_networks"):
        without = copy.deepcopy(document)
        del without["components"]["schemas"]["Source"]["properties"][field]
        without["components"]["schemas"]["Source"]["required"].remove(field)
        with pytest.raises(Mismatch, match=field):
            answer_as_documented(without, answer, "/api/v1/sources/{source_id}", "GET")
    # And in an object nested in a list's page: a subscription of a destination.
    make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    answer = client.get("/api/v1/destinations", HTTP_AUTHORIZATION=f"Bearer {key}")
    answer_as_documented(document, answer, "/api/v1/destinations", "GET")
    without = copy.deepcopy(document)
    del without["components"]["schemas"]["Subscription"]["properties"]["event_types"]
    with pytest.raises(Mismatch, match="event_types"):
        answer_as_documented(without, answer, "/api/v1/destinations", "GET")


# --- Real answers, as documented -------------------------------------------------------------------


@pytest.fixture
def world(organization):
    return make_world(organization)


def make_world(organization) -> dict:
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(
        organization,
        "http://127.0.0.1:9/hooks?token=abc",
        sources=[source],
        custom_headers={"Authorization": "Bearer abcdef123456"},
    )
    # Left out of the event by its payload filters, and another by its event types.
    destination_create(
        organization=organization,
        name="Live only",
        url="http://127.0.0.1:9/live",
        sources=[source],
        payload_filters=parse_payload_filter_lines("data.object.livemode == true"),
    )
    make_destination(organization, "http://127.0.0.1:9/customers", sources=[source], event_types=["customer.*"])
    event = make_event(
        source,
        provider_event_id="evt_1",
        body=b'{"type": "invoice.paid", "data": {"object": {"livemode": false, "customer": "cus_ABC123"}}}',
        headers={"content-type": "application/json", "stripe-signature": "t=1,v1=abc"},
    )
    delivery = make_delivery(event, destination, attempts=2)
    return {"source": source, "destination": destination, "event": event, "delivery": delivery}


@pytest.mark.parametrize("access", [ApiKey.Access.READ_WRITE, ApiKey.Access.READ_ONLY])
def test_every_read_answers_as_documented(client, organization, document, world, access):
    api = Api(client, document, make_key(organization, access=access)[1])
    writer = Api(client, document, make_key(organization, name="writer")[1])
    job = writer.call("POST", "/api/v1/deliveries/retry", {"destination": world["destination"].pk}).json()

    for template in ("/api/v1/events", "/api/v1/deliveries", "/api/v1/sources", "/api/v1/destinations"):
        results = api.call("GET", template).json()["results"]
        assert results, template  # something in each page to check
    assert api.call("GET", "/api/v1/bulk_retries").json()["results"][0]["id"] == job["id"]
    api.call("GET", "/api/v1/events", query={"body_contains": "cus_ABC123"})  # with searched_back_to
    api.call("GET", "/api/v1/events", query={"limit": "1", "status": "all"})
    event = api.call("GET", "/api/v1/events/{event_id}", event_id=world["event"].pk).json()
    assert event["left_out_by_payload_filters"] and event["left_out_by_event_types"]
    api.call("GET", "/api/v1/deliveries/{delivery_id}", delivery_id=world["delivery"].pk)
    api.call("GET", "/api/v1/bulk_retries/{job_id}", job_id=job["id"])
    api.call("GET", "/api/v1/sources/{source_id}", source_id=world["source"].pk)
    api.call("GET", "/api/v1/destinations/{destination_id}", destination_id=world["destination"].pk)

    # Every object the reads answer was met with a value, nested ones included.
    assert {
        "PaginatedEventList",
        "PaginatedDeliveryList",
        "PaginatedSourceList",
        "PaginatedDestinationList",
        "PaginatedBulkRetryList",
        "Event",
        "EventDetail",
        "DeliverySummary",
        "EventDelivery",
        "Attempt",
        "LeftOutByPayloadFilters",
        "LeftOutByEventTypes",
        "Delivery",
        "DeliveryDetail",
        "BulkRetry",
        "BulkRetryOutcome",
        "BulkRetryFilters",
        "Source",
        "Destination",
        "Subscription",
        "CustomHeaderHint",
        "PayloadFilter",
        # Statuses and providers as enums a generated client can type (and check) them with.
        "EventStatusEnum",
        "DeliveryStatusEnum",
        "ProviderEnum",
    } <= api.components


def test_changes_answer_as_documented(client, organization, document, world):
    api = Api(client, document, make_key(organization)[1])
    source = api.call(
        "POST", "/api/v1/sources", {"provider": "github", "name": "GitHub org", "allowed_networks": ["10.0.0.0/8"]}
    ).json()
    assert "secret" in source  # generated: the optional field is there too
    api.call("POST", "/api/v1/sources", {"provider": "stripe", "name": "Stripe later"})  # and without it
    api.call("PATCH", "/api/v1/sources/{source_id}", {"name": "GitHub", "active": False}, source_id=source["id"])
    api.call("POST", "/api/v1/sources/{source_id}/rotate_secret", {"keep_previous_for": 60}, source_id=source["id"])
    api.call("POST", "/api/v1/sources/{source_id}/rotate_secret", {}, source_id=source["id"])  # 409: still in overlap
    created = api.call(
        "POST",
        "/api/v1/destinations",
        {
            "name": "Billing",
            "url": "http://127.0.0.1:9/billing",
            "sources": [world["source"].pk],
            "event_types": ["invoice.*"],
            "custom_headers": {"X-Team": "billing-team"},
            "retry_schedule": [10, 60],
            # Each form of a condition: a value (null included), a list for in, none for exists.
            "payload_filters": [
                {"path": "data.object.livemode", "op": "equals", "value": True},
                {"path": "data.object.closed_at", "op": "not_equals", "value": None},
                {"path": "type", "op": "in", "value": ["invoice.paid", "invoice.voided"]},
                {"path": "data.object.customer", "op": "exists"},
            ],
        },
    ).json()
    assert [condition["op"] for condition in created["payload_filters"]] == ["equals", "not_equals", "in", "exists"]
    assert created["secret"].startswith("whsec_") and created["warnings"] == []
    destination = {"destination_id": created["id"]}
    api.call("PATCH", "/api/v1/destinations/{destination_id}", {"sources": [], "event_types": []}, **destination)
    api.call("POST", "/api/v1/destinations/{destination_id}/rotate_secret", {"stop_previous": True}, **destination)
    api.call("POST", "/api/v1/destinations/{destination_id}/pause", **destination)
    api.call("POST", "/api/v1/destinations/{destination_id}/send_waiting_now", **destination)  # 409: paused
    api.call("POST", "/api/v1/destinations/{destination_id}/resume", **destination)
    api.call(
        "POST",
        "/api/v1/destinations/{destination_id}/send_waiting_now",
        destination_id=world["destination"].pk,
    )
    replayed = api.call(
        "POST", "/api/v1/events/{event_id}/replay", {"destination": created["id"]}, event_id=world["event"].pk
    )
    assert replayed.status_code == 202
    job = api.call("POST", "/api/v1/deliveries/retry", {"destination": world["destination"].pk})
    assert job.status_code == 202
    api.call("POST", "/api/v1/deliveries/retry", {})  # 409 while the first job may take the same deliveries
    dead = make_delivery(world["event"], Destination.objects.get(pk=created["id"]))
    assert api.call("POST", "/api/v1/deliveries/{delivery_id}/retry", delivery_id=dead.pk).status_code == 202
    api.call("DELETE", "/api/v1/destinations/{destination_id}", **destination)
    api.call("DELETE", "/api/v1/sources/{source_id}", source_id=source["id"])
    assert {
        "SourceCreated",
        "Source",
        "SourceRotated",
        "DestinationCreated",
        "DestinationChanged",
        "DestinationRotated",
        "Destination",
        "WaitingSentNow",
        "Delivery",
        "BulkRetry",
        "SourceDeleting",
        "Error",
        "PayloadFilter",
    } <= api.components


def test_a_change_that_needs_a_secret_this_process_cannot_read_yet_answers_as_documented(
    client, organization, document, settings
):
    # Custom headers saved by a process with a new FIELD_ENCRYPTION_KEYS, changed through one still on
    # the old key alone: the PATCH answered 503 secret_unreadable, which the document did not list; it
    # now answers a 400 on custom_headers (it cannot keep the headers it cannot read), as documented.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    api = Api(client, document, make_key(organization)[1])
    response = api.call(
        "PATCH",
        "/api/v1/destinations/{destination_id}",
        {"custom_headers": {"X-Team": "billing"}},
        destination_id=destination.pk,
    )
    assert response.status_code == 400 and "custom_headers" in response.json()["fields"]
    described = operation(document, "/api/v1/destinations/{destination_id}", "PATCH")["responses"]["503"]
    assert "secret_unreadable" in described["description"]


def test_a_rotation_this_process_cannot_make_yet_answers_as_documented(client, organization, document, settings):
    # A secret rotated by a process with a new FIELD_ENCRYPTION_KEYS, rotated again through one still on
    # the old key alone: it replaced the good secret with no overlap, whatever was asked for; it now
    # answers the documented 503 secret_unreadable, nothing changed.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/")
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    destination_rotate_secret(destination=destination, overlap_seconds=0)
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    api = Api(client, document, make_key(organization)[1])
    path = "/api/v1/destinations/{destination_id}/rotate_secret"

    response = api.call("POST", path, {"keep_previous_for": 3600}, destination_id=destination.pk)

    assert response.status_code == 503 and response.json()["error"] == "secret_unreadable"
    assert "rotation keeps for its overlap" in operation(document, path, "POST")["responses"]["503"]["description"]
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    assert Destination.objects.get(pk=destination.pk).secret == destination.secret


def test_nulls_the_api_answers_pass_a_strict_openapi_reading(client, organization, document, world):
    # A delivery that is not pending answers "waiting_for": null, and a bulk retry asked for before
    # outcomes were recorded "outcome": null. Each was described as a nullable beside an allOf of a
    # reference, which under OpenAPI 3.0.3 takes no null: openapi-core refused every such answer.
    api = Api(client, document, make_key(organization)[1])
    delivery = api.call("GET", "/api/v1/deliveries/{delivery_id}", delivery_id=world["delivery"].pk).json()
    assert delivery["waiting_for"] is None
    event = api.call("GET", "/api/v1/events/{event_id}", event_id=world["event"].pk).json()
    assert event["deliveries"][0]["waiting_for"] is None
    job = api.call("POST", "/api/v1/deliveries/retry", {"destination": world["destination"].pk}).json()
    BulkRetry.objects.filter(pk=job["id"]).update(outcome_recorded=False)
    assert api.call("GET", "/api/v1/bulk_retries/{job_id}", job_id=job["id"]).json()["outcome"] is None
    assert api.call("GET", "/api/v1/bulk_retries").json()["results"][0]["outcome"] is None
    # And the values beside null still have to be as documented.
    with pytest.raises(Mismatch, match="waiting_for"):
        check(document, {"$ref": "#/components/schemas/DeliveryDetail"}, {**delivery, "waiting_for": "elsewhere"})


def _schemas_in(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas_in(value)


def test_nullable_is_only_written_where_openapi_3_0_lets_it_take_effect(document):
    # OpenAPI 3.0.3: "nullable" only takes effect where "type" is in the same schema object. Beside
    # an allOf, oneOf or $ref it is ignored by strict readers, and the null the API answers is refused.
    ineffective = [
        schema
        for schema in _schemas_in(document["components"])
        if schema.get("nullable") and "type" not in schema and set(schema) - {"nullable", "description"}
    ]
    assert ineffective == []


def test_payload_filters_are_described_as_the_conditions_the_api_takes_and_answers(client, organization, document):
    # Described as "any JSON" they gave a generated client no type, and a document that let any
    # shape through: a condition without its op, say, which the API refuses.
    api = Api(client, document, make_key(organization)[1])
    create = "/api/v1/destinations"
    without_op = {"name": "Filtered", "url": "http://127.0.0.1:9/f", "payload_filters": [{"path": "type"}]}
    with pytest.raises(Mismatch, match=r"payload_filters\[0\].*op"):
        request_as_documented(document, without_op, create, "POST")
    response = client.post(create, without_op, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 400 and "payload_filters" in response.json()["fields"]
    unknown_op = {**without_op, "payload_filters": [{"path": "type", "op": "matches", "value": "x"}]}
    with pytest.raises(Mismatch, match="matches"):
        request_as_documented(document, unknown_op, create, "POST")
    # And an answer whose condition lost its op would no longer pass as documented.
    created = api.call("POST", create, {**without_op, "payload_filters": [{"path": "type", "op": "exists"}]}).json()
    del created["payload_filters"][0]["op"]
    with pytest.raises(Mismatch, match="op"):
        check(document, {"$ref": "#/components/schemas/DestinationCreated"}, created)


def _request_objects(document: dict, schema: dict, where: str):
    schema = _resolve(document, schema)
    for part in [*schema.get("allOf", ()), *schema.get("oneOf", ())]:
        yield from _request_objects(document, part, where)
    if schema.get("type") == "object" and "properties" in schema:
        yield where, schema
        for name, field in schema["properties"].items():
            yield from _request_objects(document, field, f"{where}.{name}")
    if "items" in schema:
        yield from _request_objects(document, schema["items"], f"{where}[]")


def test_every_object_a_request_sends_is_closed_as_the_api_refuses_other_names(document):
    # The API refuses a name it does not take, in a body and in the objects within it (a payload
    # filter's condition takes path, op and value: "unknown field"); a client checking its request
    # against the document must find the same refusal there, nested objects included.
    open_objects = [
        (method, path, where)
        for path, operations in document["paths"].items()
        for method, described in operations.items()
        if "requestBody" in described
        for where, schema in _request_objects(
            document, described["requestBody"]["content"]["application/json"]["schema"], "$"
        )
        if schema.get("additionalProperties") is not False
    ]
    assert open_objects == []


def test_a_payload_filter_condition_is_bounded_in_the_document_as_in_the_api(client, organization, document):
    api = Api(client, document, make_key(organization)[1])
    create = "/api/v1/destinations"
    body = {"name": "Filtered", "url": "http://127.0.0.1:9/f"}
    extra = {**body, "payload_filters": [{"path": "type", "op": "exists", "note": "x"}]}
    response = client.post(create, extra, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 400 and "note" in response.json()["fields"]["payload_filters"][0]
    schema = _resolve(document, {"$ref": "#/components/schemas/PayloadFilterRequest"})
    assert schema["additionalProperties"] is False
    assert schema["properties"]["path"]["maxLength"] == MAX_PATH_CHARS
    at_bound = {**body, "payload_filters": [{"path": "a" * MAX_PATH_CHARS, "op": "exists"}]}
    request_as_documented(document, at_bound, create, "POST")
    assert api.call("POST", create, at_bound).status_code == 201
    past = {**body, "payload_filters": [{"path": "a" * (MAX_PATH_CHARS + 1), "op": "exists"}]}
    response = client.post(create, past, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 400 and "payload_filters" in response.json()["fields"]


def test_custom_header_values_are_described_as_text(client, organization, document, world):
    # The service refuses a value that is not text; a PATCH also takes null (the header removed).
    api = Api(client, document, make_key(organization)[1])
    create = "/api/v1/destinations"
    numeric = {"name": "Headers", "url": "http://127.0.0.1:9/h", "custom_headers": {"X-Team": 5}}
    with pytest.raises(Mismatch, match="X-Team"):
        request_as_documented(document, numeric, create, "POST")
    response = client.post(create, numeric, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 400 and "custom_headers" in response.json()["fields"]
    null = {**numeric, "custom_headers": {"X-Team": None}}
    with pytest.raises(Mismatch, match="X-Team"):
        request_as_documented(document, null, create, "POST")
    response = client.post(create, null, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 400
    assert response.json()["fields"]["custom_headers"] == ["the value of “X-Team” must be text"]
    changed = api.call(
        "PATCH",
        "/api/v1/destinations/{destination_id}",
        {"custom_headers": {"Authorization": None, "X-Team": "billing"}},
        destination_id=world["destination"].pk,
    ).json()
    assert [header["name"] for header in changed["custom_headers"]] == ["X-Team"]


DAY = 86400
_EXISTS = {"path": "type", "op": "exists"}


def _networks(count: int) -> list[str]:
    return [f"10.0.{number // 256}.{number % 256}/32" for number in range(count)]


# Each bound a request value has: the field, where in its component the document states it, the
# service's constant it must be, and a value at the bound (taken) and one past it (refused).
REQUEST_BOUNDS = [
    ("max_concurrency", ["minimum"], Destination.MIN_CONCURRENCY, 1, 0),
    ("max_concurrency", ["maximum"], Destination.MAX_CONCURRENCY, 50, 51),
    ("rate_limit_per_second", ["minimum"], Destination.MIN_RATE_LIMIT_PER_SECOND, 1, 0),
    ("rate_limit_per_second", ["maximum"], Destination.MAX_RATE_LIMIT_PER_SECOND, 1000, 1001),
    ("max_retry_age_seconds", ["minimum"], Destination.MIN_RETRY_AGE_SECONDS, 60, 59),
    ("max_retry_age_seconds", ["maximum"], Destination.MAX_RETRY_AGE_SECONDS, 30 * DAY, 30 * DAY + 1),
    ("max_attempts", ["minimum"], MIN_ATTEMPTS, 1, 0),
    # With the longest schedule a destination may have (sent along, ALONG_WITH): 20 waits, 21 attempts.
    ("max_attempts", ["maximum"], max_attempts_with_any_schedule(), 21, 22),
    ("timeout_seconds", ["minimum"], Destination.MIN_TIMEOUT_SECONDS, 1, 0.99),
    ("timeout_seconds", ["maximum"], Destination.MAX_TIMEOUT_SECONDS, 60, 60.01),
    ("retry_schedule", ["minItems"], 1, [5], []),
    ("retry_schedule", ["maxItems"], Destination.MAX_RETRY_SCHEDULE_STEPS, [5] * 20, [5] * 21),
    ("retry_schedule", ["items", "minimum"], Destination.MIN_RETRY_WAIT_SECONDS, [5], [4]),
    ("retry_schedule", ["items", "maximum"], Destination.MAX_RETRY_WAIT_SECONDS, [7 * DAY], [7 * DAY + 1]),
    ("payload_filters", ["maxItems"], MAX_PAYLOAD_FILTERS, [_EXISTS] * 10, [_EXISTS] * 11),
    ("name", ["maxLength"], Destination._meta.get_field("name").max_length, "n" * 200, "n" * 201),
]


# What a bound holds only with: sent in the same request, at the bound and past it.
ALONG_WITH = {("max_attempts", "maximum"): {"retry_schedule": [5] * Destination.MAX_RETRY_SCHEDULE_STEPS}}


def _event_type_item_schema(document: dict, component: str) -> dict:
    return document["components"]["schemas"][component]["properties"]["event_types"]["items"]


# Each at, under or past the bound, with surrounding spaces (cut: they do not count) or inner ones.
EVENT_TYPE_PATTERNS = [
    "a" * MAX_EVENT_TYPE_PATTERN_CHARS,
    "a" * (MAX_EVENT_TYPE_PATTERN_CHARS + 1),
    "  " + "a" * MAX_EVENT_TYPE_PATTERN_CHARS + "\t",
    " " + "a" * (MAX_EVENT_TYPE_PATTERN_CHARS + 1) + " ",
    "\u3000invoice.*\u2003",
    "invoice paid",
    "invoice.\u00a0paid",
    "   ",
    "\ufeffinvoice.*",  # not a space to the API: a character of the pattern
    "invoice\x00",
]


class TestRequestValuesAgainstOneWorld:
    """Many requests' values, each its own test, against one organization and world: made once for
    the class, in a transaction that is never committed. Each test runs in a savepoint of it
    (pytest-django's own transaction, nested), so what a test changes is undone before the next."""

    @pytest.fixture(scope="class")
    @classmethod
    def _one_world(cls, django_db_setup, django_db_blocker):
        with django_db_blocker.unblock():
            atomic = transaction.atomic()
            atomic.__enter__()
            try:
                organization = organization_create(name="Acme", slug="acme", owner_email="owner@acme.example")
                made = (organization, make_world(organization))
            except BaseException:
                atomic.__exit__(None, None, None)
                raise
        yield made
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)

    @pytest.fixture
    def organization(self, _one_world, db):
        assert connection.in_atomic_block
        return _one_world[0]

    @pytest.fixture
    def world(self, _one_world, db):
        return _one_world[1]

    @pytest.mark.parametrize("component", ["DestinationCreateRequest", "PatchedDestinationUpdateRequest"])
    @pytest.mark.parametrize(("field", "where", "constant", "at_bound", "past_bound"), REQUEST_BOUNDS)
    def test_request_bounds_are_in_the_document_as_the_api_enforces_them(
        self, client, organization, document, world, component, field, where, constant, at_bound, past_bound
    ):
        # A generated client checks values before it sends them only if the document states the bounds,
        # and only rightly if they are the ones the services enforce.
        stated = document["components"]["schemas"][component]["properties"][field]
        for key in where:
            stated = stated[key]
        assert stated == constant, (component, field, where)
        api = Api(client, document, make_key(organization)[1])
        source = world["source"].pk
        along = ALONG_WITH.get((field, where[-1]), {})
        for value, status in ((at_bound, 201), (past_bound, 400)):
            if component == "DestinationCreateRequest":
                body = {"name": "Bounded", "url": "http://127.0.0.1:9/b", "sources": [source], **along, field: value}
                response = api.call("POST", "/api/v1/destinations", body)
            else:
                status = 200 if status == 201 else status
                response = api.call(
                    "PATCH",
                    "/api/v1/destinations/{destination_id}",
                    {**along, field: value},
                    destination_id=world["destination"].pk,
                )
            assert response.status_code == status, (field, value, response.content)
            if status == 400:
                assert list(response.json()["fields"]) == [field], response.content

    def test_max_attempts_past_the_longest_schedule_is_refused_whatever_the_schedule(
        self, client, organization, document, world
    ):
        # The document's maximum is the most any request is allowed: one attempt more than the longest
        # schedule is refused with it, and so is the maximum with the platform's (shorter) schedule.
        api = Api(client, document, make_key(organization)[1])
        most = document["components"]["schemas"]["PatchedDestinationUpdateRequest"]["properties"]["max_attempts"][
            "maximum"
        ]
        longest = [5] * Destination.MAX_RETRY_SCHEDULE_STEPS
        path, destination_id = "/api/v1/destinations/{destination_id}", world["destination"].pk
        for body, status in (
            ({"retry_schedule": longest, "max_attempts": most}, 200),
            ({"retry_schedule": longest, "max_attempts": most + 1}, 400),
            ({"retry_schedule": None, "max_attempts": most}, 400),
            ({"retry_schedule": None, "max_attempts": len(settings.DELIVERY_RETRY_SCHEDULE) + 1}, 200),
        ):
            assert api.call("PATCH", path, body, destination_id=destination_id).status_code == status, body

    @pytest.mark.parametrize("component", ["DestinationCreateRequest", "PatchedDestinationUpdateRequest"])
    @pytest.mark.parametrize("pattern", EVENT_TYPE_PATTERNS, ids=range(len(EVENT_TYPE_PATTERNS)))
    def test_the_event_type_patterns_the_api_takes_are_the_ones_the_document_allows(
        self, client, organization, document, world, component, pattern
    ):
        # Surrounding spaces are cut before the length is checked: a maxLength, which counts them, refused
        # patterns the API takes. The document's pattern must allow exactly what the API takes.
        schema = _event_type_item_schema(document, component)
        assert "maxLength" not in schema
        api = Api(client, document, make_key(organization)[1])
        if component == "DestinationCreateRequest":
            body = {"name": "Filtered", "url": "http://127.0.0.1:9/f", "sources": [world["source"].pk]}
            response = api.call("POST", "/api/v1/destinations", {**body, "event_types": [pattern]})
        else:
            response = api.call(
                "PATCH",
                "/api/v1/destinations/{destination_id}",
                {"event_types": [pattern]},
                destination_id=world["destination"].pk,
            )
        assert response.status_code in (200, 201, 400), response.content
        taken = response.status_code != 400
        if not taken:
            assert list(response.json()["fields"]) == ["event_types"], response.content
        assert bool(re.search(schema["pattern"], pattern)) == taken, (pattern[:12], response.content)

    def test_the_timeout_says_the_cap_this_server_puts_on_it(self, document):
        description = document["components"]["schemas"]["DestinationCreateRequest"]["properties"]["timeout_seconds"][
            "description"
        ]
        assert f"DELIVERY_MAX_TIMEOUT_SECONDS ({settings.DELIVERY_MAX_TIMEOUT_SECONDS:g} " in description

    @pytest.mark.parametrize(("count", "status"), [(MAX_ALLOWED_NETWORKS, 200), (MAX_ALLOWED_NETWORKS + 1, 400)])
    def test_a_sources_allowed_networks_are_bounded_in_the_document_as_in_the_api(
        self, client, organization, document, world, count, status
    ):
        for component in ("SourceCreateRequest", "PatchedSourceUpdateRequest"):
            assert document["components"]["schemas"][component]["properties"]["allowed_networks"]["maxItems"] == (
                MAX_ALLOWED_NETWORKS
            )
        api = Api(client, document, make_key(organization)[1])
        response = api.call(
            "PATCH", "/api/v1/sources/{source_id}", {"allowed_networks": _networks(count)}, source_id=world["source"].pk
        )
        assert response.status_code == status, response.content
        if status == 400:
            assert list(response.json()["fields"]) == ["allowed_networks"]


# Every place a request gives a time: the lists' filters (rejected requests are the event list's
# status=rejected) and a bulk retry's range, in its body.
TIME_INPUTS = [
    ("/api/v1/events", "received_after", {}),
    ("/api/v1/events", "received_before", {"status": "rejected"}),
    ("/api/v1/deliveries", "received_after", {}),
    ("/api/v1/deliveries", "received_before", {"status": "dead"}),
    ("/api/v1/deliveries/retry", "received_after", {}),
    ("/api/v1/deliveries/retry", "received_before", {}),
]


def _time_input_schema(document: dict, template: str, field: str) -> dict:
    if template == "/api/v1/deliveries/retry":
        body = operation(document, template, "POST")["requestBody"]["content"]["application/json"]["schema"]
        return _resolve(document, body)["properties"][field]
    [parameter] = [
        parameter for parameter in operation(document, template, "GET")["parameters"] if parameter["name"] == field
    ]
    return {**parameter["schema"], "description": parameter["description"]}


def _send_time(api: Api, template: str, field: str, value: str, others: dict):
    if template == "/api/v1/deliveries/retry":
        return api.call("POST", template, {**others, field: value})
    return api.call("GET", template, query={**others, field: value})


@pytest.mark.parametrize(("template", "field", "others"), TIME_INPUTS)
def test_every_time_a_request_gives_is_taken_as_the_document_says(
    client, organization, document, template, field, others
):
    # The document says date-time (RFC 3339: an offset required); the API read a time without one in
    # the server's zone, and other ISO 8601 spellings, without a word. Now it takes what the document
    # describes (and a date alone, described as midnight UTC) and refuses the rest with a 400 on the field.
    schema = _time_input_schema(document, template, field)
    assert schema["format"] == "date-time" and "without an offset is refused" in schema["description"]
    assert "a date alone, 2026-12-01, for midnight UTC" in schema["description"]
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/t", sources=[source])
    # One event (with a dead delivery) a second before the date, one at its first instant; the
    # rejected-requests list's are rejected.
    status = WebhookEvent.Status.REJECTED if others.get("status") == "rejected" else WebhookEvent.Status.PROCESSED
    for received in ("2026-11-30T23:59:59Z", "2026-12-01T00:00:00Z"):
        event = make_event(source, received_at=datetime.fromisoformat(received), status=status)
        make_delivery(event, destination)
    api = Api(client, document, make_key(organization)[1])
    for naive in ("2026-12-01T10:00:00", "2026-12-01T10:00", "2026-12-01 10:00:00.5"):
        refused = _send_time(api, template, field, naive, others)
        assert refused.status_code == 400, (naive, refused.content)
        [problem] = refused.json()["fields"][field]
        assert "needs its offset" in problem and "Z" in problem, problem
    for unlike_the_document in ("20261201T100000Z", "2026-W49-1", "2026-12-01T10:00:00+0200", "2026-12-01T24:00:00Z"):
        refused = _send_time(api, template, field, unlike_the_document, others)
        assert refused.status_code == 400, (unlike_the_document, refused.content)
        assert "RFC 3339" in refused.json()["fields"][field][0]
    for taken in ("2026-12-01T10:00:00Z", "2026-12-01T12:00:00+02:00", "2026-12-01t10:00z", "2026-12-01T10:00:00.123Z"):
        answer = _send_time(api, template, field, taken, others)
        assert answer.status_code in (200, 202, 409), (taken, answer.content)
        if template == "/api/v1/deliveries/retry" and answer.status_code == 202:
            BulkRetry.objects.all().delete()  # so that the next job is not refused as overlapping
    # A date alone is midnight UTC: the same range as written in full.
    if template == "/api/v1/deliveries/retry":
        job = _send_time(api, template, field, "2026-12-01", others)
        assert job.status_code == 202, job.content
        assert job.json()["filters"][field] == "2026-12-01T00:00:00Z"
    else:
        by_date = _send_time(api, template, field, "2026-12-01", others).json()["results"]
        in_full = _send_time(api, template, field, "2026-12-01T00:00:00Z", others).json()["results"]
        assert by_date == in_full and len(by_date) == 1


def test_every_time_field_of_a_request_is_read_by_the_apis_one_rule():
    # One grammar for every time a request gives: a new filter or body field of DRF's own
    # DateTimeField would take a time without an offset again.
    from webhooks.api import serializers as api_serializers
    from webhooks.api import serializers_manage

    requests = [
        value
        for module in (api_serializers, serializers_manage)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, api_serializers.KnownFieldsOnly)
    ]
    time_fields = {
        (serializer.__name__, name): type(field)
        for serializer in requests
        for name, field in serializer().fields.items()
        if isinstance(field, DateTimeField) and not field.read_only
    }
    assert len(time_fields) >= 6
    assert all(issubclass(kind, api_serializers.ApiDateTimeField) for kind in time_fields.values()), time_fields


def _idempotency_key_schema(document: dict) -> dict:
    [parameter] = [
        parameter
        for parameter in operation(document, "/api/v1/destinations/{destination_id}/pause", "POST")["parameters"]
        if parameter["name"] == "Idempotency-Key"
    ]
    return parameter["schema"]


def test_the_idempotency_keys_the_api_takes_are_the_ones_the_document_allows(client, organization, document, world):
    # A client that validates its parameters must neither refuse a key the API takes (one with a
    # space) nor send one the API refuses.
    schema = _idempotency_key_schema(document)
    key = make_key(organization)[1]
    path = f"/api/v1/destinations/{world['destination'].pk}/pause"
    # One space, or none, was allowed by the document ("^[ -~]+$"); HTTP drops the spaces around a
    # header's value, so such a key arrives empty and is refused.
    cases = [("pause billing 42", 200), ("tab\there", 400), ("caf\u00e9", 400), (" ", 400), ("", 400)]
    cases += [("x" * 255, 200), ("x" * 256, 400), ("~", 200), ("a b", 200)]
    for value, status in cases:
        response = client.post(
            path, {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY=value
        )
        assert response.status_code == status, (value, response.content)
        answer_as_documented(document, response, "/api/v1/destinations/{destination_id}/pause", "POST")
        allowed = bool(re.search(schema["pattern"], value)) and schema["minLength"] <= len(value) <= schema["maxLength"]
        assert allowed == (status == 200), value
    # Spaces around a key are no part of it, whichever server reads the request (gunicorn cuts them).
    padded = client.post(
        path, {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY=" a b\t"
    )
    assert padded.status_code == 200 and padded["Idempotent-Replayed"] == "true"
    # And README's account of the header states the document's pattern.
    assert f"`{schema['pattern']}`" in (ROOT / "README.md").read_text()


def test_refusals_answer_as_documented(client, organization, document, world):
    reader = Api(client, document, make_key(organization, access=ApiKey.Access.READ_ONLY)[1])
    writer = Api(client, document, make_key(organization)[1])
    nobody = Api(client, document, "hl_nosuch_key")
    assert nobody.call("GET", "/api/v1/events").status_code == 401
    assert reader.call("POST", "/api/v1/deliveries/retry", {}).status_code == 403
    assert reader.call("GET", "/api/v1/events", query={"destination_id": "3"}).status_code == 400
    assert reader.call("GET", "/api/v1/sources/{source_id}", query={"x": "1"}, source_id=1).status_code == 400
    assert reader.call("GET", "/api/v1/deliveries/{delivery_id}", delivery_id="nope").status_code == 404
    replay = writer.call("POST", "/api/v1/events/{event_id}/replay", {"destination": 999}, event_id=world["event"].pk)
    assert replay.status_code == 400
    response = client.post(
        "/api/v1/deliveries/retry",
        "destination=3",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Bearer {writer.key}",
    )
    assert response.status_code == 415
    answer_as_documented(document, response, "/api/v1/deliveries/retry", "POST")
    response = client.post(
        "/api/v1/deliveries/retry",
        "{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {writer.key}",
    )
    assert response.status_code == 400
    answer_as_documented(document, response, "/api/v1/deliveries/retry", "POST")
    response = client.get("/api/v1/events", HTTP_ACCEPT="text/html", HTTP_AUTHORIZATION=f"Bearer {reader.key}")
    assert response.status_code == 406
    answer_as_documented(document, response, "/api/v1/events", "GET")
    first = client.post(
        "/api/v1/deliveries/retry",
        {},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {writer.key}",
        HTTP_IDEMPOTENCY_KEY="same-key",
    )
    answer_as_documented(document, first, "/api/v1/deliveries/retry", "POST")
    reused = client.post(
        "/api/v1/deliveries/retry",
        {"destination": world["destination"].pk},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {writer.key}",
        HTTP_IDEMPOTENCY_KEY="same-key",
    )
    assert reused.status_code == 422
    answer_as_documented(document, reused, "/api/v1/deliveries/retry", "POST")
    assert {"Error", "InvalidRequest"} <= reader.components | writer.components | nobody.components


# --- The endpoint ----------------------------------------------------------------------------------


def test_the_document_is_read_without_a_key_as_json_or_yaml(client, db):
    response = client.get("/api/v1/schema")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response.json()["info"]["title"] == "Hookline REST API"
    # The API's headers stay: nothing to load, nothing to frame, no sniffing.
    assert response["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert response["X-Content-Type-Options"] == "nosniff"
    for asked in ({"HTTP_ACCEPT": "application/yaml"}, {"data": {"format": "yaml"}}):
        response = client.get("/api/v1/schema", **asked)
        assert response.status_code == 200
        assert response["Content-Type"].startswith(("application/yaml", "application/vnd.oai.openapi"))
        assert yaml.safe_load(response.content)["info"]["title"] == "Hookline REST API"


def test_a_client_built_on_the_documents_server_reaches_the_urls_the_api_answers(client, organization, document):
    # A generated client joins servers[0] and a path template; the Locations the API answers are
    # to be followed as they are, so both must name the same place.
    [server] = document["servers"]
    api = Api(client, document, make_key(organization)[1])
    created = api.call("POST", "/api/v1/sources", {"provider": "github", "name": "GitHub"})
    assert created["Location"] == server["url"] + f"/api/v1/sources/{created.json()['id']}"


def test_the_document_is_rendered_once_per_process_whoever_asks(client, db, monkeypatch):
    # Anyone may ask for it without a key, as often as they like: rendering its 280 kB anew for
    # each request (and HEAD) was the cost of an anonymous caller's loop.
    rendered = []
    for renderer in ApiSchemaView.renderer_classes:
        real_render = renderer.render

        def counted_render(self, *args, real_render=real_render, **kwargs):
            rendered.append(type(self).media_type)
            return real_render(self, *args, **kwargs)

        monkeypatch.setattr(renderer, "render", counted_render)
    schema_view.rendered_api_document.cache_clear()

    answers = [client.get("/api/v1/schema?format=yaml") for _ in range(3)]
    answers.append(client.head("/api/v1/schema?format=yaml"))
    assert rendered == ["application/vnd.oai.openapi"]
    assert answers[0].content == answers[1].content and yaml.safe_load(answers[0].content)["paths"]
    assert answers[0]["Content-Type"] == "application/vnd.oai.openapi; charset=utf-8"

    indented = [client.get("/api/v1/schema", HTTP_ACCEPT="application/json; indent=2") for _ in range(2)]
    plain = client.get("/api/v1/schema")
    assert rendered.count("application/json") == 2  # one per variant: indent 2, and the default (4)
    assert indented[0].json() == plain.json() and indented[0].content != plain.content
    assert indented[0]["Content-Type"] == plain["Content-Type"] == "application/json"


def test_the_document_endpoint_refuses_in_the_apis_error_shape(client, db):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="text/html")
    assert response.status_code == 406 and set(response.json()) == {"error", "detail"}
    response = client.post("/api/v1/schema")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_delivery_statuses_in_the_document_are_the_models(document):
    # The filter's enum comes from the model: a new status cannot be left out of it.
    [status] = [
        parameter
        for parameter in operation(document, "/api/v1/deliveries", "GET")["parameters"]
        if parameter["name"] == "status"
    ]
    assert set(_resolve(document, status["schema"])["enum"]) >= set(Delivery.Status.values)


def test_the_answers_enums_are_the_models_choices(document):
    # An answer's value missing from its enum is an error in a generated client: each enum is
    # made from the choices the stored value comes from.
    schemas = document["components"]["schemas"]
    assert schemas["DeliveryStatusEnum"]["enum"] == Delivery.Status.values
    assert schemas["EventStatusEnum"]["enum"] == WebhookEvent.Status.values
    assert schemas["ProviderEnum"]["enum"] == sorted(PROVIDERS)
    assert schemas["PayloadFilterOperatorEnum"]["enum"] == list(OPERATORS)


def test_every_enum_is_named_for_what_it_is_not_for_its_field_alone(document):
    # drf-spectacular names an enum after its field ("StateEnum") unless told: a generated client
    # then has a type that says nothing, and a second "state" field would rename it.
    schemas = document["components"]["schemas"]
    bare = {name for name in schemas if name in {"StateEnum", "StatusEnum", "TypeEnum", "KindEnum"}}
    assert not bare
    accepted = operation(document, "/api/v1/sources/{source_id}", "DELETE")["responses"]["202"]
    state = _resolve(document, accepted["content"]["application/json"]["schema"])["properties"]["state"]
    assert state == {"$ref": "#/components/schemas/SourceDeletionStateEnum"}
    assert _resolve(document, state)["enum"] == ["deleting"]
    accepted = operation(document, "/api/v1/destinations/{destination_id}", "DELETE")["responses"]["202"]
    state = _resolve(document, accepted["content"]["application/json"]["schema"])["properties"]["state"]
    assert state == {"$ref": "#/components/schemas/DestinationDeletionStateEnum"}
    assert _resolve(document, state)["enum"] == ["deleting"]


def test_component_names_say_each_word_once_and_request_only_as_their_suffix(document):
    # drf-spectacular adds "Request" to a request body's component: the bulk retry's serializer,
    # itself named …Request, became "BulkRetryRequestRequest" (and its enum "BulkRetryRequestStatusEnum"),
    # a type name each generated client carried.
    schemas = document["components"]["schemas"]
    for name in schemas:
        words = re.findall(r"[A-Z][a-z0-9]*", name)
        assert "".join(words) == name, name
        assert all(word != following for word, following in itertools.pairwise(words)), name
        assert "Request" not in words[:-1] and "Serializer" not in words, name
    body = operation(document, "/api/v1/deliveries/retry", "POST")["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/BulkRetryCreateRequest"}
    status = schemas["BulkRetryCreateRequest"]["properties"]["status"]
    assert status["allOf"] == [{"$ref": "#/components/schemas/BulkRetryDeliveryStatusEnum"}]
    assert schemas["BulkRetryDeliveryStatusEnum"]["enum"] == [Delivery.Status.DEAD]


# --- Refusals that need another request running: as documented ----------------------------------


@contextmanager
def table_locked(model):
    """Another session holds ``model``'s table in ACCESS EXCLUSIVE mode: a request that reads it
    waits there, holding what it took before (an Idempotency-Key, a body-search slot)."""
    database = connection.settings_dict
    with psycopg.connect(
        dbname=database["NAME"],
        user=database["USER"],
        host=database["HOST"] or "localhost",
        port=database["PORT"] or 5432,
        password=database["PASSWORD"] or None,
    ) as other:
        other.execute(f"LOCK TABLE {model._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            other.rollback()


def _in_thread(send):
    def run():
        try:
            return send()
        finally:
            connections.close_all()  # this thread's connection: the test database is dropped after

    return run


def _documents_code(document: dict, template: str, method: str, status: int, code: str) -> None:
    described = operation(document, template, method)["responses"][str(status)]
    assert f"({code})" in described["description"] or f" {code}" in described["description"], (template, code)
    if status in (409, 429, 503):
        assert "Retry-After" in described["headers"], (template, status)


def test_each_refusal_that_needs_a_running_request_is_documented_where_it_can_happen(document):
    for path, operations in document["paths"].items():
        for method in operations:
            if method == "post":
                _documents_code(document, path, method, 409, "idempotency_key_in_progress")
    _documents_code(document, "/api/v1/events", "GET", 429, "search_busy")
    _documents_code(document, "/api/v1/events", "GET", 503, "search_timed_out")


@pytest.mark.django_db(transaction=True)
def test_a_post_while_a_request_with_its_key_still_runs_is_the_documented_409(organization, world):
    document = Client().get("/api/v1/schema").json()
    key = make_key(organization)[1]
    template = "/api/v1/destinations/{destination_id}/pause"
    path = template.format(destination_id=world["destination"].pk)

    def pause():
        return Client().post(
            path, {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY="held"
        )

    with ThreadPoolExecutor(max_workers=1) as pool:
        with table_locked(Destination):
            first = pool.submit(_in_thread(pause))
            # Its key is taken (committed) before it reads the destination, where it waits.
            assert wait_until(lambda: IdempotencyKey.objects.filter(key="held").exists(), timeout=30)
            during = pause()
        first = first.result(timeout=60)
    assert during.status_code == 409 and during.json()["error"] == "idempotency_key_in_progress"
    assert during["Retry-After"] == "1"
    answer_as_documented(document, during, template, "POST")
    assert first.status_code == 200
    answer_as_documented(document, first, template, "POST")


@pytest.mark.django_db(transaction=True)
def test_a_body_search_stopped_by_the_databases_timeout_is_the_documented_503(organization, settings):
    settings.BODY_SEARCH_TIMEOUT_SECONDS = 0.2
    document = Client().get("/api/v1/schema").json()
    make_event(make_source(organization), body=b'{"customer": "cus_ABC123"}')
    api = Api(Client(), document, make_key(organization, access=ApiKey.Access.READ_ONLY)[1])
    with events_table_locked():  # PostgreSQL's statement_timeout stops the search waiting there
        response = api.call("GET", "/api/v1/events", query={"body_contains": "cus_ABC123"})
    assert response.status_code == 503 and response.json()["error"] == "search_timed_out"


@pytest.mark.django_db(transaction=True)
def test_a_body_search_while_another_runs_past_the_bound_is_the_documented_429(organization, settings):
    settings.BODY_SEARCH_CONCURRENCY = 1
    # Long enough that the waiting search is not stopped by its own timeout on a slow machine.
    settings.BODY_SEARCH_TIMEOUT_SECONDS = 60
    document = Client().get("/api/v1/schema").json()
    make_event(make_source(organization), body=b'{"customer": "cus_ABC123"}')
    api = Api(Client(), document, make_key(organization, access=ApiKey.Access.READ_ONLY)[1])
    search = {"body_contains": "cus_ABC123"}
    with ThreadPoolExecutor(max_workers=1) as pool:
        with table_locked(WebhookEvent):
            first = pool.submit(_in_thread(lambda: api.client.get("/api/v1/events", search, **api.headers())))
            # Its slot is taken before it reads the events, where it waits.
            assert wait_until(lambda: cache.get(body_search_slots._slot_key(organization.pk, 0)) is not None, 30)
            response = api.call("GET", "/api/v1/events", query=search)
        first = first.result(timeout=60)
    assert response.status_code == 429 and response.json()["error"] == "search_busy"
    assert int(response["Retry-After"]) >= 1
    assert first.status_code == 200 and len(first.json()["results"]) == 1
    answer_as_documented(document, first, "/api/v1/events", "GET")


# --- Paths: a trailing slash, and those that are no endpoint ----------------------------------------


def test_every_documented_path_answers_the_same_with_a_trailing_slash(client, organization, document, world):
    # The document writes each path without one; a client (or its generator) that adds one must
    # reach the same endpoint, not the catch-all 404.
    assert "A trailing slash on a path is optional" in document["info"]["description"]
    api = Api(client, document, make_key(organization)[1])
    ids = {
        "event_id": world["event"].pk,
        "delivery_id": world["delivery"].pk,
        "source_id": world["source"].pk,
        "destination_id": world["destination"].pk,
        "job_id": api.call("POST", "/api/v1/deliveries/retry", {}).json()["id"],
    }
    reads = [(path, operations) for path, operations in document["paths"].items() if "get" in operations]
    assert len(reads) >= 10
    for template in (path for path, _ in reads):
        path = template.format(**ids)
        plain = client.get(path, **api.headers())
        slashed = client.get(path + "/", **api.headers())
        assert plain.status_code == slashed.status_code == 200, (path, slashed.content)
        assert slashed.json() == plain.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/events//"),
        ("get", "/api/v1/"),
        ("get", "/api/v1"),
        ("get", "/api/"),
        ("get", "/api"),
        ("get", "/api/v2/events"),
        ("get", "/api/v1/event"),
        ("post", "/api/v1/deliveries/retry/now"),
        ("delete", "/api/v1/sources/1/rotate_secret/x"),
    ],
)
def test_a_path_under_api_that_is_no_endpoint_is_the_apis_json_404_never_cached(client, organization, method, path):
    for headers in ({}, {"HTTP_AUTHORIZATION": f"Bearer {make_key(organization)[1]}"}):
        response = getattr(client, method)(path, **headers)
        assert response.status_code == 404 and response["Content-Type"] == "application/json"
        assert response.json() == {"error": "not_found", "detail": "no such endpoint"}
        assert "no-store" in response["Cache-Control"], path


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("path", ["/api/v1/sources/1/rotate-secret", "/api/v2/events", "/api/v1/destination"])
def test_a_write_to_a_path_under_api_that_is_no_endpoint_is_the_json_404_not_the_csrf_page(organization, method, path):
    # A script's POST carries no CSRF token: Django's test client skips that check unless told,
    # and without it a typo in a write's path answered 403 with the dashboard's HTML "Form not sent".
    client = Client(enforce_csrf_checks=True)
    for headers in ({}, {"HTTP_AUTHORIZATION": f"Bearer {make_key(organization)[1]}"}):
        response = getattr(client, method)(path, data="{}", content_type="application/json", **headers)
        assert response.status_code == 404 and response["Content-Type"] == "application/json", response.content[:80]
        assert response.json() == {"error": "not_found", "detail": "no such endpoint"}
