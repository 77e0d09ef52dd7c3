"""Request bodies for creating and changing sources and destinations through the API.

They check what the dashboard's forms check, so that a mistake comes back under the field it is
about; the services check it all again and are the ones that save. Secrets are write-only here.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from organizations.names import validate_name
from webhooks.models import Destination, Source
from webhooks.providers.base import InvalidOptions
from webhooks.providers.registry import PROVIDERS, get_provider
from webhooks.services.destinations import (
    DestinationError,
    destination_check_custom_headers,
    destination_check_payload_filters,
    destination_merge_custom_headers,
    event_type_patterns,
)
from webhooks.services.sources import SourceError, source_check_allowed_networks, source_check_secret

from .serializers import MAX_DATABASE_ID, ApiChoiceField, KnownFieldsOnly, PayloadFiltersField

# The longest overlap the dashboard offers (its rotation forms' last choice).
MAX_KEEP_PREVIOUS_SECONDS = 7 * 24 * 3600


def _name_field(model, **kwargs) -> serializers.CharField:
    return serializers.CharField(
        max_length=model._meta.get_field("name").max_length, validators=[validate_name], **kwargs
    )


def _options(provider_kind: str, options) -> dict:
    """The provider's cleaned options, or the field error that says what is wrong with them."""
    try:
        return get_provider(provider_kind).clean_options(options)
    except InvalidOptions as exc:
        raise serializers.ValidationError({"options": [str(exc)]}) from None


def _no_secret_used(provider_kind: str) -> None:
    provider = get_provider(provider_kind)
    if not provider.uses_secret:
        raise serializers.ValidationError(
            {"secret": [f"{provider.label} requests are verified without a secret: send none"]}
        )


def _secret(provider_kind: str, secret: str, options: dict) -> None:
    _no_secret_used(provider_kind)
    try:
        source_check_secret(provider=provider_kind, secret=secret, options=options)
    except SourceError as exc:
        raise serializers.ValidationError({"secret": [str(exc)]}) from None


def _secret_field() -> serializers.CharField:
    # Left out, the secret is generated where the provider lets Hookline choose it; blank is refused,
    # as create_source refuses --secret "": an unset variable should not become "generate one".
    return serializers.CharField(
        required=False,
        write_only=True,
        error_messages={
            "blank": "is blank: send the secret, or leave secret out to have one generated where the provider allows it"
        },
    )


def _allowed_networks_field(**kwargs) -> serializers.ListField:
    # Strings as given (blank ones included): their checks and their count are the service's, so
    # that every entry point refuses the same entries with the same words.
    return serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False), allow_null=True, **kwargs
    )


class AllowedNetworksMixin(KnownFieldsOnly):
    def validate_allowed_networks(self, entries):
        try:
            return source_check_allowed_networks(entries)
        except SourceError as exc:
            raise serializers.ValidationError(str(exc)) from None


class SourceCreateSerializer(AllowedNetworksMixin):
    provider = ApiChoiceField(choices=sorted(PROVIDERS))
    name = _name_field(Source)
    secret = _secret_field()
    options = serializers.DictField(required=False, default=dict)
    allowed_networks = _allowed_networks_field(required=False, default=list)

    def validate(self, data):
        if data.get("secret"):
            _no_secret_used(data["provider"])
        options = _options(data["provider"], data["options"])
        if data.get("secret"):
            _secret(data["provider"], data["secret"], options)
        return data


class SourceUpdateSerializer(AllowedNetworksMixin):
    """A PATCH: what is left out stays; ``options`` given are merged into the current ones (null
    sets one back to its default); ``allowed_networks`` replaces the list (null or [] for any address)."""

    field_hints = {
        "is_active": "send it as active",
        "secret": "set a new secret with POST /api/v1/sources/<id>/rotate_secret",
        "provider": "a source's provider cannot be changed: create another source",
    }

    name = _name_field(Source, required=False)
    options = serializers.DictField(required=False)
    active = serializers.BooleanField(required=False)
    allowed_networks = _allowed_networks_field(required=False)

    def validate(self, data):
        source: Source = self.context["source"]
        if "options" in data:
            data["options"] = _options(source.provider, {**source.options, **data["options"]})
        return data


class KeepPreviousMixin(KnownFieldsOnly):
    keep_previous_for = serializers.IntegerField(
        min_value=0,
        max_value=MAX_KEEP_PREVIOUS_SECONDS,
        required=False,
        help_text=(
            "seconds the secret being replaced still works (default SECRET_ROTATION_OVERLAP_SECONDS); the "
            "dashboard's rotation form calls it 'Keep the old secret valid for' (a source) and 'Keep signing "
            "with the old secret too for' (a destination)"
        ),
    )
    stop_previous = serializers.BooleanField(required=False, default=False)


class SourceRotateSerializer(KeepPreviousMixin):
    secret = _secret_field()

    def validate(self, data):
        source: Source = self.context["source"]
        _no_secret_used(source.provider)
        if data.get("secret"):
            _secret(source.provider, data["secret"], source.options)
        return data


class DestinationRotateSerializer(KeepPreviousMixin):
    pass


# A custom header's value as sent (a CharField would turn 5 into "5"), null included: the service
# refuses what is not text naming the header. Described as the text it must be (and null, where
# allow_null says a PATCH takes it to remove the header).
@extend_schema_field(OpenApiTypes.STR)
class CustomHeaderValueField(serializers.JSONField):
    def validate_empty_values(self, data):
        if data is None:
            return (False, None)
        return super().validate_empty_values(data)


class DestinationSerializerBase(KnownFieldsOnly):
    url = serializers.URLField(max_length=Destination._meta.get_field("url").max_length)
    sources = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_DATABASE_ID), max_length=1000
    )
    event_types = serializers.ListField(child=serializers.CharField(allow_blank=True), max_length=200)
    timeout_seconds = serializers.FloatField(
        min_value=Destination.MIN_TIMEOUT_SECONDS, max_value=Destination.MAX_TIMEOUT_SECONDS
    )
    retry_client_errors = serializers.BooleanField()
    # Whole numbers here; their bounds are the service's (destination_check_delivery_policy), so the
    # dashboard, the API and the admin refuse the same values with the same words.
    max_concurrency = serializers.IntegerField()
    rate_limit_per_second = serializers.IntegerField(allow_null=True)
    # Whole seconds; null for the platform's schedule (an empty list is refused by the service, which
    # says so: it could as well mean "no retries").
    retry_schedule = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    max_attempts = serializers.IntegerField(allow_null=True)
    max_retry_age_seconds = serializers.IntegerField(allow_null=True)
    # Any JSON here: the service checks the conditions, and its refusal names the one at fault.
    payload_filters = PayloadFiltersField(required=False, allow_null=True)

    def validate_payload_filters(self, filters) -> list[dict]:
        try:
            return destination_check_payload_filters(filters)
        except DestinationError as exc:
            raise serializers.ValidationError(exc.problems) from None  # every condition at fault

    def validate_sources(self, ids: list[int]) -> list[Source]:
        """The organization's sources by id. Another organization's id is answered as one that does
        not exist: the answer must not tell which ids are taken elsewhere."""
        wanted = list(dict.fromkeys(ids))
        found = {source.pk: source for source in self.context["sources"].filter(pk__in=wanted)}
        missing = [source_id for source_id in wanted if source_id not in found]
        if missing:
            raise serializers.ValidationError(f"no such source: {', '.join(map(str, missing))}")
        return [found[source_id] for source_id in wanted]

    def validate(self, data):
        if "event_types" in data:
            # Without sources the filters have nowhere to live: the service refuses them.
            has_sources = bool(data["sources"]) if "sources" in data else self.context["has_sources"]
            try:
                data["event_types"] = event_type_patterns(data["event_types"], has_sources=has_sources)
            except DestinationError as exc:
                raise serializers.ValidationError({"event_types": [str(exc)]}) from None
        return data


class DestinationCreateSerializer(DestinationSerializerBase):
    name = _name_field(Destination)
    sources = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_DATABASE_ID), max_length=1000, default=list
    )
    event_types = serializers.ListField(child=serializers.CharField(allow_blank=True), max_length=200, default=list)
    timeout_seconds = serializers.FloatField(
        min_value=Destination.MIN_TIMEOUT_SECONDS, max_value=Destination.MAX_TIMEOUT_SECONDS, required=False
    )
    retry_client_errors = serializers.BooleanField(default=False)
    max_concurrency = serializers.IntegerField(required=False)
    rate_limit_per_second = serializers.IntegerField(allow_null=True, default=None)
    retry_schedule = serializers.ListField(child=serializers.IntegerField(), allow_null=True, default=None)
    max_attempts = serializers.IntegerField(allow_null=True, default=None)
    max_retry_age_seconds = serializers.IntegerField(allow_null=True, default=None)
    # Name to value; write-only: reads show each name with a hint of its value. The values reach the
    # service as sent (a CharField would turn 5 into "5"), which refuses what is not text naming the header.
    custom_headers = serializers.DictField(child=CustomHeaderValueField(), required=False, write_only=True)

    def validate_custom_headers(self, headers: dict) -> dict:
        try:
            return destination_check_custom_headers(headers)
        except DestinationError as exc:
            raise serializers.ValidationError(str(exc)) from None


class DestinationUpdateSerializer(DestinationSerializerBase):
    """A PATCH: what is left out stays as it is."""

    field_hints = {
        "secret": "make a new secret with POST /api/v1/destinations/<id>/rotate_secret",
        "subscriptions": "send sources and event_types",
        "paused_at": "pause and resume it with POST /api/v1/destinations/<id>/pause and /resume",
    }

    name = _name_field(Destination, required=False)
    # Changes, as in a JSON merge patch: a value adds the header or replaces its value, null removes
    # it, and headers not named keep their values (which nobody can read back to send again).
    custom_headers = serializers.DictField(child=CustomHeaderValueField(allow_null=True), write_only=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False

    def validate_custom_headers(self, changes: dict) -> dict:
        # Checked against the current headers here, for a 400 on this field; the service checks
        # again against the headers committed when it saves.
        try:
            destination_merge_custom_headers(self.context["destination"], changes)
        except DestinationError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return changes
