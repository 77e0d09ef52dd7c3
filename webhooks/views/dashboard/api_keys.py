"""The API keys page: admins and owners list, make and revoke the organization's keys."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect
from django.views.generic import TemplateView

from organizations.api_keys import api_key_create, api_key_revoke
from organizations.mixins import OrganizationMixin
from organizations.models import ApiKey
from organizations.selectors import api_key_for_organization, api_keys_for_organization
from webhooks.forms import NameField

from .base import ADMIN, or_404, secret_once_response


class ApiKeyForm(forms.Form):
    name = NameField(
        label="Name",
        max_length=ApiKey._meta.get_field("name").max_length,
        help_text="What uses it, e.g. deploy-script: it names the key in the audit log.",
    )
    access = forms.ChoiceField(
        label="Access",
        choices=ApiKey.Access.choices,
        initial=ApiKey.Access.READ_ONLY,
        widget=forms.RadioSelect,
        help_text="Read-only keys read events, deliveries, sources and destinations; read-and-write keys also "
        "retry, replay, pause and resume, and create, change, rotate the secrets of and delete sources and "
        "destinations.",
    )


class ApiKeysView(OrganizationMixin, TemplateView):
    """Keys open the organization's data to scripts: the page itself is for admins and owners only."""

    template_name = "dashboard/api_keys.html"
    required_role = ADMIN

    def get(self, request, *args, **kwargs):
        if not self.has_role(ADMIN):
            # A page to read, not a change: "does not allow this change" answered a member who only looked.
            raise PermissionDenied(
                "API keys are for admins and owners: your role in this organization does not open this page."
            )
        return super().get(request, *args, **kwargs)

    def get_context_data(self, form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(form=form or ApiKeyForm(), api_keys=api_keys_for_organization(organization=self.organization))
        return context

    def post(self, request, *args, **kwargs):
        form = ApiKeyForm(request.POST)
        if form.is_valid():
            try:
                api_key, key = api_key_create(
                    organization=self.organization,
                    name=form.cleaned_data["name"],
                    access=form.cleaned_data["access"],
                    actor=request.user,
                )
            except ValidationError as exc:
                form.add_error("name", exc)
            else:
                return secret_once_response(self, secret=key, title="API key created", api_key=api_key)
        return self.render_to_response(self.get_context_data(form=form), status=400)


class ApiKeyRevokeView(OrganizationMixin, TemplateView):
    """Revoking cannot be undone and stops every script using the key, so it is confirmed on its
    own page (GET), as deleting a source is; the button there POSTs."""

    template_name = "dashboard/api_key_revoke.html"
    required_role = ADMIN

    def get_api_key(self) -> ApiKey:
        return or_404(api_key_for_organization, organization=self.organization, api_key_id=self.kwargs["api_key_id"])

    def get(self, request, *args, **kwargs):
        self.require_role(ADMIN)
        api_key = self.get_api_key()
        if api_key.revoked_at is not None:
            return redirect("dashboard:api_keys", self.organization.slug)
        return self.render_to_response(self.get_context_data(api_key=api_key))

    def post(self, request, *args, **kwargs):
        api_key = api_key_revoke(api_key=self.get_api_key(), actor=request.user)
        messages.success(request, f"API key {api_key} revoked: it no longer works.")
        return redirect("dashboard:api_keys", self.organization.slug)
