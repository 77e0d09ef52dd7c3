from __future__ import annotations

import hashlib
from collections import Counter
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin
from webhooks.forms import EventFilterForm, FindEventForm, ReplayForm
from webhooks.models import Delivery, WebhookEvent
from webhooks.providers.registry import event_id_origin
from webhooks.selectors import (
    REJECTED_COUNT_LIMIT,
    BodySearchTimedOut,
    EventFilters,
    EventPage,
    configured_signature_header,
    delivery_for_organization,
    event_detail_for_organization,
    event_named_by_id,
    event_page,
    event_progress_for_organization,
    event_types_for_organization,
    events_since,
    headers_for_viewer,
    live_window_start,
    parse_event_id,
    pasted_id,
    rejected_count_beside_list,
    sources_counting_replays_by_body,
)
from webhooks.services.body_search_slots import BodySearchBusy
from webhooks.services.delivery import DeliveryRetryError
from webhooks.services.delivery_waits import delivery_waits, next_try_when
from webhooks.services.destinations import destination_replay_event, destination_retry_delivery
from webhooks.services.event_story import UNRECORDED_ATTEMPT, unrecorded_attempt_numbers
from webhooks.services.operations import OperationError
from webhooks.services.payload_filters import destinations_not_taking
from webhooks.services.text import readable_body
from webhooks.templatetags.dashboard import delivery_state

from .base import ChangeView, or_404


def either_of(names: list[str]) -> str:
    """ "GitHub", "GitHub or Linear", "Bitbucket, GitHub or Linear"; "" for none."""
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else ""


class EventFiltersMixin:
    def filter_form(self) -> EventFilterForm:
        form = EventFilterForm(self.request.GET or None, organization=self.organization)
        if form.is_bound:
            form.is_valid()
        return form

    def filter_query(self, **changed: str) -> str:
        """The current filters as a query string, without the paging cursors, with ``changed``."""
        query = self.request.GET.copy()
        for cursor in ("before", "after", "seen"):
            query.pop(cursor, None)
        for name, value in changed.items():
            query[name] = value
        return query.urlencode()


class EventListView(EventFiltersMixin, OrganizationMixin, TemplateView):
    template_name = "dashboard/events.html"

    def get_template_names(self):
        # A filter change made by htmx only needs the results, not the whole frame.
        if self.request.htmx and self.request.htmx.target == "event-results":
            return ["dashboard/_event_results.html"]
        return [self.template_name]

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = self.filter_form()
        before = parse_event_id(self.request.GET.get("before", ""))
        filters = form.to_filters()
        timed_out = busy = False
        try:
            page = event_page(organization=self.organization, filters=filters, before=before)
        except BodySearchTimedOut:
            page, timed_out = EventPage(events=[], next_before=None), True
        except BodySearchBusy:
            page, busy = EventPage(events=[], next_before=None), True
        # Live arrival only on the first page: a deeper page is history. Its newest rows are the
        # live ones, which every poll reads again (see live_window_start). A body search's results
        # are history too: one window, searched once.
        live_since = live_window_start()
        is_live = before is None and not filters.body_contains
        live = [event for event in page.events if event.id >= live_since] if is_live else []
        context.update(
            form=form,
            # An answer to the filters' own request brings them too, so that their boxes show what
            # applies. Not one to the empty list's poll ("Waiting for events…"), which asks with the
            # filters the page already shows: swapped every 5 s, they lost what was being typed.
            filters_oob=bool(self.request.htmx and self.request.htmx.trigger == "event-filters"),
            filters=filters,
            page=page,
            events=page.events,
            live_events=live,
            settled_events=page.events[len(live) :],
            is_first_page=before is None,
            is_live=is_live,
            body_search_timed_out=timed_out,
            body_search_timeout=settings.BODY_SEARCH_TIMEOUT_SECONDS,
            body_search_busy=busy,
            # "No event has the id …" rather than "No events match": the id was all that was asked.
            id_search_only=bool(filters.search) and filters == EventFilters(search=filters.search),
            id_read_as=pasted_id(filters.search),
            # An id nobody has may still be a request Hookline answered: one whose signed body was an
            # event's already stored, counted as its duplicate without keeping its own id.
            replays_counted_by_body=either_of(sources_counting_replays_by_body(organization=self.organization))
            if filters.search and not page.events and before is None
            else "",
            # A range that ended before now gets no new events: nothing to wait for.
            range_ended=filters.until is not None and filters.until <= timezone.now(),
            poll_after=live_since,
            poll_seen=page.events[0].id if page.events else live_since,
            query=self.filter_query(),
            event_types=event_types_for_organization(organization=self.organization),
            # On the first page: the others are history the first one already counted.
            rejected_beside=rejected_count_beside_list(organization=self.organization, filters=filters)
            if before is None
            else None,
            rejected_limit=REJECTED_COUNT_LIMIT,
            rejected_query=self.filter_query(status=WebhookEvent.Status.REJECTED),
        )
        return context


class FindEventView(OrganizationMixin, View):
    """The top bar's "find an event by id": straight to the event when the id names exactly one of
    the organization's, otherwise to the events list searching for it (several listed, or a note
    that none has it). Any member may, as any member reads events."""

    def get(self, request, *args, **kwargs):
        searched = request.GET.get("q", "")
        form = FindEventForm(request.GET)
        if form.is_valid() and (text := form.cleaned_data["q"].strip()):
            if (event_id := event_named_by_id(organization=self.organization, text=text)) is not None:
                return redirect("dashboard:event_detail", self.organization.slug, event_id)
        events = reverse("dashboard:events", args=[self.organization.slug])
        if not searched.strip():
            return redirect(events)
        # The list says what was searched, or why it was not (an id too long is "Not applied"). The
        # fragment puts the keyboard's next Tab on the first result, past the filters.
        return redirect(f"{events}?{urlencode({'q': searched})}#event-results")


class EventLiveView(EventFiltersMixin, OrganizationMixin, TemplateView):
    """Rows that arrived after ``after``, polled by the list's first page (htmx)."""

    template_name = "dashboard/_event_live.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        since = parse_event_id(self.request.GET.get("after", "")) or live_window_start()
        seen = parse_event_id(self.request.GET.get("seen", "")) or since
        form = self.filter_form()
        live = events_since(organization=self.organization, filters=form.to_filters(), since=since)
        for event in live.events:
            event.is_fresh = event.id > seen  # highlighted once, on the poll that first shows it
        context.update(
            events=live.events,
            truncated=live.truncated,
            poll_after=since,
            poll_seen=max([seen, *(event.id for event in live.events)]),
            arrived=sum(event.is_fresh for event in live.events),  # said to a screen reader (events.html)
            query=self.filter_query(),
        )
        return context


def _attempt_rows(delivery: Delivery) -> list[tuple[int, str, object]]:
    """Every attempt the delivery counts, in order, as (number, "recorded" | "unrecorded" |
    "being_sent", the attempt or None). A claim counts as an attempt when a worker takes it, before
    its answer is recorded: the header said "1 attempt" over "No attempt yet." while the first was
    on its way, and a worker killed mid-send left a number counted and never listed."""
    recorded = {attempt.attempt_number: attempt for attempt in delivery.attempts.all()}
    rows = [(number, "recorded", attempt) for number, attempt in recorded.items()]
    rows += [
        (number, "unrecorded", None)
        for number in unrecorded_attempt_numbers(
            attempt_count=delivery.attempt_count, status=delivery.status, recorded=set(recorded)
        )
    ]
    if delivery.status == Delivery.Status.IN_FLIGHT and delivery.attempt_count not in recorded:
        rows.append((delivery.attempt_count, "being_sent", None))
    # How long after the attempt before each one was sent: its time alone reads "just now" for
    # attempts seconds apart, and the exact moment is in a tooltip a phone or a keyboard never shows.
    previous = None
    for number in sorted(recorded):
        attempt = recorded[number]
        attempt.sent_after = (
            (previous, (attempt.started_at - previous.started_at).total_seconds() * 1000) if previous else None
        )
        previous = attempt
    return sorted(rows, key=lambda row: row[0])


class EventDeliveriesMixin:
    """The event page's deliveries section (dashboard/_event_deliveries.html): shown with the page,
    and swapped in place by the page's poll while a delivery is about to change."""

    def deliveries_context(self, event: WebhookEvent) -> dict:
        deliveries = list(event.deliveries.all())
        # A held delivery's "next try" is when the hold ends, not its time: a paused destination's
        # delivery due minutes ago read "next try 4 min ago" (the rule of delivery_waits).
        waits = delivery_waits(deliveries)
        for delivery in deliveries:
            delivery.next_try_when = next_try_when(delivery, waits.get(delivery.pk))
            delivery.attempt_rows = _attempt_rows(delivery)
        return {
            "event": event,
            "deliveries": deliveries,
            "now": timezone.now(),
            "not_taken": destinations_not_taking(event),
            "replay_form": ReplayForm(organization=self.organization) if self.has_role("admin") else None,
            "retriable": (Delivery.Status.DEAD, Delivery.Status.PENDING),
            "unrecorded_attempt": UNRECORDED_ATTEMPT,
            # While a delivery is about to change (a retry or replay just queued, an event not yet
            # processed), the section follows it: see EventProgressView.
            **event_progress(event),
        }


class EventDetailView(EventDeliveriesMixin, OrganizationMixin, TemplateView):
    template_name = "dashboard/event_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        event = or_404(event_detail_for_organization, organization=self.organization, event_id=kwargs["event_id"])
        context.update(
            self.deliveries_context(event),
            headers=headers_for_viewer(
                event.headers,
                sees_signatures=self.has_role("admin"),
                signature_headers=configured_signature_header(event.source),
            ),
            body=readable_body(event.body),
            provider_id_from=event_id_origin(event.source.provider, event.provider_event_id or ""),
        )
        return context


class EventReplayView(ChangeView):
    def post(self, request, *args, **kwargs):
        event = or_404(event_detail_for_organization, organization=self.organization, event_id=kwargs["event_id"])
        form = ReplayForm(request.POST, organization=self.organization)
        if not form.is_valid():
            messages.error(request, "Choose a destination of this organization.")
            return redirect("dashboard:event_detail", self.organization.slug, event.pk)
        try:
            destination_replay_event(event=event, destination=form.cleaned_data["destination"], actor=request.user)
        except OperationError as exc:
            return self.done(f"Not replayed: {exc}.", "dashboard:event_detail", event.pk, level=messages.ERROR)
        return self.done(queued_message("Replay", form.cleaned_data["destination"]), "dashboard:event_detail", event.pk)


class DeliveryRetryView(ChangeView):
    def post(self, request, *args, **kwargs):
        delivery = or_404(delivery_for_organization, organization=self.organization, delivery_id=kwargs["delivery_id"])
        try:
            destination_retry_delivery(delivery=delivery, actor=request.user)
        except DeliveryRetryError as exc:
            return self.done(f"Not retried: {exc}.", "dashboard:event_detail", delivery.event_id, level=messages.ERROR)
        return self.done(queued_message("Retry", delivery.destination), "dashboard:event_detail", delivery.event_id)


def queued_message(what: str, destination) -> str:
    """What a retry or replay just asked for. Nothing is sent to a paused destination: "queued" alone
    read as on its way, where the bulk retry's message (DestinationBulkRetryView) says it waits."""
    message = f"{what} to {destination.name} queued."
    if destination.paused_at:
        message += " The destination is paused: it is sent when you resume it."
    return message


# A retry due within this long is still followed live; a later one is left to the event page.
PROGRESS_FOLLOWS_RETRIES_DUE_WITHIN = timedelta(minutes=5)


def event_progress(event: WebhookEvent) -> dict:
    """What the test sender shows of an event on its way to the destinations (an event loaded with
    event_progress_for_organization): its deliveries, whether one is about to change (the fragment then
    keeps polling) and a fingerprint of their state, so a poll that finds nothing new swaps nothing."""
    deliveries = list(event.deliveries.all())
    soon = timezone.now() + PROGRESS_FOLLOWS_RETRIES_DUE_WITHIN

    def about_to_change(delivery: Delivery) -> bool:
        if delivery.status == Delivery.Status.IN_FLIGHT:
            return True
        return (
            delivery.status == Delivery.Status.PENDING
            and not delivery.destination.paused_at
            and (delivery.next_attempt_at is None or delivery.next_attempt_at <= soon)
        )

    moving = event.status == WebhookEvent.Status.RECEIVED or any(map(about_to_change, deliveries))
    for delivery in deliveries:
        # The wait of its cause, not its time alone: the panel says what is really going to happen.
        # (An attribute of its own: the event page's section sets next_try_when on the same objects.)
        delivery.progress_next_try = next_try_when(delivery, None)
    state = "|".join([event.status, str(moving), *map(_delivery_state_key, deliveries)])
    return {
        "progress_event": event,
        "progress_deliveries": deliveries,
        "progress_moving": moving,
        "progress_seen": _fingerprint(state),
        # Each delivery's state as shown, short, for the event page's poll to tell which changed (all
        # of them in one hash would not say which; their ids and states would not fit in a request
        # line for an event sent to a hundred destinations).
        "progress_shown": ".".join(_fingerprint(_delivery_state_key(delivery), 8) for delivery in deliveries),
    }


def _delivery_state_key(delivery: Delivery) -> str:
    # Whatever the fragments show or decide by: a destination paused meanwhile changes no delivery,
    # yet its "waits" note must appear and the polling end.
    # A put-back leaves its status and attempt count as they were: its cause tells it from a queued one.
    return (
        f"{delivery.pk}:{delivery.status}:{delivery.attempt_count}:{bool(delivery.destination.paused_at)}"
        f":{delivery.put_back_cause or ''}"
    )


def _fingerprint(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# More changed deliveries than this at once are counted by state rather than named one by one.
CHANGES_NAMED_AT_MOST = 3


def deliveries_change_said(
    deliveries: list[Delivery], shown: str, *, event: WebhookEvent, not_taken: bool = False
) -> str:
    """What a screen reader is told after the event page's deliveries changed in place: each delivery
    whose state is not one the page showed (``shown``, event_progress's progress_shown), as "Delivery
    to Billing: succeeded.", or counted by state when there are many; or, for an event processed into
    no delivery at all, that it was and why (``not_taken``: payload filters left it out), as the
    section then says."""
    if not deliveries:
        # Only an event being processed is followed without deliveries: its processing is the change.
        if event.status != WebhookEvent.Status.PROCESSED:
            return ""
        if not_taken:
            return "Processed: not sent to any destination; see why below."
        for_type = f" for {event.event_type}" if event.event_type else ""
        return f"Processed: no destination subscribes to this source{for_type}."
    was = set(shown.split("."))
    changed = [d for d in deliveries if _fingerprint(_delivery_state_key(d), 8) not in was]
    if len(changed) > CHANGES_NAMED_AT_MOST:
        counts = Counter(delivery_state(d) or "succeeded" for d in changed)
        return f"{len(changed)} deliveries changed: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + "."
    return " ".join(
        f"{'Replay' if d.is_replay else 'Delivery'} to {d.destination.name}: {delivery_state(d) or 'succeeded'}."
        for d in changed
    )


class EventProgressView(EventDeliveriesMixin, OrganizationMixin, TemplateView):
    """An event's delivery progress, polled by the test sender's result (htmx): 204 while unchanged.

    The event page polls it too (?follow=page) while a delivery is about to change, and once one has
    gets its deliveries section again, swapped in place, with what changed said to a screen reader:
    reloading the page put the focus back at its top and had the page read again from there."""

    template_name = "dashboard/_event_progress.html"

    def get(self, request, *args, **kwargs):
        event = or_404(event_progress_for_organization, organization=self.organization, event_id=kwargs["event_id"])
        progress = event_progress(event)
        if request.GET.get("seen") == progress["progress_seen"]:
            return HttpResponse(status=204)  # nothing new: htmx keeps the fragment and polls again
        if request.GET.get("follow") == "page":
            # The attempts, buttons and notes too: read as the event page reads them.
            event = or_404(event_detail_for_organization, organization=self.organization, event_id=event.pk)
            section = self.deliveries_context(event)
            section["change_said"] = deliveries_change_said(
                section["deliveries"],
                request.GET.get("shown", ""),
                event=event,
                not_taken=bool(section["not_taken"]),
            )
            return self.response_class(
                request=request,
                template="dashboard/_event_deliveries_changed.html",
                context=self.get_context_data(**section),
            )
        return self.render_to_response(self.get_context_data(**progress))
