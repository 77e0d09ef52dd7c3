from __future__ import annotations

from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin
from webhooks.forms import AuditFilterForm
from webhooks.selectors import audit_actions_for_organization, audit_page


class AuditLogView(OrganizationMixin, TemplateView):
    template_name = "dashboard/audit.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = AuditFilterForm(
            self.request.GET or None, actions=audit_actions_for_organization(organization=self.organization)
        )
        if form.is_bound:
            form.is_valid()
        before = self.request.GET.get("before", "")
        entries, next_before = audit_page(
            organization=self.organization,
            filters=form.to_filters(),
            before_id=int(before) if before.isascii() and before.isdecimal() and len(before) < 19 else None,
        )
        query = self.request.GET.copy()
        query.pop("before", None)
        context.update(form=form, entries=entries, next_before=next_before, query=query.urlencode())
        return context
