"""Helpers for admin actions that ask for confirmation before touching many rows."""

from __future__ import annotations

from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from organizations.admin import AWAITING_CONFIRMATION

# Above this many deliveries an action asks to narrow the selection (or use a bulk retry job).
ACTION_LIMIT = 1000


def confirmed(request) -> bool:
    return request.POST.get("confirm") == "yes"


def confirmation_page(
    request,
    model_admin,
    queryset,
    *,
    title: str,
    question: str,
    button: str,
    preview: list[str],
    total: int,
    choices: list[tuple[str, str, bool]] | None = None,
    choices_label: str = "",
) -> TemplateResponse:
    """An intermediate page that re-posts the same action with ``confirm=yes``.

    ``choices`` are (value, label, checked) checkboxes posted back as ``choice``.
    """
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": title,
        "question": question,
        "button": button,
        "preview": preview,
        "total": total,
        "more": max(total - len(preview), 0),
        "action": request.POST.get("action", ""),
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "choices": choices or [],
        "choices_label": choices_label,
        "form_url": request.get_full_path(),
    }
    response = TemplateResponse(request, "admin/hookline/action_confirmation.html", context)
    setattr(response, AWAITING_CONFIRMATION, True)
    return response
