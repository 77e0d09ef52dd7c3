"""Platform admin for tenants, users and the audit log, plus what every Hookline ModelAdmin shares.

Every change, deletion and action made in the admin is written to the audit log (on top of
Django's own LogEntry) by ``AuditedAdminMixin``; the webhooks admin builds on the same pieces.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.paginator import Paginator
from django.db import models, transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.urls import NoReverseMatch, path, reverse
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import ngettext

from accounts.admin import UserAdmin
from config.formats import to_the_second
from webhooks.fields import EncryptedTextField

from .api_keys import api_key_revoke
from .deletion_counts import KindCount, user_contents
from .models import LAST_OWNER, ApiKey, AuditLog, Membership, MonthlyUsage, Organization, current_month
from .names import validate_name
from .services import audit_lock_organizations, audit_record, audit_verify_chain, organization_set_active

logger = logging.getLogger(__name__)

# organizations.team (invitations, their mail, the sign-in audit) is imported where an admin save
# uses it, not here: the admin is imported as Django starts, in every process and command, none of
# which needs it (test_setting_django_up_leaves_the_ingest_service_and_the_sign_in_audit_unimported).

# --- Shared building blocks ---------------------------------------------------------------

# Set on an action's intermediate page (a response that asks before acting) so it is not audited as done.
AWAITING_CONFIRMATION = "hookline_awaiting_confirmation"


class CappedCountPaginator(Paginator):
    """Counts at most ``CAP + 1`` rows, so a change list over millions of rows never runs a full COUNT(*).

    Past the cap the list still pages (up to the cap); narrowing the filters finds the rest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if isinstance(rows, models.QuerySet):
            # Only the primary keys, in any order: a column the list computes per row (an event's
            # failed deliveries) would otherwise run for every counted row, and an ORDER BY would
            # sort every match before the limit; neither changes how many rows there are.
            rows = rows.values("pk").order_by()
        return rows[: self.CAP + 1].count()

    @property
    def is_capped(self) -> bool:
        return self.count > self.CAP


def _plain(value: Any) -> Any:
    """A JSON-friendly, human-readable form of a form value for the audit log."""
    if isinstance(value, models.Model):
        return value.pk  # the form's initial value of a relation is its primary key too
    if isinstance(value, models.QuerySet | list | tuple | set):
        return [_plain(item) for item in value]
    if isinstance(value, dict | str | int | float | bool) or value is None:
        return value
    return str(value)


# --- What an admin action did, for its audit entries ---------------------------------------------

# At most this many ids of selected, done or refused objects are kept in an action's entry (with their counts).
AUDITED_IDS_KEPT = 100


class ActionOutcomes:
    """What an admin action did to its selection, per organization, reported by the action itself.

    AuditedAdminMixin writes one entry per organization of the selection, and each says what
    happened there: ``done``, ``refused`` (with the reasons), ``partly done`` or ``nothing to do``.
    An organization for which the action reported nothing gets the action's fallback: why there
    was nothing to do, or why the whole selection was refused (too many rows, say). Items are
    short labels such as "delivery <id>": never a secret.
    """

    def __init__(self) -> None:
        self.done: dict[int | None, list[str]] = defaultdict(list)
        self.refused: dict[int | None, list[tuple[str, str]]] = defaultdict(list)
        self.nothing: dict[int | None, list[tuple[str, str]]] = defaultdict(list)
        self.fallback: tuple[str, str] | None = None  # (outcome, reason)

    def add_done(self, organization_id: int | None, item: str) -> None:
        self.done[organization_id].append(item)

    def add_refused(self, organization_id: int | None, item: str, reason: str) -> None:
        self.refused[organization_id].append((item, reason))

    def add_nothing_to_do(self, organization_id: int | None, item: str, reason: str) -> None:
        self.nothing[organization_id].append((item, reason))

    def nothing_to_do(self, reason: str) -> None:
        self.fallback = ("nothing to do", reason)

    def refuse_all(self, reason: str) -> None:
        self.fallback = ("refused", reason)

    @property
    def reported(self) -> bool:
        return bool(self.done or self.refused or self.nothing or self.fallback)

    def organization_ids(self) -> set[int | None]:
        return set(self.done) | set(self.refused) | set(self.nothing)

    def for_organization(self, organization_id: int | None) -> dict[str, Any]:
        """The outcome part of one organization's entry."""
        done = self.done.get(organization_id, [])
        refused = self.refused.get(organization_id, [])
        nothing = self.nothing.get(organization_id, [])
        if not done and not refused and not nothing:
            outcome, reason = self.fallback or ("nothing to do", "")
            return {"outcome": outcome, "reason": reason} if reason else {"outcome": outcome}
        if done:
            outcome = "partly done" if refused else "done"
        else:
            outcome = "refused" if refused else "nothing to do"
        result: dict[str, Any] = {"outcome": outcome}
        if done:
            result.update(done=done[:AUDITED_IDS_KEPT], done_count=len(done))
        for key, items in (("refused", refused), ("nothing_to_do", nothing)):
            if items:
                kept = [{"item": item, "reason": reason} for item, reason in items[:AUDITED_IDS_KEPT]]
                result.update({key: kept, f"{key}_count": len(items)})
        return result


_ACTION_OUTCOMES = "_hookline_action_outcomes"


def action_outcomes(request) -> ActionOutcomes:
    """Where the running admin action reports what it did (see ActionOutcomes)."""
    outcomes = getattr(request, _ACTION_OUTCOMES, None)
    if outcomes is None:
        outcomes = ActionOutcomes()
        setattr(request, _ACTION_OUTCOMES, outcomes)
    return outcomes


def organization_field(model) -> str | None:
    """The column naming the organization a row of ``model`` belongs to (its own key for an organization)."""
    if model is Organization:
        return "pk"
    try:
        field = model._meta.get_field("organization")
    except FieldDoesNotExist:
        return None
    return field.attname if field.is_relation and field.related_model is Organization else None


def organization_of(obj) -> Organization | None:
    if isinstance(obj, Organization):
        return obj
    organization = getattr(obj, "organization", None)
    return organization if isinstance(organization, Organization) else None


def _only_changes_audited_elsewhere(obj, message) -> bool:
    """Whether a change touched only fields whose change a service audits in its own entry (an admin
    names them in ``obj._audit_recorded_elsewhere``, and leaves them out of ``_audit_changes``): an
    admin entry besides would list no change at all."""
    if not getattr(obj, "_audit_recorded_elsewhere", None) or getattr(obj, "_audit_changes", None):
        return False
    # Inline rows added, changed or deleted are in Django's change message, each with its name.
    return isinstance(message, list) and all(
        set(item) == {"changed"} and "name" not in item["changed"] for item in message
    )


class AuditedAdminMixin:
    """Writes an audit entry for every addition, change, deletion and action done in this admin.

    Before/after values come from the form (secrets are masked by audit_record); inline
    changes are summarised by Django's own change message.
    """

    def _audit_action_name(self, verb: str) -> str:
        return f"admin.{self.opts.app_label}.{self.opts.model_name}.{verb}"

    def save_model(self, request, obj, form, change):
        # Read before saving: afterwards the form's initial values are gone.
        obj._audit_changes = {
            name: [_plain(form.initial.get(name)), _plain(form.cleaned_data.get(name))]
            if change
            else _plain(form.cleaned_data.get(name))
            for name in form.changed_data
        }
        super().save_model(request, obj, form, change)

    def save_formset(self, request, form, formset, change):
        """Inline rows (a user's or an organization's memberships…) are audited one by one, in their
        own organization, with before and after: the parent's entry only names the fields touched."""
        touched = []
        deleted = set(formset.deleted_forms) if formset.can_delete else set()
        for inline_form in formset.forms:
            obj = inline_form.instance
            if inline_form in deleted:
                if obj.pk is not None:
                    fields = {name: _plain(inline_form.initial.get(name)) for name in inline_form.fields}
                    touched.append((copy.copy(obj), "deleted", fields))  # a copy keeps its id
            elif inline_form.has_changed():
                if obj.pk is None:
                    fields = {name: _plain(inline_form.cleaned_data.get(name)) for name in inline_form.changed_data}
                    touched.append((obj, "added", fields))
                else:
                    fields = {
                        name: [_plain(inline_form.initial.get(name)), _plain(inline_form.cleaned_data.get(name))]
                        for name in inline_form.changed_data
                    }
                    touched.append((obj, "changed", fields))
        organizations = {id(obj): organization_of(obj) for obj, _, _ in touched}  # before a deletion
        super().save_formset(request, form, formset, change)
        for obj, verb, fields in touched:
            audit_record(
                action=f"admin.{obj._meta.app_label}.{obj._meta.model_name}.{verb}",
                organization=organizations[id(obj)],
                actor=request.user,
                target=obj,
                changes={"fields": fields},
                request=request,
            )

    def _audit(self, request, obj, verb: str, summary: Any = None, more: dict[str, Any] | None = None) -> None:
        changes: dict[str, Any] = {"fields": getattr(obj, "_audit_changes", {})}
        if summary:
            changes["summary"] = summary
        changes.update(more or {})
        audit_record(
            action=self._audit_action_name(verb),
            organization=organization_of(obj),
            actor=request.user,
            target=obj,
            changes=changes,
            request=request,
        )

    def log_addition(self, request, obj, message):
        entry = super().log_addition(request, obj, message)
        self._audit(request, obj, "added", message)
        return entry

    def log_change(self, request, obj, message):
        entry = super().log_change(request, obj, message)
        if not _only_changes_audited_elsewhere(obj, message):
            self._audit(request, obj, "changed", message)
        return entry

    def log_deletions(self, request, queryset):
        # Called by the delete view and the bulk delete action while the rows still exist. The
        # audit entries are written once they are deleted (_audit_deletions), in the same
        # transaction: the audit log's lock, one for the whole platform, is then not held while
        # an organization and its events are deleted, and a deletion that fails leaves no entry.
        entries = super().log_deletions(request, queryset)
        deleting = []
        for obj in queryset:
            organization_of(obj)  # loaded now: it may be gone with the object
            deleting.append(copy.copy(obj))  # a copy keeps its id; Model.delete() clears it
        request._hookline_deleting = deleting
        return entries

    def delete_model(self, request, obj):
        super().delete_model(request, obj)  # the delete view runs in a transaction already
        self._audit_deletions(request)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            super().delete_queryset(request, queryset)
            self._audit_deletions(request)

    def _audit_deletions(self, request) -> None:
        """The entries for what log_deletions saw, once deleted."""
        for obj in getattr(request, "_hookline_deleting", ()):
            self._audit(request, obj, "deleted")
        request._hookline_deleting = []

    def get_deleted_objects(self, objs, request):
        # Rows the platform writes (events, deliveries, attempts) cannot be deleted one by one in
        # the admin, but deleting their tenant, source or destination takes them along: Django would
        # otherwise refuse such deletions for lack of a delete permission on those rows.
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        if request.user.is_superuser:
            perms_needed = set()
        return deleted, model_count, perms_needed, protected

    def response_action(self, request, queryset):
        action = request.POST.get("action", "")
        # Django's own delete confirmation is skipped: deletions are audited one by one by log_deletions.
        audited = bool(action) and action != "delete_selected"
        select_across = request.POST.get("select_across") == "1"
        # Read before the action: it may change which rows the list's filters match (pausing
        # takes a destination out of "Sending"), or delete some.
        selections = self._selection_by_organization(request, queryset, select_across) if audited else {}
        setattr(request, _ACTION_OUTCOMES, ActionOutcomes())  # filled by the action, if it reports
        response = super().response_action(request, queryset)
        # A confirmation page is not the action yet; the confirmed POST is.
        performed = response is not None and not getattr(response, AWAITING_CONFIRMATION, False)
        if performed and audited:
            self._audit_action(request, action, selections, select_across, action_outcomes(request))
        return response

    def _audit_action(self, request, action: str, selections: dict, select_across: bool, outcomes) -> None:
        """One entry per organization of the selection, with that organization's objects and what
        the action did to them, so that each organization's log shows what was done to its own
        rows (and nothing of the others'). Rows that belong to no organization (periodic tasks)
        get one entry without any, as do objects deleted before the action ran."""
        for organization_id in outcomes.organization_ids() - set(selections):
            selections[organization_id] = {"selected": [], "selected_count": 0}
        with transaction.atomic():
            # Every organization's row before the first entry's audit lock (see audit_lock_organizations).
            organizations = audit_lock_organizations(selections)
            for organization_id in sorted(selections, key=lambda pk: (pk is not None, pk or 0)):
                changes: dict[str, Any] = {**selections[organization_id], "select_across": select_across}
                if select_across:
                    # "All that match": the list's filters and search say which rows those were.
                    changes["filters"] = request.GET.urlencode()
                if outcomes.reported:
                    changes.update(outcomes.for_organization(organization_id))
                audit_record(
                    action=f"{self._audit_action_name('action')}.{action}",
                    organization=organizations.get(organization_id),
                    actor=request.user,
                    changes=changes,
                    request=request,
                )

    def _selection_by_organization(self, request, queryset, select_across: bool) -> dict[int | None, dict]:
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        field = organization_field(self.model)
        if field is None:
            return {None: {"selected": selected[:AUDITED_IDS_KEPT], "selected_count": len(selected)}}
        if select_across:
            # Every row the list matched, however many: counted per organization, not listed.
            counts = queryset.order_by().values_list(field).annotate(count=Count("pk")).values_list(field, "count")
            return {organization_id: {"selected_count": count} for organization_id, count in counts}
        rows = queryset.filter(pk__in=selected).order_by().values_list("pk", field)
        by_organization: dict[int | None, list[str]] = defaultdict(list)
        for pk, organization_id in rows:
            by_organization[organization_id].append(str(pk))
        if not by_organization:  # all gone meanwhile: what was asked for, as posted
            return {None: {"selected": selected[:AUDITED_IDS_KEPT], "selected_count": len(selected)}}
        return {
            organization_id: {"selected": sorted(pks)[:AUDITED_IDS_KEPT], "selected_count": len(pks)}
            for organization_id, pks in by_organization.items()
        }


class CountsWhatADeletionTakesMixin:
    """The delete page and "Delete selected" count, per kind, what deleting the objects takes along,
    instead of listing every related row: Django's collector loads them all to list them, and a
    destination with hundreds of thousands of deliveries (a tenant, a source with millions of
    events) timed the page out, so an operator could not delete it here. Each admin says what its
    objects take along (``deletion_contents``, a service's capped counts)."""

    # For staff who are not superusers: a reason refuses every deletion, named on the page. None
    # applies Django's own rule: refused when a counted kind has rows its admin does not let them
    # delete (events, deliveries and attempts are the platform's: nobody deletes them one by one).
    deletion_for_superusers_only: str | None = None
    # Each model's admin/<app>/<model>/_deletion_note.html says how its deletion is done.
    delete_confirmation_template = "admin/hookline/counted_delete_confirmation.html"
    delete_selected_confirmation_template = "admin/hookline/counted_delete_selected_confirmation.html"

    def deletion_contents(self, obj) -> list[KindCount]:
        raise NotImplementedError

    def get_deleted_objects(self, objs, request):
        opts = self.opts
        deleted, model_count, counted = [], {}, []
        objs = list(objs)
        for obj in objs:
            contents = self.deletion_contents(obj)
            counted.extend(contents)
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            deleted.append(format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, obj))
            if len(objs) == 1:  # the summary has its counts
                model_count = {item.kind: item.label for item in contents if item.count}
            else:
                model_count = {opts.verbose_name_plural: len(objs)}
                if counts := [f"{capfirst(item.kind)}: {item.label}" for item in contents if item.count]:
                    deleted.append(counts)
        return deleted, model_count, self._deletion_perms_needed(request, objs, counted), []

    def _deletion_perms_needed(self, request, objs: list, counted: list[KindCount]) -> set[str]:
        if request.user.is_superuser:
            return set()
        if self.deletion_for_superusers_only:
            return {self.deletion_for_superusers_only}
        needed = set()
        # Each object's own rule first, as Django's collector asked it: "Delete selected" checks only
        # the model's permission before this, and an object its own admin refuses (another staff
        # account, for a staff user) would be deleted with the others.
        if any(not self.has_delete_permission(request, obj) for obj in objs):
            needed.add(str(self.opts.verbose_name))
        for item in counted:
            model_admin = self.admin_site._registry.get(item.model)
            if item.count and model_admin is not None and not model_admin.has_delete_permission(request):
                needed.add(str(item.model._meta.verbose_name))
        return needed


class SavesOnlyItsFormsFieldsMixin:
    """A change saves the fields its form changed, not the whole row as loaded: services and tasks
    write the rest (a secret rotated on the dashboard, a pause, the mark of a deletion and its
    progress, which secret last matched) and may have done so since the page was loaded; saving
    every column would undo that. Put it after AuditedAdminMixin, which reads the form first."""

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        concrete = {field.name for field in obj._meta.concrete_fields}
        changed = [name for name in form.changed_data if name in concrete]
        if changed:
            obj.save(update_fields=[*changed, *(["updated_at"] if "updated_at" in concrete else [])])


class AuditedModelAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """The base of Hookline's ModelAdmins."""


class NoLookupsIntoHiddenValuesMixin:
    """A list's query string filters by its filters and plain columns, never inside a JSON document or an
    encrypted column.

    Django lets a query string look up any of the model's own fields, and the list's count then says
    whether a guess matched: ``?headers__stripe-signature__startswith=t%3D1`` told staff who may only
    view events (and are shown signatures masked) a signature one character at a time, and
    ``?options__url__contains=`` the password a source's old options held. No list filter of ours
    reaches inside those fields; one that did would name its own parameter (a SimpleListFilter).
    """

    def lookup_allowed(self, lookup, value, request=None):
        try:
            field = self.model._meta.get_field(lookup.split(LOOKUP_SEP, 1)[0])
        except FieldDoesNotExist:
            field = None
        if isinstance(field, (models.JSONField, EncryptedTextField)):
            return False
        return super().lookup_allowed(lookup, value, request)


class ReadOnlyAdminMixin:
    """Rows written by the platform itself: shown, never added, changed or deleted here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class OrganizationFilter(admin.SimpleListFilter):
    """By organization, listed from the (small) organizations table, never by scanning the rows."""

    title = "organization"
    parameter_name = "organization"
    field_path = "organization_id"

    def lookups(self, request, model_admin):
        return list(Organization.objects.order_by("name").values_list("pk", "name")[:500])

    def queryset(self, request, queryset):
        if self.value() and str(self.value()).isascii() and str(self.value()).isdigit():
            return queryset.filter(**{self.field_path: int(self.value())})
        return queryset


class DateRangeFilter(admin.ListFilter):
    """From and to dates (inclusive, UTC) on one datetime field, with two date inputs.

    A bound may also be a time, to the minute or second ("2026-05-01T12:34:56", UTC; a link's, such
    as the admin index's "Dead, last 24 h"): each bound names a day, a minute or a second, and the
    range includes all of both.
    """

    template = "admin/filters/date_range.html"
    field_name = "created_at"
    title = "date"

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.parameter_from = f"{self.field_name}_from"
        self.parameter_to = f"{self.field_name}_to"
        self.used_parameters = {}
        for name in (self.parameter_from, self.parameter_to):
            if name in params:
                value = params.pop(name)
                value = value[-1] if isinstance(value, list) else value
                self.used_parameters[name] = value

    @classmethod
    def query_string(cls, start: datetime, end: datetime) -> str:
        """The parameters that list the rows from ``start`` to ``end`` (whole seconds, both included)."""
        return urlencode({f"{cls.field_name}_from": _to_the_second(start), f"{cls.field_name}_to": _to_the_second(end)})

    def has_output(self):
        return True

    def expected_parameters(self):
        return [self.parameter_from, self.parameter_to]

    def _bound(self, parameter: str) -> tuple[datetime, timedelta] | None:
        """The moment a bound starts, and how long the day, minute or second it names lasts."""
        text = (self.used_parameters.get(parameter) or "").strip()
        if not text.isascii():
            # Django's parse_date reads other scripts' digits ("٢٠٢٦-١٢-٠١" as 2026-12-01); the admin
            # takes numbers in the digits 0-9 only (README, *Ids*): ignored like any unreadable bound.
            return None
        try:
            day = parse_date(text)
            if day is not None:
                return datetime.combine(day, time.min, tzinfo=UTC), timedelta(days=1)
            moment = parse_datetime(text)
        except ValueError:  # well-formed but impossible, such as 2026-13-45: ignored like a blank
            return None
        if moment is None:
            return None
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        lasts = timedelta(seconds=1) if _WITH_SECONDS.search(text) else timedelta(minutes=1)
        return moment, lasts

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        start = self._bound(self.parameter_from)
        end = self._bound(self.parameter_to)
        start_at = start[0] if start else None
        end_at = None
        # The end of the last day, minute or second, except at the end of time, after which there is
        # nothing to exclude (and no datetime to name).
        if end and end[0] < datetime.max.replace(tzinfo=UTC) - end[1]:
            end_at = end[0] + end[1]
        return start_at, end_at

    def queryset(self, request, queryset):
        start_at, end_at = self.bounds()
        if start_at:
            queryset = queryset.filter(**{f"{self.field_name}__gte": start_at})
        if end_at:
            queryset = queryset.filter(**{f"{self.field_name}__lt": end_at})
        return queryset

    def choices(self, changelist):
        value_from = self.used_parameters.get(self.parameter_from, "")
        value_to = self.used_parameters.get(self.parameter_to, "")
        # The template renders a small GET form; other active filters ride along as hidden fields.
        yield {
            "parameter_from": self.parameter_from,
            "parameter_to": self.parameter_to,
            "value_from": value_from,
            "value_to": value_to,
            # A time (a link's) in an input that shows it, rather than a date input that would drop it.
            "input_type_from": "datetime-local" if "T" in value_from else "date",
            "input_type_to": "datetime-local" if "T" in value_to else "date",
            "other_params": [
                (key, value[-1] if isinstance(value, list) else value)
                for key, value in changelist.get_filters_params().items()
                if key not in (self.parameter_from, self.parameter_to)
            ]
            + ([("q", changelist.query)] if changelist.query else []),
            "clear_url": changelist.get_query_string(remove=[self.parameter_from, self.parameter_to]),
        }


# A time with seconds ("12:34:56") names that second; one without ("12:34", as a datetime-local
# input sends it) names the whole minute.
_WITH_SECONDS = re.compile(r"[0-9]:[0-9]{2}:[0-9]{2}")


def _to_the_second(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- Tenants --------------------------------------------------------------------------------


class StaffMembershipsForSuperusersFormSet(BaseInlineFormSet):
    """Memberships of platform staff accounts are a superuser's to add, change or delete.

    A membership opens the organization's dashboard (its events, bodies, destinations' secrets) to
    its account: a staff account allowed to change users or organizations and to add memberships
    could otherwise make itself, or a colleague, the owner of any tenant, and read there what its
    admin permissions show it nothing of. Tenants' own accounts stay open to support staff.
    """

    request_user = None  # set by StaffMembershipsForSuperusersMixin.get_formset
    inviter_changes = ()  # set by save: the members removed or demoted, and the invitations they sent

    def save(self, commit=True):
        """Saves the rows, then locks the open invitations of each member removed or demoted (moved to
        another organization or account, too), for AuditedMembershipsMixin to revoke after the rows'
        audit entries, as the Team page does: after the owners' rows (locked by clean) and the
        members' own, before the first audit entry (organizations.team._lock_invitations_sent_by)."""
        from .team import invitations_lock_for_inviter_changes

        changes = self._removals_and_role_changes()
        saved = super().save(commit)
        self.inviter_changes = invitations_lock_for_inviter_changes(changes)
        return saved

    def _removals_and_role_changes(self) -> list[tuple[Membership, str | None]]:
        """Each membership changed, as it was, with the role its member has now in that organization
        (None: no longer a member of it)."""
        on_organizations_page = self.fk.name == "organization"
        changes = []
        deleted = set(self.deleted_forms) if self.can_delete else set()
        for form in self.initial_forms:
            if form.instance.pk is None or (form not in deleted and not form.has_changed()):
                continue
            organization_id = self.instance.pk if on_organizations_page else form.initial.get("organization")
            user_id = form.initial.get("user") if on_organizations_page else self.instance.pk
            before = Membership(
                pk=form.instance.pk,
                organization_id=getattr(organization_id, "pk", organization_id),
                user_id=getattr(user_id, "pk", user_id),
                role=form.initial.get("role"),
            )
            if form in deleted:
                changes.append((before, None))
                continue
            after_organization = getattr(form.cleaned_data.get("organization"), "pk", before.organization_id)
            after_user = getattr(form.cleaned_data.get("user"), "pk", before.user_id)
            moved = (after_organization, after_user) != (before.organization_id, before.user_id)
            changes.append((before, None if moved else form.cleaned_data.get("role")))
        return changes

    def clean(self):
        super().clean()
        touched_forms = [
            form for form in self.forms if (self.can_delete and self._should_delete_form(form)) or form.has_changed()
        ]
        self._lock_organizations_first(touched_forms)
        self._refuse_organizations_being_deleted(touched_forms)
        if self.request_user is None or self.request_user.is_superuser:
            # The owners are locked all the same, before any row is saved, in the Team page's order:
            # saved in id order, a member's row came before a later owner's, while a Team page change
            # held the owners and waited for that member, and PostgreSQL failed one as a deadlock.
            self._refuse_leaving_an_organization_without_an_owner(touched_forms, refuse=False)
            return
        touched = set()
        for form in touched_forms:
            if self.fk.name == "user":  # a user's page: its memberships are all the user's
                touched.add(self.instance.pk)
            else:  # an organization's page: the member before and after the change
                touched.add(form.initial.get("user"))
                touched.add(getattr(form.cleaned_data.get("user"), "pk", None))
        touched.discard(None)
        staff = (
            get_user_model()
            .objects.filter(pk__in=touched)
            .filter(models.Q(is_staff=True) | models.Q(is_superuser=True))
        )
        if staff.exists():
            raise ValidationError(
                "Only a superuser adds, changes or removes the memberships of a platform staff account "
                "(here: " + ", ".join(staff.order_by("email").values_list("email", flat=True)) + ")."
            )
        self._refuse_leaving_an_organization_without_an_owner(touched_forms)

    def _refuse_leaving_an_organization_without_an_owner(self, touched_forms, *, refuse: bool = True) -> None:
        """The Team page's rule (organizations.models.LAST_OWNER) for staff: an organization that has an
        owner keeps one, who alone manages its roles and members. Making someone else owner in the
        same save hands it over. A superuser may still leave one without (an account to recover):
        ``refuse`` False only locks the owners."""
        on_organizations_page = self.fk.name == "organization"

        def organization_id(form, *, before: bool):
            if on_organizations_page:
                return self.instance.pk
            value = form.initial.get("organization") if before else form.cleaned_data.get("organization")
            return getattr(value, "pk", value)

        concerned, gaining = set(), set()
        for form in touched_forms:
            if form.instance.pk is not None:
                concerned.add(organization_id(form, before=True))
            deleted = self.can_delete and self._should_delete_form(form)
            if not deleted:
                concerned.add(organization_id(form, before=False))
                if form.cleaned_data.get("role") == Membership.Role.OWNER:
                    gaining.add(organization_id(form, before=False))
        touched_ids = {form.instance.pk for form in touched_forms if form.instance.pk is not None}
        # The owners as they are now, locked until this save commits (the change view's transaction), in
        # the Team page's order (organizations.team._lock_owners): read without a lock, a demotion
        # committing meanwhile there, or in another admin save, left each seeing the other's owner.
        # Whether a row is an owner's is read from the locked rows too, not from the form as loaded.
        owners: dict[int, set[int]] = {}
        for pk, organization in (
            Membership.objects.select_for_update()
            .filter(organization_id__in=concerned - {None}, role=Membership.Role.OWNER)
            .order_by("pk")
            .values_list("pk", "organization_id")
        ):
            owners.setdefault(organization, set()).add(pk)
        if not refuse:
            return
        left_without = [
            organization
            for organization, owner_ids in owners.items()
            if organization not in gaining and owner_ids <= touched_ids
        ]
        if left_without:
            names = Organization.objects.filter(pk__in=left_without).order_by("name").values_list("name", flat=True)
            raise ValidationError(f"{LAST_OWNER.removesuffix('.')} (here: {', '.join(names)}).")

    def _lock_organizations_first(self, touched_forms) -> None:
        """On a user's page, the rows of the organizations whose memberships change, FOR KEY SHARE in id
        order, before the owners' memberships (and the invitations of those removed or demoted): the
        save writes an audit entry in each, and an organization's row taken only at its entry, after the
        audit chain's lock, deadlocked with that organization's deletion (audit_lock_organizations).
        An organization's page has locked its own row already (RefusedOnceBeingDeleted)."""
        if self.fk.name == "organization":
            return
        organizations = set()
        for form in touched_forms:
            organizations.add(form.initial.get("organization"))
            organizations.add(getattr(form.cleaned_data.get("organization"), "pk", None))
        audit_lock_organizations(organizations)

    def _refuse_organizations_being_deleted(self, touched_forms) -> None:
        """An organization being deleted changes no more, for anyone: its own page refuses every
        change (DeletingOrganizationAdmin), its members included, and so does a user's page, which
        shows the same rows. A member added to it (or moved to it) would otherwise be written to an
        organization whose members the deletion may already have deleted."""
        if self.fk.name == "organization":  # an organization's page: that page's own rule
            return
        organizations = set()
        for form in touched_forms:
            organizations.add(form.initial.get("organization"))
            organizations.add(getattr(form.cleaned_data.get("organization"), "pk", None))
        organizations.discard(None)
        being_deleted = Organization.objects.filter(pk__in=organizations, deletion_requested_at__isnull=False)
        if being_deleted.exists():
            raise ValidationError(
                "No membership of an organization being deleted is added, changed or removed (here: "
                + ", ".join(being_deleted.order_by("name").values_list("name", flat=True))
                + ")."
            )


class StaffMembershipsForSuperusersMixin:
    formset = StaffMembershipsForSuperusersFormSet

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        return type(formset.__name__, (formset,), {"request_user": request.user})


class AuditedMembershipsMixin:
    """For an admin with a memberships inline (StaffMembershipsForSuperusersFormSet): once the rows and
    their audit entries are written, the invitations sent by the members it removed or demoted are
    revoked, each audited, as the Team page's removal and demotion revoke them. Otherwise a member
    removed here could come back through an invitation they had sent to another address of theirs.
    Put it before AuditedAdminMixin."""

    def save_formset(self, request, form, formset, change):
        from .team import invitations_revoke_for_inviter_changes

        super().save_formset(request, form, formset, change)
        if isinstance(formset, StaffMembershipsForSuperusersFormSet):
            invitations_revoke_for_inviter_changes(list(formset.inviter_changes), actor=request.user)


class MembershipInline(StaffMembershipsForSuperusersMixin, admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)


@admin.register(Organization)
class OrganizationAdmin(
    NoLookupsIntoHiddenValuesMixin,
    AuditedMembershipsMixin,
    AuditedAdminMixin,
    SavesOnlyItsFormsFieldsMixin,
    admin.ModelAdmin,
):
    list_display = (
        "name",
        "slug",
        "plan",
        "monthly_event_quota",
        "usage_this_month",
        "retention_days",
        "sent_at_once",
        "is_active",
        "created_at",
    )
    list_filter = ("plan", "is_active")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (MembershipInline,)
    readonly_fields = ("usage_this_month", "sent_at_once", "related_links", "created_at", "suspension")
    fieldsets = (
        (None, {"fields": ("name", "slug", "is_active", "suspension", "created_at")}),
        (
            "Plan and limits",
            {
                "fields": (
                    "plan",
                    "monthly_event_quota",
                    "usage_this_month",
                    "retention_days",
                    "max_concurrency",
                    "sent_at_once",
                )
            },
        ),
        ("Their data", {"fields": ("related_links",)}),
    )

    def save_model(self, request, obj, form, change):
        suspending_or_reactivating = change and "is_active" in form.changed_data
        if suspending_or_reactivating:
            # Through organization_set_active: its own organization.suspended or .reactivated entry,
            # which an audit filter finds, not a field of the admin's generic "changed" one
            # (changed_data is the list that entry and the save read: without it, neither touches
            # the field).
            form.changed_data.remove("is_active")
            obj.is_active = not form.cleaned_data["is_active"]
        super().save_model(request, obj, form, change)
        if suspending_or_reactivating:
            form.changed_data.append("is_active")  # for Django's own history message
            obj._audit_recorded_elsewhere = ["is_active"]  # no generic entry when nothing else changed

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # After the memberships edited inline: the suspension's audit entry takes the audit chain's
        # lock, which the Team page takes after locking the memberships it changes. Written before
        # them, this save held that lock while it waited for a membership the Team page held, which
        # waited for the lock: a deadlock. (The organization's row is locked first all the same, by
        # the form's clean: RefusedOnceBeingDeleted.)
        if "is_active" in getattr(form.instance, "_audit_recorded_elsewhere", ()):
            organization_set_active(
                organization=form.instance, active=form.cleaned_data["is_active"], actor=request.user, request=request
            )

    @admin.display(description="Suspension")
    def suspension(self, obj):
        """Since when it is suspended, and from when its held deliveries are marked dead."""
        given_up_from = obj.held_deliveries_given_up_from if obj.pk else None
        if given_up_from is None:
            return (
                "—" if obj.is_active or obj.being_deleted else "suspended (its time is set by the next retention run)"
            )
        return format_html(
            "suspended since {}: its deliveries wait until it is active again; from {} on, the "
            "retention run marks dead those held longer than {} days (audit action "
            "<code>organization.held_deliveries_given_up</code>), to be retried once it is active again",
            to_the_second(obj.suspended_at),
            to_the_second(given_up_from),
            settings.SUSPENDED_ORGANIZATION_HOLD_DAYS,
        )

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "name" and field is not None:
            field.validators.append(validate_name)  # it goes into email subjects, as source names do
        return field

    def get_queryset(self, request):
        usage = MonthlyUsage.objects.filter(organization=OuterRef("pk"), month=current_month()).values("events")[:1]
        return super().get_queryset(request).annotate(events_this_month=Subquery(usage))

    @admin.display(description="Events this month", ordering="events_this_month")
    def usage_this_month(self, obj):
        used = getattr(obj, "events_this_month", None) or 0
        if obj.monthly_event_quota and used > obj.monthly_event_quota:
            return format_html('<strong class="hookline-over-quota">{} (over quota)</strong>', used)
        return used

    @admin.display(description="Sent at once (in effect)", ordering="max_concurrency")
    def sent_at_once(self, obj):
        """The cap the dispatcher applies, and where it comes from: an empty field reads as "none"."""
        if obj.follows_platform_max_concurrency:
            return f"{obj.effective_max_concurrency} (the platform's ORGANIZATION_MAX_CONCURRENCY)"
        return f"{obj.effective_max_concurrency} (this organization's own)"

    @admin.display(description="Links")
    def related_links(self, obj):
        if not obj.pk:
            return "—"
        links = [
            (reverse("admin:webhooks_source_changelist") + f"?organization={obj.pk}", "Sources"),
            (reverse("admin:webhooks_destination_changelist") + f"?organization={obj.pk}", "Destinations"),
            (reverse("admin:webhooks_webhookevent_changelist") + f"?organization={obj.pk}", "Events"),
            (reverse("admin:webhooks_delivery_changelist") + f"?organization={obj.pk}", "Deliveries"),
            (reverse("admin:organizations_auditlog_changelist") + f"?organization={obj.pk}", "Audit log"),
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links)


# --- Users (email login; memberships shown here because accounts never imports organizations) ---


class UserMembershipInline(StaffMembershipsForSuperusersMixin, admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("organization",)
    fields = ("organization", "role", "created_at")
    readonly_fields = ("created_at",)


def _organizations_owned_only_by(users) -> list[str]:
    """The organizations every owner of which is one of ``users``: what deleting them all leaves without an owner.

    Their owners' memberships are locked, in the Team page's order (organizations.team._lock_owners), until
    the deletion commits: read without a lock, an owner demoted there meanwhile left the organization
    with none once both committed."""
    user_ids = {user.pk for user in users}
    owned = Membership.objects.filter(user_id__in=user_ids, role=Membership.Role.OWNER).values("organization_id")
    owners: dict[int, set[int]] = {}
    for organization_id, user_id in (
        Membership.objects.select_for_update()
        .filter(organization_id__in=owned, role=Membership.Role.OWNER)
        .order_by("pk")
        .values_list("organization_id", "user_id")
    ):
        owners.setdefault(organization_id, set()).add(user_id)
    orphaned = Organization.objects.filter(
        pk__in=[organization for organization, owner_ids in owners.items() if owner_ids <= user_ids]
    ).order_by("name")
    return [f"{organization.name}: its only owner goes with it ({LAST_OWNER})" for organization in orphaned]


class PlatformUserAdmin(CountsWhatADeletionTakesMixin, AuditedMembershipsMixin, AuditedAdminMixin, UserAdmin):
    inlines = (UserMembershipInline,)
    list_filter = ("is_staff", "is_superuser", "is_active")

    def deletion_contents(self, obj):
        return user_contents(user=obj)  # a platform admin's admin history alone runs to thousands

    def response_action(self, request, queryset):
        if request.POST.get("action") != "delete_selected":
            return super().response_action(request, queryset)
        # Delete selected checks the owners it leaves (get_deleted_objects) under their lock, kept until
        # its deletion commits, as the delete page's transaction keeps it.
        with transaction.atomic():
            return super().response_action(request, queryset)

    # A deleted account's open invitations are revoked, as a deactivated one's are (User.save) and a
    # removed member's (the Team page): left open, with no inviter, one sent to another address of
    # theirs let the person back in with a new account. Locked before the deletion and its audit
    # entry (team.invitations_lock_sent_by_accounts), revoked after it.
    DELETED_INVITER = "the inviter's account was deleted"

    def delete_model(self, request, obj):
        from .team import invitations_lock_sent_by_accounts, invitations_revoke_sent_by_accounts

        sent = invitations_lock_sent_by_accounts(users=[obj])  # in the delete view's transaction
        super().delete_model(request, obj)
        invitations_revoke_sent_by_accounts(sent, actor=request.user, reason=self.DELETED_INVITER)

    def delete_queryset(self, request, queryset):
        from .team import invitations_lock_sent_by_accounts, invitations_revoke_sent_by_accounts

        with transaction.atomic():
            sent = invitations_lock_sent_by_accounts(users=list(queryset))
            super().delete_queryset(request, queryset)
            invitations_revoke_sent_by_accounts(sent, actor=request.user, reason=self.DELETED_INVITER)

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        if not request.user.is_superuser:
            # As on an organization's page (StaffMembershipsForSuperusersFormSet): the account's
            # memberships go with it, and an organization whose owners all go is left without one.
            protected = [*protected, *_organizations_owned_only_by(objs)]
        return deleted, model_count, perms_needed, protected

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # After the memberships edited inline, for the reason given in OrganizationAdmin.save_related:
        # the audit chain's lock after the rows, as on the Team page.
        if change and "email" in form.changed_data:
            self._audit_email_change(request, form.instance, form)

    @staticmethod
    def _audit_email_change(request, user, form) -> None:
        """A new sign-in address hands the account to whoever reads it: each of the user's
        organizations gets an entry in its own log (the platform's entry is written by log_change)."""
        change = [_plain(form.initial.get("email")), _plain(form.cleaned_data.get("email"))]
        memberships = Membership.objects.filter(user=user).select_related("organization").order_by("pk")
        for membership in memberships:
            audit_record(
                action="admin.accounts.user.email_changed",
                organization=membership.organization,
                actor=request.user,
                target=user,
                changes={"fields": {"email": change}},
                request=request,
            )


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), PlatformUserAdmin)


class PlatformGroupAdmin(AuditedAdminMixin, DjangoGroupAdmin):
    # A group's permissions are privileges (accounts.admin.PRIVILEGE_FIELDS): a staff account
    # allowed to change groups could give its own group every permission.
    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


admin.site.unregister(Group)
admin.site.register(Group, PlatformGroupAdmin)


# --- Audit log --------------------------------------------------------------------------------


class AuditDateFilter(DateRangeFilter):
    field_name = "created_at"
    title = "date"


class ActorFilter(admin.SimpleListFilter):
    title = "actor"
    parameter_name = "actor"

    def lookups(self, request, model_admin):
        staff = get_user_model().objects.filter(is_staff=True).order_by("email").values_list("pk", "email")[:200]
        return [("system", "System"), ("api_key", "API keys")] + [(str(pk), email) for pk, email in staff]

    def queryset(self, request, queryset):
        value = self.value()
        if value in (AuditLog.ActorType.SYSTEM, AuditLog.ActorType.API_KEY):
            return queryset.filter(actor_type=value)
        if value and value.isascii() and value.isdigit():
            return queryset.filter(actor_user_id=int(value))
        return queryset


class ActionFilter(admin.SimpleListFilter):
    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        # DISTINCT over the whole log is a full scan: remember the answer for a few minutes.
        # Without the cache (Redis down) it is computed every time rather than fail the page.
        # order_by() drops the model's ordering, which DISTINCT would otherwise take in: one
        # choice per entry (the newest 500 entries' actions, repeated) instead of one per action.
        def distinct_actions() -> list[str]:
            return list(AuditLog.objects.order_by("action").values_list("action", flat=True).distinct()[:500])

        try:
            actions = cache.get_or_set("admin:audit_actions", distinct_actions, 300)
        except Exception as exc:
            logger.warning("cache unavailable for the audit log's action filter: %s", exc)
            actions = distinct_actions()
        return [(action, action) for action in actions]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


CHANGE_VALUE_MAX_CHARS = 80


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= CHANGE_VALUE_MAX_CHARS else text[: CHANGE_VALUE_MAX_CHARS - 1] + "…"


# Keys whose value is a list of items (an admin action's selection and outcome), never a [before, after] pair.
LISTS_NOT_BEFORE_AFTER = ("selected", "done", "refused", "nothing_to_do")


def change_lines(changes: Any) -> list[str]:
    """An entry's changes as lines a person reads: "plan: free → team" for a [before, after] pair,
    "name: value" otherwise; Django's own summary of an admin change is left to the raw JSON."""
    if not isinstance(changes, dict):
        return [_short(changes)] if changes else []
    lines = []
    for key, value in changes.items():
        if key == "summary":
            continue
        if key == "fields" and isinstance(value, dict):
            lines.extend(change_lines(value))
        elif isinstance(value, list) and len(value) == 2 and key not in LISTS_NOT_BEFORE_AFTER:
            lines.append(f"{key}: {_short(value[0])} → {_short(value[1])}")
        else:
            lines.append(f"{key}: {_short(value)}")
    return lines


@admin.register(AuditLog)
class AuditLogAdmin(NoLookupsIntoHiddenValuesMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "organization_label",
        "actor_display",
        "action",
        "target_display",
        "changes_summary",
        "ip_address",
    )
    list_filter = (OrganizationFilter, ActorFilter, ActionFilter, AuditDateFilter)
    # The actor's address is matched exactly: who did it is usually what a tenant asks.
    search_fields = ("target_label", "=target_id", "=target_type", "=actor_label")
    search_help_text = "A target's name (any part), a target's id or type (exact), or the actor's email (exact)."
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = (
        "created_at",
        "organization_label",
        "organization_id",
        "actor_type",
        "actor_label",
        "actor_user_id",
        "action",
        "target_type",
        "target_id",
        "target_label",
        "changes_readable",
        "changes",
        "ip_address",
        "user_agent",
        "previous_hash",
        "entry_hash",
    )
    fields = readonly_fields
    change_list_template = "admin/organizations/auditlog/change_list.html"

    @admin.display(description="Actor", ordering="actor_label")
    def actor_display(self, obj):
        return f"{obj.actor_label} ({obj.get_actor_type_display()})"

    @admin.display(description="Changes")
    def changes_summary(self, obj):
        lines = change_lines(obj.changes)
        if not lines:
            return ""
        more = f" (+{len(lines) - 3} more)" if len(lines) > 3 else ""
        return "; ".join(lines[:3]) + more

    @admin.display(description="Changes (before → after)")
    def changes_readable(self, obj):
        lines = change_lines(obj.changes)
        if not lines:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join("", "<li><code>{}</code></li>", ((line,) for line in lines)))

    @admin.display(description="Target", ordering="target_label")
    def target_display(self, obj):
        text = f"{obj.target_type} {obj.target_label}".strip() or "—"
        if "." not in obj.target_type or not obj.target_id:
            return text
        app_label, model_name = obj.target_type.lower().split(".", 1)
        try:
            url = reverse(f"admin:{app_label}_{model_name}_change", args=[obj.target_id])
        except NoReverseMatch:  # not in the admin
            return text
        # The target may be gone since; the admin then says so on its own page.
        return format_html('<a href="{}">{}</a>', url, text)

    def get_urls(self):
        verify = path("verify/", self.admin_site.admin_view(self.verify_view), name="organizations_auditlog_verify")
        return [verify, *super().get_urls()]

    def verify_view(self, request):
        """Recompute the chain now and show the verdict (the same check as manage.py verify_audit_log)."""
        if not self.has_view_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        report = audit_verify_chain()
        level = messages.SUCCESS if report.ok else messages.ERROR
        if report.ok:
            text = ngettext(
                "The audit log verifies: %(count)d entry chains correctly (head %(head)s).",
                "The audit log verifies: %(count)d entries chain correctly (head %(head)s).",
                report.checked,
            ) % {"count": report.checked, "head": report.last_entry_hash}
        else:
            text = f"The audit log is BROKEN at entry {report.broken_entry_id}: {report.reason}."
        self.message_user(request, text, level)
        return HttpResponseRedirect(reverse("admin:organizations_auditlog_changelist"))


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdminMixin, AuditedModelAdmin):
    """Organizations' API keys: shown (never the key, which is not stored), and revoked through the service."""

    list_display = ("name", "organization", "key_prefix", "access", "created_at", "last_used_at", "revoked_at")
    list_filter = (OrganizationFilter, "access", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("organization",)
    search_fields = ("name", "=prefix")
    search_help_text = "A key's name (any part) or its prefix (exact, without hl_)."
    readonly_fields = (
        "organization",
        "name",
        "key_prefix",
        "access",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    fields = readonly_fields
    actions = ("revoke",)

    @admin.display(description="Key", ordering="prefix")
    def key_prefix(self, obj):
        return f"hl_{obj.prefix}_…"

    def has_revoke_permission(self, request):
        return request.user.has_perm("organizations.change_apikey")

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke(self, request, queryset):
        outcomes = action_outcomes(request)
        revoked, already = 0, []
        for api_key in queryset.select_related("organization"):
            if api_key.revoked_at is not None:
                outcomes.add_nothing_to_do(api_key.organization_id, f"API key {api_key.prefix}", "already revoked")
                already.append(f"API key hl_{api_key.prefix}_…")
                continue
            api_key_revoke(api_key=api_key, actor=request.user)
            outcomes.add_done(api_key.organization_id, f"API key {api_key.prefix}")
            revoked += 1
        if revoked:
            text = ngettext(
                "%(count)d API key revoked; it no longer works.",
                "%(count)d API keys revoked; they no longer work.",
                revoked,
            ) % {"count": revoked}
            self.message_user(request, text, messages.SUCCESS)
        if already:
            self.message_user(request, f"Nothing to do for {', '.join(already[:10])}: already revoked.", messages.INFO)
