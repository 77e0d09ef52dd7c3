"""Deleting organizations from the admin: counts on the confirmation page (CountsWhatADeletionTakesMixin),
the rows in the background.

Registered here, over organizations.admin's OrganizationAdmin, because the deletion reaches the
webhooks app's tables and organizations never imports webhooks. Django's collector would list
every related row on the confirmation page and delete them all in the request; a large tenant
has millions.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _

from config.formats import to_the_second
from organizations.admin import CountsWhatADeletionTakesMixin, OrganizationAdmin
from organizations.models import Organization
from webhooks.services import organization_deletion

# Named on the confirmation page when the account may not delete an organization's data.
PLATFORM_ADMINS_ONLY = "an organization's sources, destinations, events and deliveries (platform admins only)"


class RefusedOnceBeingDeleted(forms.ModelForm):
    """has_change_permission refuses an organization being deleted when the page loads; this refuses
    one whose deletion was asked for since, under a row lock held until the change view commits (a
    deletion asked for meanwhile waits for it), so that a save cannot make it active again."""

    def clean(self):
        cleaned = super().clean()
        live = Organization.objects.select_for_update(no_key=True).filter(
            pk=self.instance.pk, deletion_requested_at__isnull=True
        )
        if not live.exists():
            raise forms.ValidationError("This organization is being deleted: it can no longer be changed.")
        return cleaned


class DeletingOrganizationAdmin(CountsWhatADeletionTakesMixin, OrganizationAdmin):
    list_display = tuple("state" if name == "is_active" else name for name in OrganizationAdmin.list_display)
    deletion_for_superusers_only = PLATFORM_ADMINS_ONLY

    @admin.display(description="State", ordering="is_active")
    def state(self, obj):
        if obj.being_deleted:
            done = sum((obj.deletion_progress or {}).values())
            return format_html(
                '<strong class="hookline-being-deleted">being deleted</strong> (asked {} by {}; {} rows deleted so far)',
                to_the_second(obj.deletion_requested_at),
                obj.deletion_requested_by,
                f"{done:,}",
            )
        return "active" if obj.is_active else "suspended"

    def has_change_permission(self, request, obj=None):
        # Nothing to change on its way out; above all it must not be made active again.
        if obj is not None and obj.being_deleted:
            return False
        return super().has_change_permission(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return form if obj is None else type(form.__name__, (RefusedOnceBeingDeleted, form), {})

    def deletion_contents(self, obj):
        return organization_deletion.organization_contents(organization=obj)

    # In place of Django's deletion (and AuditedAdminMixin's entry for it): the service writes the
    # audit entry, and the deletion's end writes another.
    def delete_model(self, request, obj):
        organization_deletion.organization_request_deletion(organization=obj, actor=request.user, request=request)

    def delete_queryset(self, request, queryset):
        names = []
        for organization in queryset:
            organization_deletion.organization_request_deletion(
                organization=organization, actor=request.user, request=request
            )
            names.append(str(organization))
        # Django's action then says "Successfully deleted N organizations": message_user says what happened instead.
        request._hookline_deletion_message = (
            _("Successfully deleted %(count)d %(items)s.")
            % {"count": len(names), "items": model_ngettext(self.opts, len(names))},
            _under_way(", ".join(f"“{name}”" for name in names), several=len(names) > 1),
        )

    def message_user(self, request, message, level=messages.INFO, *args, **kwargs):
        replaced = getattr(request, "_hookline_deletion_message", None)
        if replaced is not None and message == replaced[0]:
            message, level = replaced[1], messages.SUCCESS
        return super().message_user(request, message, level, *args, **kwargs)

    def response_delete(self, request, obj_display, obj_id):
        self.message_user(request, _under_way(f"“{obj_display}”"), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:organizations_organization_changelist"))


def _under_way(names: str, *, several: bool = False) -> str:
    subject, its = ("each", "their") if several else ("it", "its")
    return (
        f"Deletion of {names} is under way: {subject} is inactive now ({its} ingest URLs answer 404, nothing is "
        f"delivered, {its} members cannot open it), and {its} data is being deleted in the background. "
        f"{'They stay' if several else 'It stays'} in this list, marked “being deleted”, until that is done."
    )


admin.site.unregister(Organization)
admin.site.register(Organization, DeletingOrganizationAdmin)
