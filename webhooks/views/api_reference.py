"""GET /docs/api/: the REST API's reference, a page made from the same OpenAPI document as /api/v1/schema."""

from __future__ import annotations

import functools

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe
from rest_framework.permissions import AllowAny

from webhooks.api.reference import ApiReference, api_reference
from webhooks.api.schema_view import ApiSchemaView, api_document


def schema_is_public() -> bool:
    """Whether /api/v1/schema answers without a key; the page is read by whoever may read the document."""
    return not ApiSchemaView.authentication_classes and all(
        permission is AllowAny for permission in ApiSchemaView.permission_classes
    )


@functools.cache
def rendered_reference() -> tuple[ApiReference, str, str]:
    """The reference, with its list of endpoints and their descriptions rendered once per process like
    the document itself (the same for every reader, and readable without signing in)."""
    reference = api_reference(api_document())
    context = {"reference": reference}
    return (
        reference,
        mark_safe(render_to_string("api_reference/_nav.html", context)),  # noqa: S308 - our templates, autoescaped
        mark_safe(render_to_string("api_reference/_endpoints.html", context)),  # noqa: S308
    )


def api_reference_page(request):
    if not schema_is_public() and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    reference, nav, endpoints = rendered_reference()
    return render(request, "api_reference/page.html", {"reference": reference, "nav": nav, "endpoints": endpoints})
