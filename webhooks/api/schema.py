"""The OpenAPI 3 description of /api/v1/, served at /api/v1/schema (drf-spectacular).

Each view says what it takes and answers with ``extend_schema``; what every view shares (the key's
refusals, the error shape, ``Idempotency-Key`` on POSTs, the body's refusals) is added here, by
``ApiAutoSchema``, so that no endpoint can be described without them. The tests compare the
document with real answers (webhooks/tests/test_api_schema.py).
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_basic_type
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from gunicorn.config import LimitRequestLine
from rest_framework import serializers

from organizations.idempotency import KEY_PATTERN, MAX_KEY_LENGTH
from webhooks.models import Destination
from webhooks.selectors import BODY_SEARCH_MAX_BYTES, BODY_SEARCH_MIN_BYTES
from webhooks.services.delivery_waits import DELIVERY_WAITS
from webhooks.services.destinations import (
    MAX_EVENT_TYPE_PATTERN_CHARS,
    MIN_ATTEMPTS,
    max_attempts_allowed,
    max_attempts_with_any_schedule,
)
from webhooks.services.payload_filters import MAX_PATH_CHARS, MAX_PAYLOAD_FILTERS
from webhooks.services.source_networks import MAX_ALLOWED_NETWORKS

from .idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER
from .serializers import DestinationSerializer, SourceSerializer
from .serializers_manage import AllowedNetworksMixin, DestinationSerializerBase

API_PREFIX = "/api/v1/"


# --- Errors -------------------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="A code that names the error, such as not_found or rate_limited.")
    detail = serializers.CharField(help_text="What went wrong, in a sentence.")


class InvalidRequestSerializer(ErrorSerializer):
    # Declared fields leave the class attribute to DRF's metaclass: "fields" here is the JSON key.
    fields = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text="Each refused field, query parameter or body name with what is wrong with it "
        "(error invalid); absent on a body that is not JSON (invalid_json), a malformed "
        "Idempotency-Key (invalid_idempotency_key) or too many query parameters (bad_request).",
    )


def error(description: str, serializer=ErrorSerializer) -> OpenApiResponse:
    return OpenApiResponse(serializer, description=description)


def conflict(description: str) -> dict:
    """A view's own 409, added to the one every POST may answer (an Idempotency-Key in use)."""
    return {409: error(description)}


# --- Parameters -----------------------------------------------------------------------------------


def path_id(name: str, kind) -> OpenApiParameter:
    return OpenApiParameter(name, kind, OpenApiParameter.PATH)


EVENT_ID = path_id("event_id", OpenApiTypes.UUID)
DELIVERY_ID = path_id("delivery_id", OpenApiTypes.UUID)
BULK_RETRY_ID = path_id("job_id", OpenApiTypes.INT)
SOURCE_ID = path_id("source_id", OpenApiTypes.INT)
DESTINATION_ID = path_id("destination_id", OpenApiTypes.INT)

_IDEMPOTENCY_KEY = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    # The keys organizations.idempotency takes, from its own pattern and length.
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": f"^{KEY_PATTERN}$"},
    OpenApiParameter.HEADER,
    description=f"1 to {MAX_KEY_LENGTH} printable ASCII characters, spaces only between them (HTTP drops those "
    "around a header's value: a key of spaces arrives empty, and is a 400 invalid_idempotency_key); a UUID per "
    "operation is best. The request "
    "runs once, and the same request sent again with the same key gets the first answer again, with "
    "Idempotent-Replayed: true. A server error (5xx) is not kept: the request did nothing (its changes are "
    "committed with its answer or not at all) and a retry with the same key runs. Nor is a 429 (send it again "
    "after Retry-After).",
)
_REPLAYED = OpenApiParameter(
    REPLAYED_HEADER,
    {"type": "string", "enum": ["true"]},
    OpenApiParameter.HEADER,
    response=True,
    description="The answer kept for the Idempotency-Key, sent again; the request did not run again.",
)
_LOCATION = OpenApiParameter(
    "Location",
    {"type": "string", "format": "uri"},
    OpenApiParameter.HEADER,
    response=[201, 202],
    description="The absolute URL of what was made or queued, to follow as it is.",
)
_RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[409, 429, 503],
    description=("Seconds to wait before sending it again (on a 409 only for idempotency_key_in_progress)."),
)
_WWW_AUTHENTICATE = OpenApiParameter(
    "WWW-Authenticate", {"type": "string", "enum": ['Bearer realm="api"']}, OpenApiParameter.HEADER, response=[401]
)
_LINK = OpenApiParameter(
    "Link",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200],
    description='The next and previous pages (RFC 8288, rel="next" and rel="prev"); absent on a single page.',
)


# --- The schema of each operation ---------------------------------------------------------------


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema with what every /api/v1/ view shares (webhooks.api.authentication)."""

    def get_description(self) -> str:
        # A view's docstring is written for who changes the code; an operation says its own.
        return ""

    def _takes_body(self) -> bool:
        return self.method in ("POST", "PATCH")

    def _is_list(self) -> bool:
        return self.method == "GET" and self._is_list_view()

    def get_override_parameters(self):
        parameters = [*super().get_override_parameters(), _RETRY_AFTER, _WWW_AUTHENTICATE]
        if self.method == "POST":
            parameters += [_IDEMPOTENCY_KEY, _REPLAYED, _LOCATION]
        if self._is_list():
            parameters.append(_LINK)
        return parameters

    def _shared_errors(self) -> dict[int, OpenApiResponse]:
        refusals = {
            400: error(
                "The request is not valid: a query parameter or body field refused or not taken, named in fields."
                if self._takes_body() or self._is_list()
                else "The request is not valid: this request takes no query parameters"
                + (", and no body but {} (a field in it is named in fields)." if self.method == "DELETE" else "."),
                InvalidRequestSerializer,
            ),
            401: error("No API key, or a malformed, unknown or revoked one (invalid_api_key, not_authenticated)."),
            406: error("The Accept header names no type the API answers in: it answers JSON (not_acceptable)."),
            403: error(
                "The organization is suspended or being deleted (organization_inactive)"
                + ("; or the key is read-only (read_only_key)." if self.method not in ("GET", "HEAD") else ".")
            ),
            429: error(
                "Past the key's API_RATE_LIMIT, or past API_AUTH_FAILURE_LIMIT wrong keys from this address "
                "(rate_limited)."
            ),
        }
        if self._is_list():
            # Answered by gunicorn before Django sees the request (config/gunicorn.conf.py writes it
            # in the API's error shape): filters, an event_type pattern list or a cursor can reach it.
            refusals[414] = error(
                f"The request line (method, path and query string) is longer than the server's "
                f"{LimitRequestLine.default:,} bytes (request_line_too_long): shorten the filters, "
                "or narrow the list in several requests."
            )
        if "{" in self.path:
            refusals[404] = error("The organization has no such object (another organization's included).")
        if self._takes_body():
            refusals[413] = error("The body is larger than the API takes (request_too_large).")
            refusals[415] = error("The body is not sent as JSON (unsupported_media_type).")
        if self._takes_body():
            refusals[503] = error(
                "A stored secret this request needs (the current signing secret, which a rotation keeps for its "
                "overlap) is encrypted with a key this server does not have yet (a new FIELD_ENCRYPTION_KEYS is "
                "being deployed): nothing was changed; send it again after Retry-After (secret_unreadable)."
                + (
                    " Or the answer stored for this Idempotency-Key is, and nothing was run (stored_answer_unreadable)."
                    if self.method == "POST"
                    else ""
                )
            )
        if self.method == "POST":
            refusals[409] = error(
                "A request with this Idempotency-Key still runs, or one with it took this request over as lost "
                "(it ran past 5 minutes) and this one did nothing (idempotency_key_in_progress)."
            )
            refusals[422] = error(
                "This Idempotency-Key was used for another request (idempotency_key_reused): send a new key."
            )
        return refusals

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code, response in self._shared_errors().items():
            shared = self._get_response_for_code(response, str(code), direction=direction)
            if str(code) in responses:  # the view's own reason too
                own = responses[str(code)]["description"]
                responses[str(code)]["description"] = f"{shared['description']} Or: {own}"
            else:
                responses[str(code)] = shared
        return dict(sorted(responses.items()))


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "webhooks.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "hl_<prefix>_<secret>",
            "description": "An organization's API key, as Authorization: Bearer hl_<prefix>_<secret>. A read-only "
            "key reads; a read-and-write key also changes, and sees signature headers and full destination URLs.",
        }


# --- Bounds of request values ---------------------------------------------------------------------
# The services check these (so the dashboard, the admin and the commands refuse the same values with
# the same words), not the serializers' fields, which drf-spectacular reads bounds from: they are
# added here, from the services' own constants, for a client to check before it sends.


def _character_class(characters: list[str]) -> str:
    """A regular expression's class body (ECMA-262 and Python alike) naming ``characters``, as ranges."""
    ranges: list[list[int]] = []
    for code in sorted(ord(character) for character in characters):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    escaped = [(f"\\u{low:04x}", f"\\u{high:04x}") for low, high in ranges]
    return "".join(low if low == high else f"{low}-{high}" for low, high in escaped)


# What the API cuts from both ends of a text value before checking it (DRF's CharField and the services
# alike: Python's str.strip()), spelled out: a pattern's \s is not the same set in every language.
_SPACES = _character_class([chr(code) for code in range(0x3100) if chr(code).isspace()])


def _event_type_pattern_item() -> dict:
    """One event-type pattern as the API takes it: surrounding spaces are cut, then at most
    MAX_EVENT_TYPE_PATTERN_CHARS characters and none of them a space; a blank one is left out. As a
    pattern, not a maxLength: the spaces cut do not count (nor does a NUL, which DRF refuses)."""
    return {
        "pattern": f"^[{_SPACES}]*(?:[^{_SPACES}\\u0000]{{1,{MAX_EVENT_TYPE_PATTERN_CHARS}}}[{_SPACES}]*)?$",
        "description": f"An event-type pattern (* matches any characters): at most {MAX_EVENT_TYPE_PATTERN_CHARS} "
        "characters, no spaces; spaces around it are cut, and a blank one is left out. A “[” must be closed.",
    }


def _destination_bounds() -> dict[str, dict]:
    # Read when the document is built (once per process): the settings' values then.
    timeout = (
        f"Seconds an attempt waits for the answer, from {Destination.MIN_TIMEOUT_SECONDS:g} to "
        f"{Destination.MAX_TIMEOUT_SECONDS:g}. Attempts wait at most this server's DELIVERY_MAX_TIMEOUT_SECONDS "
        f"({settings.DELIVERY_MAX_TIMEOUT_SECONDS:g} when this document was built), whatever is set here."
    )
    return {
        "timeout_seconds": {"description": timeout},
        "event_types": {"items": _event_type_pattern_item()},
        "max_concurrency": {"minimum": Destination.MIN_CONCURRENCY, "maximum": Destination.MAX_CONCURRENCY},
        "rate_limit_per_second": {
            "minimum": Destination.MIN_RATE_LIMIT_PER_SECOND,
            "maximum": Destination.MAX_RATE_LIMIT_PER_SECOND,
        },
        "retry_schedule": {
            "minItems": 1,
            "maxItems": Destination.MAX_RETRY_SCHEDULE_STEPS,
            "items": {"minimum": Destination.MIN_RETRY_WAIT_SECONDS, "maximum": Destination.MAX_RETRY_WAIT_SECONDS},
            "description": "Seconds to wait before each retry, in order; null for the platform's schedule. "
            f"At most {Destination.MAX_RETRY_SCHEDULE_SECONDS} seconds in all.",
        },
        "max_attempts": {
            "minimum": MIN_ATTEMPTS,
            # With the longest retry schedule a destination may have: shorter schedules allow fewer.
            "maximum": max_attempts_with_any_schedule(),
            "description": "Attempts in all, the first included; null for every step of the retry schedule. At "
            "most one more than the retry schedule has waits (the destination's own schedule, or the platform's: "
            f"{max_attempts_allowed()} attempts when this document was built), so at most "
            f"{max_attempts_with_any_schedule()} with the longest schedule.",
        },
        "max_retry_age_seconds": {
            "minimum": Destination.MIN_RETRY_AGE_SECONDS,
            "maximum": Destination.MAX_RETRY_AGE_SECONDS,
        },
        "payload_filters": {"maxItems": MAX_PAYLOAD_FILTERS},
    }


def _request_bounds(serializer_class) -> dict[str, dict]:
    if issubclass(serializer_class, DestinationSerializerBase):
        return _destination_bounds()
    if issubclass(serializer_class, AllowedNetworksMixin):
        return {"allowed_networks": {"maxItems": MAX_ALLOWED_NETWORKS}}
    return {}


def _add_bounds(properties: dict, bounds: dict[str, dict]) -> None:
    for name, bound in bounds.items():
        if name not in properties:
            continue
        target = properties[name]
        # A field described by reference (payload_filters' list of conditions) keeps its reference.
        if "items" in bound:
            target["items"] = {**target["items"], **bound["items"]}
        target.update({key: value for key, value in bound.items() if key != "items"})


class KnownFieldsOnlySchema(OpenApiSerializerExtension):
    """A body takes its fields and no other name (KnownFieldsOnly refuses the others with a 400)."""

    target_class = "webhooks.api.serializers.KnownFieldsOnly"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        mapped = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            mapped["additionalProperties"] = False
            serializer_class = self.target if isinstance(self.target, type) else type(self.target)
            _add_bounds(mapped["properties"], _request_bounds(serializer_class))
        return mapped


class PayloadFilterConditionSchema(OpenApiSerializerExtension):
    """A condition takes path, op and value and no other name (check_payload_filters refuses
    "unknown field" with a 400), and a path of at most MAX_PATH_CHARS characters."""

    target_class = "webhooks.api.serializers.PayloadFilterSerializer"

    def map_serializer(self, auto_schema, direction):
        mapped = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            mapped["additionalProperties"] = False
            mapped["properties"]["path"]["maxLength"] = MAX_PATH_CHARS
        return mapped


def _body_search_text_pattern() -> str:
    """The body_contains values the list takes, as a pattern: surrounding spaces are cut (DRF's
    CharField), a NUL is refused, and what is left must be BODY_SEARCH_MIN_BYTES (3) bytes of UTF-8 or
    more. A minLength counts characters, and a generated client sent "ab" or " ab ", always a 400: in
    characters, 3 bytes is 3 characters or more, 2 with one not ASCII (2 bytes or more), or 1 at
    U+0800 or above (3 bytes). An astral character is 4 bytes: one character here, two UTF-16 code
    units (both non-ASCII) to a pattern without the u flag, so either way it is taken."""
    if BODY_SEARCH_MIN_BYTES != 3:  # the alternatives below spell out 3 bytes
        raise RuntimeError("body_contains' pattern spells out a minimum of 3 bytes: write it for the new one")
    visible = f"[^{_SPACES}\u0000]"
    not_ascii = f"[^\u0000-\u007f{_SPACES}]"
    three_bytes = f"[^\u0000-\u07ff{_SPACES}]"
    core = f"{visible}[^\u0000]+{visible}|{visible}{not_ascii}|{not_ascii}{visible}|{three_bytes}"
    return f"^[{_SPACES}]*(?:{core})[{_SPACES}]*$"


class BodySearchTextSchema(OpenApiSerializerFieldExtension):
    """body_contains: its lower bound as a pattern, its upper one as a maxLength (at most 200 bytes
    is at most 200 characters) and the rest in words: one character may be up to 4 bytes."""

    target_class = "webhooks.api.serializers.BodySearchTextField"

    def map_serializer_field(self, auto_schema, direction):
        return {
            **build_basic_type(OpenApiTypes.STR),
            "minLength": 1,
            "maxLength": BODY_SEARCH_MAX_BYTES,
            "pattern": _body_search_text_pattern(),
        }


class WaitingForFieldSchema(OpenApiSerializerFieldExtension):
    target_class = "webhooks.api.serializers.WaitingForField"

    def map_serializer_field(self, auto_schema, direction):
        return {
            **build_basic_type(OpenApiTypes.STR),
            "enum": sorted(DELIVERY_WAITS),
            "nullable": True,
            "description": "Why a pending delivery is not being sent; null when it is due, and for a delivery "
            "that is not pending.",
        }


# --- Answers that add to an object's shape -------------------------------------------------------


class SourceCreatedSerializer(SourceSerializer):
    secret = serializers.CharField(
        required=False,
        help_text="The secret Hookline generated, in this answer only; absent when it was given, or the "
        "provider issues it.",
    )


class SourceRotatedSerializer(SourceCreatedSerializer):
    pass


class DestinationChangedSerializer(DestinationSerializer):
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="[] or, for a destination without a source, that it receives nothing until one is linked.",
    )


class DestinationCreatedSerializer(DestinationChangedSerializer):
    secret = serializers.CharField(help_text="The whsec_… signing secret, in this answer only.")


class DestinationRotatedSerializer(DestinationSerializer):
    secret = serializers.CharField(help_text="The new whsec_… signing secret, in this answer only.")


# The states a source's deletion answer names (SPECTACULAR_SETTINGS names their enum: a field's name
# alone, "StateEnum", says nothing in a generated client).
SOURCE_DELETION_STATES = ["deleting"]


class SourceDeletingSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=SOURCE_DELETION_STATES)


# A destination's deletion answers the same state, in an enum of its own name. Its label differs from
# the source's ("deleting"): drf-spectacular tells enums apart by their (value, label) pairs, and two
# identical ones would share one name, the source's.
DESTINATION_DELETION_STATES = [("deleting", "Deleting")]


class DestinationDeletingSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=DESTINATION_DELETION_STATES)


class WaitingSentNowSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The destination's id.")
    brought_forward = serializers.IntegerField(
        help_text="How many waiting deliveries were made due now; 0 when none waited."
    )


def document_only_api(endpoints, **kwargs):
    """SPECTACULAR_SETTINGS' preprocessing hook: the document describes /api/v1/ only (the ingest
    endpoint is a DRF view too, but signed by providers, not called with an API key)."""
    # Each path is written as the README writes it, without the trailing slash it may also take.
    return [
        (path.rstrip("/"), path_regex, method, callback)
        for path, path_regex, method, callback in endpoints
        if path.startswith(API_PREFIX)
    ]


def drop_component_docstrings(result, **kwargs):
    """SPECTACULAR_SETTINGS' postprocessing hook: a serializer's docstring is written for who changes
    the code (selectors, queries), not for API users; fields keep their help texts."""
    for component in result.get("components", {}).get("schemas", {}).values():
        if component.get("type") == "object":
            component.pop("description", None)
    return result


# The component a nullable reference's null is described by, as drf-spectacular names its own for a
# nullable choice (an enum of null alone).
NULL_COMPONENT = "NullEnum"


def nullable_references_as_one_of(result, **kwargs):
    """SPECTACULAR_SETTINGS' postprocessing hook, after the enums': drf-spectacular writes a nullable
    reference (a nested answer such as a bulk retry's outcome, or an enum such as waiting_for) as
    ``{"allOf": [{"$ref": …}], "nullable": true}``. OpenAPI 3.0.3 gives ``nullable`` effect only
    beside a ``type`` in the same schema object, so strict validators (openapi-core) and generated
    clients refused the null the API answers. Each becomes ``oneOf`` the reference or null."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    rewritten = False
    for schema in _schema_objects(schemas):
        if not schema.get("nullable") or "type" in schema or len(schema.get("allOf", ())) != 1:
            continue
        del schema["nullable"]
        schema["oneOf"] = [*schema.pop("allOf"), {"$ref": f"#/components/schemas/{NULL_COMPONENT}"}]
        rewritten = True
    if rewritten:
        schemas.setdefault(NULL_COMPONENT, {"enum": [None]})
        result["components"]["schemas"] = dict(sorted(schemas.items()))
    return result


def _schema_objects(node):
    if isinstance(node, dict):
        yield node
        for value in list(node.values()):
            yield from _schema_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_objects(value)
