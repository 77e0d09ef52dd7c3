"""Dashboard forms. They validate input only; saving goes through the services."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.text import slugify

from config.formats import to_the_second
from organizations.audit_actions import audit_action_label
from organizations.names import validate_name
from webhooks.fields import encrypted_field_names, secrets_deferred
from webhooks.models import Destination, Source, WebhookEvent
from webhooks.providers.base import Provider, ProviderOption
from webhooks.selectors import (
    EVENT_STATUS_ALL,
    EVENT_STATUS_FAILED,
    EVENT_STATUS_HELD_BY_PLATFORM,
    EVENT_STATUS_RETRYING,
    AuditFilters,
    EventFilters,
    body_search_text_problem,
    destinations_for_organization,
    sources_for_organization,
)
from webhooks.services.destination_headers import MAX_CUSTOM_HEADERS, CustomHeaderError, parse_header_lines
from webhooks.services.destinations import (
    DestinationError,
    destination_merge_custom_headers,
    event_type_patterns,
    event_type_patterns_problem,
    max_attempts_allowed,
    parse_retry_schedule,
    retry_schedule_text,
)
from webhooks.services.payload_filters import (
    MAX_PAYLOAD_FILTERS,
    PayloadFilterError,
    parse_payload_filter_lines,
    payload_filter_lines,
    same_json,
)
from webhooks.services.sample_sender import edited_body_problem, fixtures_for_provider
from webhooks.services.source_networks import MAX_ALLOWED_NETWORKS
from webhooks.services.sources import SourceError, source_change_delay, source_check_allowed_networks

OPTION_PREFIX = "option_"


class NameField(forms.CharField):
    default_validators = [validate_name]


def _option_field(option: ProviderOption, initial=None) -> forms.Field:
    common = {"label": option.label, "help_text": option.help_text, "required": option.required}
    value = option.default if initial is None else initial
    if option.kind == "int":
        # The provider's own bound, on the field: the error is shown at the box, and the browser keeps to it.
        return forms.IntegerField(initial=value, min_value=option.min_value, **common)
    if option.kind == "bool":
        return forms.BooleanField(initial=bool(value), **{**common, "required": False})
    if option.kind == "choice":
        return forms.ChoiceField(choices=[(choice, choice) for choice in option.choices], initial=value, **common)
    return forms.CharField(initial=value, max_length=500, **common)


class ProviderOptionsMixin:
    """Adds one field per option the provider declares; ``cleaned_options()`` gives them back by name."""

    def add_option_fields(self, provider: Provider, current: dict | None = None) -> None:
        for option in provider.options:
            self.fields[OPTION_PREFIX + option.name] = _option_field(option, (current or {}).get(option.name))

    def option_fields(self):
        return [self[name] for name in self.fields if name.startswith(OPTION_PREFIX)]

    def cleaned_options(self) -> dict:
        return {
            name.removeprefix(OPTION_PREFIX): value
            for name, value in self.cleaned_data.items()
            if name.startswith(OPTION_PREFIX)
        }


class AllowedNetworksField(forms.CharField):
    """A source's allowed networks as a text box, one per line (commas and spaces separate them
    too: an address or a network holds neither); cleaned to the normalised list the services save."""

    widget = forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("label", "Allowed networks")
        kwargs.setdefault(
            "help_text",
            f"Only requests from these addresses are taken; leave empty for any address. One per line: an address "
            f"(192.0.2.10, 2001:db8::10) or a network (192.0.2.0/24, 2001:db8::/32), at most {MAX_ALLOWED_NETWORKS}. "
            "Use the list your provider publishes of the addresses it sends webhooks from.",
        )
        super().__init__(strip=False, **kwargs)

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return "\n".join(str(entry) for entry in value)
        return value

    def to_python(self, value):
        if isinstance(value, list | tuple):
            return list(value)
        text = super().to_python(value) or ""
        return text.replace(",", " ").split()

    def clean(self, value):
        entries = super().clean(value)
        try:
            return source_check_allowed_networks(entries)
        except SourceError as exc:
            raise forms.ValidationError(str(exc)) from None

    def has_changed(self, initial, data):
        # Compared as saved: "192.0.2.10" typed where "192.0.2.10/32" is stored changes nothing.
        try:
            return source_check_allowed_networks(self.to_python(data)) != list(initial or [])
        except SourceError:
            return True


class SourceCreateForm(ProviderOptionsMixin, forms.Form):
    name = NameField(max_length=200, help_text="To tell sources apart, e.g. “Stripe live”.")
    secret = forms.CharField(
        label="Signing secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args, provider: Provider, **kwargs):
        super().__init__(*args, **kwargs)
        self.provider = provider
        # The example names this provider: "Stripe live" on GitHub's form read as a copy-paste slip.
        self.fields["name"].help_text = f"To tell sources apart, e.g. “{provider.label} production”."
        if not provider.uses_secret:
            del self.fields["secret"]
        else:
            secret = self.fields["secret"]
            if provider.secret_generated_by_us:
                after = " Leave empty and Hookline generates one for you (shown once)."
            elif provider.setup_steps:
                # The steps above the form say whether the secret comes before or after the URL
                # (Slack checks the URL at once, so there it must come first).
                after = " Leave it empty only if the steps above say so; requests are refused until it is set."
            else:
                after = (
                    f" If {provider.label} shows it only once the URL is registered, leave it empty for now "
                    "and set it on the source's page afterwards; requests are refused until then."
                )
            secret.help_text = provider.secret_help + after
        self.add_option_fields(provider)
        self.fields["allowed_networks"] = AllowedNetworksField()


class SourceEditForm(ProviderOptionsMixin, forms.Form):
    name = NameField(max_length=200)

    def __init__(self, *args, source: Source, **kwargs):
        super().__init__(*args, initial={"name": source.name, "allowed_networks": source.allowed_networks}, **kwargs)
        from webhooks.providers.registry import get_provider

        self.add_option_fields(get_provider(source.provider), source.options)
        # After the options, which are the provider's own settings.
        self.fields["allowed_networks"] = AllowedNetworksField()


OVERLAP_CHOICES = [
    (0, "None: the old secret stops working now"),
    (3600, "1 hour"),
    (24 * 3600, "1 day"),
    (7 * 24 * 3600, "7 days"),
]


class StopPreviousSecretField(forms.BooleanField):
    """Shown only during an earlier rotation's overlap, which rotating again would end at once."""

    def __init__(self, **kwargs):
        super().__init__(required=False, label="Stop the older secret now", **kwargs)


def offer_to_stop_previous_secret(form: forms.Form, instance) -> None:
    from webhooks.services.secrets import previous_secret_described, previous_secret_valid_until

    valid_until = previous_secret_valid_until(instance) if instance is not None else None
    if valid_until is None:
        del form.fields["stop_previous"]
        return
    form.fields["stop_previous"].help_text = (
        f"The secret before the current one ({previous_secret_described(instance)}) still works until "
        f"{to_the_second(valid_until)}. Only one older secret is kept, so rotating again stops it at once: "
        "tick this only if nothing uses it any more."
    )


class DestinationRotateSecretForm(forms.Form):
    overlap_seconds = forms.TypedChoiceField(
        label="Keep signing with the old secret too for",
        choices=OVERLAP_CHOICES,
        coerce=int,
        initial=24 * 3600,
        help_text="Each attempt then carries a signature with either secret, so your receiver "
        "keeps verifying until it has the new one. In the API: keep_previous_for, in seconds.",
    )
    stop_previous = StopPreviousSecretField()

    def __init__(self, *args, destination=None, **kwargs):
        super().__init__(*args, **kwargs)
        from webhooks.services.secrets import current_secret_replaceable_unread

        offer_to_stop_previous_secret(self, destination)
        if destination is not None and current_secret_replaceable_unread(destination):
            # The current secret signs nothing: there is no old one to keep signing with. (One stored by
            # a process with a key being deployed is kept as any other: the rotation waits for that.)
            self.fields["overlap_seconds"].widget = forms.HiddenInput()
            self.fields["overlap_seconds"].initial = 0


class SourceRotateSecretForm(forms.Form):
    new_secret = forms.CharField(
        label="New signing secret",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    overlap_seconds = forms.TypedChoiceField(
        label="Keep the old secret valid for",
        choices=OVERLAP_CHOICES,
        coerce=int,
        initial=24 * 3600,
        help_text="While the provider still signs with the old secret, both are accepted. "
        "In the API: keep_previous_for, in seconds.",
    )
    stop_previous = StopPreviousSecretField()

    def __init__(self, *args, provider: Provider, source=None, **kwargs):
        super().__init__(*args, **kwargs)
        # Ingest processes keep a source for a few seconds: "now" would promise too much.
        self.fields["overlap_seconds"].choices = [
            (0, f"None: the old secret stops working {source_change_delay()}"),
            *OVERLAP_CHOICES[1:],
        ]
        from webhooks.services.secrets import current_secret_replaceable_unread, secret_is_set

        offer_to_stop_previous_secret(self, source)
        if source is not None and (current_secret_replaceable_unread(source) or not secret_is_set(source)):
            # Setting a first secret, or replacing one that no key decrypts: there is no old one to keep.
            self.fields["overlap_seconds"].widget = forms.HiddenInput()
            self.fields["overlap_seconds"].initial = 0
        self.fields["new_secret"].required = not provider.secret_generated_by_us
        self.fields["new_secret"].help_text = provider.secret_help + (
            " Leave empty to have Hookline generate one (shown once)." if provider.secret_generated_by_us else ""
        )


class TestEventForm(forms.Form):
    fixture = forms.ChoiceField(label="Sample event", required=False)
    payload = forms.CharField(
        label="Edited payload",
        required=False,
        strip=False,  # sent exactly as typed
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
    )

    def __init__(self, *args, source: Source, **kwargs):
        from webhooks.providers.registry import get_provider

        super().__init__(*args, **kwargs)
        self.provider_kind = source.provider
        self.fields["fixture"].choices = [(name, name) for name in fixtures_for_provider(source.provider)]
        shape = {
            ("json", "form"): "JSON or a form-encoded body",
            ("any",): "A body",
        }.get(get_provider(source.provider).edited_body_formats, "JSON")
        self.fields["payload"].help_text = (
            f"{shape} sent exactly as typed instead of the sample, with the selected sample's headers (which "
            "name the event type for some providers), signed with the source's secret like the provider would. "
            "Where the provider takes the event id from the payload, sending the same payload again is a duplicate."
        )

    def clean_payload(self) -> bytes | None:
        # Browsers send a textarea's line breaks as CRLF; the text typed has LF.
        text = self.cleaned_data["payload"].replace("\r\n", "\n")
        if not text.strip():
            return None
        body = text.encode()
        if problem := edited_body_problem(self.provider_kind, body):
            raise forms.ValidationError(problem)
        return body


class WriteOnlyTextarea(forms.Textarea):
    """A text area that never writes back what was typed in it: it holds secrets, which a page
    shown again after another field's error must not carry."""

    def format_value(self, value):
        return None


class RetryScheduleField(forms.Field):
    """A destination's own retry schedule as people type it ("10s, 1m, 10m, 1h", or seconds), cleaned
    to whole seconds (None when empty: the platform's schedule). Its bounds are the service's."""

    widget = forms.TextInput
    MAX_TEXT_LENGTH = 500

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        self.widget.attrs.update(autocomplete="off", spellcheck="false")

    def show_platform_schedule(self) -> None:
        """Empty means the platform's schedule: the box shows which, rather than an example to copy.
        Called by the form for each instance, as the settings are then."""
        self.widget.attrs["placeholder"] = f"platform's: {retry_schedule_text(settings.DELIVERY_RETRY_SCHEDULE)}"

    def to_python(self, value):
        if value is None or isinstance(value, list):  # the initial value: as stored
            return value or None
        text = str(value).strip()
        if len(text) > self.MAX_TEXT_LENGTH:
            raise forms.ValidationError(f"Write at most {self.MAX_TEXT_LENGTH} characters.")
        try:
            return parse_retry_schedule(text)
        except DestinationError as exc:
            raise forms.ValidationError(str(exc)) from None

    def prepare_value(self, value):
        return retry_schedule_text(value) if isinstance(value, list) else value


RETRY_SCHEDULE_HELP = (
    "The waits before each retry, in order, separated by commas: seconds (600) or a number with s, m, h or d "
    f"(10s, 1m, 10m, 1h); up to {Destination.MAX_RETRY_SCHEDULE_STEPS} waits of "
    f"{Destination.MIN_RETRY_WAIT_SECONDS} s to {Destination.MAX_RETRY_WAIT_SECONDS // 86400} days, "
    f"{Destination.MAX_RETRY_SCHEDULE_SECONDS // 86400} days in all. Empty: the platform's schedule. A delivery "
    "already waiting for a retry keeps its time; the waits after it follow the new schedule."
)


class CustomHeadersMixin(forms.Form):
    """A destination's custom headers on a form: lines that add or replace headers, and ticks that
    remove them, so that changing one never means typing the others' values again (which are
    never shown). ``custom_header_changes()`` is what destination_create / destination_update take."""

    custom_headers_set = forms.CharField(
        label="Custom headers",
        required=False,
        strip=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text=f"Sent with every attempt, one per line as Name: value (Authorization: Bearer …), at most "
        f"{MAX_CUSTOM_HEADERS}; for a receiver behind an API gateway or basic auth.{{existing}} Values are never "
        "shown again, only their last characters. Hookline's own headers (webhook-*, Content-Type, Host, "
        "User-Agent…) cannot be set.",
    )
    # Said only where there are headers already: on a new destination it only puzzles.
    EXISTING_HEADERS_HELP = " A header named here that exists gets the new value; the others keep theirs."
    custom_headers_remove = forms.MultipleChoiceField(
        label="Remove custom headers", required=False, widget=forms.CheckboxSelectMultiple
    )

    def setup_custom_headers(self, destination: Destination | None) -> None:
        self.destination_with_headers = destination
        hints = destination.custom_header_hints if destination is not None else []
        help_text = self.fields["custom_headers_set"].help_text
        self.fields["custom_headers_set"].help_text = help_text.format(
            existing=self.EXISTING_HEADERS_HELP if hints else ""
        )
        if hints:
            self.fields["custom_headers_remove"].choices = [
                (item["name"], f"{item['name']} (value {item['hint']})") for item in hints
            ]
        else:
            del self.fields["custom_headers_remove"]
        for name in ("custom_headers_set", "custom_headers_remove"):  # after the form's own fields
            if name in self.fields:
                self.fields[name] = self.fields.pop(name)

    # The box is write-only (its values are secrets): a refused form comes back with it empty.
    # Said where the box is, or a corrected form would be saved without the headers typed.
    TYPE_HEADERS_AGAIN = "type these headers again: the form was not saved, and what was typed here is not shown back"

    def add_error(self, field, error):
        super().add_error(field, error)
        typed = self.is_bound and (self.data.get(self.add_prefix("custom_headers_set")) or "").strip()
        if typed and field != "custom_headers_set" and "custom_headers_set" not in self.errors:
            super().add_error("custom_headers_set", self.TYPE_HEADERS_AGAIN)

    def clean(self):
        cleaned = super().clean()
        changes: dict[str, str | None] = {}
        try:
            changes.update(parse_header_lines(cleaned.get("custom_headers_set") or ""))
        except CustomHeaderError as exc:
            self.add_error("custom_headers_set", str(exc))
            return cleaned
        for name in cleaned.get("custom_headers_remove") or []:
            if name.lower() in {key.lower() for key in changes}:
                self.add_error("custom_headers_set", f"the header “{name}” is both set and removed: choose one")
                return cleaned
            changes[name] = None
        try:
            destination_merge_custom_headers(self.destination_with_headers, changes)
        except DestinationError as exc:
            self.add_error("custom_headers_set", str(exc))
        cleaned["custom_header_changes"] = changes
        return cleaned

    def custom_header_changes(self) -> dict[str, str | None]:
        return self.cleaned_data.get("custom_header_changes") or {}


@dataclass(frozen=True)
class FormSection:
    """One titled group of a form's fields, as the template shows it (a fieldset with its legend)."""

    title: str
    description: str
    fields: list[forms.BoundField]

    @property
    def slug(self) -> str:
        return slugify(self.title)

    @property
    def has_errors(self) -> bool:
        return any(field.errors for field in self.fields)


class FieldsetsMixin:
    """Shows a long form's fields in titled groups, declared as the admin's ``fieldsets`` are:
    ``(title, {"fields": (...), "description": "..."})``. The fields take that order, so that the
    error summary at the top lists them as the page shows them; a field missing from the groups
    (one added later) is shown in a last group rather than left out."""

    fieldsets: tuple[tuple[str, dict], ...] = ()
    UNGROUPED_TITLE = "Other settings"

    def order_fields_by_fieldsets(self) -> None:
        self.order_fields([name for _, options in self.fieldsets for name in options["fields"]])

    def sections(self) -> list[FormSection]:
        visible = {field.name: field for field in self.visible_fields()}
        sections = []
        for title, options in self.fieldsets:
            fields = [visible.pop(name) for name in options["fields"] if name in visible]
            if fields:
                sections.append(FormSection(title, options.get("description", ""), fields))
        if visible:
            sections.append(FormSection(self.UNGROUPED_TITLE, "", list(visible.values())))
        return sections


class PayloadFiltersField(forms.Field):
    """A destination's payload filters as lines of text (``ref == "refs/heads/main"``), read into
    the stored list by the service (parse_payload_filter_lines), which refuses naming the line."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"})
    # Backticks: the dashboard shows what is between them as code (the admin drops them).
    default_help_text = (
        "Only events whose JSON body meets every condition are sent here. One per line, at most "
        f'{MAX_PAYLOAD_FILTERS}, such as `data.object.livemode == true`, `ref in ["refs/heads/main"]`, '
        "`data.object.metadata.tenant exists` (also `!=` and `not exists`). Values are JSON and compared by type: "
        '`"1"` is not `1`. A number in a path is a list position (`line_items.0.sku`); `\\.` is a dot inside a '
        "key. A body that is not JSON (nor a form with a JSON `payload` field, as GitHub's) is not sent here. "
        "Empty: every event."
    )

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", self.default_help_text)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return payload_filter_lines(value) if isinstance(value, list) else value

    def to_python(self, value) -> list[dict]:
        try:
            return parse_payload_filter_lines(value or "")
        except PayloadFilterError as exc:
            raise forms.ValidationError(exc.problems) from None  # every bad line, each on its own

    def has_changed(self, initial, data) -> bool:
        try:
            return not same_json(initial or [], self.to_python(data))
        except forms.ValidationError:
            return True


class DestinationForm(FieldsetsMixin, CustomHeadersMixin, forms.Form):
    # A long form: each group answers one question, so that the policy's many optional boxes
    # read as one part that can be passed over.
    fieldsets = (
        (
            "Where to send",
            {
                "fields": ("name", "url"),
                "description": "A name to tell this destination apart, and the URL Hookline sends each event to, "
                "signed with this destination's own secret.",
            },
        ),
        (
            "Which events",
            {
                "fields": ("sources", "event_types", "payload_filters"),
                "description": "Only events of the sources ticked here are sent; the filters narrow them down "
                "further. Without a source this destination receives nothing.",
            },
        ),
        (
            "Delivery policy",
            {
                "fields": (
                    "timeout_seconds",
                    "max_concurrency",
                    "rate_limit_per_second",
                    "retry_schedule",
                    "max_attempts",
                    "max_retry_age_hours",
                    "retry_client_errors",
                ),
                "description": "How each event is sent here and retried while your receiver fails. "
                "An empty box keeps the default its help names.",
            },
        ),
        (
            "Custom headers",
            {
                "fields": ("custom_headers_set", "custom_headers_remove"),
                "description": "Only if your receiver needs them, such as a key for an API gateway in front of it.",
            },
        ),
    )

    name = NameField(max_length=200)
    url = forms.URLField(label="URL", max_length=2000, assume_scheme="https")
    sources = forms.ModelMultipleChoiceField(
        queryset=Source.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Events of these sources are delivered here.",
    )
    event_types = forms.CharField(
        label="Event types",
        required=False,
        help_text=(
            "Comma-separated patterns such as invoice.*, push. A name also takes the types under it "
            "(issues takes issues.opened, orders takes orders/create). Empty sends every event type."
        ),
    )
    payload_filters = PayloadFiltersField(label="Payload filters")
    timeout_seconds = forms.FloatField(label="Timeout (seconds)", min_value=1, max_value=60, initial=15)
    retry_client_errors = forms.BooleanField(
        label="Retry 4xx answers",
        required=False,
        help_text="Off (the default): a 4xx answer other than 408, 409, 425 or 429 fails the delivery at once, "
        "since the same request would be refused again. Turn it on if your receiver answers 4xx for "
        "passing trouble (a 404 during a deploy, a 401 while a key changes): such deliveries are then "
        "retried on the usual schedule. Redirects (3xx) are never followed or retried.",
    )
    # Bounds are the service's (destination_check_delivery_policy), shown on the field at once.
    max_concurrency = forms.IntegerField(
        label="Concurrent attempts",
        required=False,
        widget=forms.NumberInput(attrs={"min": Destination.MIN_CONCURRENCY, "max": Destination.MAX_CONCURRENCY}),
        help_text=f"At most this many deliveries are being sent here at once ({Destination.MIN_CONCURRENCY} to "
        f"{Destination.MAX_CONCURRENCY}; empty: 10). Lower it for a receiver that cannot take many requests in parallel.",
    )
    rate_limit_per_second = forms.IntegerField(
        label="Rate limit (attempts a second)",
        required=False,
        widget=forms.NumberInput(
            attrs={"min": Destination.MIN_RATE_LIMIT_PER_SECOND, "max": Destination.MAX_RATE_LIMIT_PER_SECOND}
        ),
        help_text=f"Empty for no limit; at most {Destination.MAX_RATE_LIMIT_PER_SECOND}. Deliveries over it wait.",
    )
    retry_schedule = RetryScheduleField(label="Retry schedule", help_text=RETRY_SCHEDULE_HELP)
    max_attempts = forms.IntegerField(
        label="Attempts at most",
        required=False,
        help_text="Empty: the first attempt and every retry of the schedule above (or of the platform's). "
        "1: no retries. Retries asked for by hand come on top.",
    )
    max_retry_age_hours = forms.FloatField(
        label="Stop retrying after (hours)",
        required=False,
        widget=forms.NumberInput(attrs={"min": 0, "step": "any"}),
        help_text="No retry later than this many hours after the event reached this destination (0.5 is 30 "
        "minutes); a later step of the schedule is moved up to that time. Empty: no age limit.",
    )

    def __init__(self, *args, organization, destination: Destination | None = None, **kwargs):
        if destination is not None:
            subscriptions = list(destination.subscriptions.all())
            kwargs.setdefault(
                "initial",
                {
                    "name": destination.name,
                    "url": destination.url,
                    # As typed: 15, not the float column's 15.0 (the create form shows 15).
                    "timeout_seconds": f"{destination.timeout_seconds:.6g}",
                    "retry_client_errors": destination.retry_client_errors,
                    "max_concurrency": destination.max_concurrency,
                    "rate_limit_per_second": destination.rate_limit_per_second,
                    "retry_schedule": destination.retry_schedule,
                    "max_attempts": destination.max_attempts,
                    "max_retry_age_hours": (
                        None
                        if destination.max_retry_age_seconds is None
                        else f"{destination.max_retry_age_seconds / 3600:.6g}"
                    ),
                    "sources": [subscription.source_id for subscription in subscriptions],
                    "event_types": ", ".join(subscriptions[0].event_types) if subscriptions else "",
                    "payload_filters": destination.payload_filters,
                },
            )
        super().__init__(*args, **kwargs)
        # Offered by name: a source whose secret no key decrypts must not stop the form.
        self.fields["sources"].queryset = secrets_deferred(sources_for_organization(organization=organization))
        # The most of either schedule: the form may be changing the destination's own.
        most = max(max_attempts_allowed(), Destination.MAX_RETRY_SCHEDULE_STEPS + 1)
        self.fields["max_attempts"].widget.attrs.update(min=1, max=most)
        self.setup_custom_headers(destination)
        self.fields["retry_schedule"].show_platform_schedule()
        self.order_fields_by_fieldsets()

    def clean_url(self) -> str:
        """Refuse an address typed without its scheme, as the API does. Django's URLField put https://
        before it (assume_scheme), so a local receiver typed as 127.0.0.1:8001/hooks was saved as
        https://127.0.0.1:8001/hooks, and every attempt then failed on TLS, without a word."""
        typed = (self.data.get(self.add_prefix("url")) or "").strip()
        if "://" not in typed:
            raise forms.ValidationError(
                "Start the URL with https:// (or http:// for a receiver without TLS): it has no scheme."
            )
        return self.cleaned_data["url"]

    def clean_max_retry_age_hours(self) -> int | None:
        """In seconds, as the service takes it (which checks the bounds)."""
        hours = self.cleaned_data["max_retry_age_hours"]
        if hours is None:
            return None
        seconds = hours * 3600
        if not math.isfinite(seconds):  # finite hours past any bound (1e306): the service refuses them
            seconds = math.copysign(Destination.MAX_RETRY_AGE_SECONDS + 1, seconds)
        return round(seconds)

    def delivery_policy(self) -> dict:
        """The policy's settings as destination_create and destination_update take them."""
        data = self.cleaned_data
        default_concurrency = Destination._meta.get_field("max_concurrency").default
        return {
            "max_concurrency": default_concurrency if data["max_concurrency"] is None else data["max_concurrency"],
            "rate_limit_per_second": data["rate_limit_per_second"],
            "retry_schedule": data["retry_schedule"],
            "max_attempts": data["max_attempts"],
            "max_retry_age_seconds": data["max_retry_age_hours"],
        }

    def add_service_error(self, exc: DestinationError) -> None:
        """A refusal of the service, on the field it is about (the URL, unless it names another)."""
        field = {"max_retry_age_seconds": "max_retry_age_hours", "custom_headers": "custom_headers_set"}.get(
            exc.field, exc.field
        )
        self.add_error(field if field in self.fields else "url", exc.problems)

    def clean_event_types(self) -> list[str]:
        try:
            return event_type_patterns(self.cleaned_data["event_types"].split(","), has_sources=True)
        except DestinationError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("event_types") and not cleaned.get("sources"):
            self.add_error("event_types", "Event-type filters apply to the events of sources: choose a source too.")
        return cleaned


class ReplayForm(forms.Form):
    destination = forms.ModelChoiceField(
        queryset=Destination.objects.none(), label="Replay to", empty_label="Choose a destination"
    )

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        # Offered by name: their secrets and custom headers stay unread (the event's page, where this form
        # is, was a 503 on a process without the key one of them was saved under).
        self.fields["destination"].queryset = destinations_for_organization(organization=organization).defer(
            *encrypted_field_names(Destination)
        )


TIME_RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def _whole_seconds(moment):
    return moment.replace(microsecond=0) if moment is not None else None


def _datetime_local(moment) -> str:
    """A time as a datetime-local box takes it, with its seconds only when there are some."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second else "%Y-%m-%dT%H:%M")


# The longest id searched for: provider ids are at most this long (WebhookEvent.provider_event_id).
ID_SEARCH_MAX_LENGTH = 255


class FindEventForm(forms.Form):
    """The top bar's id search, on every page of an organization: read as the events list's."""

    q = forms.CharField(label="Find an event by id", required=False, max_length=ID_SEARCH_MAX_LENGTH)


class EventFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=ID_SEARCH_MAX_LENGTH)
    # Bounded in bytes, not characters (clean_body): the body is searched for the text's UTF-8 bytes.
    body = forms.CharField(label="Body contains", required=False)
    status = forms.ChoiceField(
        required=False,
        # Without a status, accepted events only: rejected requests are listed when asked for
        # (selectors.EVENT_STATUS_ALL says why), and counted beside the list meanwhile.
        choices=[
            ("", "Accepted (any status)"),
            *WebhookEvent.Status.choices,
            (EVENT_STATUS_RETRYING, "Retrying delivery"),
            (EVENT_STATUS_FAILED, "Failed delivery"),
            (EVENT_STATUS_HELD_BY_PLATFORM, "Delivery held by the platform"),
            (EVENT_STATUS_ALL, "Accepted and rejected"),
        ],
    )
    source = forms.TypedChoiceField(label="Source", required=False, coerce=int, empty_value=None)
    event_type = forms.CharField(
        label="Event type",
        required=False,
        max_length=255,
        widget=forms.TextInput(attrs={"placeholder": "invoice.paid, invoice.* or push,ping"}),
    )
    destination = forms.TypedChoiceField(label="Destination", required=False, coerce=int, empty_value=None)
    range = forms.ChoiceField(
        label="Received",
        required=False,
        choices=[
            ("", "Any time"),
            ("1h", "Last hour"),
            ("24h", "Last 24 hours"),
            ("7d", "Last 7 days"),
            ("30d", "Last 30 days"),
        ],
    )

    since = forms.DateTimeField(
        label="From (UTC)", required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        label="To (UTC)", required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        # Not those being deleted: nothing but their own lists offers them. Their events stay listed
        # and found by id; a link that names one says the filter is not applied (ignored_filters).
        self.fields["source"].choices = [("", "Any source")] + [
            (source.pk, source.name)
            for source in sources_for_organization(organization=organization).only("pk", "name")
        ]
        self.fields["destination"].choices = [("", "Any destination")] + [
            (destination.pk, destination.name)
            for destination in destinations_for_organization(organization=organization).only("pk", "name")
        ]
        self.fields["q"].widget.attrs.update(placeholder="Any event id", type="search")
        self.fields["event_type"].widget.attrs.update(list="event-types")
        self.fields["body"].widget.attrs.update(placeholder="e.g. cus_ABC", type="search")

    def clean_body(self):
        text = self.cleaned_data.get("body") or ""
        if text and (problem := body_search_text_problem(text)):
            raise forms.ValidationError(problem)
        return text

    def clean_event_type(self):
        text = self.cleaned_data.get("event_type") or ""
        if problem := event_type_patterns_problem(text.split(",")):
            raise forms.ValidationError(problem)
        return text

    def clean_since(self):
        return _whole_seconds(self.cleaned_data.get("since"))

    def clean_until(self):
        return _whole_seconds(self.cleaned_data.get("until"))

    def clean(self):
        cleaned = super().clean()
        self.superseded: list[str] = []
        # The controls show what applies: a start given as From (UTC) wins over the Received preset
        # (to_filters), which then shows as Any time; and the boxes show the times as applied, in a
        # form the datetime-local box takes (it shows nothing for a value with microseconds).
        shown = self.data.copy()
        if cleaned.get("since") is not None and cleaned.get("range"):
            self.superseded.append(f"{self['range'].label}: {self['since'].label} is set and applies instead")
            cleaned["range"] = shown["range"] = ""
        for name in ("since", "until"):
            if cleaned.get(name) is not None:
                shown[name] = _datetime_local(cleaned[name])
        self.data = shown
        until = cleaned.get("until")
        if until is not None:
            # A range that ends before it starts would list nothing under "No events match", as if
            # nothing had arrived: its end is left out, and said so on the To box, as the audit log
            # says its reversed dates.
            if (since := cleaned.get("since")) is not None:
                if until < since:
                    self.add_error("until", "The dates are reversed: To is before From.")
                elif until == since:  # To is left out of the range: nothing could match
                    self.add_error("until", "To is the same time as From: give a later To, or none.")
            elif cleaned.get("range") in TIME_RANGES and until <= timezone.now() - TIME_RANGES[cleaned["range"]]:
                preset = dict(self.fields["range"].choices)[cleaned["range"]].lower().replace("last", "the last", 1)
                self.add_error("until", f"The range is reversed: To is before {preset}.")
        return cleaned

    # Said on their boxes (templates/dashboard/_event_filters.html), not in the list's "Not applied".
    DATE_BOXES = ("since", "until")

    @property
    def date_boxes(self) -> list[forms.BoundField]:
        return [self[name] for name in self.DATE_BOXES]

    def ignored_filters(self) -> list[str]:
        """What to_filters leaves out, said plainly: a filter that silently does nothing misleads."""
        if not self.is_bound:
            return []
        invalid = (
            []
            if self.is_valid()
            else [
                f"{self[name].label}: {' '.join(errors)}"
                for name, errors in self.errors.items()
                if name not in self.DATE_BOXES
            ]
        )
        return invalid + self.superseded

    def to_filters(self) -> EventFilters:
        """Valid fields only: a wrong value in one filter does not hide the whole list."""
        data = self.cleaned_data if self.is_bound else {}
        chosen = data.get("range")
        return EventFilters(
            status=data.get("status") or "",
            source_id=data.get("source"),
            event_type=(data.get("event_type") or "").strip(),
            destination_id=data.get("destination"),
            # An explicit start wins over the preset; both are UTC (the dashboard shows UTC times).
            since=data.get("since") or (timezone.now() - TIME_RANGES[chosen] if chosen in TIME_RANGES else None),
            until=data.get("until"),
            search=(data.get("q") or "").strip(),
            body_contains=data.get("body") or "",
        )


def audit_action_choices(actions: list[str]) -> list[tuple[str, str]]:
    """The Action filter's options in the words the log's rows use, in the order of the words; an
    action whose words another shares (the platform operator's changes) is told apart by its code."""
    labels = {action: audit_action_label(action) for action in actions}
    shared = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    choices = [(action, f"{label} ({action})" if label in shared else label) for action, label in labels.items()]
    return sorted(choices, key=lambda choice: (choice[1].casefold(), choice[0]))


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=200)
    action = forms.ChoiceField(required=False)
    since = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, actions: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "Any action"), *audit_action_choices(actions)]
        self.fields["actor"].widget.attrs.update(placeholder="Email or name")

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since is not None and until is not None and until < since:
            # Said on the field, rather than "Nothing matches" as if no such change had been made:
            # the end is left out, so the list shows the changes from the start on.
            self.add_error("until", "The dates are reversed: To is before From.")
        return cleaned

    def to_filters(self) -> AuditFilters:
        data = self.cleaned_data if self.is_bound else {}
        return AuditFilters(
            actor=(data.get("actor") or "").strip(),
            action=data.get("action") or "",
            since=data.get("since"),
            until=data.get("until"),
        )
