"""Sources, destinations and bulk retry jobs. Secrets are write-only: only their hint is ever rendered."""

from __future__ import annotations

from secrets import token_urlsafe

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import BigIntegerField, OuterRef, Q, Subquery
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.http import HttpResponseRedirect
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.crypto import constant_time_compare
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext
from django.views.decorators.debug import sensitive_post_parameters

from config.formats import to_the_second
from organizations.admin import (
    AuditedAdminMixin,
    CountsWhatADeletionTakesMixin,
    NoLookupsIntoHiddenValuesMixin,
    OrganizationFilter,
    ReadOnlyAdminMixin,
    SavesOnlyItsFormsFieldsMixin,
    action_outcomes,
)
from webhooks.fields import (
    SecretNotReadable,
    decrypt_for_one_look,
    encrypt,
    secrets_deferred,
    take_readable_secrets,
    with_stored_tokens,
)
from webhooks.forms import (
    RETRY_SCHEDULE_HELP,
    AllowedNetworksField,
    CustomHeadersMixin,
    NameField,
    PayloadFiltersField,
    RetryScheduleField,
)
from webhooks.models import BulkRetry, Delivery, Destination, Source, Subscription
from webhooks.providers.base import InvalidOptions
from webhooks.providers.registry import UnknownProvider, get_provider
from webhooks.selectors import BulkRetryOutcome, options_for_viewer, with_bulk_retry_outcomes
from webhooks.services.delivery import DESTINATION_SENDING
from webhooks.services.delivery_waits import delivery_hold
from webhooks.services.destinations import (
    DELIVERY_POLICY_FIELDS,
    DestinationError,
    destination_bulk_retry,
    destination_check_delivery_policy,
    destination_check_secret,
    destination_check_url,
    destination_contents,
    destination_delete,
    destination_rotate_secret,
    destination_set_custom_headers,
)
from webhooks.services.operations import (
    LEFT_OUT_BY_SOURCES,
    NothingToDo,
    NothingToRetry,
    OperationError,
    destination_pause,
    destination_resume,
)
from webhooks.services.rejected_records import rejected_not_kept
from webhooks.services.secret_use import secret_use_during_overlap
from webhooks.services.secrets import SIGNING_SECRET_FIELDS, previous_secret_described, previous_secret_valid_until
from webhooks.services.source_deletion import source_contents
from webhooks.services.sources import (
    SourceError,
    ingest_url,
    source_awaits_secret,
    source_change_delay,
    source_check_secret,
    source_create,
    source_delete,
    source_rotate_secret,
    source_set_active,
)
from webhooks.services.text import visible_text
from webhooks.views.one_look import secret_not_readable_yet

from .actions import (
    ReturnToObjectPageMixin,
    confirmation_page,
    confirmed,
    send_waiting_now,
)
from .filters import DestinationFilter, SourceProviderFilter

NEW_SECRETS_SESSION_KEY = "hookline_admin_new_secrets"

# A rotation refused by replace_secret: the current secret was stored after this process started,
# most likely by one with a key being deployed, which reads it.
CURRENT_SECRET_NOT_READABLE_YET = (
    "not rotated: its current secret cannot be read by this server yet (most likely stored by one that "
    "already has an encryption key being deployed); nothing of it was changed: rotate it again once every "
    "server has the new key"
)


class OneTimeSecretsMixin:
    """New secrets made by an admin action are shown once, on a page of their own.

    Post/redirect/get, as in the dashboard: were they shown in the action's own response,
    reloading that page would send the action again and rotate a second time.
    """

    def one_time_secret_page(
        self, request, *, title: str, shown: list[tuple[str, str]], ingest_urls: list[str] | None = None
    ) -> HttpResponseRedirect:
        """``ingest_urls``, for sources, one per secret: the provider's form asks for both (GitHub's
        Payload URL and Secret), so they are shown together, as the dashboard does."""
        request.session[NEW_SECRETS_SESSION_KEY] = {
            "token": (token := token_urlsafe(16)),
            "title": title,
            # Sessions live in the database: secrets are kept there encrypted, for one look. So are
            # the ingest URLs, which work as credentials too.
            "shown": [(label, encrypt(secret)) for label, secret in shown],
            "ingest_urls": [encrypt(url) for url in ingest_urls or []],
        }
        opts = self.model._meta
        return redirect(f"admin:{opts.app_label}_{opts.model_name}_new_secrets", token)

    def confirm_stopping_older_secrets(self, request, queryset):
        """Rotating again during an earlier rotation's overlap stops the older secret at once: asked
        first, on a confirmation page (None when nothing selected is in an overlap, or once confirmed)."""
        if confirmed(request):
            return None
        overlapping = []
        # Their secrets read as stored: an older secret that no key of this process decrypts (a key
        # retired too early) is named as such, as on the dashboard, instead of making this a 503.
        for item in with_stored_tokens(queryset.select_related("organization"), *SIGNING_SECRET_FIELDS):
            take_readable_secrets(item)
            if (until := previous_secret_valid_until(item)) is not None:
                overlapping.append(
                    f"{item.organization.name} · {item}: the older secret ({previous_secret_described(item)}) "
                    f"works until {to_the_second(until)}"
                )
        if not overlapping:
            return None
        return confirmation_page(
            request,
            self,
            queryset,
            title="Stop older secrets now?",
            question="These are still in an earlier rotation's overlap. Only one older secret is kept, so rotating "
            "again stops it at once, whoever still signs or verifies with it:",
            button="Rotate, and stop the older secrets now",
            preview=overlapping[:20],
            total=len(overlapping),
        )

    def get_urls(self):
        opts = self.model._meta
        return [
            path(
                "new-secrets/<str:token>/",
                self.admin_site.admin_view(self.new_secrets_view),
                name=f"{opts.app_label}_{opts.model_name}_new_secrets",
            ),
            *super().get_urls(),
        ]

    def new_secrets_view(self, request, token: str):
        kept = request.session.get(NEW_SECRETS_SESSION_KEY)
        if not kept or not constant_time_compare(kept["token"], token):
            self.message_user(request, "New secrets are shown only once; rotate again to get new ones.", messages.INFO)
            opts = self.model._meta
            return redirect(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        secrets = [secret for _, secret in kept["shown"]]
        urls = kept.get("ingest_urls", [])  # a page kept by the release before has none
        readable = decrypt_for_one_look(secrets + urls)
        if readable is None:
            return secret_not_readable_yet()
        del request.session[NEW_SECRETS_SESSION_KEY]
        readable_secrets, readable_urls = readable[: len(secrets)], readable[len(secrets) :] or [""] * len(secrets)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": kept["title"],
            "shown": [
                (label, secret, url)
                for (label, _), secret, url in zip(kept["shown"], readable_secrets, readable_urls, strict=True)
            ],
        }
        response = TemplateResponse(request, "admin/hookline/new_secrets.html", context)
        add_never_cache_headers(response)
        return response


# --- Sources -----------------------------------------------------------------------------------


def secret_not_readable_here(exc: SecretNotReadable) -> str:
    """What a field that needs a stored secret shows when this process cannot decrypt it: the
    page still answers, and says why (never the token)."""
    reason = (
        "it is damaged" if exc.malformed else "most likely a key is being deployed, or this server's keys are wrong"
    )
    return f"— (the stored secret cannot be decrypted with this server's FIELD_ENCRYPTION_KEYS: {reason})"


class SourceAdminForm(forms.ModelForm):
    new_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Set a new signing secret. The old one keeps verifying during the rotation window.",
    )

    stop_previous = forms.BooleanField(
        required=False,
        label="Stop the older secret now",
        help_text="Needed only to set a new secret while an earlier rotation's older secret still works: "
        "only one older secret is kept, so that one stops at once.",
    )
    # Checked by the service's check, as on the dashboard; saving it clears this process's cached
    # copy of the source, and other web processes read it again within INGEST_SOURCE_CACHE_SECONDS.
    allowed_networks = AllowedNetworksField()

    class Meta:
        model = Source
        fields = ("organization", "provider", "name", "options", "allowed_networks", "is_active")
        field_classes = {"name": NameField}  # as on the dashboard: a name goes into email subjects

    def clean_options(self):
        options = self.cleaned_data.get("options") or {}
        provider_kind = self.cleaned_data.get("provider") or (self.instance.provider if self.instance.pk else "")
        try:
            return get_provider(provider_kind).clean_options(options)
        except UnknownProvider:
            raise forms.ValidationError(f"unknown provider '{provider_kind}'") from None
        except InvalidOptions as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is not None:
            # Locked until the admin's transaction (its change view's) commits: a deletion asked for
            # after the page loaded is refused here, and one asked for now waits for this save.
            live = Source.objects.select_for_update(no_key=True).filter(
                pk=self.instance.pk, deletion_requested_at__isnull=True
            )
            if not live.exists():
                raise forms.ValidationError("This source is being deleted: it can no longer be changed.")
        _check_secret_with_provider(self, "new_secret", cleaned.get("provider") or self.instance.provider)
        return cleaned


def _check_secret_with_provider(form: forms.ModelForm, field: str, provider: str | None) -> None:
    # Checked with the form, so that a refused secret saves nothing and says why once, on its field.
    secret = form.cleaned_data.get(field)
    if secret and provider and "options" in form.cleaned_data:
        try:
            source_check_secret(provider=provider, secret=secret, options=form.cleaned_data["options"])
        except SourceError as exc:
            form.add_error(field, str(exc))


class SourceAddForm(forms.ModelForm):
    """A new source, made by source_create as create_source and the dashboard make it."""

    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The provider's signing secret (Stripe's whsec_…, GitHub's webhook secret…). Empty: generated "
        "and shown once where Hookline issues it; where the provider issues it, every request is refused "
        "until it is set here.",
    )

    allowed_networks = AllowedNetworksField()

    class Meta:
        model = Source
        fields = ("organization", "provider", "name", "options", "allowed_networks")
        field_classes = {"name": NameField}
        help_texts = {"options": "The provider's options as JSON ({} for its defaults): docs/providers.md lists them."}

    clean_options = SourceAdminForm.clean_options

    def clean(self):
        cleaned = super().clean()
        _check_secret_with_provider(self, "secret", cleaned.get("provider"))
        return cleaned


@admin.register(Source)
class SourceAdmin(
    NoLookupsIntoHiddenValuesMixin,
    OneTimeSecretsMixin,
    CountsWhatADeletionTakesMixin,
    AuditedAdminMixin,
    SavesOnlyItsFormsFieldsMixin,
    admin.ModelAdmin,
):
    form = SourceAdminForm
    deletion_for_superusers_only = "a source's events and deliveries (platform admins only)"
    list_display = ("name", "organization", "provider", "secret_hint", "state", "created_at")
    list_filter = (SourceProviderFilter, OrganizationFilter, "is_active")
    search_fields = ("name", "organization__name", "organization__slug")
    list_select_related = ("organization",)
    readonly_fields = (
        "ingest_url_display",
        "secret_hint",
        "previous_secret_expires_at",
        "secret_use_display",
        "rejected_not_kept_display",
    )
    fields = (
        "organization",
        "provider",
        "name",
        "options",
        "allowed_networks",
        "is_active",
        "ingest_url_display",
        "secret_hint",
        "new_secret",
        "stop_previous",
        "previous_secret_expires_at",
        "secret_use_display",
        "rejected_not_kept_display",
    )
    actions = ("rotate_secret",)

    @admin.display(description="State", ordering="is_active")
    def state(self, obj):
        if obj.being_deleted:
            return format_html(
                '<strong class="hookline-being-deleted">being deleted</strong> ({} rows deleted so far)',
                f"{sum((obj.deletion_progress or {}).values()):,}",
            )
        if source_awaits_secret(obj):  # as the dashboard says: "receiving" would hide that all is refused
            return "waiting for its secret"
        return "receiving" if obj.is_active else "stopped"

    def has_change_permission(self, request, obj=None):
        # Nothing to change on its way out; above all it must not be made active again.
        if obj is not None and obj.being_deleted:
            return False
        return super().has_change_permission(request, obj)

    def deletion_contents(self, obj):
        return source_contents(source=obj)

    # In place of Django's deletion (and AuditedAdminMixin's entry for it): the service writes the
    # audit entry, and the deletion's end writes another (see source_deletion).
    def delete_model(self, request, obj):
        source_delete(source=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for source in queryset.select_related("organization"):
            source_delete(source=source, actor=request.user)

    def response_delete(self, request, obj_display, obj_id):
        self.message_user(
            request,
            f"Deletion of “{obj_display}” is under way: it receives nothing any more, and its events are being "
            "deleted in the background. It stays in this list, marked “being deleted”, until that is done.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:webhooks_source_changelist"))

    def get_queryset(self, request):
        # The list and the page show the secret's hint (a column of its own), never the secret: one
        # that no key of this process decrypts must not make them answer 503. What reads a secret
        # (the rotation's overlap, a rotation) reads it then.
        return secrets_deferred(super().get_queryset(request).select_related("organization"))

    def get_object(self, request, object_id, from_field=None):
        source = super().get_object(request, object_id, from_field)
        if source is not None:
            # Shown as the dashboard and the API show them: a URL's user:password@, which clean_options
            # drops since (the provider signs without it) but a source saved before may hold, left out.
            source.options = options_for_viewer(source.options)
        return source

    def get_readonly_fields(self, request, obj=None):
        # A source's provider and organization are part of its identity once it exists.
        fixed = ("organization", "provider") if obj is not None else ()
        return (*self.readonly_fields, *fixed)

    @admin.display(description="Ingest URL")
    def ingest_url_display(self, obj):
        if not obj.pk:
            return "—"
        url = ingest_url(obj)
        return format_html(
            '<code id="ingest-url-{}">{}</code> '
            '<button type="button" class="button hookline-copy" data-copy="{}">Copy</button>',
            obj.pk,
            url,
            url,
        )

    @admin.display(description="Since the rotation")
    def secret_use_display(self, obj):
        try:
            use = secret_use_during_overlap(obj) if obj.pk else None
        except SecretNotReadable as exc:
            return secret_not_readable_here(exc)
        if use is None:
            return "— (no rotation overlap running)"
        # The dashboard's own words (and time format), so that admins and tenants read the same.
        return render_to_string("dashboard/_secret_use.html", {"secret_use": use})

    @admin.display(description="Rejected requests not kept")
    def rejected_not_kept_display(self, obj):
        not_kept = rejected_not_kept(obj) if obj.pk else None
        if not_kept is None:
            return "none"
        # The dashboard's own words, as for the rotation above.
        return render_to_string("dashboard/_rejected_not_kept.html", {"not_kept": not_kept})

    add_fields = ("organization", "provider", "name", "options", "allowed_networks", "secret")

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else super().get_fields(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = SourceAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj, form, change):
        if not change:
            self._create(request, obj, form)
            return
        stopping_or_resuming = "is_active" in form.changed_data
        if stopping_or_resuming:
            # Through source_set_active, as the dashboard's Stop and Resume: its source.paused or
            # source.resumed entry, not a field in the admin's own "changed" one (changed_data is
            # the list the admin's entry and its save read: without it, neither touches the field).
            form.changed_data.remove("is_active")
            obj.is_active = not form.cleaned_data["is_active"]
        super().save_model(request, obj, form, change)
        if stopping_or_resuming:
            form.changed_data.append("is_active")  # for Django's own history message
            obj._receiving_switched = True
            self._set_active(request, obj, form.cleaned_data["is_active"])
        new_secret = form.cleaned_data.get("new_secret")
        if new_secret:
            try:
                source_rotate_secret(
                    source=obj,
                    new_secret=new_secret,
                    stop_previous=form.cleaned_data.get("stop_previous", False),
                    actor=request.user,
                )
                self.message_user(request, f"New secret set (hint {obj.secret_hint}).", messages.SUCCESS)
            except SourceError as exc:
                self.message_user(request, f"Secret not changed: {exc}", messages.ERROR)

    def _set_active(self, request, source: Source, active: bool) -> None:
        try:
            source_set_active(source=source, active=active, actor=request.user)
        except SourceError as exc:  # deletion asked for meanwhile (the form's clean checks it first)
            self.message_user(request, f"Receiving not changed: {exc}.", messages.ERROR)
            return
        # Other web processes keep the source they have seen for INGEST_SOURCE_CACHE_SECONDS: meanwhile
        # they may still answer a provider's handshake or check a request's signature, but the INSERT
        # stores an event only while its source is active (see ingest_request).
        delay = source_change_delay()
        if active:
            self.message_user(request, f"Receiving again: its ingest URL accepts requests {delay}.", messages.SUCCESS)
        else:
            self.message_user(
                request,
                "Stopped receiving: its ingest URL answers 404 and nothing sent to it is stored until it receives "
                f"again (a web process that has it cached may still answer a handshake or refuse a bad signature "
                f"for a while: it answers 404 everywhere {delay}).",
                messages.WARNING,
            )

    def log_change(self, request, obj, message):
        if getattr(obj, "_receiving_switched", False) and not getattr(obj, "_audit_changes", None):
            # Only receiving was switched: the service's source.paused/resumed entry says it all
            # (Django's history entry is still written).
            return admin.ModelAdmin.log_change(self, request, obj, message)
        return super().log_change(request, obj, message)

    def _create(self, request, obj, form) -> None:
        """Through the service (its checks, its audit entry); ``obj`` becomes the source it made, so
        that the admin's own log, audit entry and redirect name it."""
        data = form.cleaned_data
        source, generated = source_create(
            organization=data["organization"],
            provider=data["provider"],
            name=data["name"],
            secret=data.get("secret") or None,
            options=data.get("options") or {},
            # As on the dashboard: a provider that shows its secret only once the URL is
            # registered there gets the source first, and its secret on this page afterwards.
            allow_unset_secret=True,
            allowed_networks=data.get("allowed_networks"),
            actor=request.user,
        )
        for field in Source._meta.concrete_fields:
            setattr(obj, field.attname, getattr(source, field.attname))
        obj._state.adding, obj._state.db = False, source._state.db
        # What the admin's own entry lists (the service's entry has the rest); never the secret's value.
        obj._audit_changes = {
            "organization": source.organization_id,
            "provider": source.provider,
            "name": source.name,
            "options": source.options,
            "allowed_networks": source.allowed_networks,
            "secret": "given" if data.get("secret") else ("generated" if generated else "not set yet"),
        }
        request._hookline_generated_secret = generated

    def response_add(self, request, obj, post_url_continue=None):
        generated = getattr(request, "_hookline_generated_secret", None)
        if generated:
            # Shown once, on its own page (see OneTimeSecretsMixin), with the source's ingest URL.
            return self.one_time_secret_page(
                request,
                title="New source secret",
                shown=[(f"{obj.organization.name} · {obj}", generated)],
                ingest_urls=[ingest_url(obj)],
            )
        if not obj.secret:
            self.message_user(
                request,
                "It refuses every request until its signing secret is set: enter the provider's secret under "
                "“New secret” once the ingest URL is registered there.",
                messages.WARNING,
            )
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Rotate secret (generate a new one, shown once)", permissions=["change"])
    def rotate_secret(self, request, queryset):
        if (asked := self.confirm_stopping_older_secrets(request, queryset)) is not None:
            return asked
        shown, urls, refused = [], [], []
        outcomes = action_outcomes(request)
        for source in queryset.select_related("organization"):
            try:
                _, generated = source_rotate_secret(source=source, stop_previous=confirmed(request), actor=request.user)
            except SourceError as exc:  # the provider issues it (Stripe), or deleted meanwhile
                refused.append(f"{source}: {exc}")
                outcomes.add_refused(source.organization_id, f"source {source.pk}", str(exc))
                continue
            except SecretNotReadable:
                # Left for a process with the key (see replace_secret). Not a 503 for the whole action:
                # the secrets already generated for the others would be shown nowhere.
                refused.append(f"{source}: {CURRENT_SECRET_NOT_READABLE_YET}")
                outcomes.add_refused(source.organization_id, f"source {source.pk}", CURRENT_SECRET_NOT_READABLE_YET)
                continue
            outcomes.add_done(source.organization_id, f"source {source.pk}")  # never the secret itself
            shown.append((f"{source.organization.name} · {source}", generated))
            urls.append(ingest_url(source))
        if refused:
            self.message_user(request, "Not rotated: " + "; ".join(refused[:10]), messages.WARNING)
        if not shown:
            return None
        return self.one_time_secret_page(request, title="New source secrets", shown=shown, ingest_urls=urls)


# --- Destinations ------------------------------------------------------------------------------


class SubscriptionInline(admin.TabularInline):
    """Shown, not edited: routing is changed through the destination services (dashboard), which keep a
    destination's sources inside its own organization."""

    model = Subscription
    extra = 0
    fields = ("source", "shown_event_types")
    readonly_fields = fields
    can_delete = False

    # Its patterns with their control characters escaped (text.visible_text), as the dashboard shows
    # them: a right-to-left override in one would make it read as another type.
    @admin.display(description="Event types")
    def shown_event_types(self, obj):
        return ", ".join(visible_text(pattern) for pattern in obj.event_types or ()) or "-"

    def get_queryset(self, request):
        # Each row is named "source → destination": their names, never their secrets.
        subscriptions = super().get_queryset(request).select_related("source", "destination")
        return secrets_deferred(subscriptions, "source", "destination")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class DestinationAdminForm(CustomHeadersMixin, forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    retry_schedule = RetryScheduleField(help_text=RETRY_SCHEDULE_HELP)
    new_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Set a new signing secret (whsec_…). Attempts are also signed with the old one for "
        "SECRET_ROTATION_OVERLAP_SECONDS (1 day by default), so the receiver can switch over meanwhile.",
    )

    stop_previous = forms.BooleanField(
        required=False,
        label="Stop the older secret now",
        help_text="Needed only to set a new secret while an earlier rotation's older secret still works: "
        "only one older secret is kept, so that one stops at once.",
    )

    class Meta:
        model = Destination
        fields = (
            "organization",
            "name",
            "url",
            "timeout_seconds",
            "max_concurrency",
            "rate_limit_per_second",
            "retry_client_errors",
            "retry_schedule",
            "max_attempts",
            "max_retry_age_seconds",
            "is_active",
            "payload_filters",
        )
        field_classes = {"name": NameField}

    # Lines read by the service that checks the dashboard's and the API's (parse_payload_filter_lines).
    payload_filters = PayloadFiltersField(help_text=PayloadFiltersField.default_help_text.replace("`", ""))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup_custom_headers(self.instance if self.instance.pk else None)
        self.fields["retry_schedule"].show_platform_schedule()

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is not None:
            # Locked until the admin's transaction (its change view's) commits: a deletion asked for
            # after the page loaded is refused here (above all, it must not be made active again),
            # and one asked for now waits for this save.
            live = Destination.objects.select_for_update(no_key=True).filter(
                pk=self.instance.pk, deletion_requested_at__isnull=True
            )
            if not live.exists():
                raise forms.ValidationError("This destination is being deleted: it can no longer be changed.")
        # The bounds tenants get on the dashboard and the API (the service's), checked field by
        # field so that each refusal shows on its own field, once.
        for field in DELIVERY_POLICY_FIELDS:
            if field in cleaned and field not in self.errors:
                checked = {field: cleaned[field]}
                if field == "max_attempts":  # bounded by the schedule, checked before it
                    if "retry_schedule" in self.errors:
                        continue
                    checked["retry_schedule"] = cleaned.get("retry_schedule")
                try:
                    destination_check_delivery_policy(**checked)
                except DestinationError as exc:
                    self.add_error(field, str(exc))
        return cleaned

    def clean_new_secret(self):
        new_secret = self.cleaned_data.get("new_secret")
        if not new_secret:
            return new_secret
        try:
            return destination_check_secret(new_secret)
        except DestinationError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_url(self):
        url = self.cleaned_data["url"]
        if self.instance.pk and url == self.instance.url:
            # As destination_update: a URL saved before a check was added (one with a #fragment)
            # does not stop an operator changing the destination's other settings.
            return url
        try:
            destination_check_url(url)
        except DestinationError as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


class DestinationStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (
            ("paused", "Paused"),
            ("sending", "Sending"),
            ("organization_suspended", "Not sending: organization suspended"),
            ("organization_being_deleted", "Not sending: organization being deleted"),
            ("inactive", "Inactive"),
            ("being_deleted", "Being deleted"),
        )

    def queryset(self, request, queryset):
        # Each destination under the one state its page says (change_form.html), in the page's order:
        # inactive before paused, and an organization being deleted (inactive too) before suspended.
        not_sending = Q(is_active=True, paused_at__isnull=True, organization__is_active=False)
        if self.value() == "paused":
            return queryset.filter(is_active=True, paused_at__isnull=False)
        if self.value() == "sending":
            return queryset.filter(DESTINATION_SENDING)
        if self.value() == "organization_suspended":
            return queryset.filter(not_sending, organization__deletion_requested_at__isnull=True)
        if self.value() == "organization_being_deleted":
            return queryset.filter(not_sending, organization__deletion_requested_at__isnull=False)
        if self.value() == "inactive":
            return queryset.filter(is_active=False, deletion_requested_at__isnull=True)
        if self.value() == "being_deleted":
            return queryset.filter(deletion_requested_at__isnull=False)
        return queryset


class DestinationFailingFilter(admin.SimpleListFilter):
    """Whether its latest attempts failed, beside its state: a destination still sending can be the
    one failing, and during an incident it is the one to find without opening every page."""

    title = "failing"
    parameter_name = "failing"
    # A success resets failing_since. The admin index counts the failing ones by this too.
    FAILING = Q(failing_since__isnull=False)

    def lookups(self, request, model_admin):
        return (("yes", "Failing: its latest attempts failed"), ("no", "Not failing"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(self.FAILING)
        if self.value() == "no":
            return queryset.exclude(self.FAILING)
        return queryset


@admin.register(Destination)
class DestinationAdmin(
    NoLookupsIntoHiddenValuesMixin,
    ReturnToObjectPageMixin,
    OneTimeSecretsMixin,
    CountsWhatADeletionTakesMixin,
    AuditedAdminMixin,
    SavesOnlyItsFormsFieldsMixin,
    admin.ModelAdmin,
):
    form = DestinationAdminForm
    list_display = ("name", "organization", "url", "secret_hint", "state", "paused_at", "failing", "created_at")
    list_filter = (DestinationStateFilter, DestinationFailingFilter, OrganizationFilter)
    search_fields = ("name", "url", "organization__slug", "organization__name")
    list_select_related = ("organization",)
    fields = (
        "organization",
        "name",
        "url",
        "timeout_seconds",
        "max_concurrency",
        "rate_limit_per_second",
        "retry_client_errors",
        "retry_schedule",
        "max_attempts",
        "max_retry_age_seconds",
        "is_active",
        "payload_filters",
        "custom_headers_shown",
        "custom_headers_set",
        "custom_headers_remove",
        "secret_hint",
        "new_secret",
        "stop_previous",
        "previous_secret_expires_at",
        "paused_at",
        "pause_reason",
        "consecutive_failures",
        "related_links",
    )
    readonly_fields = (
        "organization",
        "custom_headers_shown",
        "secret_hint",
        "previous_secret_expires_at",
        "paused_at",
        "pause_reason",
        "consecutive_failures",
        "related_links",
    )
    inlines = (SubscriptionInline,)
    # Pause, Resume and Retry dead deliveries as buttons (the list's actions, for this one), and its state on top.
    change_form_template = "admin/webhooks/destination/change_form.html"
    actions = ("rotate_secret", "pause", "resume", "retry_dead_deliveries", send_waiting_now)

    @method_decorator(sensitive_post_parameters("new_secret", "custom_headers_set"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Error reports (a 500 mailed to ADMINS) leave out the secret and the header values typed in.
        # The state on top says when a paused destination's (or suspended organization's) held deliveries are given up.
        extra_context = {
            **(extra_context or {}),
            "paused_hold_days": settings.PAUSED_DESTINATION_HOLD_DAYS,
            "suspended_hold_days": settings.SUSPENDED_ORGANIZATION_HOLD_DAYS,
        }
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_queryset(self, request):
        # As SourceAdmin's: the page shows the hints of the secret and of the headers' values (columns
        # of their own), never them; the save reads them only to change them.
        return secrets_deferred(super().get_queryset(request).select_related("organization"))

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is None or not obj.custom_header_hints:  # nothing to remove: the form has no such field
            fields = [field for field in fields if field != "custom_headers_remove"]
        return fields

    @admin.display(description="Failing", ordering="-consecutive_failures")
    def failing(self, obj):
        # As its page says it: since when, and how many attempts in a row (a success resets both).
        if obj.failing_since is None:
            return "—"
        return format_html(
            '<span class="hookline-bad">since {}: {}</span>',
            to_the_second(obj.failing_since),
            ngettext(
                "%(count)d consecutive failed attempt",
                "%(count)d consecutive failed attempts",
                obj.consecutive_failures,
            )
            % {"count": obj.consecutive_failures},
        )

    @admin.display(description="Custom headers now")
    def custom_headers_shown(self, obj):
        # Names and hints only: the values are credentials, never shown after they are set.
        hints = obj.custom_header_hints if obj else []
        if not hints:
            return "none"
        return format_html_join(", ", "<code>{}</code> {}", ((item["name"], item["hint"]) for item in hints))

    @admin.display(description="Its deliveries")
    def related_links(self, obj):
        # "What happened to what we sent to this URL?": its deliveries, each with its event and attempts.
        if not obj.pk:
            return "—"
        deliveries = reverse("admin:webhooks_delivery_changelist")
        links = [
            (f"{deliveries}?destination={obj.pk}", "All deliveries"),
            (f"{deliveries}?destination={obj.pk}&status__exact=dead", "Dead"),
            (f"{deliveries}?destination={obj.pk}&status__exact=pending", "Waiting for a retry"),
            (reverse("admin:webhooks_bulkretry_changelist") + f"?destination={obj.pk}", "Bulk retries"),
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    def has_add_permission(self, request):
        # A destination gets its secret from destination_create (dashboard or create_destination).
        return False

    def deletion_contents(self, obj):
        return destination_contents(destination=obj)

    @admin.display(description="State", ordering="is_active")
    def state(self, obj):
        if obj.being_deleted:
            return format_html(
                '<strong class="hookline-being-deleted">being deleted</strong> ({} rows deleted so far)',
                f"{sum((obj.deletion_progress or {}).values()):,}",
            )
        return "active" if obj.is_active else "inactive"

    def has_change_permission(self, request, obj=None):
        # Nothing to change on its way out; above all it must not be made active again.
        if obj is not None and obj.being_deleted:
            return False
        return super().has_change_permission(request, obj)

    # In place of Django's deletion (and AuditedAdminMixin's entry for it): the service writes the
    # audit entry, and the deletion's end writes another (see destination_deletion).
    def delete_model(self, request, obj):
        destination_delete(destination=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for destination in queryset.select_related("organization"):
            destination_delete(destination=destination, actor=request.user)

    def response_delete(self, request, obj_display, obj_id):
        self.message_user(
            request,
            f"Deletion of “{obj_display}” is under way: nothing more is sent to it, and its deliveries are being "
            "deleted in the background. It stays in this list, marked “being deleted”, until that is done.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:webhooks_destination_changelist"))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # The typed lines hold the values: the service audits the names alone, in its own entry (and
        # a change of the headers alone writes no admin entry besides, see AuditedAdminMixin).
        audit_changes = getattr(obj, "_audit_changes", {})
        obj._audit_recorded_elsewhere = [
            name for name in ("custom_headers_set", "custom_headers_remove") if name in audit_changes
        ]
        for name in obj._audit_recorded_elsewhere:
            del audit_changes[name]
        if header_changes := form.custom_header_changes():
            try:
                destination_set_custom_headers(destination=obj, changes=header_changes, actor=request.user)
                self.message_user(request, "Custom headers saved.", messages.SUCCESS)
            except DestinationError as exc:
                self.message_user(request, f"Custom headers not changed: {exc}", messages.ERROR)
        new_secret = form.cleaned_data.get("new_secret")
        if new_secret:
            try:
                destination_rotate_secret(
                    destination=obj,
                    new_secret=new_secret,
                    stop_previous=form.cleaned_data.get("stop_previous", False),
                    actor=request.user,
                )
                self.message_user(request, f"New secret set (hint {obj.secret_hint}).", messages.SUCCESS)
            except DestinationError as exc:
                self.message_user(request, f"Secret not changed: {exc}", messages.ERROR)

    @admin.action(description="Rotate secret (generate a new one, shown once)", permissions=["change"])
    def rotate_secret(self, request, queryset):
        if (asked := self.confirm_stopping_older_secrets(request, queryset)) is not None:
            return asked
        shown = []
        outcomes = action_outcomes(request)
        for destination in queryset.select_related("organization"):
            try:
                _, secret = destination_rotate_secret(
                    destination=destination, stop_previous=confirmed(request), actor=request.user
                )
            except DestinationError as exc:  # deleted meanwhile
                self.message_user(request, f"{destination}: {exc}", messages.ERROR)
                outcomes.add_refused(destination.organization_id, f"destination {destination.pk}", str(exc))
                continue
            except SecretNotReadable:  # as for sources: the others' new secrets must still be shown
                self.message_user(request, f"{destination}: {CURRENT_SECRET_NOT_READABLE_YET}", messages.ERROR)
                outcomes.add_refused(
                    destination.organization_id, f"destination {destination.pk}", CURRENT_SECRET_NOT_READABLE_YET
                )
                continue
            outcomes.add_done(destination.organization_id, f"destination {destination.pk}")  # never the secret
            shown.append((f"{destination.organization.name} · {destination}", secret))
        if not shown:
            return None
        return self.one_time_secret_page(request, title="New destination secrets", shown=shown)

    @admin.action(description="Pause selected destinations", permissions=["change"])
    def pause(self, request, queryset):
        self._set_paused(
            request,
            queryset,
            lambda destination: destination_pause(
                destination=destination, reason="paused from the platform admin", actor=request.user
            ),
            done_message="Paused; their deliveries wait until resumed",
        )

    @admin.action(description="Resume selected destinations", permissions=["change"])
    def resume(self, request, queryset):
        self._set_paused(
            request,
            queryset,
            lambda destination: destination_resume(destination=destination, actor=request.user),
            done_message="Resumed; what queued up is being sent",
        )

    def _set_paused(self, request, queryset, change, *, done_message: str) -> None:
        """Pause or resume each selected destination; one already so is reported as nothing to do."""
        done, unchanged, refused = [], [], []
        outcomes = action_outcomes(request)
        for destination in queryset.select_related("organization"):
            item = f"destination {destination.pk}"
            label = f"{destination.organization.name} · {destination}"
            try:
                change(destination)
            except NothingToDo as exc:
                unchanged.append(f"{label}: {exc}")
                outcomes.add_nothing_to_do(destination.organization_id, item, str(exc))
                continue
            except OperationError as exc:  # deleted meanwhile
                refused.append(f"{label}: {exc}")
                outcomes.add_refused(destination.organization_id, item, str(exc))
                continue
            done.append(label)
            outcomes.add_done(destination.organization_id, item)
        if done:
            self.message_user(request, f"{done_message}: " + "; ".join(done[:10]) + ".", messages.SUCCESS)
        if unchanged:
            self.message_user(request, "Nothing to do for " + "; ".join(unchanged[:10]) + ".", messages.INFO)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused[:10]) + ".", messages.WARNING)

    @admin.action(
        description="Retry every dead delivery of the selected destinations (in the background)", permissions=["change"]
    )
    def retry_dead_deliveries(self, request, queryset):
        # The dashboard's bulk retry, for any number of deliveries: a job per destination that a
        # worker runs in batches (see Bulk retries), where the list actions stop at ACTION_LIMIT.
        # Thousands of sends start with one click: asked first, with how many, as Django's own
        # deletion asks (the project's confirmation page).
        if not confirmed(request):
            return self._confirm_retrying_dead(request, queryset)
        started, refused, waiting = [], [], []
        outcomes = action_outcomes(request)
        for destination in queryset.select_related("organization"):
            try:
                job = destination_bulk_retry(destination=destination, actor=request.user)
            except NothingToRetry as exc:
                refused.append(f"{destination.organization.name} · {destination}: {exc}")
                outcomes.add_nothing_to_do(destination.organization_id, f"destination {destination.pk}", str(exc))
                continue
            except OperationError as exc:
                refused.append(f"{destination.organization.name} · {destination}: {exc}")
                outcomes.add_refused(destination.organization_id, f"destination {destination.pk}", str(exc))
                continue
            dead = ngettext("%(count)d dead delivery", "%(count)d dead deliveries", job.to_retry) % {
                "count": job.to_retry
            }
            if job.left_out:
                dead += f", {job.left_out} left out: {LEFT_OUT_BY_SOURCES}"
            started.append(f"{destination.organization.name} · {destination} ({dead})")
            if hold := delivery_hold(destination=destination):
                waiting.append((hold, f"{destination.organization.name} · {destination}"))
            outcomes.add_done(destination.organization_id, f"destination {destination.pk}: bulk retry {job.pk}")
        if started:
            self.message_user(request, "Bulk retry started for " + "; ".join(started[:10]) + ".", messages.SUCCESS)
        # Nothing is sent to a paused destination, nor a suspended organization's: "started" alone
        # would say they are on their way.
        for hold, words in (
            ("destination_paused", "Paused, so their deliveries are queued but sent only once resumed: "),
            (
                "organization_suspended",
                "Their organization is suspended, so their deliveries are queued but sent only once it is "
                "active again: ",
            ),
        ):
            if held := [label for code, label in waiting if code == hold]:
                self.message_user(request, words + "; ".join(held[:10]) + ".", messages.WARNING)
        if refused:
            self.message_user(request, "Not started: " + "; ".join(refused[:10]), messages.WARNING)

    def _confirm_retrying_dead(self, request, queryset) -> TemplateResponse:
        """The page that asks before retry_dead_deliveries starts: the destinations, and how many dead
        deliveries they hold, counted up to DEAD_COUNT_CAP (through the failed-deliveries index)."""
        destinations = list(queryset.select_related("organization").order_by("pk")[: CONFIRMATION_PREVIEW + 1])
        shown = destinations[:CONFIRMATION_PREVIEW]
        counts = [_dead_count(Delivery.objects.filter(destination_id=destination.pk)) for destination in shown]
        if len(destinations) > CONFIRMATION_PREVIEW:
            total = _dead_count(Delivery.objects.filter(destination__in=queryset.order_by().values("pk")))
            selected_count = queryset.count()
        else:
            total = min(sum(counts), DEAD_COUNT_CAP + 1)
            selected_count = len(destinations)
        preview = [
            f"{destination.organization.name} · {destination.name}: {_counted(count)} dead"
            + (" (paused)" if destination.paused_at else "")
            + _organization_note(destination)
            + ("" if destination.is_active else " (inactive: not retried)")
            for destination, count in zip(shown, counts, strict=True)
        ]
        if total == 0:
            question = "The selected destinations have no dead deliveries: there is nothing to retry."
        else:
            question = (
                f"Send {_counted(total)} dead {'delivery' if total == 1 else 'deliveries'} again? A worker retries "
                "them in the background, in batches; a paused destination's wait until it is resumed, a suspended "
                "organization's until it is active again."
            )
        return confirmation_page(
            request,
            self,
            queryset,
            title="Retry every dead delivery?",
            question=question,
            button="Yes, retry them" if total else "",
            preview=preview,
            total=selected_count,
        )


def _organization_note(destination) -> str:
    """What the retry-dead confirmation says of an active destination's organization that is not active:
    a suspended one's deliveries wait, one being deleted gets no bulk retry (bulk_retry_request)."""
    if destination.organization.is_active or not destination.is_active:
        return ""
    if destination.organization.being_deleted:
        return " (organization being deleted: not retried)"
    return " (organization suspended)"


# The retry-dead confirmation lists this many destinations, and counts dead deliveries up to DEAD_COUNT_CAP.
CONFIRMATION_PREVIEW = 20
DEAD_COUNT_CAP = 10_000


def _dead_count(deliveries) -> int:
    """At most DEAD_COUNT_CAP + 1: read through the index of failed deliveries (delivery_failed),
    whose condition status = 'dead' implies; never a COUNT(*) over a destination's whole history."""
    return deliveries.filter(status=Delivery.Status.DEAD).order_by().values("pk")[: DEAD_COUNT_CAP + 1].count()


def _counted(count: int) -> str:
    return f"more than {DEAD_COUNT_CAP:,}" if count > DEAD_COUNT_CAP else f"{count:,}"


class BulkRetryDestinationFilter(DestinationFilter):
    """The jobs that retry one destination's deliveries (its page links here)."""

    def queryset(self, request, queryset):
        if self.value() and str(self.value()).isascii() and str(self.value()).isdigit():
            return queryset.filter(filters__destination=int(self.value()))
        return queryset


def _named_in_filters(model, key: str) -> Subquery:
    """The name of the source or destination a job's filters name (a key of its JSON), for the list."""
    named = model.objects.filter(pk=Cast(KeyTextTransform(key, OuterRef("filters")), BigIntegerField()))
    return Subquery(named.values("name")[:1])


@admin.register(BulkRetry)
class BulkRetryAdmin(NoLookupsIntoHiddenValuesMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "organization",
        "what",
        "status",
        "retried",
        "left_out",
        "total",
        "outcome",
        "requested_by",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", OrganizationFilter, BulkRetryDestinationFilter)
    list_select_related = ("organization", "requested_by")
    readonly_fields = ["what", "outcome", *(field.name for field in BulkRetry._meta.fields)]

    def get_queryset(self, request):
        # Names and outcomes looked up in the same query: a column per row would otherwise cost a
        # query per job. The outcomes are counted for the page's jobs only.
        return with_bulk_retry_outcomes(
            super()
            .get_queryset(request)
            .annotate(
                destination_name=_named_in_filters(Destination, "destination"),
                source_name=_named_in_filters(Source, "source"),
            )
        )

    @admin.display(description="Outcome")
    def outcome(self, obj):
        """What became of the deliveries it retried, as they are now (selectors.BulkRetryOutcome)."""
        outcome = BulkRetryOutcome.of(obj)
        if outcome is None:
            return "not recorded (a job from before outcomes were)"
        words = f"{outcome.succeeded} delivered, {outcome.dead} failed again, {outcome.pending} pending or being sent"
        if outcome.not_followed:
            words += f"; {outcome.not_followed} since retried again or deleted"
        return words

    @admin.display(description="Retrying")
    def what(self, obj):
        """Which deliveries the job retries, in words, with a link to the destination it is about."""
        filters = obj.filters or {}
        parts = [", ".join(filters.get("statuses") or ["dead"]) + " deliveries"]
        if destination_id := filters.get("destination"):
            url = reverse("admin:webhooks_destination_change", args=[destination_id])
            name = getattr(obj, "destination_name", None) or f"destination {destination_id} (deleted)"
            parts.append(format_html('of <a href="{}">{}</a>', url, name))
        if source_id := filters.get("source"):
            parts.append(f"from {getattr(obj, 'source_name', None) or f'source {source_id}'}")
        if filters.get("event_type"):
            parts.append(f"of type {filters['event_type']}")
        for key, word in (("received_after", "received from"), ("received_before", "received before")):
            if filters.get(key):
                parts.append(f"{word} {filters[key]}")
        return format_html_join(" ", "{}", ((part,) for part in parts))
