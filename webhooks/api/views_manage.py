"""The /api/v1/ endpoints that create, change and delete sources and destinations.

Only read-write keys get here (ApiKeyAccess refuses the others with 403), and each change goes
through the service the dashboard's view calls, with the key as the actor its audit entry names.
A secret is in a response only where the dashboard shows it once: when Hookline has just made it.
Each view extends the read view of the same path, which answers GET.
"""

from __future__ import annotations

from django.db import DatabaseError, IntegrityError, transaction
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions
from rest_framework.response import Response

from webhooks.fields import secrets_deferred
from webhooks.selectors import destinations_for_organization, sources_for_organization
from webhooks.services.destinations import (
    DELIVERY_POLICY_FIELDS,
    RECEIVES_NOTHING_WITHOUT_SOURCE,
    UNCHANGED,
    DestinationBeingDeleted,
    DestinationError,
    DestinationPreviousSecretStillValid,
    DestinationUrlCheckBusy,
    destination_create,
    destination_delete,
    destination_rotate_secret,
    destination_update,
)
from webhooks.services.operations import NothingToDo, OperationError, destination_send_waiting_now
from webhooks.services.sources import (
    SourceBeingDeleted,
    SourceError,
    SourceNetworksError,
    SourcePreviousSecretStillValid,
    source_create,
    source_delete,
    source_rotate_secret,
    source_set_active,
    source_update,
)

from . import schema, serializers, serializers_manage
from .authentication import Conflict, LookupsBusy
from .views import (
    ApiObjectView,
    DestinationDetailView,
    DestinationListView,
    DestinationLookup,
    SourceDetailView,
    SourceListView,
    absolute_url,
    source_found,
)


def _valid(serializer_class, request, **context) -> dict:
    given = serializer_class(data=request.data, context=context)
    given.is_valid(raise_exception=True)
    return given.validated_data


def _refused(message: str, field: str = "non_field_errors") -> exceptions.ValidationError:
    return exceptions.ValidationError({field: [message]})


def _lookups_busy(exc: DestinationUrlCheckBusy) -> LookupsBusy:
    """A 429 to send again, not a 400 on the URL: nothing is wrong with it, and with an
    Idempotency-Key a 400 would be kept, the retry getting it again (a 429 is not kept)."""
    return LookupsBusy(wait=exc.retry_after_seconds, detail=str(exc))


def _rotation_refused(exc: Exception, field: str) -> exceptions.APIException:
    """A rotation during an earlier one's overlap is a conflict to confirm with ``stop_previous``;
    anything else is the given secret's fault. Told by the service's error, not by the copy this
    view read: another rotation may have started since, and a wrong secret during an overlap is
    still the secret's fault (stop_previous would not help)."""
    if isinstance(exc, (SourcePreviousSecretStillValid, DestinationPreviousSecretStillValid)):
        return Conflict(f"{exc}: send stop_previous: true to rotate anyway")
    return _refused(str(exc), field)


def _linkable_sources(organization):
    """The sources a destination may be linked to, by id: their secrets unread (one that no key
    decrypts must not stop a change of a destination)."""
    return secrets_deferred(sources_for_organization(organization=organization))


class SourceLookup:
    def source(self, source_id: str, *, to_show: bool = False):
        return source_found(self.organization, source_id, to_show=to_show)


class SourceShowMixin(ApiObjectView):
    def show_source(self, source, status=200, **extra) -> Response:
        data = serializers.SourceSerializer(source, context={"sees_everything": self.sees_everything}).data
        return Response({**data, **extra}, status=status)


@extend_schema_view(
    get=extend_schema(
        operation_id="sources_list",
        summary="List sources",
        description="Oldest first.",
        responses={200: serializers.SourceSerializer(many=True)},
    ),
    post=extend_schema(
        operation_id="sources_create",
        summary="Create a source",
        description="Options as on the provider's source form (docs/providers.md). A provider that issues its "
        "secret may be created without one: it refuses every request until rotate_secret sets it.",
        request=serializers_manage.SourceCreateSerializer,
        responses={201: schema.SourceCreatedSerializer},
    ),
)
class SourceListCreateView(SourceShowMixin, SourceListView):
    def post(self, request):
        data = _valid(serializers_manage.SourceCreateSerializer, request)
        try:
            source, generated = source_create(
                organization=self.organization,
                provider=data["provider"],
                name=data["name"],
                secret=data.get("secret") or None,
                options=data["options"],
                # As on the dashboard: Stripe and others show their secret only once the ingest URL
                # is registered there, so the source may exist first (refusing every request).
                allow_unset_secret=True,
                allowed_networks=data["allowed_networks"],
                actor=self.api_key,
            )
        except SourceNetworksError as exc:
            raise _refused(str(exc), "allowed_networks") from None
        except SourceError as exc:
            raise _refused(str(exc)) from None
        response = self.show_source(source, status=201, **({"secret": generated} if generated else {}))
        response["Location"] = absolute_url(reverse("api:source", kwargs={"source_id": source.pk}))
        return response


@extend_schema_view(
    get=extend_schema(
        operation_id="sources_retrieve",
        summary="Get a source",
        parameters=[schema.SOURCE_ID],
        responses={200: serializers.SourceSerializer},
    ),
    patch=extend_schema(
        operation_id="sources_update",
        summary="Change a source",
        description="What is left out stays; options are merged into the current ones (null puts one back to "
        "its default); allowed_networks replaces the list.",
        parameters=[schema.SOURCE_ID],
        request=serializers_manage.SourceUpdateSerializer,
        responses={200: serializers.SourceSerializer},
    ),
    delete=extend_schema(
        operation_id="sources_destroy",
        summary="Delete a source",
        description="With its events, their deliveries and attempts, in the background: it stops receiving now "
        "and answers 404 from then on.",
        parameters=[schema.SOURCE_ID],
        responses={202: schema.SourceDeletingSerializer},
    ),
)
class SourceDetailManageView(SourceShowMixin, SourceLookup, SourceDetailView):
    def patch(self, request, source_id: str):
        # Its answer says when the previous secret ends as a read does (a PATCH changes no secret): asked of
        # the source, that decrypted the previous secret after the change was made, a 503 over a done change.
        source = self.source(source_id, to_show=True)
        data = _valid(serializers_manage.SourceUpdateSerializer, request, source=source)
        try:
            with transaction.atomic():
                if "name" in data or "options" in data or "allowed_networks" in data:
                    source_update(
                        source=source,
                        name=data.get("name", source.name),
                        options=data.get("options", source.options),
                        allowed_networks=data.get("allowed_networks"),
                        actor=self.api_key,
                    )
                if "active" in data:
                    source_set_active(source=source, active=data["active"], actor=self.api_key)
        except SourceBeingDeleted:  # asked meanwhile: hidden from now on
            raise exceptions.NotFound("not found") from None
        except SourceNetworksError as exc:
            raise _refused(str(exc), "allowed_networks") from None
        except SourceError as exc:
            raise _refused(str(exc)) from None
        except DatabaseError:  # its row was gone when saved: deleted meanwhile
            if not sources_for_organization(organization=self.organization).filter(pk=source.pk).exists():
                raise exceptions.NotFound("not found") from None
            raise
        return self.show_source(source)

    def delete(self, request, source_id: str):
        # The dashboard deletes a source with its events; so does this, in the background: the
        # source stops receiving now and is hidden from the API from then on (404).
        source = self.source(source_id)  # its secrets unread: one no key decrypts can still be deleted
        self.no_body(request)
        source_delete(source=source, actor=self.api_key)
        return Response({"id": source.pk, "state": "deleting"}, status=202)


@extend_schema_view(
    post=extend_schema(
        operation_id="sources_rotate_secret",
        summary="Rotate a source's secret",
        description="The previous secret is still accepted for keep_previous_for seconds.",
        parameters=[schema.SOURCE_ID],
        request=serializers_manage.SourceRotateSerializer,
        responses={
            200: schema.SourceRotatedSerializer,
            **schema.conflict("An earlier rotation's previous secret is still accepted: send stop_previous: true."),
        },
    )
)
class SourceRotateSecretView(SourceShowMixin, SourceLookup):
    def post(self, request, source_id: str):
        source = self.source(source_id)
        data = _valid(serializers_manage.SourceRotateSerializer, request, source=source)
        try:
            source, generated = source_rotate_secret(
                source=source,
                new_secret=data.get("secret") or None,
                overlap_seconds=data.get("keep_previous_for"),
                stop_previous=data["stop_previous"],
                actor=self.api_key,
            )
        except SourceBeingDeleted:  # asked meanwhile: hidden from now on
            raise exceptions.NotFound("not found") from None
        except SourceError as exc:
            raise _rotation_refused(exc, "secret") from None
        # previous_secret_valid_until is in the source as every read shows it.
        return self.show_source(source, **({"secret": generated} if generated else {}))


class DestinationShowMixin(DestinationLookup, ApiObjectView):
    def show_destination(self, destination_id, status=200, **extra) -> Response:
        """Read again with its subscriptions, as the read endpoints show it."""
        destination = self.destination(str(destination_id))
        data = serializers.DestinationSerializer(destination, context={"sees_everything": self.sees_everything}).data
        return Response({**data, **extra}, status=status)


@extend_schema_view(
    get=extend_schema(
        operation_id="destinations_list",
        summary="List destinations",
        description="Oldest first.",
        responses={200: serializers.DestinationSerializer(many=True)},
    ),
    post=extend_schema(
        operation_id="destinations_create",
        summary="Create a destination",
        request=serializers_manage.DestinationCreateSerializer,
        responses={
            201: schema.DestinationCreatedSerializer,
            **schema.conflict("A source it names was deleted meanwhile (conflict)."),
            429: schema.error(
                "The URL could not be checked now: the organization's earlier lookups still wait on their DNS "
                "(lookups_busy); send it again after Retry-After."
            ),
        },
    ),
)
class DestinationListCreateView(DestinationShowMixin, DestinationListView):
    def post(self, request):
        data = _valid(
            serializers_manage.DestinationCreateSerializer,
            request,
            sources=_linkable_sources(self.organization),
        )
        try:
            destination, secret = destination_create(
                organization=self.organization,
                name=data["name"],
                url=data["url"],
                sources=data["sources"],
                event_types=data["event_types"],
                timeout_seconds=data.get("timeout_seconds"),
                retry_client_errors=data["retry_client_errors"],
                custom_headers=data.get("custom_headers"),
                payload_filters=data.get("payload_filters"),
                actor=self.api_key,
                **{field: data.get(field) for field in DELIVERY_POLICY_FIELDS},
            )
        except DestinationUrlCheckBusy as exc:
            raise _lookups_busy(exc) from None
        except DestinationError as exc:
            # The other fields were checked above: what is left is the URL (as on the dashboard),
            # or a setting of the delivery policy, which the service names.
            raise _refused(str(exc), exc.field or "url") from None
        except IntegrityError:  # checked at the commit: a source it links to was deleted meanwhile
            raise Conflict(
                "a source it names was deleted, or the destination changed, meanwhile: read them again"
            ) from None
        warnings = _destination_warnings(destination, sources=data["sources"])
        response = self.show_destination(destination.pk, status=201, secret=secret, warnings=warnings)
        response["Location"] = absolute_url(reverse("api:destination", kwargs={"destination_id": destination.pk}))
        return response


@extend_schema_view(
    get=extend_schema(
        operation_id="destinations_retrieve",
        summary="Get a destination",
        parameters=[schema.DESTINATION_ID],
        responses={200: serializers.DestinationSerializer},
    ),
    patch=extend_schema(
        operation_id="destinations_update",
        summary="Change a destination",
        description="What is left out stays; sources replaces the list; null removes a policy limit; "
        "custom_headers are changes, as in a JSON merge patch (null removes a header).",
        parameters=[schema.DESTINATION_ID],
        request=serializers_manage.DestinationUpdateSerializer,
        responses={
            200: schema.DestinationChangedSerializer,
            **schema.conflict("A source it names was deleted meanwhile (conflict)."),
            429: schema.error(
                "The URL could not be checked now: the organization's earlier lookups still wait on their DNS "
                "(lookups_busy); send it again after Retry-After."
            ),
        },
    ),
    delete=extend_schema(
        operation_id="destinations_destroy",
        summary="Delete a destination",
        description="With its deliveries and their attempts, in the background; the events stay. Nothing more "
        "is sent to it from now on, and it answers 404 from then on.",
        parameters=[schema.DESTINATION_ID],
        responses={202: schema.DestinationDeletingSerializer},
    ),
)
class DestinationDetailManageView(DestinationShowMixin, DestinationDetailView):
    def patch(self, request, destination_id: str):
        destination = self.destination(destination_id)
        subscriptions = list(destination.subscriptions.all())
        data = _valid(
            serializers_manage.DestinationUpdateSerializer,
            request,
            sources=_linkable_sources(self.organization),
            has_sources=bool(subscriptions),
            destination=destination,
        )
        if "sources" in data:
            sources = data["sources"]
        else:
            current = [subscription.source_id for subscription in subscriptions]
            sources = list(_linkable_sources(self.organization).filter(pk__in=current))
        if "event_types" in data:
            event_types = data["event_types"]
        elif sources and subscriptions:
            event_types = subscriptions[0].event_types  # one set of patterns for all, as the form keeps it
        else:
            event_types = []  # no source left to filter the events of
        try:
            destination_update(
                destination=destination,
                name=data.get("name", destination.name),
                url=data.get("url", destination.url),
                sources=sources,
                event_types=event_types,
                timeout_seconds=data.get("timeout_seconds", destination.timeout_seconds),
                retry_client_errors=data.get("retry_client_errors"),
                custom_headers=data.get("custom_headers"),
                payload_filters=data.get("payload_filters", UNCHANGED),
                actor=self.api_key,
                **{field: data[field] for field in DELIVERY_POLICY_FIELDS if field in data},
            )
        except DestinationUrlCheckBusy as exc:
            raise _lookups_busy(exc) from None
        except DestinationBeingDeleted:  # asked meanwhile: hidden from now on
            raise exceptions.NotFound("not found") from None
        except DestinationError as exc:
            raise _refused(str(exc), exc.field or "url") from None
        except IntegrityError:  # checked at the commit: a source it links to was deleted meanwhile
            raise Conflict(
                "a source it names was deleted, or the destination changed, meanwhile: read them again"
            ) from None
        except DatabaseError:  # its own row was gone when saved: deleted meanwhile
            if not destinations_for_organization(organization=self.organization).filter(pk=destination.pk).exists():
                raise exceptions.NotFound("not found") from None
            raise
        # Also when the PATCH did not touch the sources: the answer says the state it leaves.
        return self.show_destination(destination.pk, warnings=_destination_warnings(destination, sources=sources))

    def delete(self, request, destination_id: str):
        # The dashboard's service, in the background: nothing more is sent to the destination from
        # now on, and it is hidden from the API from then on (404).
        destination = self.destination(destination_id, with_secrets=False)  # as a source's
        self.no_body(request)
        destination_delete(destination=destination, actor=self.api_key)
        return Response({"id": destination.pk, "state": "deleting"}, status=202)


def _destination_warnings(destination, *, sources) -> list[str]:
    """What a create or a change answers in `warnings`: as create_destination warns, nothing is
    delivered to a destination without a source."""
    if sources:
        return []
    return [
        f"{RECEIVES_NOTHING_WITHOUT_SOURCE} Link one with PATCH /api/v1/destinations/{destination.pk}"
        ' and {"sources": [<source id>]}.'
    ]


@extend_schema_view(
    post=extend_schema(
        operation_id="destinations_rotate_secret",
        summary="Rotate a destination's signing secret",
        description="Attempts are also signed with the previous secret for keep_previous_for seconds.",
        parameters=[schema.DESTINATION_ID],
        request=serializers_manage.DestinationRotateSerializer,
        responses={
            200: schema.DestinationRotatedSerializer,
            **schema.conflict("An earlier rotation's previous secret is still used: send stop_previous: true."),
        },
    )
)
class DestinationRotateSecretView(DestinationShowMixin):
    def post(self, request, destination_id: str):
        destination = self.destination(destination_id)
        data = _valid(serializers_manage.DestinationRotateSerializer, request)
        try:
            destination, secret = destination_rotate_secret(
                destination=destination,
                overlap_seconds=data.get("keep_previous_for"),
                stop_previous=data["stop_previous"],
                actor=self.api_key,
            )
        except DestinationBeingDeleted:  # asked meanwhile: hidden from now on
            raise exceptions.NotFound("not found") from None
        except DestinationError as exc:
            raise _rotation_refused(exc, "non_field_errors") from None
        return self.show_destination(destination.pk, secret=secret)


@extend_schema_view(
    post=extend_schema(
        operation_id="destinations_send_waiting_now",
        summary="Send a destination's waiting retries now",
        description="Takes no body, or {}.",
        parameters=[schema.DESTINATION_ID],
        request=None,
        responses={
            200: schema.WaitingSentNowSerializer,
            **schema.conflict("The destination is paused or inactive (conflict)."),
        },
    )
)
class DestinationSendWaitingNowView(DestinationLookup, ApiObjectView):
    """The dashboard's "send waiting retries now": 200 with how many were brought forward, 0 when none
    waited (a script that repeats itself is not refused); 409 for a paused or inactive destination."""

    def post(self, request, destination_id: str):
        destination = self.destination(destination_id)
        self.no_body(request)
        try:
            brought_forward = destination_send_waiting_now(destination=destination, actor=self.api_key)
        except NothingToDo:
            brought_forward = 0
        except OperationError as exc:
            if not destinations_for_organization(organization=self.organization).filter(pk=destination.pk).exists():
                raise exceptions.NotFound("not found") from None  # deleted meanwhile
            raise Conflict(str(exc)) from None
        return Response({"id": destination.pk, "brought_forward": brought_forward})
