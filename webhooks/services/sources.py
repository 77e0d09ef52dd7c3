"""Creating and changing sources (a tenant's provider connections)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction

from organizations.models import Organization
from organizations.names import name_problem
from organizations.services import SECRET_MASK, audit_record
from webhooks.models import Source
from webhooks.providers.base import InvalidOptions
from webhooks.providers.registry import PROVIDERS, UnknownProvider, get_provider

from .permissions import require_configure_role
from .secret_use import SECRET_MATCH_FIELDS
from .secrets import (
    PreviousSecretStillValid,
    SecretNotReplaced,
    generate_token_secret,
    replace_secret,
    secret_hint,
)
from .source_networks import AllowedNetworksError, check_allowed_networks


def source_change_delay() -> str:
    """How soon a saved change of a source reaches every ingest process, in words.

    Each web process keeps the sources it has seen for INGEST_SOURCE_CACHE_SECONDS (see
    ingest.source_for_token), so stopping, resuming or a new secret applies within that time.
    """
    seconds = float(settings.INGEST_SOURCE_CACHE_SECONDS)
    if seconds <= 0:
        return "at once"
    return f"within {seconds:g} second{'' if seconds == 1 else 's'}"


class SourceError(ValueError):
    """A source cannot be created or changed as asked (message is safe to show)."""


class SourceBeingDeleted(SourceError):
    """The source is being deleted: it cannot be changed any more."""


class SourcePreviousSecretStillValid(SourceError):
    """A rotation during an earlier one's overlap, not confirmed with ``stop_previous``: found so on
    the locked row, so a caller need not guess it from a copy read before another rotation."""


def _lock_unless_being_deleted(source: Source) -> None:
    """Lock the source's row for the caller's transaction; refuse one that is being deleted.

    The row is read again: an instance loaded before a deletion was asked for must not make the
    source active again, or change it, meanwhile."""
    live = Source.objects.select_for_update(no_key=True).filter(pk=source.pk, deletion_requested_at__isnull=True)
    if not live.exists():
        raise SourceBeingDeleted("the source is being deleted")


class SecretRequired(SourceError):
    """The provider issues the secret, and none was given."""


class SourceNetworksError(SourceError):
    """The allowed networks cannot be saved as given (the message names the entry)."""


def source_check_allowed_networks(entries: Iterable[str] | None) -> list[str]:
    """A source's allowed networks, checked (SourceNetworksError) and normalised to CIDR strings;
    None and [] let any address through. The dashboard, the REST API, the admin and create_source
    all check through here, and the services again before saving (see services.source_networks)."""
    try:
        return check_allowed_networks(entries)
    except AllowedNetworksError as exc:
        raise SourceNetworksError(str(exc)) from None


def _check_name(name: str) -> None:
    if not name.strip():
        raise SourceError("the source needs a name")
    if len(name) > Source._meta.get_field("name").max_length:
        raise SourceError(f"the name is longer than {Source._meta.get_field('name').max_length} characters")
    if problem := name_problem(name):
        raise SourceError(problem)


def _clean(provider_kind: str, secret: str | None, options: dict[str, Any], *, allow_unset_secret: bool = False):
    try:
        provider = get_provider(provider_kind)
    except UnknownProvider:
        raise SourceError(f"unknown provider '{provider_kind}'") from None
    generated = None
    if not provider.uses_secret:
        try:
            return "", provider.clean_options(options), None
        except InvalidOptions as exc:
            raise SourceError(str(exc)) from None
    if not secret:
        if provider.secret_generated_by_us:
            secret = generated = generate_token_secret()
        elif allow_unset_secret:
            # The provider shows its secret only once the ingest URL is registered there (Stripe):
            # the source exists first, refusing every request until the secret is set.
            try:
                return "", provider.clean_options(options), None
            except InvalidOptions as exc:
                raise SourceError(str(exc)) from None
        else:
            raise SecretRequired(f"{provider.label} gives you the signing secret: enter the one it shows")
    try:
        return provider.clean_secret(secret), provider.clean_options(options), generated
    except InvalidOptions as exc:
        raise SourceError(str(exc)) from None


@transaction.atomic
def source_create(
    *,
    organization: Organization,
    provider: str,
    name: str,
    secret: str | None = None,
    options: dict[str, Any] | None = None,
    allow_unset_secret: bool = False,
    allowed_networks: Iterable[str] | None = None,
    actor=None,
) -> tuple[Source, str | None]:
    """Create a source. Returns it and the generated secret (None when the tenant gave one).

    With ``allow_unset_secret``, a provider that issues its own secret (often only once the
    ingest URL is registered there) may be left without one for now: every request is then
    refused as ``secret_not_set`` until a rotation sets it. ``allowed_networks`` restricts the
    addresses it takes requests from (empty: any)."""
    require_configure_role(organization=organization, actor=actor)
    _check_name(name)
    clean_secret, clean_options, generated = _clean(
        provider, secret, options or {}, allow_unset_secret=allow_unset_secret
    )
    clean_networks = source_check_allowed_networks(allowed_networks)
    source = Source.objects.create(
        organization=organization,
        provider=provider,
        name=name,
        secret=clean_secret,
        secret_hint=secret_hint(clean_secret),
        options=clean_options,
        allowed_networks=clean_networks,
    )
    changes = {"provider": provider, "name": name, "options": clean_options, "secret": SECRET_MASK}
    if clean_networks:
        changes["allowed_networks"] = clean_networks
    audit_record(action="source.created", organization=organization, actor=actor, target=source, changes=changes)
    return source, generated


def source_check_secret(*, provider: str, secret: str, options: dict[str, Any]) -> None:
    """Refuse (SourceError) a secret the source's provider cannot use, before anything is saved."""
    _clean(provider, secret, options)


@transaction.atomic
def source_rotate_secret(
    *,
    source: Source,
    new_secret: str | None = None,
    overlap_seconds: int | None = None,
    stop_previous: bool = False,
    actor=None,
) -> tuple[Source, str | None]:
    """Make ``new_secret`` current; the old one keeps verifying for ``overlap_seconds``.

    During an earlier rotation's overlap, only with ``stop_previous`` (see replace_secret)."""
    require_configure_role(organization=source.organization, actor=actor)
    _lock_unless_being_deleted(source)
    clean_secret, _, generated = _clean(source.provider, new_secret, source.options)
    if overlap_seconds is None:
        overlap_seconds = settings.SECRET_ROTATION_OVERLAP_SECONDS
    try:
        overlap_seconds = replace_secret(
            source, clean_secret, overlap_seconds, stop_previous=stop_previous, cleared_fields=SECRET_MATCH_FIELDS
        )
    except PreviousSecretStillValid as exc:
        raise SourcePreviousSecretStillValid(str(exc)) from None
    except SecretNotReplaced as exc:
        raise SourceError(str(exc)) from None
    audit_record(
        action="source.secret_rotated",
        organization=source.organization,
        actor=actor,
        target=source,
        changes={"secret": SECRET_MASK, "overlap_seconds": overlap_seconds},
    )
    return source, generated


def ingest_url(source: Source) -> str:
    return f"{settings.PUBLIC_BASE_URL}/in/{source.ingest_token}/"


def source_awaits_secret(source: Source) -> bool:
    """A source whose provider signs with a secret not set yet (created before the provider showed
    it): every request to it is refused, whether or not it is receiving."""
    provider = PROVIDERS.get(source.provider)
    return bool(provider and provider.uses_secret and not source.secret_hint)


@transaction.atomic
def source_set_active(*, source: Source, active: bool, actor=None) -> Source:
    """Pause (ingest answers 404 as for an unknown URL) or resume a source."""
    require_configure_role(organization=source.organization, actor=actor)
    _lock_unless_being_deleted(source)
    if source.is_active == active:
        return source
    source.is_active = active
    source.save(update_fields=["is_active", "updated_at"])
    audit_record(
        action="source.resumed" if active else "source.paused",
        organization=source.organization,
        actor=actor,
        target=source,
        changes={"is_active": active},
    )
    return source


@transaction.atomic
def source_update(
    *,
    source: Source,
    name: str,
    options: dict[str, Any],
    allowed_networks: Iterable[str] | None = None,
    actor=None,
) -> Source:
    """Rename a source, change its provider options and, unless ``allowed_networks`` is None, the
    networks it takes requests from ([] for any address). The secret has its own service."""
    require_configure_role(organization=source.organization, actor=actor)
    _lock_unless_being_deleted(source)
    _check_name(name)
    try:
        clean_options = get_provider(source.provider).clean_options(options)
    except InvalidOptions as exc:
        raise SourceError(str(exc)) from None
    saved = ["name", "options", "updated_at"]
    changes = {}
    if name != source.name:
        changes["name"] = [source.name, name]
    if clean_options != source.options:
        changes["options"] = [source.options, clean_options]
    if allowed_networks is not None:
        clean_networks = source_check_allowed_networks(allowed_networks)
        if clean_networks != source.allowed_networks:
            changes["allowed_networks"] = [source.allowed_networks, clean_networks]
        source.allowed_networks = clean_networks
        source.__dict__.pop("allowed_ip_networks", None)  # parsed from the old list, if ever read
        saved.append("allowed_networks")
    source.name, source.options = name, clean_options
    # Saved with save(), never update(): its signal clears this process's cached copies at once
    # (apps.py), and other web processes read the row again within INGEST_SOURCE_CACHE_SECONDS.
    source.save(update_fields=saved)
    if changes:
        audit_record(
            action="source.updated", organization=source.organization, actor=actor, target=source, changes=changes
        )
    return source


def source_delete(*, source: Source, actor=None) -> bool:
    """Delete a source with its events (their deliveries and attempts go with them), in the
    background: the source stops receiving and is marked as being deleted at once, and a task
    deletes its rows in batches (see source_deletion). False if it was already being deleted."""
    from .source_deletion import source_request_deletion

    return source_request_deletion(source=source, actor=actor)
