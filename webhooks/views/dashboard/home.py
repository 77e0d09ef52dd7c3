"""``/``: where a signed-in user lands, i.e. their organization or a choice of them, and the
invitations to their address they may join."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import redirect
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView

from accounts.http import client_ip
from organizations import team
from organizations.selectors import active_memberships, suspended_memberships


# The account's organizations and the invitations to its address (who sent them, with which role):
# not kept by the browser or a cache, as an organization's pages are not (OrganizationMixin), so that
# Back after the session ended elsewhere asks the server again instead of showing them.
@method_decorator(never_cache, name="dispatch")
class HomeView(LoginRequiredMixin, TemplateView):
    template_name = "home.html"

    def get(self, request, *args, **kwargs):
        memberships = active_memberships(user=request.user)
        suspended = suspended_memberships(user=request.user)
        invitations = team.invitations_pending_for(user=request.user)
        if len(memberships) == 1 and not suspended and not invitations:
            return redirect("dashboard:overview", memberships[0].organization.slug)
        return self.render_to_response(
            self.get_context_data(memberships=memberships, suspended=suspended, invitations=invitations)
        )


class InvitationJoinView(LoginRequiredMixin, View):
    """POST: join an organization that invited the signed-in address."""

    http_method_names = ["post"]

    def post(self, request, invitation_id: int):
        try:
            invitation = team.invitation_join(
                user=request.user, invitation_id=invitation_id, ip_address=client_ip(request)
            )
        except team.InvitationUnavailable:
            messages.error(request, "That invitation is no longer open: it was used, withdrawn or has expired.")
            return redirect("home")
        messages.success(request, f"You joined {invitation.organization.name}.")
        return redirect("dashboard:overview", invitation.organization.slug)
