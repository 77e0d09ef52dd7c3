"""The /api/v1/ endpoints: each reads through a tenant selector or calls a service, nothing more."""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Prefetch
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions
from rest_framework.fields import DateTimeField
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.response import Response

from webhooks.fields import encrypted_field_names, take_readable_secrets, with_stored_tokens
from webhooks.models import Destination, Subscription, WebhookEvent
from webhooks.selectors import (
    BodySearchTimedOut,
    EventFilters,
    bulk_retries_for_organization,
    bulk_retry_for_organization,
    configured_signature_header,
    deliveries_for_organization,
    delivery_detail_for_organization,
    delivery_for_organization,
    destinations_for_organization,
    event_body_search_for_api,
    event_detail_for_organization,
    event_for_organization,
    event_rows_for_organization,
    events_for_api,
    parse_event_id,
    sources_for_organization,
    with_previous_secret_until,
)
from webhooks.services.body_search_slots import BodySearchBusy
from webhooks.services.delivery import DeliveryGone, DeliveryRetryError
from webhooks.services.destinations import (
    destination_replay_event,
    destination_retry_delivery,
    destination_set_paused,
)
from webhooks.services.operations import EventGone, NothingToDo, NothingToRetry, OperationError, bulk_retry_request

from . import schema, serializers
from .authentication import ApiView, Conflict, SearchBusy, SearchTimedOut

_DATABASE_ID = re.compile(r"[1-9][0-9]{0,17}")  # below 2**63: a bigint column never overflows
_PAGE_SIZE = re.compile(r"[0-9]{1,4}")


def _int_id(text: str) -> int:
    if not _DATABASE_ID.fullmatch(text):
        raise exceptions.NotFound("not found")
    return int(text)


def _uuid(text: str) -> uuid.UUID:
    found = parse_event_id(text)  # ASCII only, as _int_id
    if found is None:
        raise exceptions.NotFound("not found")
    return found


def absolute_url(path: str) -> str:
    """A URL the API sends (``Location``), absolute and starting with PUBLIC_BASE_URL, as the lists'
    ``next`` links: a client follows it as it is, and behind a proxy the Host header may be the proxy's."""
    return settings.PUBLIC_BASE_URL + path


def _found(lookup, **kwargs):
    """A tenant selector's object; another organization's is as unknown as one that never existed."""
    try:
        return lookup(**kwargs)
    except ObjectDoesNotExist:
        raise exceptions.NotFound("not found") from None


# What an id in a filter or a body names: the organization's objects of that kind, as its tenant
# selectors give them. Only their existence is asked: loading the row would decrypt a source's or
# a destination's secrets, or read an event's body, on every filtered list.
_ID_KINDS = {
    "source": sources_for_organization,
    "destination": destinations_for_organization,
    "event": event_rows_for_organization,
}


def _known_ids_or_invalid(organization, given: dict, fields: tuple[str, ...]) -> None:
    """Each of ``fields`` given is an id of the organization's, or a 400 on it ("no such source").
    Another organization's is as unknown as one that never existed, and 400, not 404: the path
    exists. A list's filter too: an empty page would read as "nothing there yet" for a mistyped id."""
    for field in fields:
        if field in given and not _ID_KINDS[field](organization=organization).filter(pk=given[field]).exists():
            raise exceptions.ValidationError({field: [f"no such {field}"]})


class NewestFirst(CursorPagination):
    """Keyset pages on the time-ordered id: a page never shifts when new rows arrive.

    Links start with PUBLIC_BASE_URL, like the ingest URLs: behind a proxy the Host header and the
    scheme of the request that reached Django may be the proxy's, not the address clients use.
    A cursor that is not one of ours is a bad query parameter (400), whatever its inside holds.
    """

    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def get_page_size(self, request) -> int:
        """``limit``, a whole number from 1 to max_page_size; anything else is a 400 on ``limit``
        (DRF would fall back to the default, or cap it, without saying so)."""
        given = request.query_params.get(self.page_size_query_param)
        if given is None:
            return self.page_size
        if not _PAGE_SIZE.fullmatch(given) or not 1 <= int(given) <= self.max_page_size:
            bounds = f"must be a whole number from 1 to {self.max_page_size} ({self.page_size} when not given)"
            raise exceptions.ValidationError({self.page_size_query_param: [bounds]})
        return int(given)

    def paginate_queryset(self, queryset, request, view=None):
        self.position_field = queryset.model._meta.pk
        page = super().paginate_queryset(queryset, request, view)
        self.base_url = settings.PUBLIC_BASE_URL + request.get_full_path()
        return page

    def get_paginated_response(self, data):
        """The same links as ``next`` and ``previous``, also as an RFC 8288 Link header."""
        response = super().get_paginated_response(data)
        links = [
            f'<{response.data[key]}>; rel="{relation}"'
            for key, relation in (("next", "next"), ("previous", "prev"))
            if response.data[key]
        ]
        if links:
            response["Link"] = ", ".join(links)
        return response

    def get_paginated_response_schema(self, schema):
        link = {"type": "string", "format": "uri", "nullable": True}
        return {
            "type": "object",
            "required": ["next", "previous", "results"],
            "properties": {
                "next": {**link, "description": "The next page's URL; null on the last page."},
                "previous": {**link, "description": "The previous page's URL; null on the first page."},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.cursor_query_param,
                "in": "query",
                "required": False,
                "description": "A page's position: take it from next or previous, never make one.",
                # An empty one is refused (decode_cursor), not read as the first page.
                "schema": {"type": "string", "minLength": 1},
            },
            {
                "name": self.page_size_query_param,
                "in": "query",
                "required": False,
                "description": "Rows per page.",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page_size, "default": self.page_size},
            },
        ]

    def decode_cursor(self, request):
        refusal = {self.cursor_query_param: ["not a cursor from this API: follow next or previous"]}
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                self.position_field.to_python(cursor.position)
        except (exceptions.NotFound, ValidationError):
            raise exceptions.ValidationError(refusal) from None
        # Every cursor these pages make holds a position (the id of a row: the orderings are on the
        # unique id, so DRF never needs an offset past rows of the same position) and no offset. One
        # without a position or with an offset was made by hand: DRF's base64 decoding drops what is
        # not base64, so "", "!!!" or a stray NUL decoded to a cursor without a position, read as the
        # first page again and again; and "o=N" skipped N rows (up to DRF's offset_cutoff) by an
        # OFFSET the database reads through, answering a "next" of an empty cursor, itself refused.
        # A position alone cannot reach further than the list's own filters and organization, which
        # the page is read under whatever the cursor says (as received_before bounds it).
        if cursor is not None and (cursor.position is None or cursor.offset):
            raise exceptions.ValidationError(refusal)
        return cursor


class OldestFirst(NewestFirst):
    ordering = "id"


class EventPages(NewestFirst):
    """The event list's pages, which a body search's add ``searched_back_to`` to (EventListView.body_search)."""

    def get_paginated_response_schema(self, schema):
        page = super().get_paginated_response_schema(schema)
        page["properties"]["searched_back_to"] = {
            "type": "string",
            "format": "date-time",
            "nullable": True,
            "description": "With body_contains only: the arrival time this page searched back to; null when no "
            "older event was left to read.",
        }
        return page


# How each id in a path is read. A segment that is no id of its kind names nothing: a 404, checked
# before the method, so that a mistyped path (POST deliveries/bulk_retry, taken for a delivery's id)
# is the API's "not found" rather than a 405 telling the caller the path exists.
_PATH_IDS = {
    "event_id": _uuid,
    "delivery_id": _uuid,
    "job_id": _int_id,
    "source_id": _int_id,
    "destination_id": _int_id,
}


class ApiObjectView(ApiView):
    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        for name, value in kwargs.items():
            if name in _PATH_IDS:
                _PATH_IDS[name](value)
        # A method the path does not take is dispatch's 405, whatever the query string holds: a 400
        # on its parameters would tell the caller to fix them, and the same call would fail again.
        if not self.handles(request.method):
            return
        # After the key's checks (401, 403, 429 first), as for any other refusal of the request.
        if not self.reads_query_parameters(request):
            serializers.NoQueryParameters(data=request.query_params).is_valid(raise_exception=True)

    def reads_query_parameters(self, request) -> bool:
        """Whether the handler reads the query string, and refuses a name it does not take, itself."""
        return False

    def handles(self, method: str) -> bool:
        """Whether this view has a handler for ``method`` (dispatch answers 405 otherwise)."""
        name = method.lower()
        return name in self.http_method_names and hasattr(self, name)

    def show(self, serializer_class, instance, status=200, **context):
        data = serializer_class(instance, context={"sees_everything": self.sees_everything, **context}).data
        return Response(data, status=status)

    def show_delivery(self, delivery) -> Response:
        """A delivery just queued (a retry, a replay): 202, and its URL to follow, as a bulk retry's."""
        response = self.show(serializers.DeliverySerializer, delivery, status=202)
        response["Location"] = absolute_url(reverse("api:delivery", kwargs={"delivery_id": delivery.pk}))
        return response

    def no_body(self, request) -> None:
        """An action that takes no body: none, or ``{}``; a field in a JSON body is a 400, not ignored.
        Another body is left unread, as before this check (some clients send an empty form)."""
        if request.content_type.partition(";")[0].strip().lower() == "application/json" and request.data:
            serializers.NoBody(data=request.data).is_valid(raise_exception=True)


class ApiListView(ApiObjectView):
    pagination_class = NewestFirst
    serializer_class = None
    filter_serializer_class = serializers.NoFilters
    id_filters: tuple[str, ...] = ()  # filters naming one of the organization's objects by its id

    def get_queryset(self, filters: dict):
        raise NotImplementedError

    def reads_query_parameters(self, request) -> bool:
        return request.method in ("GET", "HEAD")  # given_filters; a POST creating in the list takes none

    def get(self, request):
        return self.listed(request, self.given_filters(request))

    def listed(self, request, filters: dict) -> Response:
        paginator = self.pagination_class()
        page = self.prepared(paginator.paginate_queryset(self.get_queryset(filters), request, view=self))
        data = self.serializer_class(page, many=True, context={"sees_everything": self.sees_everything}).data
        return paginator.get_paginated_response(data)

    def prepared(self, page: list) -> list:
        """The page's rows, made ready to be shown (the rows of the page only, not of the whole list)."""
        return page

    def given_filters(self, request) -> dict:
        paginator = self.pagination_class
        also_takes = (paginator.cursor_query_param, paginator.page_size_query_param)
        given = self.filter_serializer_class(data=request.query_params, context={"also_takes": also_takes})
        given.is_valid(raise_exception=True)
        _known_ids_or_invalid(self.organization, given.validated_data, self.id_filters)
        return given.validated_data


@extend_schema_view(
    get=extend_schema(
        operation_id="events_list",
        summary="List events",
        description="Newest first; accepted events only unless status is rejected or all. body_contains searches "
        "a window of BODY_SEARCH_WINDOW events per page: a page may hold fewer than limit, or none, and still have "
        "a next; its answer adds searched_back_to.",
        parameters=[serializers.EventFilterSerializer],
        responses={
            200: serializers.EventSerializer(many=True),
            429: schema.error("The organization already runs BODY_SEARCH_CONCURRENCY body searches (search_busy)."),
            503: schema.error("The body search took longer than BODY_SEARCH_TIMEOUT_SECONDS (search_timed_out)."),
        },
    )
)
class EventListView(ApiListView):
    pagination_class = EventPages
    serializer_class = serializers.EventSerializer
    filter_serializer_class = serializers.EventFilterSerializer
    id_filters = ("source", "destination")

    def listed(self, request, filters: dict) -> Response:
        if "body_contains" in filters:
            return self.body_search(request, self.event_filters(filters))
        return super().listed(request, filters)

    def get_queryset(self, filters):
        return events_for_api(organization=self.organization, filters=self.event_filters(filters))

    @staticmethod
    def event_filters(filters: dict) -> EventFilters:
        return EventFilters(
            status=filters.get("status", ""),
            source_id=filters.get("source"),
            destination_id=filters.get("destination"),
            event_type=filters.get("event_type", ""),
            provider_event_id=filters.get("provider_event_id", ""),
            search=filters.get("search", ""),
            since=filters.get("received_after"),
            until=filters.get("received_before"),
            body_contains=filters.get("body_contains", ""),
        )

    def body_search(self, request, filters: EventFilters) -> Response:
        """One window of a body search (body_search_page), in the list's shape with
        ``searched_back_to``; ``next`` is a cursor like the list's, that goes on with the search."""
        paginator = self.pagination_class()
        paginator.position_field = WebhookEvent._meta.pk
        paginator.base_url = settings.PUBLIC_BASE_URL + request.get_full_path()
        cursor = paginator.decode_cursor(request)
        if cursor is not None and cursor.reverse:  # one with an offset is refused by decode_cursor
            raise exceptions.ValidationError(
                {paginator.cursor_query_param: ["a body search only goes back in time: follow next"]}
            )
        try:
            page = event_body_search_for_api(
                organization=self.organization,
                filters=filters,
                before=uuid.UUID(cursor.position) if cursor and cursor.position else None,
                limit=paginator.get_page_size(request),
            )
        except BodySearchTimedOut:
            raise SearchTimedOut(
                f"the body search took longer than {settings.BODY_SEARCH_TIMEOUT_SECONDS:g} s and was stopped:"
                " narrow it with received_after and received_before, source or event_type"
            ) from None
        except BodySearchBusy as busy:
            raise SearchBusy(
                busy.retry_after,
                detail="this organization already runs as many body searches as it may at once"
                f" ({settings.BODY_SEARCH_CONCURRENCY}): try again when one has ended.",
            ) from None
        next_link = None
        if page.next_before is not None:
            next_link = paginator.encode_cursor(Cursor(offset=0, reverse=False, position=str(page.next_before)))
        data = self.serializer_class(page.events, many=True, context={"sees_everything": self.sees_everything}).data
        response = Response(
            {
                "next": next_link,
                "previous": None,
                "searched_back_to": DateTimeField().to_representation(page.searched_back_to)
                if page.searched_back_to
                else None,
                "results": data,
            }
        )
        if next_link:
            response["Link"] = f'<{next_link}>; rel="next"'
        return response


@extend_schema_view(
    get=extend_schema(
        operation_id="events_retrieve",
        summary="Get an event",
        description="With its headers, its body, its deliveries with their attempts, and the destinations its "
        "payload or event-type filters leave it out of.",
        parameters=[schema.EVENT_ID],
        responses={200: serializers.EventDetailSerializer},
    )
)
class EventDetailView(ApiObjectView):
    def get(self, request, event_id: str):
        event = _found(event_detail_for_organization, organization=self.organization, event_id=_uuid(event_id))
        return self.show(
            serializers.EventDetailSerializer, event, signature_headers=configured_signature_header(event.source)
        )


@extend_schema_view(
    post=extend_schema(
        operation_id="events_replay",
        summary="Replay an event to a destination",
        description="A new delivery of the event to the destination.",
        parameters=[schema.EVENT_ID],
        request=serializers.ReplaySerializer,
        responses={
            202: OpenApiResponse(serializers.DeliverySerializer, description="The delivery, queued."),
            **schema.conflict("The event cannot be replayed to that destination now (conflict)."),
        },
    )
)
class EventReplayView(ApiObjectView):
    def post(self, request, event_id: str):
        event = _found(event_for_organization, organization=self.organization, event_id=_uuid(event_id))
        given = serializers.ReplaySerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            # One being deleted too: the replay refuses it with that reason (409), where "no such
            # destination" would say the id is wrong.
            destination = destinations_for_organization(organization=self.organization, with_being_deleted=True).get(
                pk=given.validated_data["destination"]
            )
        except ObjectDoesNotExist:
            raise exceptions.ValidationError({"destination": ["no such destination"]}) from None
        try:
            delivery = destination_replay_event(event=event, destination=destination, actor=self.api_key)
        except EventGone:  # deleted since it was found (its source's deletion, retention)
            raise exceptions.NotFound("not found") from None
        except OperationError as exc:
            raise Conflict(str(exc)) from None
        return self.show_delivery(delivery)


@extend_schema_view(
    get=extend_schema(
        operation_id="deliveries_list",
        summary="List deliveries",
        description="Newest first, each with its destination's name and its event's provider_event_id, "
        "event_type, source and received_at.",
        parameters=[serializers.DeliveryFilterSerializer],
        responses={200: serializers.DeliverySerializer(many=True)},
    )
)
class DeliveryListView(ApiListView):
    serializer_class = serializers.DeliverySerializer
    filter_serializer_class = serializers.DeliveryFilterSerializer
    id_filters = ("destination", "event")

    def get_queryset(self, filters):
        return deliveries_for_organization(
            organization=self.organization,
            status=filters.get("status", ""),
            destination_id=filters.get("destination"),
            event_id=filters.get("event"),
            received_after=filters.get("received_after"),
            received_before=filters.get("received_before"),
        )


@extend_schema_view(
    get=extend_schema(
        operation_id="deliveries_retrieve",
        summary="Get a delivery",
        description="With its attempts.",
        parameters=[schema.DELIVERY_ID],
        responses={200: serializers.DeliveryDetailSerializer},
    )
)
class DeliveryDetailView(ApiObjectView):
    def get(self, request, delivery_id: str):
        delivery = _found(
            delivery_detail_for_organization, organization=self.organization, delivery_id=_uuid(delivery_id)
        )
        return self.show(serializers.DeliveryDetailSerializer, delivery)


@extend_schema_view(
    post=extend_schema(
        operation_id="deliveries_retry",
        summary="Retry a delivery",
        description="One more attempt of a dead or waiting delivery. Takes no body, or {}.",
        parameters=[schema.DELIVERY_ID],
        request=None,
        responses={
            202: OpenApiResponse(serializers.DeliverySerializer, description="The delivery, queued."),
            **schema.conflict(
                "The delivery already succeeded or is being sent, or its destination, its event's source or its "
                "organization is being deleted (conflict)."
            ),
        },
    )
)
class DeliveryRetryView(ApiObjectView):
    def post(self, request, delivery_id: str):
        delivery = _found(delivery_for_organization, organization=self.organization, delivery_id=_uuid(delivery_id))
        self.no_body(request)
        try:
            delivery = destination_retry_delivery(delivery=delivery, actor=self.api_key)
        except DeliveryGone:  # deleted since it was found (its destination's deletion, retention)
            raise exceptions.NotFound("not found") from None
        except DeliveryRetryError as exc:
            raise Conflict(str(exc)) from None
        return self.show_delivery(delivery)


@extend_schema_view(
    post=extend_schema(
        operation_id="deliveries_bulk_retry",
        summary="Retry dead deliveries in bulk",
        description="The dead deliveries the filters name (none: every dead delivery of the organization's "
        "active destinations), retried by a job to follow at its Location.",
        request=serializers.BulkRetryCreateSerializer,
        responses={
            202: OpenApiResponse(serializers.BulkRetrySerializer, description="The job, queued."),
            **schema.conflict(
                "No dead delivery matches (nothing_to_retry); or a job that may take the same deliveries is "
                "queued or running, or the destination is inactive or the source being deleted (conflict)."
            ),
        },
    )
)
class DeliveryBulkRetryView(ApiObjectView):
    """The dashboard's bulk retry with the delivery list's filters: a job, followed at its URL."""

    def post(self, request):
        given = serializers.BulkRetryCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        _known_ids_or_invalid(self.organization, data, ("destination", "source"))
        filters = {
            "statuses": [data["status"]],
            **{key: data[key] for key in ("destination", "source", "received_after", "received_before") if key in data},
        }
        if data.get("event_type", "").strip():
            filters["event_type"] = data["event_type"].strip()
        try:
            job = bulk_retry_request(organization=self.organization, filters=filters, actor=self.api_key)
        except NothingToRetry as exc:
            raise Conflict(str(exc), code="nothing_to_retry") from None
        except OperationError as exc:
            raise Conflict(str(exc)) from None
        # Read again with its outcome (none yet), in the shape /bulk_retries/<id> shows it.
        job = bulk_retry_for_organization(organization=self.organization, job_id=job.pk)
        response = self.show(serializers.BulkRetrySerializer, job, status=202)
        response["Location"] = absolute_url(reverse("api:bulk_retry", kwargs={"job_id": job.pk}))
        return response


@extend_schema_view(
    get=extend_schema(
        operation_id="bulk_retries_list",
        summary="List bulk retry jobs",
        description="The organization's jobs (the API's and the dashboard's), newest first.",
        parameters=[serializers.BulkRetryFilterSerializer],
        responses={200: serializers.BulkRetrySerializer(many=True)},
    )
)
class BulkRetryListView(ApiListView):
    """Every job of the organization, newest first (the dashboard's too), in the detail's shape."""

    serializer_class = serializers.BulkRetrySerializer
    filter_serializer_class = serializers.BulkRetryFilterSerializer

    def get_queryset(self, filters):
        return bulk_retries_for_organization(organization=self.organization, status=filters.get("status", ""))


@extend_schema_view(
    get=extend_schema(
        operation_id="bulk_retries_retrieve",
        summary="Get a bulk retry job",
        description="To follow until status is done, and then for its outcome.",
        parameters=[schema.BULK_RETRY_ID],
        responses={200: serializers.BulkRetrySerializer},
    )
)
class BulkRetryDetailView(ApiObjectView):
    def get(self, request, job_id: str):
        job = _found(bulk_retry_for_organization, organization=self.organization, job_id=_int_id(job_id))
        return self.show(serializers.BulkRetrySerializer, job)


# Lists show hints only: loading the encrypted secret columns would decrypt them row by row (and stop at
# one that no key decrypts); SecretListed tries each listed row's current secret alone.
_SECRET_COLUMNS = ("secret", "previous_secret")
# A destination as read answers its custom headers' names and hints (custom_header_hints), never their
# values: left unread, so that a process without the key they were saved under (a key rollout) still
# answers reads; a change that needs them (merging custom_headers) loads them then.
_DESTINATION_SECRET_COLUMNS = (*_SECRET_COLUMNS, "custom_headers")


class SecretListed:
    """A list of sources or destinations that says "unreadable" where a row's hint was for a current
    secret that no key of this process decrypts, as reading that one row does: its token is read beside
    the row and tried (one decryption a row of the page, as the dashboard's sources list does), never
    kept. The hint alone, saved when the secret was set, cannot tell: readable is a matter of this
    process's keys. The previous secret and custom headers are not read (their state shows in no list
    field: previous_secret_valid_until is their expiry either way)."""

    def with_secret_tried(self, rows):
        return with_stored_tokens(rows, "secret")

    def prepared(self, page: list) -> list:
        for row in page:
            take_readable_secrets(row, load=False)
        return page


class SourceListView(SecretListed, ApiListView):
    serializer_class = serializers.SourceSerializer
    pagination_class = OldestFirst

    def get_queryset(self, filters):
        return self.with_secret_tried(
            with_previous_secret_until(sources_for_organization(organization=self.organization))
        )


class SourceDetailView(ApiObjectView):
    def get(self, request, source_id: str):
        # As the list reads it: when the previous secret ends from a plain column, decrypting nothing.
        return self.show(serializers.SourceSerializer, source_found(self.organization, source_id, to_show=True))


def source_found(organization, source_id: str, *, to_show: bool = False):
    """One source of the organization (404 otherwise), its secrets left unread until something asks
    for them: a process without the key they were saved under (a key rollout) still reads and deletes
    it, and a change that needs a secret loads it then. ``to_show``: with when the previous secret
    ends as the list reads it (an object about to change would show the value from before)."""
    sources = sources_for_organization(organization=organization)
    if to_show:
        sources = with_previous_secret_until(sources)
    return _with_unreadable_secrets_found(_found(with_stored_tokens(sources).get, pk=_int_id(source_id)))


def _with_unreadable_secrets_found(found):
    # Its secrets stay unread (load=False), but one that no key decrypts is found and named, so that
    # its read says "unreadable" where its hint was, and a change or rotation does not read it.
    take_readable_secrets(found, load=False)
    return found


def _with_subscriptions(destinations):
    # A source being deleted is hidden from the API (a 404, refused in "sources"), so not listed here
    # either: a script that PATCHes back the sources it read, plus one, would be refused for it.
    linked = Subscription.objects.filter(source__deletion_requested_at__isnull=True).order_by("source_id")
    return (
        with_previous_secret_until(destinations)
        .defer(*_DESTINATION_SECRET_COLUMNS)
        .prefetch_related(Prefetch("subscriptions", queryset=linked))
    )


class DestinationListView(SecretListed, ApiListView):
    serializer_class = serializers.DestinationSerializer
    pagination_class = OldestFirst

    def get_queryset(self, filters):
        return self.with_secret_tried(
            _with_subscriptions(destinations_for_organization(organization=self.organization))
        )


class DestinationLookup:
    def destination(self, destination_id: str, *, with_secrets: bool = True):
        destinations = destinations_for_organization(organization=self.organization)
        if not with_secrets:
            destinations = destinations.defer(*encrypted_field_names(Destination))
            return _found(_with_subscriptions(destinations).get, pk=_int_id(destination_id))
        found = _found(with_stored_tokens(_with_subscriptions(destinations)).get, pk=_int_id(destination_id))
        return _with_unreadable_secrets_found(found)


class DestinationDetailView(DestinationLookup, ApiObjectView):
    def get(self, request, destination_id: str):
        return self.show(serializers.DestinationSerializer, self.destination(destination_id))


@extend_schema_view(
    post=extend_schema(
        operation_id="destinations_pause",
        summary="Pause a destination",
        description="Its deliveries wait until it is resumed. Pausing a paused destination changes nothing and "
        "answers the same. Takes no body, or {}.",
        parameters=[schema.DESTINATION_ID],
        request=None,
        responses={200: serializers.DestinationSerializer},
    )
)
class DestinationPauseView(DestinationLookup, ApiObjectView):
    paused = True

    def post(self, request, destination_id: str):
        destination = self.destination(destination_id)
        self.no_body(request)
        try:
            destination_set_paused(
                destination=destination, paused=self.paused, actor=self.api_key, reason="paused through the API"
            )
        except NothingToDo:
            pass  # paused (or running) already: a script that repeats itself gets the same answer
        except OperationError:
            raise exceptions.NotFound("not found") from None  # deleted meanwhile
        return self.show(serializers.DestinationSerializer, self.destination(destination_id))


@extend_schema_view(
    post=extend_schema(
        operation_id="destinations_resume",
        summary="Resume a destination",
        description="Resuming a running destination changes nothing and answers the same. Takes no body, or {}.",
        parameters=[schema.DESTINATION_ID],
        request=None,
        responses={200: serializers.DestinationSerializer},
    )
)
class DestinationResumeView(DestinationPauseView):
    paused = False
