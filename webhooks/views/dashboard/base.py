"""What every dashboard view shares: the organization from the URL, and tenant-scoped lookups."""

from __future__ import annotations

from secrets import token_urlsafe

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import BadRequest, ObjectDoesNotExist
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.crypto import constant_time_compare
from django.views import View
from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin
from organizations.selectors import api_key_for_organization
from webhooks.fields import decrypt_for_one_look, encrypt
from webhooks.selectors import destination_for_organization, source_for_organization
from webhooks.services.sources import ingest_url
from webhooks.views.one_look import secret_not_readable_yet

ADMIN = "admin"


def or_404(lookup, **kwargs):
    """Run a tenant-scoped selector; another organization's object is simply not found."""
    try:
        return lookup(**kwargs)
    except (ObjectDoesNotExist, ValueError):
        raise Http404("Not found") from None


def posted_switch(request, name: str) -> bool:
    """A switch the dashboard's forms post as "1" (on) or "0" (off); anything else is a bad request
    (400), not read as off: a stray value must not stop a source or resume a destination."""
    value = request.POST.get(name)
    if value not in ("0", "1"):
        raise BadRequest(f"{name} must be 0 or 1")
    return value == "1"


class ChangeView(OrganizationMixin, View):
    """A POST-only change by an admin or owner (GET has nothing to show, so it goes back)."""

    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        return redirect("dashboard:overview", self.organization.slug)

    def done(self, message: str, to: str, *args, level=messages.SUCCESS):
        messages.add_message(self.request, level, message)
        return redirect(to, self.organization.slug, *args)


SECRET_ONCE_SESSION_KEY = "hookline_secret_once"


def secret_once_response(
    view, *, secret: str, title: str, source=None, destination=None, api_key=None, rotated: bool = False
):
    """After a POST that made a secret: keep it (encrypted) for one look and redirect there.

    Post/redirect/get, so that reloading the page that shows the secret cannot create the
    source, destination or API key again, or rotate the secret just copied. ``rotated``: it
    replaces a source's secret, so the provider's settings change only in their secret.
    """
    target = api_key or destination or source
    kind = "api_key" if api_key is not None else "destination" if destination is not None else "source"
    view.request.session[SECRET_ONCE_SESSION_KEY] = {
        "token": (token := token_urlsafe(16)),
        "organization": view.organization.pk,
        "kind": kind,
        "pk": target.pk,
        "title": title,
        "rotated": rotated,
        "secret": encrypt(secret),  # sessions are stored in the database: never in the clear
    }
    return redirect("dashboard:secret_once", view.organization.slug, token)


class SecretOnceView(OrganizationMixin, TemplateView):
    """The one page that shows a secret in full: once, right after it is made, never cached."""

    template_name = "dashboard/secret_once.html"
    required_role = ADMIN

    def shown_already(self, kept: dict):
        slug = self.organization.slug
        if kept["kind"] == "api_key":
            # An API key cannot be rotated: a lost one is replaced.
            messages.info(
                self.request,
                "An API key is shown only once: if it was not copied, create a new key and revoke this one.",
            )
            return redirect("dashboard:api_keys", slug)
        messages.info(self.request, "A secret is shown only once; rotate it to get a new one.")
        page = "dashboard:destination_detail" if kept["kind"] == "destination" else "dashboard:source_detail"
        return redirect(page, slug, kept["pk"])

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        kept = request.session.get(SECRET_ONCE_SESSION_KEY)
        if (
            not kept
            or kept["organization"] != self.organization.pk
            or not constant_time_compare(kept["token"], kwargs["token"])
        ):
            messages.info(request, "A secret is shown only once; rotate it to get a new one.")
            return redirect("dashboard:overview", self.organization.slug)
        if "secret" not in kept:
            return self.shown_already(kept)
        readable = decrypt_for_one_look([kept["secret"]])
        if readable is None:
            return secret_not_readable_yet()
        # What was shown, without the secret: opened again (Back, a reload), the page sends to what
        # the secret belongs to and says how to get a new one of that kind.
        request.session[SECRET_ONCE_SESSION_KEY] = {key: value for key, value in kept.items() if key != "secret"}
        if kept["kind"] == "api_key":
            target = or_404(api_key_for_organization, organization=self.organization, api_key_id=kept["pk"])
        elif kept["kind"] == "destination":
            target = or_404(destination_for_organization, organization=self.organization, destination_id=kept["pk"])
        else:
            target = or_404(source_for_organization, organization=self.organization, source_id=kept["pk"])
        context = self.get_context_data(**{kept["kind"]: target, "secret": readable[0]})
        context["title"] = kept["title"]
        # Its URL is the same for all three: the sidebar keeps the section the secret belongs to.
        context["nav_section"] = kept["kind"]
        if kept["kind"] == "source":
            # The provider's form asks for the URL and the secret together (GitHub's Payload URL and
            # Secret): both on the one page that can show the secret.
            context["ingest_url"] = ingest_url(target)
            context["rotated"] = kept.get("rotated", False)
        if kept["kind"] == "api_key":
            context["api_base_url"] = f"{settings.PUBLIC_BASE_URL}{reverse('api:events').removesuffix('events')}"
        response = self.render_to_response(context)
        add_never_cache_headers(response)
        return response
