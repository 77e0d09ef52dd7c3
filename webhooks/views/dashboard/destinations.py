from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib import messages
from django.db.models import Prefetch
from django.http import HttpResponse
from django.shortcuts import redirect
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin
from webhooks.fields import secrets_deferred
from webhooks.forms import DestinationForm, DestinationRotateSecretForm
from webhooks.models import BulkRetry, Subscription
from webhooks.selectors import (
    BulkRetryOutcome,
    bulk_retries_for_destination,
    destination_for_organization,
    destinations_for_organization,
    event_type_patterns_matching_nothing,
)
from webhooks.services.dashboard_stats import destination_health, destinations_health
from webhooks.services.delivery_waits import HELD_BY_PLATFORM_WHY, PUT_BACK_WAITS, delivery_hold
from webhooks.services.destinations import (
    DestinationError,
    destination_bulk_retry,
    destination_create,
    destination_delete,
    destination_rotate_secret,
    destination_set_paused,
    destination_update,
    retry_policy_words,
)
from webhooks.services.operations import (
    LEFT_OUT_BY_SOURCES,
    SEND_WAITING_NOW_LIMIT,
    NothingToDo,
    NothingToRetry,
    OperationError,
    destination_has_deliveries_to_retry,
    destination_held_by_platform_counts,
    destination_retrying_count,
    destination_send_waiting_now,
    destination_waiting_for_retry_count,
)
from webhooks.services.payload_filters import payload_filter_words
from webhooks.services.secrets import unreadable_secrets_found

from .base import ADMIN, ChangeView, or_404, posted_switch, secret_once_response


class DestinationMixin(OrganizationMixin):
    def get_destination(self, *, with_secrets: bool = True):
        return or_404(
            destination_for_organization,
            organization=self.organization,
            destination_id=self.kwargs["destination_id"],
            with_secrets=with_secrets,
        )

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if "destination" in context:
            context["unreadable"] = unreadable_secrets_found(context["destination"])
        return context


class DestinationListView(OrganizationMixin, TemplateView):
    template_name = "dashboard/destinations.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        # Neither their secrets nor their sources': the list shows none, and one that no key of this
        # process decrypts must not take the whole list down with it.
        subscriptions = secrets_deferred(Subscription.objects.select_related("source"), "source")
        destinations = list(
            secrets_deferred(destinations_for_organization(organization=self.organization, with_being_deleted=True))
            .prefetch_related(Prefetch("subscriptions", queryset=subscriptions))
            .order_by("name")
        )
        health = destinations_health(organization=self.organization, destinations=destinations)
        for destination in destinations:
            destination.health = health[destination.pk]
        context["destinations"] = destinations
        return context


# Error reports (a 500 mailed to ADMINS) leave out what was typed into the custom-headers box.
hides_custom_header_values = method_decorator(sensitive_post_parameters("custom_headers_set"), name="post")


@hides_custom_header_values
class DestinationCreateView(OrganizationMixin, TemplateView):
    template_name = "dashboard/destination_form.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        # "Add one" on a source's page comes with ?source=<id>: that source starts ticked.
        chosen = [value for value in request.GET.getlist("source") if value.isascii() and value.isdigit()]
        form = DestinationForm(organization=self.organization, initial={"sources": chosen} if chosen else None)
        return self.render_to_response(self.get_context_data(form=form, title="New destination"))

    def post(self, request, *args, **kwargs):
        form = DestinationForm(request.POST, organization=self.organization)
        if form.is_valid():
            try:
                destination, secret = destination_create(
                    organization=self.organization,
                    name=form.cleaned_data["name"],
                    url=form.cleaned_data["url"],
                    sources=form.cleaned_data["sources"],
                    event_types=form.cleaned_data["event_types"],
                    timeout_seconds=form.cleaned_data["timeout_seconds"],
                    retry_client_errors=form.cleaned_data["retry_client_errors"],
                    custom_headers=form.custom_header_changes(),
                    payload_filters=form.cleaned_data["payload_filters"],
                    actor=request.user,
                    **form.delivery_policy(),
                )
            except DestinationError as exc:
                form.add_service_error(exc)
            else:
                warn_of_patterns_matching_nothing(request, self.organization, form.cleaned_data["event_types"])
                # Shown in this response only: it is never stored in the clear or shown again.
                return secret_once_response(self, destination=destination, secret=secret, title="Destination created")
        return self.render_to_response(self.get_context_data(form=form, title="New destination"))


class DestinationDetailView(DestinationMixin, TemplateView):
    template_name = "dashboard/destination_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        destination = self.get_destination()
        context.update(
            destination=destination,
            health=destination_health(destination=destination),
            retry_policy=retry_policy_words(destination),
            payload_filters=[payload_filter_words(condition) for condition in destination.payload_filters],
            # Not a source being deleted: its subscriptions go with its rows, in the background, and its
            # page is a 404 from the start.
            # Named and linked only: their secrets stay unread (one no key decrypts must not stop this page).
            subscriptions=list(
                secrets_deferred(
                    destination.subscriptions.filter(source__deletion_requested_at__isnull=True).select_related(
                        "source"
                    ),
                    "source",
                )
            ),
            unreadable=unreadable_secrets_found(destination),
            **bulk_retry_progress(destination, self.organization),
            # The paused notice says from when its held deliveries are given up (services.lifecycle).
            paused_hold_days=settings.PAUSED_DESTINATION_HOLD_DAYS,
        )
        # The very set the button brings forward (every waiting delivery, however old its event),
        # counted up to the most one click brings forward: the number beside the button is what it does.
        waiting = destination_waiting_for_retry_count(destination=destination, limit=SEND_WAITING_NOW_LIMIT)
        context.update(waiting_for_retry=waiting, waiting_for_retry_capped=waiting >= SEND_WAITING_NOW_LIMIT)
        # Every retrying delivery, due or not, by the health card's rule: a retry whose time has come
        # but that no worker has taken yet is still retrying, not "nothing waiting".
        retrying = destination_retrying_count(destination=destination, limit=SEND_WAITING_NOW_LIMIT)
        context.update(retrying_here=retrying, retrying_here_capped=retrying >= SEND_WAITING_NOW_LIMIT)
        # Those the platform put back unsent are in neither count: they wait for the platform, not for the
        # tenant's endpoint, and are said apart, with why.
        held = destination_held_by_platform_counts(destination=destination, limit=SEND_WAITING_NOW_LIMIT)
        context.update(
            held_by_platform=[
                {"count": count, "why": HELD_BY_PLATFORM_WHY[PUT_BACK_WAITS[cause]]}
                for cause, count in sorted(held.items())
            ],
            held_by_platform_total=sum(held.values()),
            held_by_platform_capped=sum(held.values()) >= SEND_WAITING_NOW_LIMIT,
        )
        return context


def bulk_retry_progress(destination, organization) -> dict:
    """The destination's recent bulk retries with their outcomes, whether the fragment keeps polling
    and a fingerprint of what the fragment shows, so that a poll finding nothing new swaps nothing.

    It polls while a job is queued or running, and after that while some of a job's deliveries are
    being sent or due now (their outcome is on its way) and the destination is sent to: not while
    they wait for a resume, which may never come.
    """
    bulk_retries = bulk_retries_for_destination(destination=destination)
    for job in bulk_retries:
        job.outcome = BulkRetryOutcome.of(job)
    unfinished = any(job.status != BulkRetry.Status.DONE for job in bulk_retries)
    held = delivery_hold(destination=destination, organization=organization) is not None
    # The button is offered only when it has something to retry; read again with each poll, so that
    # it comes back once a failure does (or goes once a retry took them all).
    to_retry = destination_has_deliveries_to_retry(destination=destination)
    outcome_coming = not held and any((job.outcome_counts or {}).get("sending_now") for job in bulk_retries)
    # The pause changes the words ("queued" instead of "retried"), not the jobs.
    state = "|".join(
        [
            str(bool(destination.paused_at)),
            str(held),
            str(to_retry),
            *(f"{job.pk}:{job.status}:{job.retried}:{job.left_out}:{job.total}:{job.outcome}" for job in bulk_retries),
        ]
    )
    return {
        "bulk_retries": bulk_retries,
        "bulk_retry_unfinished": unfinished,
        "bulk_retry_following": unfinished or outcome_coming,
        "bulk_retry_held": held,
        "bulk_retry_to_do": to_retry,
        "bulk_retry_seen": hashlib.sha256(state.encode()).hexdigest()[:16],
    }


class DestinationBulkRetriesView(DestinationMixin, TemplateView):
    """The destination page's bulk retries, polled (htmx) while one is under way: 204 while unchanged."""

    template_name = "dashboard/_bulk_retries.html"

    def get(self, request, *args, **kwargs):
        destination = self.get_destination(with_secrets=False)  # its jobs and health: no secret shown
        progress = bulk_retry_progress(destination, self.organization)
        if request.GET.get("seen") == progress["bulk_retry_seen"]:
            return HttpResponse(status=204)  # nothing new: htmx keeps the fragment and polls again
        # Changed: the health cards follow (read again only now, not on every poll).
        health = destination_health(destination=destination)
        return self.render_to_response(self.get_context_data(destination=destination, health=health, **progress))


def warn_of_patterns_matching_nothing(request, organization, patterns: list[str]) -> None:
    """A filter that takes none of the types received so far is saved (the types may come later),
    with a warning: it is most often a typo."""
    for unmatched in event_type_patterns_matching_nothing(organization=organization, patterns=patterns):
        messages.warning(
            request,
            f"The event-type pattern “{unmatched}” takes none of the types received so far: compare it with the "
            "event types on the Events page, as the provider spells them.",
        )


@hides_custom_header_values
class DestinationEditView(DestinationMixin, TemplateView):
    template_name = "dashboard/destination_form.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        destination = self.get_destination()
        form = DestinationForm(organization=self.organization, destination=destination)
        return self.render_to_response(
            self.get_context_data(form=form, destination=destination, title=f"Edit {destination.name}")
        )

    def post(self, request, *args, **kwargs):
        destination = self.get_destination()
        form = DestinationForm(request.POST, organization=self.organization, destination=destination)
        if form.is_valid():
            try:
                destination_update(
                    destination=destination,
                    name=form.cleaned_data["name"],
                    url=form.cleaned_data["url"],
                    sources=form.cleaned_data["sources"],
                    event_types=form.cleaned_data["event_types"],
                    timeout_seconds=form.cleaned_data["timeout_seconds"],
                    retry_client_errors=form.cleaned_data["retry_client_errors"],
                    custom_headers=form.custom_header_changes(),
                    payload_filters=form.cleaned_data["payload_filters"],
                    actor=request.user,
                    **form.delivery_policy(),
                )
            except DestinationError as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, "Destination saved.")
                warn_of_patterns_matching_nothing(request, self.organization, form.cleaned_data["event_types"])
                return redirect("dashboard:destination_detail", self.organization.slug, destination.pk)
        return self.render_to_response(
            self.get_context_data(form=form, destination=destination, title=f"Edit {destination.name}")
        )


class DestinationRotateSecretView(DestinationMixin, TemplateView):
    template_name = "dashboard/destination_rotate.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        destination = self.get_destination()
        form = DestinationRotateSecretForm(destination=destination)
        return self.render_to_response(self.get_context_data(destination=destination, form=form))

    def post(self, request, *args, **kwargs):
        destination = self.get_destination()
        form = DestinationRotateSecretForm(request.POST, destination=destination)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(destination=destination, form=form))
        try:
            destination, secret = destination_rotate_secret(
                destination=destination,
                overlap_seconds=form.cleaned_data["overlap_seconds"],
                stop_previous=form.cleaned_data.get("stop_previous", False),
                actor=request.user,
            )
        except DestinationError as exc:
            form.add_error(None, str(exc))
            return self.render_to_response(self.get_context_data(destination=destination, form=form))
        return secret_once_response(self, destination=destination, secret=secret, title="New signing secret")


class DestinationDeleteView(DestinationMixin, TemplateView):
    template_name = "dashboard/destination_delete.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        return self.render_to_response(self.get_context_data(destination=self.get_destination(with_secrets=False)))

    def post(self, request, *args, **kwargs):
        # Without its secrets: one that no key decrypts must not keep it from being deleted.
        destination = self.get_destination(with_secrets=False)
        destination_delete(destination=destination, actor=request.user)
        messages.success(
            request,
            f"Destination “{destination.name}” is being deleted: nothing more is sent to it, and its delivery "
            "history is deleted in the background, then it leaves this list.",
        )
        return redirect("dashboard:destinations", self.organization.slug)


class DestinationSetPausedView(DestinationMixin, ChangeView):
    def post(self, request, *args, **kwargs):
        destination = self.get_destination()
        paused = posted_switch(request, "paused")
        try:
            destination_set_paused(destination=destination, paused=paused, actor=request.user)
        except NothingToDo as exc:  # a second click, or a page older than the last change
            return self.done(
                f"Nothing to do: {exc}.", "dashboard:destination_detail", destination.pk, level=messages.INFO
            )
        except OperationError as exc:
            return self.done(
                f"Not changed: {exc}.", "dashboard:destination_detail", destination.pk, level=messages.ERROR
            )
        return self.done(
            "Destination paused: deliveries wait until you resume it."
            if paused
            else "Destination resumed: waiting deliveries are being sent.",
            "dashboard:destination_detail",
            destination.pk,
        )


class DestinationBulkRetryView(DestinationMixin, ChangeView):
    def post(self, request, *args, **kwargs):
        destination = self.get_destination()
        try:
            job = destination_bulk_retry(destination=destination, actor=request.user)
        except NothingToRetry as exc:
            # Not an error, and not the service's "no delivery matches" (this page has no filters).
            return self.done(
                (
                    f"Nothing to retry: the {exc.left_out} failed "
                    f"{'delivery' if exc.left_out == 1 else 'deliveries'} to this destination "
                    f"{'is' if exc.left_out == 1 else 'are'} left out, {LEFT_OUT_BY_SOURCES}."
                )
                if exc.left_out
                else "Nothing to retry: no delivery to this destination is out of retries.",
                "dashboard:destination_detail",
                destination.pk,
                level=messages.INFO,
            )
        except OperationError as exc:
            return self.done(
                f"Not retried: {exc}.", "dashboard:destination_detail", destination.pk, level=messages.ERROR
            )
        deliveries = f"{job.to_retry} failed {'delivery' if job.to_retry == 1 else 'deliveries'}"
        if destination.paused_at:
            # Nothing is sent to a paused destination: "retrying" would say they are on their way.
            message = (
                f"Queued {deliveries} for another try. The destination is paused: "
                f"{'it is' if job.to_retry == 1 else 'they are'} sent when you resume it."
            )
        else:
            message = f"Retrying {deliveries} in the background."
        if job.left_out:
            message += f" {job.left_out} left out: {LEFT_OUT_BY_SOURCES}."
        return self.done(message, "dashboard:destination_detail", destination.pk)


class DestinationSendWaitingNowView(DestinationMixin, ChangeView):
    """Deliveries waiting for a later retry are sent now (after the receiver was fixed)."""

    def post(self, request, *args, **kwargs):
        destination = self.get_destination()
        try:
            count = destination_send_waiting_now(destination=destination, actor=request.user)
        except NothingToDo as exc:  # sent meanwhile, or a page older than the last change
            return self.done(
                f"Nothing to do: {exc}.", "dashboard:destination_detail", destination.pk, level=messages.INFO
            )
        except OperationError as exc:
            return self.done(f"Not sent: {exc}.", "dashboard:destination_detail", destination.pk, level=messages.ERROR)
        message = f"Sending {count} waiting {'delivery' if count == 1 else 'deliveries'} now."
        if count >= SEND_WAITING_NOW_LIMIT:
            message += " More are waiting: send again to bring the rest forward."
        return self.done(message, "dashboard:destination_detail", destination.pk)
