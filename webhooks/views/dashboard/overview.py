from __future__ import annotations

from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin
from organizations.selectors import usage_this_month
from webhooks.selectors import sources_for_organization
from webhooks.services.dashboard_stats import cached_organization_overview


class OverviewView(OrganizationMixin, TemplateView):
    template_name = "dashboard/overview.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        has_sources = sources_for_organization(organization=self.organization).exists()
        context.update(
            has_sources=has_sources,
            overview=cached_organization_overview(organization=self.organization) if has_sources else None,
            # Not cached with the overview: one indexed row, and a changed quota shows at once.
            usage=usage_this_month(organization=self.organization) if has_sources else None,
        )
        return context
