"""What the API shows of each object, under the same viewer rules as the dashboard.

The view passes ``sees_everything`` in the context: a read-only key sees what a member sees
(signature headers and destination URL paths hidden), a read-write key what an admin sees.
Secrets are never shown, only their hints.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import re
from collections.abc import Mapping

from django.core.validators import URLValidator
from django.http import QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from webhooks.models import BulkRetry, Delivery, Destination, Source, WebhookEvent
from webhooks.providers.registry import PROVIDERS
from webhooks.selectors import (
    DELIVERY_STATUS_HELD_BY_PLATFORM,
    DELIVERY_STATUS_RETRYING,
    EVENT_STATUS_ALL,
    EVENT_STATUSES_FROM_DELIVERIES,
    SIGNATURE_HIDDEN,
    BulkRetryOutcome,
    body_search_text_problem,
    headers_for_viewer,
    options_for_viewer,
    url_for_viewer,
)
from webhooks.services.delivery_waits import delivery_waits
from webhooks.services.destinations import event_type_patterns_problem
from webhooks.services.payload_filters import OPERATORS, destinations_not_taking
from webhooks.services.secrets import previous_secret_valid_until, secret_hint_shown
from webhooks.services.sources import ingest_url
from webhooks.services.text import ECHOED_NAMES_MAX, echoable_text

MAX_DATABASE_ID = 2**63 - 1


def body_for_api(body: bytes) -> dict[str, str]:
    """The body as text when it is UTF-8, else base64; ``body_encoding`` says which."""
    raw = bytes(body)
    try:
        return {"body": raw.decode("utf-8"), "body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(raw).decode("ascii"), "body_encoding": "base64"}


# The dashboard's placeholder names roles; through the API the key's access is what counts.
SIGNATURE_HIDDEN_FROM_KEY = "(a signature: shown to read-and-write keys)"


def _headers(headers, context, signature_headers=frozenset()) -> dict[str, str]:
    shown = headers_for_viewer(
        headers or {}, sees_signatures=context["sees_everything"], signature_headers=signature_headers
    )
    return {name: SIGNATURE_HIDDEN_FROM_KEY if value is SIGNATURE_HIDDEN else value for name, value in shown}


class AttemptSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    attempt_number = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    response_status = serializers.IntegerField(allow_null=True)
    response_body = serializers.CharField()
    response_truncated = serializers.BooleanField(
        help_text="true when the answer was longer than what is kept: response_body is its start"
    )
    error = serializers.CharField()
    request_headers = serializers.SerializerMethodField()

    def get_request_headers(self, attempt) -> dict[str, str]:
        return _headers(attempt.request_headers, self.context)


class DeliverySummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    destination = serializers.IntegerField(source="destination_id")
    # Choices, for the document's enum (a generated client's type); shown as stored.
    status = serializers.ChoiceField(choices=Delivery.Status.choices)
    is_replay = serializers.BooleanField()
    attempt_count = serializers.IntegerField()


class _DeliveriesWithWaits(serializers.ListSerializer):
    """Deliveries with what each pending one waits for, read for the whole list at once (at most two
    queries, delivery_waits) rather than once a row."""

    def to_representation(self, data):
        deliveries = list(data.all() if hasattr(data, "all") else data)
        waits = delivery_waits(deliveries)
        for delivery in deliveries:
            delivery.waiting_for = waits.get(delivery.pk)
        return super().to_representation(deliveries)


class WaitingForField(serializers.Field):
    """A pending delivery's reason to wait, a code of DELIVERY_WAITS (destination_paused,
    organization_suspended, next_attempt_time, destination_rate_limit, platform_secret_unreadable, …); null
    when it is due and goes out as soon as a sending thread takes it, and for a delivery that is not pending."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, allow_null=True, **kwargs)

    def to_representation(self, delivery):
        if not hasattr(delivery, "waiting_for"):  # a delivery on its own
            delivery.waiting_for = delivery_waits([delivery]).get(delivery.pk)
        return delivery.waiting_for


class EventDeliverySerializer(DeliverySummarySerializer):
    """A delivery as its event's detail lists it: the event is around it already. Its destination's
    name as the delivery list shows it (event_detail_for_organization loads it with the delivery)."""

    destination_name = serializers.CharField(source="destination.name")
    event = serializers.UUIDField(source="event_id")
    webhook_id = serializers.CharField(source="message_id")
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    waiting_for = WaitingForField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    attempts = AttemptSerializer(many=True, source="attempts.all")

    class Meta:
        list_serializer_class = _DeliveriesWithWaits


class DeliverySerializer(DeliverySummarySerializer):
    """A delivery on its own, with what a list of failures needs of its event: no call per row.
    The view loads the event's columns and the destination's name with the delivery
    (selectors.with_event_context)."""

    destination_name = serializers.CharField(source="destination.name")
    event = serializers.UUIDField(source="event_id")
    provider_event_id = serializers.CharField(source="event.provider_event_id", allow_null=True)
    event_type = serializers.CharField(source="event.event_type")
    source = serializers.IntegerField(source="event.source_id")
    received_at = serializers.DateTimeField(source="event.received_at")
    webhook_id = serializers.CharField(source="message_id")
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    waiting_for = WaitingForField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        list_serializer_class = _DeliveriesWithWaits


class DeliveryDetailSerializer(DeliverySerializer):
    attempts = AttemptSerializer(many=True, source="attempts.all")


class EventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    source = serializers.IntegerField(source="source_id")
    provider_event_id = serializers.CharField(allow_null=True)
    # The id a rejected request claims (not verified); null on verified events.
    claimed_event_id = serializers.CharField(allow_null=True)
    event_type = serializers.CharField()
    status = serializers.ChoiceField(choices=WebhookEvent.Status.choices)
    rejection_code = serializers.CharField()
    duplicate_count = serializers.IntegerField()
    # When the provider last sent it again (each redelivery is counted, not stored); null if never.
    last_duplicate_at = serializers.DateTimeField(allow_null=True)
    received_at = serializers.DateTimeField()
    processed_at = serializers.DateTimeField(allow_null=True)
    deliveries = DeliverySummarySerializer(many=True, source="deliveries.all")


class LeftOutByPayloadFiltersSerializer(serializers.Serializer):
    """The shape of EventDetailSerializer's left_out_by_payload_filters items (for the API's schema)."""

    destination = serializers.IntegerField()
    destination_name = serializers.CharField()
    reason = serializers.CharField()


class LeftOutByEventTypesSerializer(LeftOutByPayloadFiltersSerializer):
    event_types = serializers.ListField(child=serializers.CharField())


class EventDetailSerializer(EventSerializer):
    rejection_detail = serializers.CharField()
    remote_ip = serializers.IPAddressField(allow_null=True)
    headers = serializers.SerializerMethodField()
    deliveries = EventDeliverySerializer(many=True, source="deliveries.all")
    # As the dashboard's event page says it: an event with no delivery to a destination subscribed
    # to its source was left out by that destination's filters (as they are now), and why: its
    # payload filters, or its event-type filter (the "no destination subscribes" that is not so).
    left_out_by_payload_filters = serializers.SerializerMethodField()
    left_out_by_event_types = serializers.SerializerMethodField()

    def get_headers(self, event) -> dict[str, str]:
        return _headers(event.headers, self.context, self.context.get("signature_headers", frozenset()))

    @extend_schema_field(LeftOutByPayloadFiltersSerializer(many=True))
    def get_left_out_by_payload_filters(self, event) -> list[dict]:
        return [
            {"destination": refusal["destination_id"], "destination_name": refusal["name"], "reason": refusal["reason"]}
            for refusal in _not_taking(event)
            if refusal["filter"] == "payload_filters"
        ]

    @extend_schema_field(LeftOutByEventTypesSerializer(many=True))
    def get_left_out_by_event_types(self, event) -> list[dict]:
        return [
            {
                "destination": refusal["destination_id"],
                "destination_name": refusal["name"],
                "event_types": refusal["event_types"],
                "reason": refusal["reason"],
            }
            for refusal in _not_taking(event)
            if refusal["filter"] == "event_types"
        ]

    # The body as body_for_api gives it (computed once for both).
    body = serializers.SerializerMethodField()
    body_encoding = serializers.SerializerMethodField()

    def get_body(self, event) -> str:
        return _shown_body(event)["body"]

    @extend_schema_field(serializers.ChoiceField(choices=["utf-8", "base64"]))
    def get_body_encoding(self, event) -> str:
        return _shown_body(event)["body_encoding"]


def _shown_body(event) -> dict[str, str]:
    if not hasattr(event, "shown_body"):
        event.shown_body = body_for_api(event.body)
    return event.shown_body


def _not_taking(event) -> list[dict]:
    # Read once for both fields.
    if not hasattr(event, "not_taking"):
        event.not_taking = destinations_not_taking(event)
    return event.not_taking


class BulkRetryOutcomeSerializer(serializers.Serializer):
    """The shape of BulkRetryOutcome (for the API's schema)."""

    succeeded = serializers.IntegerField()
    dead = serializers.IntegerField()
    pending = serializers.IntegerField()
    not_followed = serializers.IntegerField()


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
class OneOrManyStatusesField(serializers.Field):
    """A job's status filter: one status, or the list a job made before the API's filters had."""


class BulkRetryFiltersSerializer(serializers.Serializer):
    """The shape of BulkRetrySerializer's filters (for the API's schema): those asked for."""

    status = OneOrManyStatusesField()
    destination = serializers.IntegerField(required=False)
    source = serializers.IntegerField(required=False)
    event_type = serializers.CharField(required=False)
    received_after = serializers.DateTimeField(required=False)
    received_before = serializers.DateTimeField(required=False)


class BulkRetrySerializer(serializers.Serializer):
    """A bulk retry job: ``retried`` grows to ``total`` while it runs (``total`` may grow too, with
    deliveries that failed meanwhile), less ``left_out``, those of a source or destination being
    deleted, which are not sent again; ``filters`` as it was asked for; ``outcome``, what became of
    the retried deliveries so far (selectors.BulkRetryOutcome; null for jobs from before it was
    recorded). The job is read through selectors.with_bulk_retry_outcomes."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=BulkRetry.Status.values)
    total = serializers.IntegerField()
    retried = serializers.IntegerField()
    left_out = serializers.IntegerField(
        help_text="Of total, the deliveries left out because their source or destination is being deleted: "
        "counted when the job was asked for until it runs, then as its run finds them."
    )
    outcome = serializers.SerializerMethodField()
    filters = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(BulkRetryOutcomeSerializer(allow_null=True))
    def get_outcome(self, job: BulkRetry) -> dict | None:
        outcome = BulkRetryOutcome.of(job)
        return None if outcome is None else dataclasses.asdict(outcome)

    @extend_schema_field(BulkRetryFiltersSerializer)
    def get_filters(self, job: BulkRetry) -> dict:
        # Stored in the service's words; shown in the request's ("statuses": ["dead"] is "status").
        filters = dict(job.filters)
        statuses = filters.pop("statuses", None) or [Delivery.Status.DEAD]
        for name in _FILTER_TIMES:
            if name in filters:
                filters[name] = _time_as_answered(filters[name])
        return {"status": statuses[0] if len(statuses) == 1 else statuses, **filters}


# A job's range is stored as Python's isoformat() writes it ("…+00:00"); every other time the API
# answers ends in Z (DRF's DateTimeField): shown so, as a client comparing them as text expects.
_FILTER_TIMES = ("received_after", "received_before")


def _time_as_answered(stored):
    try:
        moment = datetime.datetime.fromisoformat(stored)
    except (TypeError, ValueError):  # not one this code stored: shown as it is rather than refused
        return stored
    if moment.tzinfo is None:
        return stored
    return serializers.DateTimeField().to_representation(moment)


class PreviousSecretValidUntilField(serializers.DateTimeField):
    """When the secret a rotation replaced stops being accepted, or null when none is: a rotation
    until then answers 409 unless ``stop_previous``. Lists annotate it (selectors.
    with_previous_secret_until) rather than load and decrypt each row's previous secret; an object
    read whole (a detail, an answer to a change) is asked directly."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, allow_null=True, **kwargs)

    def to_representation(self, instance):
        if hasattr(instance, "previous_secret_until"):
            until = instance.previous_secret_until
        else:
            until = previous_secret_valid_until(instance)
        return None if until is None else super().to_representation(until)


class SecretHintField(serializers.CharField):
    """The secret's hint (…a1b2), or "unreadable" for one that no key of the platform decrypts any
    more: as the dashboard shows it. Found so on an object read alone (a detail, an answer to a
    change) and on each row of a list (views.SecretListed), whose secrets' tokens are tried."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, instance):
        return secret_hint_shown(instance)


class SourceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    provider = serializers.ChoiceField(choices=sorted(PROVIDERS))
    is_active = serializers.BooleanField()
    secret_hint = SecretHintField()
    previous_secret_valid_until = PreviousSecretValidUntilField()
    # As the source's page shows them (settings, never secrets), so that a PATCH, which merges
    # into them, can be read back.
    options = serializers.SerializerMethodField()
    ingest_url = serializers.SerializerMethodField()
    # CIDR strings requests must come from; [] for any address.
    allowed_networks = serializers.ListField(child=serializers.CharField())
    # Rejected requests answered but not kept (past INGEST_REJECTED_RECORDS_PER_MINUTE or _PER_HOUR),
    # since the source was made, and when the last came (null: none yet).
    rejected_not_kept_count = serializers.IntegerField()
    rejected_not_kept_last_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    def get_ingest_url(self, source: Source) -> str:
        return ingest_url(source)

    def get_options(self, source: Source) -> dict:
        return options_for_viewer(source.options)


class SubscriptionSerializer(serializers.Serializer):
    source = serializers.IntegerField(source="source_id")
    event_types = serializers.ListField(child=serializers.CharField())


class PayloadFilterSerializer(serializers.Serializer):
    """The shape of one payload filter condition (for the API's schema): the service
    (check_payload_filters) checks them, in requests as in the dashboard."""

    path = serializers.CharField(help_text="Where in the JSON body, such as data.object.livemode.")
    op = serializers.ChoiceField(choices=OPERATORS)
    value = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="Any JSON value (a list of 1 or more for in); absent for exists and not_exists.",
    )


# A JSONField, so that what a request sends reaches the service as sent (its refusals name the
# condition at fault), described as the list of conditions it is for.
@extend_schema_field(PayloadFilterSerializer(many=True))
class PayloadFiltersField(serializers.JSONField):
    pass


class CustomHeaderHintSerializer(serializers.Serializer):
    name = serializers.CharField()
    hint = serializers.CharField()


class DestinationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.SerializerMethodField()
    secret_hint = SecretHintField()
    previous_secret_valid_until = PreviousSecretValidUntilField()
    is_active = serializers.BooleanField()
    paused_at = serializers.DateTimeField(allow_null=True)
    pause_reason = serializers.CharField()
    # While paused: from when its deliveries held longer than PAUSED_DESTINATION_HOLD_DAYS are marked
    # dead (to be retried once resumed); null when it is not paused.
    held_deliveries_given_up_from = serializers.DateTimeField(allow_null=True)
    timeout_seconds = serializers.FloatField()
    max_concurrency = serializers.IntegerField()
    rate_limit_per_second = serializers.IntegerField(allow_null=True)
    retry_client_errors = serializers.BooleanField()
    # Seconds before each retry; null for the platform's DELIVERY_RETRY_SCHEDULE.
    retry_schedule = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    max_attempts = serializers.IntegerField(allow_null=True)
    max_retry_age_seconds = serializers.IntegerField(allow_null=True)
    # Each custom header's name and the hint of its value (…a1b2); the values are never shown.
    custom_headers = CustomHeaderHintSerializer(many=True, source="custom_header_hints")
    # Conditions on the body: [{"path", "op", "value"}] (no value for exists and not_exists).
    payload_filters = PayloadFiltersField()
    subscriptions = SubscriptionSerializer(many=True, source="subscriptions.all")
    created_at = serializers.DateTimeField()

    def get_url(self, destination: Destination) -> str:
        return url_for_viewer(destination.url, sees_full=self.context["sees_everything"])


# --- Query parameters and request bodies ---------------------------------------------


class KnownFieldsOnly(serializers.Serializer):
    """Refuses a name the request does not take (a 400 naming it and the ones it takes) rather than
    ignore it: a misspelt ``destination_id`` would widen a bulk retry to every dead delivery of the
    organization, ``secret`` in a PATCH would answer 200 and leave the old secret in place.

    ``also_takes`` in the context: names read elsewhere (a list's ``cursor`` and ``limit``).
    """

    # A name a client may well send (often one it reads back), and what to send instead.
    field_hints: dict[str, str] = {}
    refusal = "not taken here (takes: {takes})"

    def get_fields(self):
        fields = super().get_fields()
        for field in fields.values():
            in_api_words(field)
        return fields

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            takes = [name for name, field in self.fields.items() if not field.read_only]
            takes += self.context.get("also_takes", ())
            if unknown := [name for name in data if name not in takes]:
                listed = ", ".join(sorted(takes)) or "nothing"
                # Each under its own name, cut and escaped as a message quotes one (a key of any length
                # is not sent back whole; the names this API has are all shorter), and the first few
                # only: a body of a few hundred KB naming thousands would get an answer many times its size.
                named = unknown[:ECHOED_NAMES_MAX]
                refusals = {
                    echoable_text(str(name)): [self.field_hints.get(name) or self.refusal.format(takes=listed)]
                    for name in named
                }
                if more := len(unknown) - len(named):
                    refusals[echoable_text(str(named[-1]))].append(f"and {more} more names not taken here")
                raise serializers.ValidationError(refusals)
            # A query string may name a parameter twice, and only its last value would be read.
            if isinstance(data, QueryDict) and (repeated := [name for name, values in data.lists() if len(values) > 1]):
                raise serializers.ValidationError({name: ["given more than once: give it once"] for name in repeated})
            # DRF reads an empty value in a query string ("?status=", as an HTML form sends a field
            # left blank) as a parameter not given: "?destination=$DEST&status=failed" with DEST unset
            # would list the failures of every destination. The document says each takes a value.
            # (cursor and limit, read by the pagination, refuse an empty one themselves.)
            if isinstance(data, QueryDict) and (
                blank := [name for name, value in data.items() if value == "" and name in self.fields]
            ):
                raise serializers.ValidationError(
                    {name: ["is empty: give a value, or leave the parameter out"] for name in blank}
                )
        # A query string's values are all text, by nature; a JSON body's have types, and DRF's fields
        # would convert them ("yes" for true, "3" or 3.0 for 3, true for 1, 123 for "123").
        wrong_types = (
            {} if isinstance(data, QueryDict) or not isinstance(data, Mapping) else json_type_problems(self, data)
        )
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if wrong_types and isinstance(exc.detail, Mapping):
                raise serializers.ValidationError({**exc.detail, **wrong_types}) from None
            raise
        if wrong_types:
            raise serializers.ValidationError(wrong_types)
        return value


# --- DRF's refusals, in words that say what is taken ----------------------------------------
# DRF's own ("A valid integer is required.", "Enter a valid URL.") say that a value is wrong, not
# what the field takes. Every field of a request (KnownFieldsOnly's, their items' included) says it
# in these words instead, unless the field words its refusal itself. In a JSON body a value of
# another type is refused first, by json_type_problems; these are what a query string's text, or a
# string that is not the URL or id it must be, gets.

# Django's URLValidator, which the field runs, and then destination_check_url, whose refusals name
# what they refuse (a private address, a user name, a #fragment, another scheme, Hookline's own URL).
API_URL_FORM = (
    "an absolute URL starting with https:// (or http:// for a receiver without TLS), then a host (a "
    "domain name with a dot, such as hooks.example.com, or localhost, or an IP address, an IPv6 one "
    "in brackets), an optional :port and a path, such as https://hooks.example.com/hookline; without "
    "spaces, a user name or password, or a #fragment"
)

_API_WORDS: tuple[tuple[type[serializers.Field], dict[str, str]], ...] = (
    (
        serializers.IntegerField,
        {
            "invalid": "is not a whole number: write it in the digits 0-9, without a fraction",
            "max_string_length": "is too long to be a number this API takes",
        },
    ),
    (
        serializers.FloatField,
        {
            "invalid": "is not a number: write it in digits, such as 30 or 2.5",
            "max_string_length": "is too long to be a number this API takes",
        },
    ),
    (serializers.BooleanField, {"invalid": "must be true or false"}),
    (serializers.UUIDField, {"invalid": "is not an id: a UUID such as 01938a3e-4c5d-7af8-9863-65da3aa5db9d"}),
    (serializers.URLField, {"invalid": f"is not a URL this API takes: give {API_URL_FORM}"}),
)


def in_api_words(field: serializers.Field) -> None:
    """``field``'s refusals (and its items', for a list or an object) in _API_WORDS', where they are
    still DRF's own."""
    for kind, words in _API_WORDS:
        if not isinstance(field, kind):
            continue
        for code, text in words.items():
            if str(field.error_messages.get(code)) == str(kind.default_error_messages[code]):
                field.error_messages[code] = text
        if isinstance(field, serializers.URLField):
            # URLField made its validator with the message it had then.
            for validator in field.validators:
                if isinstance(validator, URLValidator):
                    validator.message = field.error_messages["invalid"]
    child = getattr(field, "child", None)
    if isinstance(child, serializers.Field) and not isinstance(child, serializers.BaseSerializer):
        in_api_words(child)


# --- JSON types of a request body ----------------------------------------------------------
# What each kind of field takes, as the JSON types a body can hold. Checked before DRF's own
# conversions, for every writable field of a body (KnownFieldsOnly), lists' and objects' items
# included, so a new field is covered without a word. Subclasses come before their bases, and
# a field not listed (JSONField, an options dict's values) takes any JSON.


def _is_whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_JSON_TYPE_TAKEN = (
    (serializers.BooleanField, lambda value: isinstance(value, bool), "true or false (a JSON boolean, without quotes)"),
    (serializers.IntegerField, _is_whole_number, "a whole number (a JSON integer: no quotes, no fraction)"),
    (serializers.FloatField, _is_number, "a number (without quotes)"),
    (serializers.ListField, lambda value: isinstance(value, list), "a list"),
    (serializers.DictField, lambda value: isinstance(value, dict), "an object"),
    (serializers.CharField, lambda value: isinstance(value, str), "a string (in double quotes)"),
    (serializers.ChoiceField, lambda value: isinstance(value, str), "a string (in double quotes)"),
    (serializers.DateTimeField, lambda value: isinstance(value, str), "a string (in double quotes)"),
    (serializers.UUIDField, lambda value: isinstance(value, str), "a string (in double quotes)"),
)


def _json_type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number with a fraction or an exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _json_type_problem(field, value) -> str | None:
    """Why ``value`` is not of the JSON type ``field`` takes, or None. Never the value itself: it
    may be a secret. null is taken where the field allows it."""
    for field_class, takes, expected in _JSON_TYPE_TAKEN:
        if isinstance(field, field_class):
            if value is None and field.allow_null:
                return None
            if not takes(value):
                return f"must be {expected}, not {_json_type_name(value)}"
            break
    else:
        return None  # any JSON
    if isinstance(field, serializers.ListField):
        for position, item in enumerate(value, start=1):
            if problem := _json_type_problem(field.child, item):
                return f"item {position} {problem}"
    elif isinstance(field, serializers.DictField):
        for key, item in value.items():
            if problem := _json_type_problem(field.child, item):
                return f"“{key}” {problem}"
    return None


def json_type_problems(serializer: serializers.Serializer, data: Mapping) -> dict[str, list[str]]:
    """Each writable field given a value of another JSON type, with what it takes."""
    problems = {}
    for name, field in serializer.fields.items():
        if field.read_only or name not in data:
            continue
        if problem := _json_type_problem(field, data[name]):
            problems[name] = [problem]
    return problems


class NoBody(KnownFieldsOnly):
    """The body of an action that takes none: ``{}`` or nothing."""


class NoFilters(KnownFieldsOnly):
    """The query string of a list without filters: only ``cursor`` and ``limit``."""


class NoQueryParameters(KnownFieldsOnly):
    """The query string of any request but a list's GET: empty. A change's fields go in its body, and
    ``POST /deliveries/retry?destination=3`` must not retry every dead delivery."""

    refusal = "not taken here: this request takes no query parameters (a change takes its fields in a JSON body)"


class ApiChoiceField(serializers.ChoiceField):
    """One of a few values a request gives (a status filter, a provider). DRF's refusal named no
    choice, leaving the caller to guess the spelling, and quoted the value whole: a 2 MB one came
    back in a 2 MB answer, terminal controls and all. This one lists the values taken and quotes the
    caller's as every other refusal does (echoable_text: cut, controls escaped)."""

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            taken = ", ".join(str(choice) for choice in self.choices)
            raise serializers.ValidationError(f"“{echoable_text(str(data))}” is not one of: {taken}") from None


# The times the API takes, in a query string or a body, from one grammar (the document's
# descriptions say it in words): RFC 3339, a date and a time with its offset (T, or a space as RFC
# 3339 allows, between them; seconds may be left out, as DRF's own refusal always said), or a date
# alone, which is midnight UTC. A time without an offset is refused rather than read in the
# server's zone: which zone the caller meant is unknown, and a guess shifts the range by hours
# without a word. Other ISO 8601 spellings Python reads (20261201T100000Z, 2026-W49-1, +0200) are
# refused too: the document describes none of them. In the digits 0-9 (\d also matches other
# scripts' digits: "2026-12-01T١٠:00" was told it lacked an offset, as if it were a time).
_API_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[Tt ](?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)
API_TIME_FORM = (
    "RFC 3339 with its offset, such as 2026-12-01T10:00:00Z or 2026-12-01T12:00:00+02:00 (seconds may be "
    "left out; T or a space between date and time), or a date alone, 2026-12-01, for midnight UTC"
)


class ApiDateTimeField(serializers.DateTimeField):
    """A time a request gives (a filter, a bulk retry's range), as _API_TIME takes it."""

    # What a client must write for an offset's "+" where it sends this field.
    plus_sign = "+"

    def to_internal_value(self, value):
        if not isinstance(value, str):
            return super().to_internal_value(value)  # its refusal (a body's other JSON types are refused first)
        match = _API_TIME.fullmatch(value.strip())
        if match and match["time"] and not match["offset"]:
            raise serializers.ValidationError(
                "a time needs its offset, or which zone it is in is unknown: end it in Z for UTC "
                f"(2026-12-01T10:00:00Z), or add one such as {self.plus_sign}02:00"
            )
        try:
            if match is None:
                raise ValueError
            if match["time"] is None:
                parsed = datetime.datetime.combine(
                    datetime.date.fromisoformat(match["date"]), datetime.time.min, tzinfo=datetime.UTC
                )
            else:
                parsed = datetime.datetime.fromisoformat(f"{match['date']}T{match['time']}{match['offset'].upper()}")
        except ValueError:  # no such form, or no such day or hour (2026-02-30, 24:00)
            raise serializers.ValidationError(self.malformed(value)) from None
        return self.enforce_timezone(parsed)

    def malformed(self, value: str) -> str:
        return f"not a date and time as this API takes them: {API_TIME_FORM}"


# A time whose offset's "+" a query string turned into a space: "…T10:00:00 02:00".
_OFFSET_PLUS_READ_AS_SPACE = re.compile(r"[0-9] [0-9]{2}(:?[0-9]{2})?$")


class QueryDateTimeField(ApiDateTimeField):
    """A time in a query string. A bare "+" there is a space (curl and most clients send it as
    typed), so an offset written with one arrives broken: the refusal says how to write it."""

    plus_sign = "%2B"

    def malformed(self, value: str) -> str:
        if _OFFSET_PLUS_READ_AS_SPACE.search(value.strip()):
            return (
                "not a date and time: a '+' in a query string is read as a space; write the offset's "
                "'+' as %2B, or give the time in UTC ending in Z"
            )
        return super().malformed(value)


def checked_event_type_patterns(text: str) -> str:
    """Comma-separated patterns, checked as a destination's filters are (a 400 on the field, not
    a list or a retry that silently matches nothing). Commas and spaces alone name no pattern, and
    read as none would widen the request to every event type (a bulk retry of "$A,$B" with both
    unset retried every dead delivery): a 400, as an empty filter is."""
    patterns = text.split(",")
    if problem := event_type_patterns_problem(patterns):
        raise serializers.ValidationError(problem)
    if not any(pattern.strip() for pattern in patterns):
        raise serializers.ValidationError("names no event-type pattern: give one (invoice.*), or leave it out")
    return text


class ReceivedRangeMixin(KnownFieldsOnly):
    """``received_after`` must come before ``received_before``: a range that holds nothing is a
    mistake to say (400), as a bulk retry says it, not an empty page. The range is half-open (after
    included, before not), so equal times hold nothing either."""

    def validate(self, data):
        after, before = data.get("received_after"), data.get("received_before")
        if after and before and after >= before:
            raise serializers.ValidationError({"received_before": ["must be later than received_after"]})
        return super().validate(data)


# When the event was received (the API's schema says it).
_TIME_HELP = f"{API_TIME_FORM[0].upper()}{API_TIME_FORM[1:]}. A time without an offset is refused (400)."
RECEIVED_AFTER_HELP = f"Included. {_TIME_HELP}"
RECEIVED_BEFORE_HELP = f"Not included; must be later than received_after. {_TIME_HELP}"
# In a query string, a bare "+" is a space.
_IN_QUERY = " In a query string, write an offset's + as %2B (a bare + is a space)."


# Its bounds are in UTF-8 bytes (validate_body_contains says which); the document describes them in
# characters (webhooks.api.schema.BodySearchTextSchema). Not a max_length: DRF's own refusal would
# come first and count characters.
class BodySearchTextField(serializers.CharField):
    pass


# Ids in a query string are written in ASCII digits. DRF reads them with int() and uuid.UUID, which
# take any script's digits ("٣", a fullwidth "３"): such a filter named id 3 while saying something
# else. No page or answer shows an id so; it is refused as not an id rather than read one way.
_NOT_ASCII_ID = "is not an id: write it in the digits 0-9 (and, in an event id, the letters a-f)"


class IdQueryField(serializers.IntegerField):
    default_error_messages = {"invalid": "is not an id: write it in the digits 0-9, as the API answers it"}

    def __init__(self, **kwargs):
        super().__init__(min_value=1, max_value=MAX_DATABASE_ID, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str) and not data.isascii():
            raise serializers.ValidationError(_NOT_ASCII_ID)
        return super().to_internal_value(data)


class EventIdQueryField(serializers.UUIDField):
    def to_internal_value(self, data):
        if isinstance(data, str) and not data.isascii():
            raise serializers.ValidationError(_NOT_ASCII_ID)
        return super().to_internal_value(data)


class EventFilterSerializer(ReceivedRangeMixin):
    status = ApiChoiceField(
        choices=[*WebhookEvent.Status.values, *EVENT_STATUSES_FROM_DELIVERIES, EVENT_STATUS_ALL],
        required=False,
        help_text="Accepted events when not given; rejected, or all for both; failed, retrying or held_by_platform: "
        "a delivery of it is dead, waits for its next attempt after a failed one, or was put back unsent by the "
        "platform itself (not its receiver's failure, and not counted as retrying).",
    )
    source = IdQueryField(required=False)
    destination = IdQueryField(
        required=False,
        help_text="Events with a delivery to it (with failed, retrying or held_by_platform: that delivery there).",
    )
    event_type = serializers.CharField(
        max_length=1000, required=False, help_text="Patterns as in destination filters, comma-separated."
    )
    provider_event_id = serializers.CharField(
        max_length=255, required=False, help_text="Also finds a rejected request that claims it."
    )
    # Any id the dashboard's search takes (selectors.events_with_id): the provider's, Hookline's, the
    # webhook-id a destination received (a replay's included), as pasted.
    search = serializers.CharField(
        max_length=1000,
        required=False,
        help_text="Any id: the provider's, Hookline's, or the webhook-id a destination received.",
    )
    received_after = QueryDateTimeField(required=False, help_text=RECEIVED_AFTER_HELP + _IN_QUERY)
    received_before = QueryDateTimeField(required=False, help_text=RECEIVED_BEFORE_HELP + _IN_QUERY)
    # Searched a window of events at a time (EventListView); bounded in UTF-8 bytes.
    body_contains = BodySearchTextField(
        required=False,
        help_text="3 to 200 bytes of UTF-8 the body holds, case-sensitive (so 3 characters or more, fewer when not "
        "ASCII: é is 2 bytes, € 3); spaces around it are cut and do not count. Adds searched_back_to.",
    )

    def validate_body_contains(self, text: str) -> str:
        if problem := body_search_text_problem(text):
            raise serializers.ValidationError(problem)
        return text

    def validate_event_type(self, text: str) -> str:
        return checked_event_type_patterns(text)


class DeliveryFilterSerializer(ReceivedRangeMixin):
    status = ApiChoiceField(
        choices=[*Delivery.Status.values, DELIVERY_STATUS_RETRYING, DELIVERY_STATUS_HELD_BY_PLATFORM],
        required=False,
        help_text="retrying: pending after a failed attempt; held_by_platform: pending, put back unsent by the "
        "platform itself (its waiting_for says why), not counted as retrying.",
    )
    destination = IdQueryField(required=False)
    event = EventIdQueryField(required=False)
    # The event's received time, as the event list and the dashboard's "Received" filter take it.
    received_after = QueryDateTimeField(required=False, help_text=RECEIVED_AFTER_HELP + _IN_QUERY)
    received_before = QueryDateTimeField(required=False, help_text=RECEIVED_BEFORE_HELP + _IN_QUERY)


# The delivery statuses a bulk retry takes (SPECTACULAR_SETTINGS names their enum).
BULK_RETRY_DELIVERY_STATUSES = [Delivery.Status.DEAD]


class BulkRetryCreateSerializer(ReceivedRangeMixin):
    """The dead deliveries to retry, as the delivery list's filters name them; none is every one.
    Only dead ones, as on the dashboard: a waiting delivery is retried on its own schedule (or
    sooner, one at a time, through /deliveries/<id>/retry).

    Named for the job it creates, as the other bodies that create are (DestinationCreate…): the
    document's request components take a "Request" suffix, and "BulkRetryRequest" made
    "BulkRetryRequestRequest" of it."""

    status = ApiChoiceField(choices=BULK_RETRY_DELIVERY_STATUSES, default=Delivery.Status.DEAD)
    destination = serializers.IntegerField(min_value=1, max_value=MAX_DATABASE_ID, required=False)
    source = serializers.IntegerField(min_value=1, max_value=MAX_DATABASE_ID, required=False)
    event_type = serializers.CharField(max_length=1000, required=False)
    received_after = ApiDateTimeField(required=False, help_text=RECEIVED_AFTER_HELP)
    received_before = ApiDateTimeField(required=False, help_text=RECEIVED_BEFORE_HELP)

    def validate_event_type(self, text: str) -> str:
        return checked_event_type_patterns(text)


class BulkRetryFilterSerializer(KnownFieldsOnly):
    status = ApiChoiceField(choices=BulkRetry.Status.values, required=False)


class ReplaySerializer(KnownFieldsOnly):
    destination = serializers.IntegerField(min_value=1, max_value=MAX_DATABASE_ID)
