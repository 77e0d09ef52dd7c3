"""``/``: where a signed-in user lands, i.e. their organization or a choice of them."""

from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import redirect
from django.views.generic import TemplateView

from organizations.models import Membership


class HomeView(LoginRequiredMixin, TemplateView):
    template_name = "home.html"

    def get(self, request, *args, **kwargs):
        memberships = list(
            Membership.objects.filter(user=request.user, organization__is_active=True)
            .select_related("organization")
            .order_by("organization__name")
        )
        if len(memberships) == 1:
            return redirect("dashboard:overview", memberships[0].organization.slug)
        return self.render_to_response(self.get_context_data(memberships=memberships))
