"""Creating destinations and linking them to sources."""

from __future__ import annotations

import base64
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db import transaction

from organizations.deletion_counts import KindCount, count_kinds
from organizations.models import Organization
from organizations.names import name_problem
from organizations.services import SECRET_MASK, audit_record
from webhooks.fields import take_readable_secrets, unreadable_secrets, with_stored_tokens
from webhooks.models import BulkRetry, Delivery, DeliveryAttempt, Destination, Source, Subscription, WebhookEvent
from webhooks.providers.base import secret_too_long
from webhooks.selectors import closing_bracket

from .delivery import delivery_retry, retry_schedule_for
from .destination_headers import (
    CustomHeaderError,
    check_custom_headers,
    custom_header_changes,
    merge_custom_headers,
    store_custom_headers,
)
from .operations import bulk_retry_request, destination_pause, destination_resume, event_replay
from .outbound import (
    MAX_URL_CHECK_LOOKUPS_PER_ORGANIZATION,
    RESOLVE_TIMEOUT_SECONDS,
    DestinationNotAllowed,
    LookupsBusy,
    ascii_host,
    resolve_destination,
)
from .payload_filters import PayloadFilterError, check_payload_filters, same_json
from .permissions import require_configure_role
from .row_locks import check_foreign_keys, lock_sources_against_deletion
from .secrets import (
    PreviousSecretStillValid,
    SecretNotReplaced,
    generate_standard_webhooks_secret,
    replace_secret,
    secret_hint,
)
from .text import duration_words, echoable_text


class DestinationError(ValueError):
    """A destination cannot be saved as asked (message is safe to show); ``field`` names the
    setting at fault when it is one of the delivery policy's."""

    def __init__(self, message: str, *, field: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.field = field
        # Each fault on its own, when the message joins several (every bad payload filter at once).
        self.problems = list(problems) if problems else [message]


class DestinationUrlCheckBusy(DestinationError):
    """The URL could not be checked now, nothing being wrong with it (outbound.LookupsBusy): the same
    save may pass once earlier lookups have ended, within ``retry_after_seconds``."""

    retry_after_seconds = math.ceil(RESOLVE_TIMEOUT_SECONDS)


class DestinationBeingDeleted(DestinationError):
    """The destination is being deleted: it cannot be changed any more."""


def _lock_unless_being_deleted(destination: Destination) -> None:
    """Lock the destination's row for the caller's transaction; refuse one that is being deleted.

    The row is read again: an instance loaded before a deletion was asked for must not change the
    destination (or link it to sources) meanwhile. NO KEY: fan-outs are not held up."""
    live = Destination.objects.select_for_update(no_key=True).filter(
        pk=destination.pk, deletion_requested_at__isnull=True
    )
    if not live.exists():
        raise DestinationBeingDeleted("the destination is being deleted")


class DestinationPreviousSecretStillValid(DestinationError):
    """A rotation during an earlier one's overlap, not confirmed with ``stop_previous``: found so on
    the locked row, so a caller need not guess it from a copy read before another rotation."""


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


# destination_update's default for a setting that None would set to "no limit".
UNCHANGED = _Unchanged()

# The delivery policy's settings, in the order forms and audit entries list them (the schedule
# before the attempts, whose bound it sets).
DELIVERY_POLICY_FIELDS = (
    "max_concurrency",
    "rate_limit_per_second",
    "retry_schedule",
    "max_attempts",
    "max_retry_age_seconds",
)

# Said by every entry point that makes a destination without a source (the command, the API), each
# followed by where it links one.
RECEIVES_NOTHING_WITHOUT_SOURCE = "It receives nothing until a source is linked to it."

# The fewest attempts a destination may ask for: the first, with no retries.
MIN_ATTEMPTS = 1
# The longest event-type pattern (after its surrounding spaces are cut), as long as any provider's
# event types come with room to spare.
MAX_EVENT_TYPE_PATTERN_CHARS = 255


def destination_check_url(url: str, *, organization_id: int | None = None) -> None:
    """Refuse URLs Hookline cannot or must not send to: private or reserved addresses (unless
    allowed by settings), credentials in the URL, a #fragment, and Hookline's own ingest URLs (a loop).

    Only a URL being set is checked (destination_update skips an unchanged one): one saved before a
    check was added keeps working, and its destination can be edited without touching it. Its host's
    lookup counts as ``organization_id``'s, which may have only a few waiting (an operator's check in
    the admin counts as nobody's)."""
    max_length = Destination._meta.get_field("url").max_length
    if len(url) > max_length:
        raise DestinationError(f"the URL is longer than {max_length} characters")
    target = urlsplit(url)
    own = urlsplit(settings.PUBLIC_BASE_URL.rstrip("/") + "/in/")
    if _host_and_port(target) == _host_and_port(own) and _routed_path(target.path).startswith(_routed_path(own.path)):
        raise DestinationError("the URL is one of Hookline's own ingest URLs: every event would loop back")
    if "@" in target.netloc:
        raise DestinationError(
            "the URL must not hold a user name or password (they would not be sent); "
            "receivers verify Hookline by the webhook-signature header, and a receiver behind basic auth "
            "takes an Authorization custom header"
        )
    if "#" in url:
        # Any "#" starts the fragment, an empty one too ("…/#"): an HTTP client keeps it to itself,
        # so a receiver routing on it would never see what the tenant saved.
        raise DestinationError(
            f"a URL's #fragment is never sent; remove it (everything from “#”: "
            f"“{echoable_text(url[url.index('#') :])}”)"
        )
    try:
        resolve_destination(
            url, organization_id=organization_id, organization_limit=MAX_URL_CHECK_LOOKUPS_PER_ORGANIZATION
        )
    except LookupsBusy as exc:
        raise DestinationUrlCheckBusy(
            f"{exc}: nothing is wrong with the URL, try again in {DestinationUrlCheckBusy.retry_after_seconds} s"
        ) from None
    except DestinationNotAllowed as exc:
        raise DestinationError(str(exc)) from None


def _host_and_port(parts) -> tuple:
    """The host as it is reached (IDNA form, no trailing dot: what DNS and Django's host check
    make of it) and the port, so that another spelling of Hookline's host is still Hookline's."""
    try:
        port = parts.port
    except ValueError:  # an invalid port: resolve_destination() explains it
        port = None
    host = parts.hostname or ""
    try:
        host = ascii_host(host).lower()
    except UnicodeError:  # no host name at all: resolve_destination() refuses it
        pass
    host = host.rstrip(".")  # after the mapping, which makes "。" and "．" dots too
    return host, port or {"http": 80, "https": 443}.get(parts.scheme)


def _routed_path(path: str) -> str:
    """The path as a server routes it: percent-decoded, repeated slashes and dot segments
    resolved (as a proxy in front of Hookline does), with a trailing slash."""
    path = posixpath.normpath("/" + re.sub(r"/+", "/", unquote(path)))
    return path.rstrip("/") + "/"


def _check_settings(name: str, timeout_seconds: float | None) -> None:
    if not name.strip():
        raise DestinationError("the destination needs a name")
    if len(name) > Destination._meta.get_field("name").max_length:
        raise DestinationError(f"the name is longer than {Destination._meta.get_field('name').max_length} characters")
    if problem := name_problem(name):
        raise DestinationError(problem)
    low, high = Destination.MIN_TIMEOUT_SECONDS, Destination.MAX_TIMEOUT_SECONDS
    if timeout_seconds is not None and not low <= timeout_seconds <= high:
        raise DestinationError(f"the timeout must be between {low:g} and {high:g} seconds", field="timeout_seconds")


def destination_check_custom_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A new destination's custom headers (name to value), checked and cleaned: DestinationError on
    the field ``custom_headers`` naming the header at fault (never its value)."""
    try:
        return check_custom_headers(headers)
    except CustomHeaderError as exc:
        raise DestinationError(str(exc), field="custom_headers") from None


def destination_merge_custom_headers(
    destination: Destination | None, changes: Mapping[str, str | None]
) -> dict[str, str]:
    """The destination's custom headers with ``changes`` applied (a value adds or replaces, None
    removes; the others keep their values), checked: what a form or the API checks before saving.
    Headers that no key decrypts (read with fields.take_readable_secrets) are replaced by the
    changes, which must name each of them (as _change_custom_headers saves them)."""
    if destination is None:
        current = {}
    elif "custom_headers" in unreadable_secrets(destination):
        _check_unreadable_headers_named(destination.custom_header_hints, changes)
        current = {}
    else:
        current = destination.custom_header_values()
    try:
        return merge_custom_headers(current, changes)
    except CustomHeaderError as exc:
        raise DestinationError(str(exc), field="custom_headers") from None


def _check_unreadable_headers_named(hints: list[dict], changes: Mapping[str, str | None]) -> None:
    """Stored custom headers that no key decrypts can be neither sent nor merged with a change: one
    replaces them only when it names each (set again, or removed with None), so that none is dropped
    unasked (during a deploy of a new key, this process may be the only one that cannot read them)."""
    if not changes:
        return  # no change of the headers: they stay as stored
    named = {name.strip().lower() for name in changes if isinstance(name, str)}
    missing = [item["name"] for item in hints if item["name"].lower() not in named]
    if missing:
        raise DestinationError(
            "the stored custom headers can no longer be read by the platform, so this change cannot keep the "
            f"others: name each of {', '.join(missing)} to set it again or remove it (if the platform's "
            "encryption keys are being changed right now, send the change again in a few minutes instead)",
            field="custom_headers",
        )


def destination_check_payload_filters(filters) -> list[dict]:
    """Payload filters (a list of {"path", "op", "value"}) checked and in their stored form: the one
    check of the dashboard, the REST API, the admin and create_destination. DestinationError on the
    field ``payload_filters`` naming every condition at fault (its ``problems``)."""
    try:
        return check_payload_filters(filters)
    except PayloadFilterError as exc:
        raise DestinationError(str(exc), field="payload_filters", problems=exc.problems) from None


def max_attempts_allowed(retry_schedule: list[int] | None = None) -> int:
    """The most attempts a destination may ask for: the first and every step of its retry schedule
    (``retry_schedule``, or the platform's when None)."""
    return len(retry_schedule or settings.DELIVERY_RETRY_SCHEDULE) + 1


def max_attempts_with_any_schedule() -> int:
    """The most attempts any destination may ask for: with the longest retry schedule it may have
    (its own of MAX_RETRY_SCHEDULE_STEPS waits, or the platform's if that is longer)."""
    return max(Destination.MAX_RETRY_SCHEDULE_STEPS, len(settings.DELIVERY_RETRY_SCHEDULE)) + 1


# One wait of a retry schedule as people write it: seconds, or a number with a unit ("10s", "1.5 h").
# In the digits 0-9, as every number Hookline takes (README, *Ids*): \d also matches other scripts'
# digits, and Decimal reads them, so "٣٠" was a wait of 30 s.
_WAIT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.IGNORECASE)
# Several waits in one item: "10s 1m" (a missing comma), or "1h30m" / "1h 30m" (one wait in two units).
_SEVERAL_WAITS = re.compile(
    r"[0-9]+(?:\.[0-9]+)?\s*[a-z]*(?:\s+[0-9]+(?:\.[0-9]+)?\s*[a-z]*)+"
    r"|(?:[0-9]+(?:\.[0-9]+)?\s*[a-z]+\s*)+[0-9]+(?:\.[0-9]+)?\s*[a-z]*",
    re.IGNORECASE,
)
_UNIT_SECONDS = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}


def parse_retry_schedule(text: str) -> list[int] | None:
    """A retry schedule as people type it ("10s, 1m, 10m, 1h" or "10, 60, 600": seconds, or a number
    with s, m, h or d), in whole seconds; None when empty (the platform's schedule). DestinationError
    on the field ``retry_schedule`` for what cannot be read; the bounds are destination_check_retry_schedule's."""
    waits = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue  # "10, 60," : a trailing comma is no wait
        match = _WAIT.fullmatch(item)
        if match is None or match.group(2).lower() not in _UNIT_SECONDS:
            if _SEVERAL_WAITS.fullmatch(item):
                problem = (
                    f"“{item[:60]}” holds more than one wait: separate the waits with commas (10s, 1m, 10m), "
                    "and write each in one unit (90m rather than 1h 30m)"
                )
            else:
                # Said only when it is the reason, as the commands' numbers say it.
                digits = " in the digits 0-9" if any(ch.isdigit() and not ch.isascii() for ch in item) else ""
                problem = (
                    f"“{item[:60]}” is not a wait: write seconds{digits} (600), or a number with s, m, h or d (10m), "
                    "the waits separated by commas"
                )
            raise DestinationError(problem, field="retry_schedule")
        if len(match.group(1)) > 15:  # no wait allowed is near it, and Decimal rounds past 28 digits
            raise DestinationError(
                f"“{item[:60]}” is far longer than a wait may be "
                f"({duration_words(Destination.MAX_RETRY_WAIT_SECONDS)} at most)",
                field="retry_schedule",
            )
        seconds = Decimal(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if seconds != seconds.to_integral_value():
            raise DestinationError(f"“{item}” is not a whole number of seconds", field="retry_schedule")
        waits.append(int(seconds))
    return waits or None


def retry_schedule_text(retry_schedule: list[int] | None) -> str:
    """A retry schedule as parse_retry_schedule reads it back: "10s, 1m, 10m, 1h" (each wait in the
    largest unit it is a whole number of); empty for None."""
    parts = []
    for seconds in retry_schedule or []:
        size, unit = next(
            (size, unit) for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")) if seconds % size == 0
        )
        parts.append(f"{seconds // size}{unit}")
    return ", ".join(parts)


def destination_check_retry_schedule(retry_schedule) -> list[int]:
    """Refuse (DestinationError on ``retry_schedule``) a destination's own retry schedule outside the
    bounds a tenant may set: 1 to 20 waits, each from 5 s to 7 days, 30 days in all. Returns it as a list."""
    most = Destination.MAX_RETRY_SCHEDULE_STEPS
    low, high = Destination.MIN_RETRY_WAIT_SECONDS, Destination.MAX_RETRY_WAIT_SECONDS
    if not isinstance(retry_schedule, list | tuple) or not 1 <= len(retry_schedule) <= most:
        raise DestinationError(
            f"a retry schedule is 1 to {most} waits, in seconds; for the platform's schedule set none "
            "(empty, or null through the API), and for no retries allow 1 attempt",
            field="retry_schedule",
        )
    for number, wait in enumerate(retry_schedule, start=1):
        if isinstance(wait, bool) or not isinstance(wait, int) or not low <= wait <= high:
            shown = f"{wait} s" if isinstance(wait, int) and not isinstance(wait, bool) else "not a whole number"
            raise DestinationError(
                f"each wait of the retry schedule must be a whole number of seconds from {duration_words(low)} to "
                f"{duration_words(high)} ({low} to {high}): wait {number} is {shown}",
                field="retry_schedule",
            )
    if (total := sum(retry_schedule)) > Destination.MAX_RETRY_SCHEDULE_SECONDS:
        raise DestinationError(
            f"the waits of the retry schedule add up to {duration_words(total)}: at most "
            f"{duration_words(Destination.MAX_RETRY_SCHEDULE_SECONDS)} in all",
            field="retry_schedule",
        )
    return list(retry_schedule)


def destination_check_delivery_policy(
    *,
    max_concurrency: int | None = None,
    rate_limit_per_second: int | None = None,
    retry_schedule: list[int] | None = None,
    max_attempts: int | None = None,
    max_retry_age_seconds: int | None = None,
    kept_max_attempts: int | None = None,
) -> None:
    """Refuse (DestinationError naming the field) a policy outside the bounds a tenant may set.
    None is the default for each: 10 concurrent sends, no rate limit, the platform's retry schedule,
    every step of the schedule, no age limit. The dashboard, the REST API, the admin and
    create_destination all check through here.

    ``max_attempts`` is bounded by ``retry_schedule`` (the platform's when None), so a change of
    either passes both. ``kept_max_attempts`` is the destination's max_attempts where a change
    leaves it as it is: a new schedule too short for it is refused, on ``retry_schedule``."""
    if retry_schedule is not None:
        destination_check_retry_schedule(retry_schedule)
    most = max_attempts_allowed(retry_schedule)
    whose = "this destination's" if retry_schedule else "the platform's"
    if kept_max_attempts is not None and max_attempts is None and kept_max_attempts > most:
        raise DestinationError(
            f"the destination allows {kept_max_attempts} attempts, more than this schedule gives ({most}: the "
            f"first and {most - 1} retries): in the same change, allow from 1 to {most} attempts, or none for "
            "the whole schedule",
            field="retry_schedule",
        )
    bounds = (
        (
            "max_concurrency",
            max_concurrency,
            Destination.MIN_CONCURRENCY,
            Destination.MAX_CONCURRENCY,
            "concurrent attempts must be a whole number from {low} to {high}",
        ),
        (
            "rate_limit_per_second",
            rate_limit_per_second,
            Destination.MIN_RATE_LIMIT_PER_SECOND,
            Destination.MAX_RATE_LIMIT_PER_SECOND,
            "the rate limit must be a whole number from {low} to {high} attempts a second, or empty for none",
        ),
        (
            "max_attempts",
            max_attempts,
            MIN_ATTEMPTS,
            most,
            "the number of attempts must be a whole number from {low} (no retries) to {high} ("
            + whose
            + " whole schedule), or empty for the whole schedule",
        ),
    )
    for field, value, low, high, message in bounds:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DestinationError(message.format(low=low, high=high), field=field)
    if max_retry_age_seconds is not None:
        low, high = Destination.MIN_RETRY_AGE_SECONDS, Destination.MAX_RETRY_AGE_SECONDS
        if (
            isinstance(max_retry_age_seconds, bool)
            or not isinstance(max_retry_age_seconds, int)
            or not (low <= max_retry_age_seconds <= high)
        ):
            raise DestinationError(
                f"the retry age limit must be from {duration_words(low)} to {duration_words(high)} "
                f"({low} to {high} seconds), or empty for no limit",
                field="max_retry_age_seconds",
            )


def retry_policy_words(destination: Destination) -> str:
    """A destination's retries in plain words, as its page shows them."""
    schedule = retry_schedule_for(destination)
    whole = len(schedule) + 1
    attempts = min(destination.max_attempts or whole, whole)
    steps = schedule[: attempts - 1]
    if not steps:
        text = "no retries: the first failed attempt is final"
    else:
        waits = ", ".join(duration_words(step) for step in steps)
        retries = "1 retry, after a wait" if len(steps) == 1 else f"{len(steps)} retries, after waits"
        if destination.retry_schedule:
            whose = " (this destination's own schedule)"
        else:
            whose = "" if destination.max_attempts else " (the platform's whole schedule)"
        text = f"up to {attempts} attempts{whose}: {retries} of about {waits}"
    if destination.max_retry_age_seconds and steps:
        text += (
            f"; none later than {duration_words(destination.max_retry_age_seconds)} after the event reached this "
            "destination (a later step is moved up to that time)"
        )
    return text + ". Retries asked for by hand come on top."


def event_type_patterns(patterns: Iterable[str], *, has_sources: bool) -> list[str]:
    """The cleaned patterns (shell-style: invoice.*, push); DestinationError for one that cannot be meant.

    Patterns live on a destination's subscriptions to sources, so without a source there is
    nowhere to keep them: refusing beats silently dropping a filter the tenant asked for.
    """
    cleaned = [pattern.strip() for pattern in patterns if pattern and pattern.strip()]
    if problem := event_type_patterns_problem(cleaned):
        raise DestinationError(problem)
    if cleaned and not has_sources:
        raise DestinationError("event-type filters apply to the events of sources: choose at least one source")
    return cleaned


def event_type_patterns_problem(patterns: Iterable[str]) -> str | None:
    """Why one of ``patterns`` cannot be an event-type pattern, or None (blank ones are left out).
    A destination's filters are checked with it, and so are the patterns typed to find events or
    retry deliveries: there, one that cannot be meant would match nothing without a word."""
    for pattern in (pattern.strip() for pattern in patterns):
        if not pattern:
            continue
        if len(pattern) > MAX_EVENT_TYPE_PATTERN_CHARS or any(character.isspace() for character in pattern):
            return (
                f"“{echoable_text(pattern)}” is not an event-type pattern: no spaces, "
                f"at most {MAX_EVENT_TYPE_PATTERN_CHARS} characters"
            )
        if not _brackets_closed(pattern):
            return f"“{echoable_text(pattern)}” is not an event-type pattern: a “[” is never closed"
    return None


def _brackets_closed(pattern: str) -> bool:
    """Whether every "[" opens a set that a "]" closes, read as fnmatch reads it ("[!…]", "[]…]")."""
    start = 0
    while (opening := pattern.find("[", start)) >= 0:
        closing = closing_bracket(pattern, opening + 1)
        if closing is None:
            return False
        start = closing + 1
    return True


@transaction.atomic
def destination_create(
    *,
    organization: Organization,
    name: str,
    url: str,
    sources: Iterable[Source] = (),
    event_types: list[str] | None = None,
    timeout_seconds: float | None = None,
    retry_client_errors: bool = False,
    max_concurrency: int | None = None,
    rate_limit_per_second: int | None = None,
    retry_schedule: list[int] | None = None,
    max_attempts: int | None = None,
    max_retry_age_seconds: int | None = None,
    custom_headers: Mapping[str, str] | None = None,
    payload_filters: list | None = None,
    actor=None,
) -> tuple[Destination, str]:
    """Create a destination with a new signing secret; returns it and the secret (shown once).
    ``max_concurrency`` None is the default (10); ``retry_schedule`` None is the platform's (its
    own: the seconds to wait before each retry); the other limits' None is no limit.
    ``custom_headers`` (name to value) are sent with every attempt; their values are never shown again.
    ``payload_filters``: conditions on the body that an event must meet to be delivered here."""
    require_configure_role(organization=organization, actor=actor)
    _check_settings(name, timeout_seconds)
    destination_check_delivery_policy(
        max_concurrency=max_concurrency,
        rate_limit_per_second=rate_limit_per_second,
        retry_schedule=retry_schedule,
        max_attempts=max_attempts,
        max_retry_age_seconds=max_retry_age_seconds,
    )
    headers = destination_check_custom_headers(custom_headers or {})
    conditions = destination_check_payload_filters(payload_filters)
    # The URL's lookup (up to RESOLVE_TIMEOUT_SECONDS) before the lock of the organization's row: under
    # it, it held up whatever locks that row (its suspension, its deletion, every other creation).
    destination_check_url(url, organization_id=organization.pk)
    _check_room_for_a_destination(organization)
    sources = list(sources)
    event_types = event_type_patterns(event_types or [], has_sources=bool(sources))
    secret = generate_standard_webhooks_secret()
    destination = Destination(
        organization=organization,
        name=name,
        url=url,
        secret=secret,
        secret_hint=secret_hint(secret),
        retry_client_errors=retry_client_errors,
        rate_limit_per_second=rate_limit_per_second,
        retry_schedule=list(retry_schedule) if retry_schedule is not None else None,
        max_attempts=max_attempts,
        max_retry_age_seconds=max_retry_age_seconds,
        payload_filters=conditions,
        **({"timeout_seconds": timeout_seconds} if timeout_seconds is not None else {}),
        **({"max_concurrency": max_concurrency} if max_concurrency is not None else {}),
    )
    store_custom_headers(destination, headers)
    destination.save(force_insert=True)
    # Before the links' audit entries: see lock_sources_against_deletion. One deleted already is
    # left to check_foreign_keys, which says so.
    lock_sources_against_deletion(source.pk for source in sources)
    for source in sources:
        subscription_create(destination=destination, source=source, event_types=event_types or [], actor=actor)
    # A source deleted meanwhile is found here rather than at the commit (an IntegrityError either
    # way): inside a caller's transaction (an API request with an Idempotency-Key) that commit comes
    # after the caller has answered, too late to say so.
    check_foreign_keys(referenced=(Source,))
    audit_record(
        action="destination.created",
        organization=organization,
        actor=actor,
        target=destination,
        changes={
            "name": name,
            "url": url,
            "secret": SECRET_MASK,
            "timeout_seconds": destination.timeout_seconds,
            "retry_client_errors": retry_client_errors,
            **{field: getattr(destination, field) for field in DELIVERY_POLICY_FIELDS},
            # Names only: the values are credentials.
            **({"custom_headers": custom_header_changes({}, headers)} if headers else {}),
            **({"payload_filters": conditions} if conditions else {}),
        },
    )
    return destination, secret


def _check_room_for_a_destination(organization: Organization) -> None:
    # Counted under a lock of the organization's row, held to the end of destination_create's
    # transaction: without it, creations at the same moment each counted the others' uncommitted rows
    # as absent, and a burst of API calls passed the bound together. NO KEY: the inserts that
    # reference the organization are not held up. Taken once the URL is checked: never held while a
    # DNS server takes its time.
    Organization.objects.select_for_update(no_key=True).filter(pk=organization.pk).values_list("pk").first()
    most = settings.MAX_DESTINATIONS_PER_ORGANIZATION
    # One being deleted is on its way out: deleting one to make room works at once.
    if Destination.objects.filter(organization=organization, deletion_requested_at__isnull=True).count() >= most:
        raise DestinationError(
            f"this organization has {most} destinations, the most it may have: delete one it no longer uses, "
            "or ask the platform's operators for more"
        )


def subscription_create(
    *, destination: Destination, source: Source, event_types: list[str], actor=None
) -> Subscription:
    if source.organization_id != destination.organization_id:
        # Never let one tenant route another tenant's events.
        raise DestinationError("the source belongs to another organization")
    subscription = Subscription.objects.create(
        organization_id=destination.organization_id,
        source=source,
        destination=destination,
        event_types=event_type_patterns(event_types, has_sources=True),
    )
    audit_record(
        action="subscription.created",
        organization=destination.organization,
        actor=actor,
        target=subscription,
        changes={"source": source.pk, "destination": destination.pk, "event_types": subscription.event_types},
    )
    return subscription


@transaction.atomic
def destination_update(
    *,
    destination: Destination,
    name: str,
    url: str,
    sources: Iterable[Source],
    event_types: list[str],
    timeout_seconds: float,
    retry_client_errors: bool | None = None,
    max_concurrency: int | _Unchanged = UNCHANGED,
    rate_limit_per_second: int | _Unchanged | None = UNCHANGED,
    retry_schedule: list[int] | _Unchanged | None = UNCHANGED,
    max_attempts: int | _Unchanged | None = UNCHANGED,
    max_retry_age_seconds: int | _Unchanged | None = UNCHANGED,
    custom_headers: Mapping[str, str | None] | None = None,
    payload_filters: list | _Unchanged | None = UNCHANGED,
    actor=None,
) -> Destination:
    """Change a destination's name, URL, timeout, whether 4xx answers are retried (None: unchanged),
    its delivery policy (UNCHANGED unless given; None is no limit, or the platform's retry
    schedule), which sources (and event types) it receives, and its custom headers:
    ``custom_headers`` are changes (a value adds or replaces that header, None removes it; headers
    not named stay as they are).

    A new retry schedule applies from each delivery's next failure: one waiting for a retry keeps
    its next attempt's time, and the wait after it is the new schedule's step for the attempts made.
    ``payload_filters`` replaces the conditions when given (None or [] for none)."""
    require_configure_role(organization=destination.organization, actor=actor)
    _check_settings(name, timeout_seconds)
    policy = {
        field: value
        for field, value in (
            ("max_concurrency", max_concurrency),
            ("rate_limit_per_second", rate_limit_per_second),
            ("retry_schedule", retry_schedule),
            ("max_attempts", max_attempts),
            ("max_retry_age_seconds", max_retry_age_seconds),
        )
        if value is not UNCHANGED
    }
    if policy.get("max_concurrency", 0) is None:
        raise DestinationError("the max concurrency needs a number (10 by default)", field="max_concurrency")
    checked = dict(policy)
    if "retry_schedule" in policy or "max_attempts" in policy:
        # Either bounds the other: the one left out is the destination's as it is.
        checked.setdefault("retry_schedule", destination.retry_schedule)
        if "max_attempts" not in policy:
            checked["kept_max_attempts"] = destination.max_attempts
    destination_check_delivery_policy(**checked)
    if policy.get("retry_schedule") is not None:
        policy["retry_schedule"] = list(policy["retry_schedule"])
    if payload_filters is not UNCHANGED:
        payload_filters = destination_check_payload_filters(payload_filters)
    if url != destination.url:
        destination_check_url(url, organization_id=destination.organization_id)
    wanted = {source.pk: source for source in sources}
    patterns = event_type_patterns(event_types, has_sources=bool(wanted))
    if any(source.organization_id != destination.organization_id for source in wanted.values()):
        raise DestinationError("the source belongs to another organization")
    # Locked once checked, not before: the URL's check may wait for DNS, and claims pass a locked
    # destination over meanwhile.
    _lock_unless_being_deleted(destination)
    changes: dict = {}
    header_fields = []
    if custom_headers:
        if header_changes := _change_custom_headers(destination, custom_headers):
            changes["custom_headers"] = header_changes
        header_fields = ["custom_headers", "custom_header_hints"]
    fields = [("name", name), ("url", url), ("timeout_seconds", timeout_seconds)]
    if retry_client_errors is not None:
        fields.append(("retry_client_errors", retry_client_errors))
    fields += list(policy.items())
    if payload_filters is not UNCHANGED:
        fields.append(("payload_filters", payload_filters))
    for field, value in fields:
        if _differs(getattr(destination, field), value):
            changes[field] = [getattr(destination, field), value]
            setattr(destination, field, value)
    destination.save(update_fields=[field for field, _ in fields] + header_fields + ["updated_at"])
    # Read now, under the row lock the save took: not destination.subscriptions.all(), which may be
    # what a caller prefetched before a concurrent update (the same PATCH sent twice) committed.
    existing = {
        subscription.source_id: subscription for subscription in Subscription.objects.filter(destination=destination)
    }
    removed = [source_id for source_id in existing if source_id not in wanted]
    if removed:
        Subscription.objects.filter(destination=destination, source_id__in=removed).delete()
        changes["sources_removed"] = removed
    # The sources to link, before their links' audit entries (see lock_sources_against_deletion);
    # one deleted already fails the commit's foreign-key check.
    lock_sources_against_deletion(source_id for source_id in wanted if source_id not in existing)
    for source_id, source in wanted.items():
        subscription = existing.get(source_id)
        if subscription is None:
            subscription_create(destination=destination, source=source, event_types=patterns, actor=actor)
        elif subscription.event_types != patterns:
            changes.setdefault("event_types", [subscription.event_types, patterns])
            subscription.event_types = patterns
            subscription.save(update_fields=["event_types"])
    if changes:
        audit_record(
            action="destination.updated",
            organization=destination.organization,
            actor=actor,
            target=destination,
            changes=changes,
        )
    return destination


def _differs(before, after) -> bool:
    # Payload filters compare JSON values by type: Python's True == 1 would take "== 1" changed to
    # "== true" for no change, and not save it.
    if isinstance(before, list) or isinstance(after, list):
        return not same_json(before, after)
    return before != after


def _change_custom_headers(destination: Destination, changes: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Apply ``changes`` to the headers as committed now, under the row's lock (two edits of
    different headers at once both hold, and neither brings back a value the other replaced), and
    set them unsaved on ``destination``. Returns the names added, removed and changed, for the audit log.

    Stored headers that no key decrypts (a key retired too early) can be neither sent nor merged:
    a change that names each of them (_check_unreadable_headers_named) replaces them."""
    current = with_stored_tokens(
        # OF the row itself: the model's ordering joins its organization, whose row would be locked too.
        Destination.objects.select_for_update(no_key=True, of=("self",))
        .only("custom_header_hints")
        .filter(pk=destination.pk),
        "custom_headers",
    ).first()
    if current is None:
        raise DestinationError("this destination has been deleted")
    unreadable = "custom_headers" in take_readable_secrets(current)
    if unreadable:
        _check_unreadable_headers_named(current.custom_header_hints, changes)
    before = {} if unreadable else current.custom_header_values()
    try:
        after = merge_custom_headers(before, changes)
    except CustomHeaderError as exc:
        raise DestinationError(str(exc), field="custom_headers") from None
    store_custom_headers(destination, after)
    names = custom_header_changes(before, after)
    if unreadable:
        # Their names are known (the hints): those the change removed are gone with their values.
        kept = {name.lower() for name in after}
        removed = [item["name"] for item in current.custom_header_hints if item["name"].lower() not in kept]
        names = {**names, **({"removed": removed} if removed else {}), "replaced_unreadable": True}
        destination.unreadable_secrets = {
            name: why for name, why in unreadable_secrets(destination).items() if name != "custom_headers"
        }
    return names


@transaction.atomic
def destination_set_custom_headers(
    *, destination: Destination, changes: Mapping[str, str | None], actor=None
) -> Destination:
    """Add, replace (a value) or remove (None) custom headers; the others keep their values. Audited
    by name only (``destination.custom_headers_changed``), never with a value."""
    require_configure_role(organization=destination.organization, actor=actor)
    _lock_unless_being_deleted(destination)
    names = _change_custom_headers(destination, changes)
    destination.save(update_fields=["custom_headers", "custom_header_hints", "updated_at"])
    if names:
        audit_record(
            action="destination.custom_headers_changed",
            organization=destination.organization,
            actor=actor,
            target=destination,
            changes=names,
        )
    return destination


def destination_check_secret(secret: str) -> str:
    """A destination secret as given by a person, checked (DestinationError) and stripped."""
    secret = secret.strip()
    refusal = secret_too_long(secret)
    if refusal:
        raise DestinationError(refusal)
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        key = b""
    if not secret.startswith("whsec_") or len(key) < 24:
        raise DestinationError("a destination secret is 'whsec_' followed by base64 of at least 24 bytes")
    return secret


@transaction.atomic
def destination_rotate_secret(
    *,
    destination: Destination,
    new_secret: str | None = None,
    overlap_seconds: int | None = None,
    stop_previous: bool = False,
    actor=None,
) -> tuple[Destination, str]:
    """A new signing secret (generated unless given), effective for the next attempt; returned to be shown once.

    For ``overlap_seconds`` (default SECRET_ROTATION_OVERLAP_SECONDS) every attempt carries a
    signature with the old secret too, so the receiver can switch over at its own pace; with 0
    signatures made with the old one stop at once. During an earlier rotation's overlap, only
    with ``stop_previous`` (see replace_secret).
    """
    require_configure_role(organization=destination.organization, actor=actor)
    _lock_unless_being_deleted(destination)
    if new_secret:
        new_secret = destination_check_secret(new_secret)
    if overlap_seconds is None:
        overlap_seconds = settings.SECRET_ROTATION_OVERLAP_SECONDS
    secret = new_secret or generate_standard_webhooks_secret()
    try:
        replace_secret(destination, secret, overlap_seconds, stop_previous=stop_previous)
    except PreviousSecretStillValid as exc:
        raise DestinationPreviousSecretStillValid(str(exc)) from None
    except SecretNotReplaced as exc:
        raise DestinationError(str(exc)) from None
    audit_record(
        action="destination.secret_rotated",
        organization=destination.organization,
        actor=actor,
        target=destination,
        changes={"secret": SECRET_MASK, "generated": not new_secret, "overlap_seconds": overlap_seconds},
    )
    return destination, secret


@transaction.atomic
def destination_contents(*, destination: Destination, cap: int | None = None) -> list[KindCount]:
    """What deleting ``destination`` deletes with it, per kind, counted up to a cap (its deliveries by
    their destination index, their attempts through them): the events stay."""
    return count_kinds(
        [
            ("deliveries", Delivery.objects.filter(destination_id=destination.pk)),
            ("delivery attempts", DeliveryAttempt.objects.filter(delivery__destination_id=destination.pk)),
            ("source–destination links", Subscription.objects.filter(destination_id=destination.pk)),
        ],
        cap,
    )


def destination_delete(*, destination: Destination, actor=None) -> bool:
    """Delete a destination with its deliveries and attempts, in the background; the events stay
    (other destinations, replay). The destination stops being sent anything and is marked as being
    deleted at once, and a task deletes its rows in batches (see destination_deletion). False if it
    was already being deleted or is gone."""
    from .destination_deletion import destination_request_deletion

    return destination_request_deletion(destination=destination, actor=actor)


def destination_set_paused(
    *, destination: Destination, paused: bool, actor=None, reason: str = "paused from the dashboard"
) -> Destination:
    """Pause (deliveries wait) or resume (they drain in arrival order); NothingToDo if it is so already."""
    require_configure_role(organization=destination.organization, actor=actor)
    if paused:
        return destination_pause(destination=destination, reason=reason, actor=actor)
    return destination_resume(destination=destination, actor=actor)


def destination_retry_delivery(*, delivery: Delivery, actor=None) -> Delivery:
    """One more attempt for a dead or waiting delivery, by someone allowed to retry."""
    require_configure_role(organization=delivery.organization, actor=actor)
    return delivery_retry(delivery=delivery, actor=actor)


def destination_replay_event(*, event: WebhookEvent, destination: Destination, actor=None) -> Delivery:
    """Send an event again to one destination as a new delivery."""
    require_configure_role(organization=event.organization, actor=actor)
    return event_replay(event=event, destination=destination, actor=actor)


@transaction.atomic
def destination_bulk_retry(*, destination: Destination, actor=None) -> BulkRetry:
    """Retry every dead delivery of a destination, in the background; one such job at a time
    (bulk_retry_request: a second one would retry the same deliveries twice; and none for an
    inactive destination)."""
    return bulk_retry_request(
        organization=destination.organization, filters={"destination": destination.pk}, actor=actor
    )
