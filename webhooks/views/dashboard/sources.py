from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin
from webhooks.fields import encrypted_field_names, take_readable_secrets, with_stored_tokens
from webhooks.forms import SourceCreateForm, SourceEditForm, SourceRotateSecretForm, TestEventForm
from webhooks.models import Destination, WebhookEvent
from webhooks.providers.registry import PROVIDERS, UnknownProvider, get_provider
from webhooks.selectors import (
    event_progress_for_organization,
    recent_events_for_source,
    rejected_requests_for_source,
    source_for_organization,
    sources_for_organization,
)
from webhooks.services.rejected_records import rejected_not_kept
from webhooks.services.sample_sender import SampleSenderError, fixtures_for_provider
from webhooks.services.secret_use import secret_use_during_overlap
from webhooks.services.secrets import current_secret_replaceable_unread, secret_is_set, unreadable_secrets_found
from webhooks.services.source_testing import source_send_test_event
from webhooks.services.sources import (
    SourceBeingDeleted,
    SourceError,
    SourceNetworksError,
    ingest_url,
    source_change_delay,
    source_create,
    source_delete,
    source_rotate_secret,
    source_set_active,
    source_update,
)

from .base import ADMIN, or_404, posted_switch, secret_once_response
from .events import event_progress


class SourceMixin(OrganizationMixin):
    def get_source(self, *, with_secrets: bool = True):
        # Its secrets that no key decrypts are left unread (source.unreadable_secrets): its pages say so.
        return or_404(
            source_for_organization,
            organization=self.organization,
            source_id=self.kwargs["source_id"],
            with_secrets=with_secrets,
        )

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if "source" in context:
            context["unreadable"] = unreadable_secrets_found(context["source"])
        return context


class SourceListView(OrganizationMixin, TemplateView):
    template_name = "dashboard/sources.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        # Their secrets' hints (columns of their own), never the secrets: one that no key of this process
        # decrypts must not take the whole list down with it, and is shown as "unreadable" (each token is
        # tried, none kept: load=False).
        sources = list(
            with_stored_tokens(
                sources_for_organization(organization=self.organization, with_being_deleted=True), "secret"
            ).order_by("name")
        )
        for source in sources:
            take_readable_secrets(source, load=False)
            source.provider_label = (
                PROVIDERS[source.provider].label if source.provider in PROVIDERS else source.provider
            )
        context["sources"] = sources
        return context


class ProviderPickerView(OrganizationMixin, TemplateView):
    """Step one of connecting a provider: every registered provider, with what it needs."""

    template_name = "dashboard/source_providers.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["providers"] = sorted(PROVIDERS.values(), key=lambda provider: provider.label.lower())
        return context


class SourceCreateView(OrganizationMixin, TemplateView):
    template_name = "dashboard/source_form.html"
    required_role = ADMIN

    def dispatch(self, request, *args, **kwargs):
        try:
            self.provider = get_provider(kwargs["provider"])
        except UnknownProvider:
            raise Http404("No such provider") from None
        return super().dispatch(request, *args, **kwargs)

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        return self.render_to_response(self.get_context_data(form=SourceCreateForm(provider=self.provider)))

    def post(self, request, *args, **kwargs):
        form = SourceCreateForm(request.POST, provider=self.provider)
        if form.is_valid():
            try:
                source, generated = source_create(
                    organization=self.organization,
                    provider=self.provider.kind,
                    name=form.cleaned_data["name"],
                    secret=form.cleaned_data.get("secret") or None,
                    options=form.cleaned_options(),
                    allow_unset_secret=True,
                    allowed_networks=form.cleaned_data["allowed_networks"],
                    actor=request.user,
                )
            except SourceNetworksError as exc:
                form.add_error("allowed_networks", str(exc))
            except SourceError as exc:
                form.add_error(None, str(exc))
            else:
                if self.provider.uses_secret and not source.secret:
                    messages.warning(
                        request,
                        f"Source “{source.name}” created without a signing secret: register its URL at "
                        f"{self.provider.label}, then set the secret it shows. Until then every request is refused.",
                    )
                    return redirect("dashboard:source_detail", self.organization.slug, source.pk)
                if generated:
                    # Shown in this response only: it is never stored in the clear or shown again.
                    return secret_once_response(self, source=source, secret=generated, title="Source created")
                messages.success(request, f"Source “{source.name}” created. Point {self.provider.label} at its URL.")
                return redirect("dashboard:source_detail", self.organization.slug, source.pk)
        return self.render_to_response(self.get_context_data(form=form))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.setdefault("title", f"Connect {self.provider.label}")
        context["provider"] = self.provider
        return context


class SourceDetailView(SourceMixin, TemplateView):
    template_name = "dashboard/source_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        source = self.get_source()
        provider = PROVIDERS.get(source.provider)
        context.update(
            source=source,
            provider=provider,
            ingest_url=ingest_url(source),
            recent_events=recent_events_for_source(source=source),
            rejected=rejected_requests_for_source(source=source, limit=5),
            fixtures=fixtures_for_provider(source.provider),
            # Named and linked only: their secrets and custom headers stay unread (undecryptable on a
            # process without the key they were saved under). Not one being deleted: its subscriptions
            # go with its rows, in the background, and its page is a 404 from the start.
            destinations=list(
                source.subscriptions.filter(destination__deletion_requested_at__isnull=True)
                .select_related("destination")
                .defer(*(f"destination__{name}" for name in encrypted_field_names(Destination)))
            ),
            secret_use=secret_use_during_overlap(source),
            not_kept=rejected_not_kept(source),
            unreadable=unreadable_secrets_found(source),
        )
        return context


class SourceRejectedView(SourceMixin, TemplateView):
    template_name = "dashboard/source_rejected.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        source = self.get_source(with_secrets=False)  # the requests refused, not the secret
        context.update(
            source=source,
            rejected=rejected_requests_for_source(source=source, limit=100),
            not_kept=rejected_not_kept(source),
        )
        return context


class SourceEditView(SourceMixin, TemplateView):
    template_name = "dashboard/source_edit.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        source = self.get_source()
        return self.render_to_response(self.get_context_data(source=source, form=SourceEditForm(source=source)))

    def post(self, request, *args, **kwargs):
        source = self.get_source()
        form = SourceEditForm(request.POST, source=source)
        if form.is_valid():
            networks_changed = form.cleaned_data["allowed_networks"] != source.allowed_networks
            try:
                source_update(
                    source=source,
                    name=form.cleaned_data["name"],
                    options=form.cleaned_options(),
                    allowed_networks=form.cleaned_data["allowed_networks"],
                    actor=request.user,
                )
            except SourceNetworksError as exc:
                form.add_error("allowed_networks", str(exc))
            except SourceError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(
                    request,
                    f"Source saved; its allowed networks apply {source_change_delay()}."
                    if networks_changed
                    else "Source saved.",
                )
                return redirect("dashboard:source_detail", self.organization.slug, source.pk)
        return self.render_to_response(self.get_context_data(source=source, form=form))


class SourceRotateSecretView(SourceMixin, TemplateView):
    template_name = "dashboard/source_rotate.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        source = self.get_source()
        form = SourceRotateSecretForm(provider=get_provider(source.provider), source=source)
        return self.render_to_response(self.get_context_data(source=source, form=form))

    def post(self, request, *args, **kwargs):
        source = self.get_source()
        form = SourceRotateSecretForm(request.POST, provider=get_provider(source.provider), source=source)
        # One that no key decrypts is replaced, not rotated: the message says the new one is set.
        had_secret = secret_is_set(source) and not current_secret_replaceable_unread(source)
        if form.is_valid():
            try:
                source, generated = source_rotate_secret(
                    source=source,
                    new_secret=form.cleaned_data["new_secret"] or None,
                    overlap_seconds=form.cleaned_data["overlap_seconds"],
                    stop_previous=form.cleaned_data.get("stop_previous", False),
                    actor=request.user,
                )
            except SourceError as exc:
                form.add_error(None, str(exc))
            else:
                if generated:
                    return secret_once_response(
                        self, source=source, secret=generated, title="New signing secret", rotated=had_secret
                    )
                delay = source_change_delay()
                messages.success(
                    request,
                    f"Secret rotated; it now ends in {source.secret_hint} and is used for every request {delay}."
                    if had_secret
                    else f"Signing secret set (ending in {source.secret_hint}): requests signed with it are "
                    f"accepted {delay}.",
                )
                return redirect("dashboard:source_detail", self.organization.slug, source.pk)
        return self.render_to_response(self.get_context_data(source=source, form=form))


class SourceSetActiveView(SourceMixin, TemplateView):
    """Stop or resume receiving. Stopping loses what providers send meanwhile, so it is confirmed
    on its own page (GET); resuming is one click."""

    template_name = "dashboard/source_stop.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        source = self.get_source()
        if not source.is_active:
            return redirect("dashboard:source_detail", self.organization.slug, source.pk)
        return self.render_to_response(self.get_context_data(source=source))

    def post(self, request, *args, **kwargs):
        source = self.get_source()
        active = posted_switch(request, "active")
        try:
            source_set_active(source=source, active=active, actor=request.user)
        except SourceBeingDeleted:
            raise Http404("no such source") from None
        messages.success(
            request,
            f"Receiving again: its URL accepts requests {source_change_delay()}."
            if active
            else f"Stopped: its URL answers 404 ({source_change_delay()}) until it receives again.",
        )
        return redirect("dashboard:source_detail", self.organization.slug, source.pk)


class SourceDeleteView(SourceMixin, TemplateView):
    template_name = "dashboard/source_delete.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        return self.render_to_response(self.get_context_data(source=self.get_source(with_secrets=False)))

    def post(self, request, *args, **kwargs):
        # Without its secret: one that no key decrypts must not keep it from being deleted.
        source = self.get_source(with_secrets=False)
        source_delete(source=source, actor=request.user)
        messages.success(
            request,
            f"Source “{source.name}” is being deleted: its URL answers 404 {source_change_delay()}, "
            "and its events are deleted in the background, then it leaves this list.",
        )
        return redirect("dashboard:sources", self.organization.slug)


class SourceTestView(SourceMixin, TemplateView):
    """The simulator: sign a sample or an edited payload as the provider would and post it to us."""

    template_name = "dashboard/source_test.html"
    required_role = ADMIN

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        # Providers that sign with their own private key get the reason and the alternative, not a form.
        context["provider"] = PROVIDERS.get(context["source"].provider)
        return context

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        source = self.get_source()
        return self.render_to_response(self.get_context_data(source=source, form=TestEventForm(source=source)))

    def post(self, request, *args, **kwargs):
        source = self.get_source()
        form = TestEventForm(request.POST, source=source)
        result = send_error = None
        if form.is_valid():
            try:
                result = source_send_test_event(
                    source=source,
                    fixture=form.cleaned_data["fixture"] or None,
                    body=form.cleaned_data["payload"],
                    actor=request.user,
                )
            except SampleSenderError as exc:
                # Said beside the form rather than in it: no field of the form is wrong.
                send_error = str(exc)
        progress = {}
        if result is not None and result.event is not None:
            try:
                event = event_progress_for_organization(organization=self.organization, event_id=result.event.pk)
            except WebhookEvent.DoesNotExist:  # deleted since (its source, or retention): the answer stands
                result.event = None
            else:
                progress = event_progress(event)
        context = self.get_context_data(source=source, form=form, result=result, send_error=send_error, **progress)
        if request.htmx:
            self.template_name = "dashboard/_test_result.html"
        return self.render_to_response(context)
