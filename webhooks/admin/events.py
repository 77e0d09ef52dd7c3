"""Events, deliveries and attempts: find any event of any tenant, see why it failed, retry or replay it."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import OuterRef, Prefetch, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import ngettext

from organizations.admin import (
    AuditedAdminMixin,
    CappedCountPaginator,
    NoLookupsIntoHiddenValuesMixin,
    OrganizationFilter,
    ReadOnlyAdminMixin,
    action_outcomes,
)
from organizations.models import Organization
from webhooks.fields import secrets_deferred
from webhooks.models import Delivery, DeliveryAttempt, Destination, Subscription, WebhookEvent
from webhooks.selectors import (
    configured_signature_header,
    events_with_id,
    headers_for_viewer,
    parse_event_id,
    pasted_id,
)
from webhooks.services.delivery import DeliveryRetryError, delivery_retry
from webhooks.services.delivery_waits import DELIVERY_HOLDS, DELIVERY_WAITS, delivery_waits
from webhooks.services.event_story import UNRECORDED_ATTEMPT, unrecorded_attempt_numbers
from webhooks.services.operations import OperationError, event_replay
from webhooks.services.payload_filters import destinations_not_taking
from webhooks.services.processing import process_set_aside_events_now
from webhooks.services.text import readable_body, visible_text
from webhooks.templatetags.dashboard import response_extent

from .actions import ACTION_LIMIT, ReturnToObjectPageMixin, confirmation_page, confirmed
from .filters import (
    CompletedDateFilter,
    DestinationFilter,
    HasFailedDeliveriesFilter,
    ProcessingFilter,
    ProviderFilter,
    ReceivedDateFilter,
    ResponseStatusFilter,
    SourceFilter,
    StatusCodeFilter,
    failed_delivery_count_of,
)

FAILED_DELIVERY_STATUSES = (Delivery.Status.DEAD, Delivery.Status.PENDING)


def sees_signatures(request) -> bool:
    """Signature headers (a provider's, and ours on each attempt) shown whole to staff who may change
    events, as the dashboard shows them to admins and owners; masked for those who may only view
    (headers_for_viewer): a signature with its body is enough to send a request again."""
    return request.user.has_perm("webhooks.change_webhookevent")


class DeliveryActionPermissions:
    """Retrying and replaying write deliveries: they need a delivery permission, not just the view one.

    These admins are read-only (no change permission on their own rows), so the actions name
    their own permissions; superusers have them all.
    """

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("webhooks.change_delivery")

    def has_replay_permission(self, request) -> bool:
        return request.user.has_perm("webhooks.add_delivery")


def _retry_deliveries(model_admin, request, deliveries, *, noun: str):
    """Retry each delivery through the service (each one audited), after confirmation when several."""
    deliveries = deliveries.filter(status__in=FAILED_DELIVERY_STATUSES).exclude(
        status=Delivery.Status.PENDING, attempt_count=0
    )
    total = deliveries.count()
    outcomes = action_outcomes(request)
    # Said of each organization of the selection that has no failed delivery in it.
    outcomes.nothing_to_do(f"no failed deliveries in the selected {noun}")
    if total == 0:
        model_admin.message_user(request, f"No failed deliveries in the selected {noun}.", messages.WARNING)
        return None
    if total > ACTION_LIMIT:
        outcomes.refuse_all(f"{total} failed deliveries match, more than {ACTION_LIMIT}")
        model_admin.message_user(
            request,
            f"{total} failed deliveries match; narrow the selection to at most {ACTION_LIMIT} "
            "(or start a bulk retry for one organization).",
            messages.ERROR,
        )
        return None
    # A paused destination, or a suspended organization's, is sent nothing: its retried deliveries
    # wait until it is resumed, or the organization is active again.
    paused = dict(
        Destination.objects.filter(pk__in=deliveries.values("destination_id"), paused_at__isnull=False).values_list(
            "pk", "name"
        )
    )
    # Not one being deleted (inactive too): delivery_retry refuses its deliveries, they wait for nothing.
    suspended = dict(
        Organization.objects.filter(
            pk__in=deliveries.values("organization_id"), is_active=False, deletion_requested_at__isnull=True
        ).values_list("pk", "name")
    )
    if total > 1 and not confirmed(request):
        question = f"Send {total} failed deliveries again now?"
        of_live_organizations = deliveries.filter(organization__deletion_requested_at__isnull=True)
        held = of_live_organizations.filter(destination_id__in=paused).count() if paused else 0
        if held:
            question += " " + ngettext(
                "%(count)d of them belongs to a paused destination and waits until it is resumed.",
                "%(count)d of them belong to paused destinations and wait until those are resumed.",
                held,
            ) % {"count": held}
        held = (
            deliveries.filter(organization_id__in=suspended).exclude(destination_id__in=paused).count()
            if suspended
            else 0
        )
        if held:
            question += " " + ngettext(
                "%(count)d of them belongs to a suspended organization and waits until it is active again.",
                "%(count)d of them belong to suspended organizations and wait until those are active again.",
                held,
            ) % {"count": held}
        not_retried = deliveries.filter(organization__deletion_requested_at__isnull=False).count()
        if not_retried:
            question += " " + ngettext(
                "%(count)d of them belongs to an organization being deleted and is not retried.",
                "%(count)d of them belong to organizations being deleted and are not retried.",
                not_retried,
            ) % {"count": not_retried}
        preview = [
            f"{delivery.event} → {delivery.destination} ({delivery.get_status_display()})"
            for delivery in secrets_deferred(
                deliveries.select_related("event", "destination").defer("event__body"), "destination"
            )[:20]
        ]
        return confirmation_page(
            request,
            model_admin,
            deliveries,
            title="Retry failed deliveries?",
            question=question,
            button=f"Yes, retry {total} deliveries",
            preview=preview,
            total=total,
        )
    retried, refused = 0, []
    waiting = {"paused destination is resumed": [], "suspended organization is active again": []}
    for delivery in deliveries.select_related("organization"):
        try:
            delivery_retry(delivery=delivery, actor=request.user)
            retried += 1
            outcomes.add_done(delivery.organization_id, f"delivery {delivery.pk}")
            if delivery.destination_id in paused:
                waiting["paused destination is resumed"].append(paused[delivery.destination_id])
            elif delivery.organization_id in suspended:
                waiting["suspended organization is active again"].append(suspended[delivery.organization_id])
        except DeliveryRetryError as exc:
            refused.append(f"{delivery.pk}: {exc}")
            outcomes.add_refused(delivery.organization_id, f"delivery {delivery.pk}", str(exc))
    queued = ngettext(
        "%(count)d delivery queued for another attempt", "%(count)d deliveries queued for another attempt", retried
    ) % {"count": retried}
    waits = []
    for until, names in waiting.items():
        if not names:
            continue
        if retried == 1:
            which = "it waits until its"
        else:
            which = ngettext("%(count)d of them waits until its", "%(count)d of them wait until their", len(names)) % {
                "count": len(names)
            }
        waits.append(f"{which} {until} ({', '.join(sorted(set(names))[:10])})")
    if waits:
        model_admin.message_user(request, f"{queued}; {'; '.join(waits)}.", messages.WARNING)
    elif retried:  # none retried: only the refusals below, never a success
        model_admin.message_user(request, f"{queued}.", messages.SUCCESS)
    if refused:
        model_admin.message_user(request, "Not retried: " + "; ".join(refused[:10]), messages.WARNING)
    return None


# --- Events -----------------------------------------------------------------------------------

SHORT_ID_HEAD, SHORT_ID_TAIL = 14, 6


def shortened(value: str | None):
    """A long id as its start and end ("sha256:9f86d08…f00a08"), the full value in the title to hover or copy."""
    if not value:
        return None  # the admin's empty value
    if len(value) <= SHORT_ID_HEAD + SHORT_ID_TAIL + 1:
        return value
    return format_html(
        '<span class="hookline-short-id" title="{}">{}…{}</span>', value, value[:SHORT_ID_HEAD], value[-SHORT_ID_TAIL:]
    )


@admin.register(WebhookEvent)
class WebhookEventAdmin(
    NoLookupsIntoHiddenValuesMixin,
    ReturnToObjectPageMixin,
    DeliveryActionPermissions,
    AuditedAdminMixin,
    ReadOnlyAdminMixin,
    admin.ModelAdmin,
):
    # What an operator scans for comes first; the long ids last, so at 1280 px Status and Failed
    # deliveries are on screen. The source shows its provider ("Billing (stripe)"): no column of its own.
    list_display = (
        "received_at",
        "status_with_reason",
        "failed_deliveries",
        "organization",
        "source",
        "shown_event_type",
        "short_provider_event_id",
        "id",
        "duplicate_count",
    )
    list_display_links = ("received_at",)
    list_filter = (
        "status",
        ProviderFilter,
        OrganizationFilter,
        SourceFilter,
        HasFailedDeliveriesFilter,
        ProcessingFilter,
        ReceivedDateFilter,
    )
    # The search box; get_search_results decides what a term matches.
    search_fields = ("provider_event_id",)
    search_help_text = (
        "Exact: our event id, the provider's event id (also one a rejected request claimed), the webhook-id a "
        "destination received, or an organization's slug or name."
    )
    list_select_related = ("organization", "source")
    paginator = CappedCountPaginator
    show_full_result_count = False
    # Ids are time-ordered: sorting by anything else would sort millions of rows.
    sortable_by = ("id",)
    # Facet counts would run one COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    actions = ("retry_failed_deliveries", "replay_to_destinations", "process_set_aside_now")
    change_form_template = "admin/webhooks/webhookevent/change_form.html"
    EVENT_FIELDS = (
        "id",
        "organization",
        "source",
        "status",
        "shown_event_type",
        "shown_provider_event_id",
        "claimed_event_id_unverified",
        "received_at",
        "processed_at",
        "remote_ip",
        "duplicate_count",
        "last_duplicate_at",
        "rejection_code",
        "rejection_detail",
        "processing_problem",
    )
    fieldsets = (
        (None, {"fields": EVENT_FIELDS}),
        ("Headers", {"fields": ("headers_table",)}),
        ("Body", {"fields": ("body_pretty", "body_raw")}),
        ("Deliveries and attempts", {"fields": ("deliveries_with_attempts",)}),
    )
    # Events are evidence: every field is read-only.
    readonly_fields = (*EVENT_FIELDS, "headers_table", "body_pretty", "body_raw", "deliveries_with_attempts")

    def render_change_form(self, request, context, *args, **kwargs):
        # The page's Retry and Replay buttons post those actions: shown only to who may run them.
        context.update(can_retry=self.has_retry_permission(request), can_replay=self.has_replay_permission(request))
        return super().render_change_form(request, context, *args, **kwargs)

    @admin.display(description="Processing")
    def processing_problem(self, event: WebhookEvent) -> str:
        return event.processing_problem() or "—"

    def get_queryset(self, request):
        # Bodies and headers can be large; the list never shows them (the detail page loads them).
        # Nor its source's secrets: one that no key of this process decrypts must not stop the list.
        return secrets_deferred(
            super()
            .get_queryset(request)
            .select_related("organization", "source")  # with the deferral (see DeliveryAdmin.get_queryset)
            .defer("body", "headers")
            .annotate(failed_delivery_count=failed_delivery_count_of(OuterRef("pk"))),
            "source",
        )

    def get_object(self, request, object_id, from_field=None):
        # Not a UUID, or one in other digits than ASCII's: not found. The id parsed is looked up, not
        # the text: parse_event_id takes " <id>" (a pasted id), which the query refuses (a 500).
        event_id = parse_event_id(str(object_id))
        if event_id is None:
            return None
        events = secrets_deferred(WebhookEvent.objects.select_related("organization", "source"), "source")
        event = events.filter(pk=event_id).first()
        if event is not None:
            event.sees_signatures = sees_signatures(request)
        return event

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        # Exact matches only (a substring search over millions of bodies or ids cannot be fast):
        # any id the dashboard's search takes, across organizations, or an organization. The
        # organizations are looked up first: a join inside the OR would make PostgreSQL read every
        # event, newest first, testing each against both tables, instead of combining index lookups.
        matches = events_with_id(term, organization=None)
        organization_ids = list(
            Organization.objects.filter(Q(slug=term) | Q(name__iexact=term)).values_list("pk", flat=True)[:100]
        )
        if organization_ids:
            matches |= Q(organization_id__in=organization_ids)
        return queryset.filter(matches), False

    @admin.display(description="Status")
    def status_with_reason(self, obj):
        # A rejected request's reason is what the operator is asked about: on the row, not a click away.
        if obj.status == WebhookEvent.Status.REJECTED and obj.rejection_code:
            return format_html(
                '{} <span class="hookline-bad" title="{}">({})</span>',
                obj.get_status_display(),
                obj.rejection_detail,
                obj.rejection_code,
            )
        return obj.get_status_display()

    # A sender's type and ids with their control characters escaped (text.visible_text), as the
    # dashboard shows them: a right-to-left override would make one read as another.
    @admin.display(description="Event type")
    def shown_event_type(self, obj):
        return visible_text(obj.event_type)

    @admin.display(description="Provider event id")
    def shown_provider_event_id(self, obj):
        return visible_text(obj.provider_event_id) if obj.provider_event_id else "-"

    @admin.display(description="Provider event id")
    def short_provider_event_id(self, obj):
        # A rejected request has no verified id, only the one it claims: the operator searched by
        # it (the search matches it), so the row says it, marked as a claim.
        if not obj.provider_event_id and obj.claimed_event_id:
            return format_html("claims {}", shortened(visible_text(obj.claimed_event_id)))
        return shortened(obj.provider_event_id and visible_text(obj.provider_event_id))

    @admin.display(description="Event id it claims (not verified)")
    def claimed_event_id_unverified(self, obj):
        return visible_text(obj.claimed_event_id) if obj.claimed_event_id else "-"

    @admin.display(description="Failed deliveries", empty_value="")
    def failed_deliveries(self, obj):
        # Blank when none failed: a healthy event has nothing to look at (no red cross on every row).
        if not obj.failed_delivery_count:
            return None
        return format_html('<strong class="hookline-bad">{} failed</strong>', obj.failed_delivery_count)

    @admin.display(description="Headers")
    def headers_table(self, obj):
        headers = headers_for_viewer(
            obj.headers or {},
            sees_signatures=getattr(obj, "sees_signatures", False),
            signature_headers=configured_signature_header(obj.source),
        )
        return render_to_string("admin/webhooks/webhookevent/headers.html", {"headers": headers})

    @admin.display(description="Body (formatted)")
    def body_pretty(self, obj):
        body = readable_body(obj.body)  # JSON indented, form fields one per line; else as received
        return format_html('<pre class="hookline-body">{}</pre>', body.formatted or body.raw)

    @admin.display(description="Body (raw bytes)")
    def body_raw(self, obj):
        body = bytes(obj.body)
        return format_html(
            '<details><summary>{} bytes</summary><pre class="hookline-body">{}</pre></details>',
            len(body),
            body.decode("utf-8", "backslashreplace"),
        )

    @admin.display(description="Deliveries")
    def deliveries_with_attempts(self, obj):
        deliveries = list(
            secrets_deferred(obj.deliveries.select_related("destination"), "destination")
            .prefetch_related(Prefetch("attempts", queryset=DeliveryAttempt.objects.order_by("attempt_number")))
            .order_by("id")
        )
        # Why a pending one waits, as the retry messages, show_event and the API say it: a suspended
        # organization's delivery otherwise read as if it were on its way.
        waits = delivery_waits(deliveries)
        for delivery in deliveries:
            code = waits.get(delivery.pk)
            delivery.held = code in DELIVERY_HOLDS
            # The time is on the line already: "waits: it is sent at its next attempt time" says nothing more.
            delivery.waiting_for = DELIVERY_WAITS[code] if code and code != "next_attempt_time" else ""
            # Each attempt in order, with those counted but not on record (a worker killed mid-send)
            # said as such: "2 attempts" over one row left the operator guessing about the other.
            recorded = {attempt.attempt_number: attempt for attempt in delivery.attempts.all()}
            lost = unrecorded_attempt_numbers(
                attempt_count=delivery.attempt_count, status=delivery.status, recorded=set(recorded)
            )
            delivery.attempt_rows = sorted(
                [(number, attempt) for number, attempt in recorded.items()] + [(number, None) for number in lost],
                key=lambda row: row[0],
            )
        return render_to_string(
            "admin/webhooks/webhookevent/deliveries.html",
            {
                "deliveries": deliveries,
                "sees_signatures": getattr(obj, "sees_signatures", False),
                "not_taken": destinations_not_taking(obj),
                "unrecorded_attempt": UNRECORDED_ATTEMPT,
            },
        )

    @admin.action(description="Retry failed deliveries of the selected events", permissions=["retry"])
    def retry_failed_deliveries(self, request, queryset):
        deliveries = Delivery.objects.filter(event__in=queryset.values("pk"))
        return _retry_deliveries(self, request, deliveries, noun="events")

    @admin.action(description="Process the selected set-aside events now", permissions=["retry"])
    def process_set_aside_now(self, request, queryset):
        outcomes = action_outcomes(request)
        # Said of each organization of the selection none of whose events was brought forward.
        outcomes.nothing_to_do("not set aside, or already due")
        brought_forward_events = process_set_aside_events_now(queryset)
        for event_id, organization_id in brought_forward_events:
            outcomes.add_done(organization_id, f"event {event_id}")
        brought_forward = len(brought_forward_events)
        skipped = queryset.count() - brought_forward
        text = ngettext(
            "%(count)d set-aside event will be processed now",
            "%(count)d set-aside events will be processed now",
            brought_forward,
        ) % {"count": brought_forward}
        if skipped:
            text += "; " + ngettext(
                "%(count)d selected event was not set aside, or already due",
                "%(count)d selected events were not set aside, or already due",
                skipped,
            ) % {"count": skipped}
        self.message_user(request, f"{text}.", messages.SUCCESS if brought_forward else messages.WARNING)

    @admin.action(description="Replay selected events to destinations…", permissions=["replay"])
    def replay_to_destinations(self, request, queryset):
        events = list(secrets_deferred(queryset.select_related("organization", "source"), "source")[: ACTION_LIMIT + 1])
        outcomes = action_outcomes(request)
        if len(events) > ACTION_LIMIT:
            outcomes.refuse_all(f"more than {ACTION_LIMIT} events selected")
            self.message_user(request, f"Select at most {ACTION_LIMIT} events to replay.", messages.ERROR)
            return None
        organizations = {event.organization_id for event in events}
        destinations = secrets_deferred(
            Destination.objects.filter(organization_id__in=organizations).select_related("organization")
        )
        chosen = {value for value in request.POST.getlist("choice") if value.isascii() and value.isdigit()}
        if not confirmed(request) or not chosen:
            if confirmed(request):
                self.message_user(request, "Choose at least one destination.", messages.WARNING)
            # Pre-ticked: destinations that would have received at least one of the events
            # (its source subscribed, and the subscription's event-type filter lets it through).
            subscriptions = Subscription.objects.filter(source_id__in={event.source_id for event in events})
            subscribed = {
                subscription.destination_id
                for subscription in subscriptions
                for event in events
                if subscription.source_id == event.source_id and subscription.matches(event.event_type)
            }
            return confirmation_page(
                request,
                self,
                queryset,
                title="Replay events",
                question=ngettext(
                    "Send %(count)d event again, as a new delivery to each chosen destination of its "
                    "organization; its history is kept.",
                    "Send %(count)d events again as new deliveries. Each event goes only to the chosen "
                    "destinations of its own organization; the history is kept.",
                    len(events),
                )
                % {"count": len(events)},
                button="Replay",
                preview=[f"{event.organization.name} · {event}" for event in events[:20]],
                total=len(events),
                choices=[
                    (str(item.pk), f"{item.organization.name} · {item.name} ({item.url})", item.pk in subscribed)
                    for item in destinations
                ],
                choices_label="Destinations",
            )
        replayed, refused = 0, []
        targets = [destination for destination in destinations if str(destination.pk) in chosen]
        # Said of each organization none of whose destinations was chosen.
        outcomes.nothing_to_do("none of its destinations was chosen")
        for event in events:
            for destination in targets:
                if destination.organization_id != event.organization_id:
                    continue
                replay = f"event {event.pk} to destination {destination.pk}"
                try:
                    event_replay(event=event, destination=destination, actor=request.user)
                    replayed += 1
                    outcomes.add_done(event.organization_id, replay)
                except OperationError as exc:
                    refused.append(f"{event.pk}: {exc}")
                    outcomes.add_refused(event.organization_id, replay, str(exc))
        if replayed or not refused:
            queued = ngettext("%(count)d replay delivery queued.", "%(count)d replay deliveries queued.", replayed) % {
                "count": replayed
            }
            self.message_user(request, queued, messages.SUCCESS if replayed else messages.WARNING)
        if refused:
            self.message_user(request, "Not replayed: " + "; ".join(refused[:10]), messages.WARNING)
        return None


# --- Deliveries and attempts --------------------------------------------------------------------


@admin.display(description="Response kept")
def response_kept(attempt):
    """How much of its receiver's answer an attempt keeps, in the event page's words (response_extent)."""
    return response_extent(attempt) if attempt.response_body else None


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    # The answer's extent beside it, in the event page's words: whether the receiver's answer was cut
    # to its start (response_truncated) or is whole.
    fields = (
        "attempt_number",
        "started_at",
        "duration_ms",
        "response_status",
        "error",
        response_kept,
        "response_body",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# A failed delivery's last error in the list: enough for a timeout or an HTTP status and its reason,
# without one long error (up to 500 characters) widening every row.
LAST_ERROR_SHOWN_CHARS = 80


@admin.register(Delivery)
class DeliveryAdmin(
    ReturnToObjectPageMixin, DeliveryActionPermissions, AuditedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin
):
    list_display = (
        "id",
        "event_link",
        "organization",
        "destination",
        "status",
        "is_replay",
        "attempt_count",
        "next_attempt_at",
        "last_status_code",
        "last_error_short",
    )
    list_filter = ("status", OrganizationFilter, DestinationFilter, StatusCodeFilter, "is_replay", CompletedDateFilter)
    search_fields = ("=id",)
    search_help_text = (
        "Exact: a delivery id, any id the event search takes (ours or the webhook-id a destination received, "
        "the provider's) or a destination URL."
    )
    list_select_related = ("organization", "destination")
    paginator = CappedCountPaginator
    show_full_result_count = False
    sortable_by = ("id",)
    # Facet counts would run one COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    # The webhook-id its receiver got, and what a pending one waits for, next to the delivery's own fields.
    readonly_fields = [*(field.name for field in Delivery._meta.fields), "webhook_id", "waiting_for"]
    inlines = (DeliveryAttemptInline,)
    actions = ("retry_deliveries",)
    change_form_template = "admin/webhooks/delivery/change_form.html"

    def render_change_form(self, request, context, *args, **kwargs):
        context.update(can_retry=self.has_retry_permission(request))
        return super().render_change_form(request, context, *args, **kwargs)

    def get_queryset(self, request):
        # The list and the delivery's page name its destination, never its secrets: one that no key
        # of this process decrypts must not make them answer 503 (they are how an operator sees it).
        # Selected with the row here too, as the page shows it: fetched on its own, it would be whole. The
        # organization with it: the list's own select_related lost it (a query per row) once this deferred.
        return secrets_deferred(
            super().get_queryset(request).select_related("organization", "destination"), "destination"
        )

    @admin.display(description="webhook-id sent")
    def webhook_id(self, obj):
        return obj.message_id

    @admin.display(description="Last error", empty_value="")
    def last_error_short(self, obj):
        # The delivery's own column, read with the row (no query per row). What the sender wrote:
        # "timed out after 10 s", "HTTP 503: no retries left", a host name, never the URL's path,
        # query or credentials. Its start here, whole on hover and on the delivery's page.
        error = obj.last_error
        if not error:
            return None  # blank: a delivery that has not failed has nothing to read
        if len(error) <= LAST_ERROR_SHOWN_CHARS:
            return error
        return format_html('<span title="{}">{}…</span>', error, error[: LAST_ERROR_SHOWN_CHARS - 1])

    @admin.display(description="Waiting for")
    def waiting_for(self, obj):
        # The rule of the event page, show_event and the API (delivery_waits).
        code = delivery_waits([obj]).get(obj.pk)
        return f"{DELIVERY_WAITS[code]} ({code})" if code else None

    def get_search_results(self, request, queryset, search_term):
        text = search_term.strip()
        if not text:
            return queryset, False
        delivery_id = parse_event_id(pasted_id(text))  # any UUID, also in a pasted header line or URL
        if delivery_id is not None and queryset.filter(pk=delivery_id).exists():
            return queryset.filter(pk=delivery_id), False  # that delivery, not its event's others
        # Looked up first, each through its own index, then matched by id: inside one OR, joins or
        # subqueries would make PostgreSQL walk every delivery instead.
        event_ids = list(
            WebhookEvent.objects.filter(events_with_id(text, organization=None)).values_list("pk", flat=True)[:100]
        )
        destination_ids = list(Destination.objects.filter(url=text).values_list("pk", flat=True)[:100])
        return queryset.filter(Q(event_id__in=event_ids) | Q(destination_id__in=destination_ids)), False

    @admin.display(description="Event", ordering="event_id")
    def event_link(self, obj):
        url = reverse("admin:webhooks_webhookevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    @admin.action(description="Retry selected deliveries now", permissions=["retry"])
    def retry_deliveries(self, request, queryset):
        return _retry_deliveries(self, request, queryset, noun="deliveries")


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(
    NoLookupsIntoHiddenValuesMixin, DeliveryActionPermissions, AuditedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin
):
    list_display = (
        "id",
        "delivery_link",
        "organization",
        "attempt_number",
        "started_at",
        "duration_ms",
        "response_status",
        "error",
    )
    list_filter = (OrganizationFilter, ResponseStatusFilter)
    # Newest first by the attempt's own time-ordered id: the model's (delivery, attempt number)
    # order joins every attempt to its delivery and sorts them all before the first page.
    ordering = ("-id",)
    search_fields = ("=delivery__id",)
    search_help_text = "A delivery id (exact)."
    list_select_related = ("organization",)
    paginator = CappedCountPaginator
    show_full_result_count = False
    sortable_by = ("id",)
    # Facet counts would run one COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    # The headers it sent as the event's page shows them: our signature masked for view-only staff; and
    # whether its answer was cut in the event page's words, where a bare "Response truncated" box stood.
    readonly_fields = [
        {"request_headers": "sent_headers", "response_truncated": response_kept}.get(field.name, field.name)
        for field in DeliveryAttempt._meta.fields
    ]
    exclude = ("request_headers", "response_truncated")
    actions = ("retry_deliveries",)

    def get_object(self, request, object_id, from_field=None):
        attempt = super().get_object(request, object_id, from_field)
        if attempt is not None:
            attempt.sees_signatures = sees_signatures(request)
        return attempt

    @admin.display(description="Request headers sent")
    def sent_headers(self, obj):
        headers = headers_for_viewer(obj.request_headers or {}, sees_signatures=getattr(obj, "sees_signatures", False))
        return render_to_string("admin/webhooks/webhookevent/headers.html", {"headers": headers})

    def get_search_results(self, request, queryset, search_term):
        term = parse_event_id(search_term)
        if term is None:
            return (queryset.none() if search_term.strip() else queryset), False
        return queryset.filter(delivery_id=term), False

    @admin.display(description="Delivery", ordering="delivery_id")
    def delivery_link(self, obj):
        url = reverse("admin:webhooks_delivery_change", args=[obj.delivery_id])
        return format_html('<a href="{}">{}</a>', url, obj.delivery_id)

    @admin.action(description="Retry the deliveries of the selected attempts", permissions=["retry"])
    def retry_deliveries(self, request, queryset):
        deliveries = Delivery.objects.filter(pk__in=queryset.values("delivery_id"))
        return _retry_deliveries(self, request, deliveries, noun="attempts")
