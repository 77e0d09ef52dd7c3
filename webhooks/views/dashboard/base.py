"""What every dashboard view shares: the organization from the URL, and tenant-scoped lookups."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ObjectDoesNotExist
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers
from django.views import View

from organizations.mixins import OrganizationMixin

ADMIN = "admin"


def or_404(lookup, **kwargs):
    """Run a tenant-scoped selector; another organization's object is simply not found."""
    try:
        return lookup(**kwargs)
    except (ObjectDoesNotExist, ValueError):
        raise Http404("Not found") from None


class ChangeView(OrganizationMixin, View):
    """A POST-only change by an admin or owner (GET has nothing to show, so it goes back)."""

    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        return redirect("dashboard:overview", self.organization.slug)

    def done(self, message: str, to: str, *args, level=messages.SUCCESS):
        messages.add_message(self.request, level, message)
        return redirect(to, self.organization.slug, *args)


def secret_once_response(view, **context) -> TemplateResponse:
    """The one page that shows a secret in full: right after it is made, never kept by any cache."""
    response = TemplateResponse(view.request, "dashboard/secret_once.html", view.get_context_data(**context))
    add_never_cache_headers(response)
    return response
