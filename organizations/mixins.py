"""The one way a dashboard view reaches an organization: by the signed-in user's membership."""

from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.utils.cache import add_never_cache_headers

from .models import Membership
from .selectors import organization_for_member


class OrganizationMixin(LoginRequiredMixin):
    """Loads ``self.organization`` and ``self.membership`` from the URL's ``org_slug``.

    Non-members get 404 (an organization's existence is not revealed). ``required_role``
    names the least role allowed for unsafe methods; reads are open to every member.
    """

    required_role: str | None = None  # None, "admin" or "owner"
    ROLE_RANK = {Membership.Role.MEMBER: 0, Membership.Role.ADMIN: 1, Membership.Role.OWNER: 2}

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        self.organization, self.membership = organization_for_member(user=request.user, slug=kwargs["org_slug"])
        if request.method not in ("GET", "HEAD", "OPTIONS") and self.required_role:
            self.require_role(self.required_role)
        response = super().dispatch(request, *args, **kwargs)
        # Tenant data (event bodies, headers, the team) is not kept by the browser or any cache on the
        # way: after signing out on a shared computer, Back must not show it again.
        add_never_cache_headers(response)
        return response

    def has_role(self, role: str) -> bool:
        return self.ROLE_RANK[self.membership.role] >= self.ROLE_RANK[role]

    def require_role(self, role: str) -> None:
        if not self.has_role(role):
            raise PermissionDenied("Your role in this organization does not allow this change.")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            organization=self.organization,
            membership=self.membership,
            can_configure=self.has_role(Membership.Role.ADMIN),
            is_owner=self.has_role(Membership.Role.OWNER),
        )
        return context
