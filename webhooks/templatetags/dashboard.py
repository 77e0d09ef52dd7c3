"""Small template helpers for the dashboard: navigation state, the organization switcher, labels."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta

from django import template
from django.conf import settings
from django.template.defaultfilters import pluralize
from django.utils import dateformat, timezone
from django.utils.html import format_html

from organizations.audit_actions import audit_action_label
from organizations.models import Membership
from organizations.selectors import suspended_organization_for_member
from webhooks.forms import ID_SEARCH_MAX_LENGTH
from webhooks.models import Delivery
from webhooks.providers.base import Provider
from webhooks.providers.registry import PROVIDERS
from webhooks.selectors import audit_changes_for_viewer, headers_for_viewer, options_for_viewer, url_for_viewer
from webhooks.services.secrets import secret_hint_shown, secret_is_set, unreadable_secrets_found
from webhooks.services.sources import source_awaits_secret
from webhooks.services.sources import source_change_delay as _source_change_delay
from webhooks.services.text import visible_text

register = template.Library()

# URL name → sidebar entry it belongs to, so detail pages keep their section highlighted.
_SECTIONS = {
    "event": "events",
    "delivery": "events",
    "source": "sources",
    "destination": "destinations",
    "api": "api_keys",
}


@register.filter
def visible(value) -> str:
    """A sender's event type or event id with its control characters shown escaped (text.visible_text)."""
    return visible_text(str(value)) if value is not None else ""


# The characters of a receiver's answer the event page shows: `truncatechars` in _event_deliveries.html.
RESPONSE_SHOWN_CHARS = 2000


def response_extent(attempt, shown: int | None = None) -> str:
    """How much of its receiver's answer an attempt keeps, in the words of every page that shows one
    (the event page, the admin's): "100 characters", or "its first 4096 characters: the answer was
    longer" when the receiver sent more than DELIVERY_RESPONSE_BODY_MAX_BYTES; and, when the page
    shows only its first ``shown`` characters, that it does."""
    length = len(attempt.response_body)
    if attempt.response_truncated:
        label = f"its first {length} characters: the answer was longer"
    else:
        label = f"{length} characters"
    if shown is not None and length > shown:
        label += f"; the first {shown} shown"
    return label


@register.filter
def response_label(attempt, shown: int = RESPONSE_SHOWN_CHARS) -> str:
    """An attempt's kept answer, headed: "Response (its first 4096 characters: the answer was longer)".
    ``shown``: the characters of it the page shows (the event page's RESPONSE_SHOWN_CHARS by default)."""
    return f"Response ({response_extent(attempt, shown)})"


@register.filter
def dashboard_section(url_name: str | None) -> str:
    if not url_name:
        return ""
    prefix = url_name.split("_", 1)[0]
    return _SECTIONS.get(prefix, url_name)


@register.simple_tag
def user_organizations(user):
    """The signed-in user's organizations, for the switcher (one small query per page)."""
    if not user.is_authenticated:
        return []
    return [
        membership.organization
        for membership in Membership.objects.filter(user=user, organization__is_active=True)
        .select_related("organization")
        .order_by("organization__name")
    ]


@register.simple_tag(takes_context=True)
def suspended_organization(context):
    """On an error page under /o/<slug>/: the organization if it is deactivated and the user is a member.

    Its members then learn why the page is closed; anyone else sees the plain 404 (tenancy).
    """
    request = context.get("request")
    match = getattr(request, "resolver_match", None)
    slug = match.kwargs.get("org_slug") if match else None
    user = getattr(request, "user", None)
    if not slug or user is None:
        return None
    return suspended_organization_for_member(user=user, slug=slug)


@register.simple_tag
def id_search_max_length() -> int:
    """The top bar's find box takes what its form takes (FindEventForm), as the events list's search
    box does: a long paste sent whole made a request line past the web server's 4 KiB, which the
    browser showed as the server's bare JSON 414."""
    return ID_SEARCH_MAX_LENGTH


@register.simple_tag
def audit_log_kept() -> str:
    """How long audit entries are kept (AUDIT_LOG_RETENTION_DAYS, deleted past it by the hourly
    retention run), where the admin and the dashboard speak of the log."""
    days = settings.AUDIT_LOG_RETENTION_DAYS
    return f"for {days:,} day{pluralize(days)} after they are written" if days else "forever"


@register.filter
def fields_with_errors(form) -> list:
    """The visible fields a submitted form refused, in the form's order: on a long form (a
    destination's) the first may be far below the top of the page the browser shows again."""
    return [field for field in form.visible_fields() if field.errors]


@register.filter
def control(field):
    """A field's control; that of the first field the form refused takes the focus as the page
    loads (autofocus), so that the keyboard and a screen reader start at the first thing to correct."""
    refused = fields_with_errors(field.form)
    if not refused or refused[0].name != field.name:
        return field
    widget = field.field.widget
    if getattr(widget, "option_inherits_attrs", False):
        # A radio group or a checkbox list gives its attributes to every option: only the first
        # takes the focus (a page has one control with autofocus).
        widget = copy.copy(widget)
        widget.create_option = _first_option_focused(widget.create_option)
    return field.as_widget(widget=widget, attrs={"autofocus": True})


def _first_option_focused(create_option):
    def create(name, value, label, selected, index, subindex=None, attrs=None):
        option = create_option(name, value, label, selected, index, subindex=subindex, attrs=attrs)
        if index or subindex:
            option["attrs"].pop("autofocus", None)
        return option

    return create


@register.filter
def provider_label(kind: str) -> str:
    provider = PROVIDERS.get(kind)
    return provider.label if provider else kind


@register.filter
def provider_summary(provider: Provider) -> str:
    """One sentence for the provider picker: what Hookline checks and what the tenant brings.

    Derived from what the registry declares of each provider (its full verification spec is for
    the docs and the next page). The card's title names the provider, so the sentence does not.
    """
    if not provider.uses_secret:
        return "Checks the provider's signature against its public certificates; there is no secret to copy."
    if provider.cannot_sign_reason:
        return "Checks a signature only the provider can make, with a public key or id you copy from its settings."
    chosen = "chosen by you (Hookline can generate one)" if provider.secret_generated_by_us else "from its settings"
    defaults = {option.name: option.default for option in provider.options}
    if provider.secret_header_names(defaults):  # the secret itself may travel in a header
        return f"Checks a token sent in a request header, {chosen}; a token does not sign the body."
    if provider.secret_generated_by_us:
        return "Checks the signature on each request, made with a secret you choose (Hookline can generate one)."
    return "Checks the signature on each request, made with a secret you copy from the provider's settings."


@register.filter
def provider_facts(provider: Provider) -> list[str]:
    """The short facts under a provider's summary in the picker: the settings it needs, test events."""
    facts = []
    required = [option.label for option in provider.options if option.required]
    optional = len(provider.options) - len(required)
    if required:
        facts.append("Needs " + ", ".join(required))
    if optional:
        facts.append(f"{optional} optional setting{pluralize(optional)}")
    facts.append("No test events: only the provider can sign" if provider.cannot_sign_reason else "Test events")
    return facts


@register.filter
def options_shown(source):
    """A source's options (name, value) as its page lists them: without a URL's user:password@."""
    return options_for_viewer(source.options).items()


@register.filter
def option_value(value) -> str:
    """A source option as the form shows it: a switch reads On or Off (not Python's True/False)."""
    if isinstance(value, bool):
        return "On" if value else "Off"
    return "—" if value is None else str(value)


@register.filter
def setup_steps(provider: Provider | None) -> tuple[str, ...]:
    """The provider's own connection steps, in order (where the URL goes, where the secret is, and
    which comes first); empty for providers that declare none, whose pages keep the general sentence."""
    return provider.setup_steps if provider is not None else ()


@register.filter
def sender_requirement(source) -> str:
    """What each request to this source must carry, for schemes whose sender the tenant configures
    (a token's header and prefix, a generic HMAC's header); empty for the others."""
    provider = PROVIDERS.get(source.provider)
    return provider.sender_requirement(source.options) if provider is not None else ""


@register.filter
def option_label(kind: str, name: str) -> str:
    """A source option's label as its provider declares it ("Tolerance (seconds)", not "tolerance")."""
    provider = PROVIDERS.get(kind)
    declared = {option.name: option.label for option in provider.options} if provider else {}
    return declared.get(name, name)


@register.filter
def as_json(value) -> str:
    """Indented JSON (audit details): what the log stores, not Python's notation for it."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


_STATUS_BADGES = {
    "processed": "badge-ok",
    "succeeded": "badge-ok",
    "received": "badge-info",
    "pending": "badge-warn",
    "in_flight": "badge-info",
    "rejected": "badge-bad",
    "dead": "badge-bad",
}


@register.filter
def status_badge(status: str) -> str:
    return _STATUS_BADGES.get(status, "")


@register.filter
def delivery_state(delivery) -> str:
    """A delivery's state in words next to its destination, so the badge does not rely on colour alone.

    Empty for a success: the other states are the ones to notice.
    """
    if delivery.status == Delivery.Status.DEAD:
        return "dead"
    if delivery.status == Delivery.Status.PENDING:
        # A paused destination's deliveries wait for the resume, not for a worker: "queued" there
        # reads as stuck. (Lists and the progress panel load the destination with the delivery.)
        if delivery.destination.paused_at is not None:
            return "paused"
        if delivery.put_back_cause:
            # Put back unsent by the platform: it waits for the platform, not after its receiver failed.
            return "held by the platform"
        return "retrying" if delivery.attempt_count else "queued"
    if delivery.status == Delivery.Status.IN_FLIGHT:
        return "sending"
    return ""


@register.filter
def dead_count(deliveries) -> int:
    """How many of ``deliveries`` (a list, or ``event.deliveries.all`` as prefetched: no query) are dead."""
    return sum(1 for delivery in deliveries if delivery.status == Delivery.Status.DEAD)


# Within this much of now a moment reads better as "3 min ago" / "in 2 h"; further away, a date does.
RELATIVE_WITHIN = timedelta(hours=24)


def _exact_time(moment: datetime) -> str:
    """The full moment, in the tooltip of every timestamp: "6 Dec 2026, 14:03:07.215 UTC"."""
    return f"{dateformat.format(moment, 'j M Y, H:i:s')}.{moment.microsecond // 1000:03d} {moment.tzname()}"


def _relative_time(moment: datetime, now: datetime) -> str | None:
    """ "just now", "3 min ago", "1 h 20 min ago", "in 5 min"; None past RELATIVE_WITHIN."""
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds >= RELATIVE_WITHIN.total_seconds():
        return None
    if seconds < 60:
        return "in under a minute" if future else "just now"
    hours, minutes = divmod(int(seconds // 60), 60)
    if not hours:
        span = f"{minutes} min"
    elif hours < 3 and minutes:  # "1 h 20 min": past a few hours the minutes are noise
        span = f"{hours} h {minutes} min"
    else:
        span = f"{hours} h"
    return f"in {span}" if future else f"{span} ago"


@register.filter
def timestamp(moment, style: str = "") -> str:
    """Every date and time on the dashboard, in one format, as a ``<time>`` element.

    Near now it reads "3 min ago" (or "in 5 min"); otherwise "6 Dec, 14:03:07 UTC" (the year
    only when it is not this one). The tooltip always holds the exact moment, milliseconds and
    time zone included. ``style="absolute"`` never says "ago": for sentences such as "paused
    since …" or "works until …".
    """
    return format_timestamp(moment, now=timezone.now(), style=style)


def format_timestamp(moment, *, now: datetime, style: str = "") -> str:
    """The ``timestamp`` filter, as seen at ``now``."""
    if not isinstance(moment, datetime):
        return "" if moment in (None, "") else str(moment)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    moment = timezone.localtime(moment)
    shown = None if style == "absolute" else _relative_time(moment, now)
    if shown is None:
        pattern = "j M, H:i:s" if moment.year == timezone.localtime(now).year else "j M Y, H:i:s"
        shown = f"{dateformat.format(moment, pattern)} {moment.tzname()}"
    return format_html('<time datetime="{}" title="{}">{}</time>', moment.isoformat(), _exact_time(moment), shown)


@register.filter
def http_badge(code: int | None) -> str:
    if code is None:
        return "badge-bad"
    if 200 <= code < 300:
        return "badge-ok"
    if code in (408, 409, 425, 429) or code >= 500:
        return "badge-warn"
    return "badge-bad"


@register.filter
def duration_ms(value) -> str:
    """Milliseconds for people: "420 ms", "12.3 s", "1 min 19 s", "2 h 5 min"; "—" when there is none."""
    if value is None or value == "":
        return "—"
    ms = round(float(value))
    if ms < 1000:
        return f"{ms} ms"
    tenths = round(ms / 100)
    if tenths < 600:
        return f"{tenths / 10:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.filter
def headers_shown(headers: dict, sees_signatures: bool) -> list[tuple[str, str]]:
    """A delivery attempt's sent headers, with the provider's signatures hidden from members."""
    return headers_for_viewer(headers or {}, sees_signatures=bool(sees_signatures))


@register.filter
def url_shown(url: str, sees_full: bool) -> str:
    """A destination's URL, its path and query hidden from members (selectors.url_for_viewer)."""
    return url_for_viewer(url or "", sees_full=bool(sees_full))


@register.filter
def changes_shown(changes, sees_full_urls: bool):
    """An audit entry's changes, destination URLs cut for members (selectors.audit_changes_for_viewer)."""
    return audit_changes_for_viewer(changes, sees_full_urls=bool(sees_full_urls))


@register.filter
def awaits_secret(source) -> bool:
    """A source whose provider signs with a secret that has not been set yet (every request refused)."""
    return source_awaits_secret(source)


@register.filter
def has_secret(instance) -> bool:
    """A source or destination with a signing secret set, read by this server or not."""
    return secret_is_set(instance)


@register.filter
def shown_secret_hint(instance) -> str:
    """The secret's hint (…a1b2), or "unreadable" for one that no key decrypts."""
    return secret_hint_shown(instance)


@register.filter
def secrets_unreadable(instance):
    """What of a source's or destination's secrets no key decrypts (services.secrets.UnreadableSecrets), or None."""
    return unreadable_secrets_found(instance)


@register.simple_tag
def source_change_delay() -> str:
    """How soon stopping, resuming or a new secret of a source applies everywhere ("within 5 seconds")."""
    return _source_change_delay()


_INLINE_CODE = re.compile(r"`([^`]+)`")


@register.filter
def inline_code(text) -> str:
    """Provider texts name options and commands between backticks (they are Markdown in
    docs/providers.md too): shown as code rather than as stray backticks."""
    pieces = [
        format_html("<code>{}</code>", part) if odd else part
        for odd, part in ((index % 2, part) for index, part in enumerate(_INLINE_CODE.split(str(text))))
    ]
    return format_html("{}" * len(pieces), *pieces)


@register.filter
def audit_label(entry) -> str:
    """An audit entry's action in words; a member removing themselves "left the team"."""
    if entry.action == "member.removed" and entry.actor_user_id and entry.changes.get("email") == entry.actor_label:
        return "left the team"
    return audit_action_label(entry.action)
