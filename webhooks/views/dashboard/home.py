"""``/``: where a signed-in user lands, i.e. their organization or a choice of them."""

from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import redirect
from django.views.generic import TemplateView

from organizations.selectors import active_memberships, suspended_memberships


class HomeView(LoginRequiredMixin, TemplateView):
    template_name = "home.html"

    def get(self, request, *args, **kwargs):
        memberships = active_memberships(user=request.user)
        suspended = suspended_memberships(user=request.user)
        if len(memberships) == 1 and not suspended:
            return redirect("dashboard:overview", memberships[0].organization.slug)
        return self.render_to_response(self.get_context_data(memberships=memberships, suspended=suspended))
