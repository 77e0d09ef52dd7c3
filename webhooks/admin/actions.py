"""Helpers for admin actions that ask for confirmation before touching many rows."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from organizations.admin import AWAITING_CONFIRMATION, action_outcomes
from webhooks.services.operations import NothingToDo, OperationError, destination_send_waiting_now

# Above this many deliveries an action asks to narrow the selection (or use a bulk retry job).
ACTION_LIMIT = 1000


# Posted by the buttons of an object's own page (an event's Retry and Replay): the action's
# confirmation, its "No, take me back" and its result lead back to that page, not to the list.
RETURN_TO_OBJECT = "return_to_object"


def confirmed(request) -> bool:
    return request.POST.get("confirm") == "yes"


def object_page_to_return_to(request, model_admin) -> str | None:
    """The change page of the object whose own page started the action, if it is the one selected."""
    pk = request.POST.get(RETURN_TO_OBJECT, "")
    if not pk or request.POST.getlist(helpers.ACTION_CHECKBOX_NAME) != [pk]:
        return None
    opts = model_admin.model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk])


class ReturnToObjectPageMixin:
    """An action started from an object's own page (its buttons post return_to_object) ends there."""

    def response_action(self, request, queryset):
        response = super().response_action(request, queryset)
        back = object_page_to_return_to(request, self)
        if back and response is not None and response.status_code == 302:
            return HttpResponseRedirect(back)
        return response


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
        "return_to_object": request.POST.get(RETURN_TO_OBJECT, ""),
        "cancel_url": object_page_to_return_to(request, model_admin) or request.get_full_path(),
    }
    response = TemplateResponse(request, "admin/hookline/action_confirmation.html", context)
    setattr(response, AWAITING_CONFIRMATION, True)
    return response


@admin.action(description="Send the waiting retries of the selected destinations now", permissions=["change"])
def send_waiting_now(model_admin, request, queryset) -> None:
    """The dashboard's "send waiting retries now", for each selected destination (a bounded UPDATE each)."""
    sent, unchanged, refused = [], [], []
    outcomes = action_outcomes(request)
    for destination in queryset.select_related("organization"):
        item = f"destination {destination.pk}"
        label = f"{destination.organization.name} · {destination}"
        try:
            count = destination_send_waiting_now(destination=destination, actor=request.user)
        except NothingToDo as exc:
            unchanged.append(f"{label}: {exc}")
            outcomes.add_nothing_to_do(destination.organization_id, item, str(exc))
            continue
        except OperationError as exc:  # paused, inactive, or deleted meanwhile
            refused.append(f"{label}: {exc}")
            outcomes.add_refused(destination.organization_id, item, str(exc))
            continue
        sent.append(f"{label} ({count})")
        outcomes.add_done(destination.organization_id, f"{item}: {count} brought forward")
    if sent:
        model_admin.message_user(request, "Sending now the waiting retries of " + "; ".join(sent[:10]) + ".")
    if unchanged:
        model_admin.message_user(request, "Nothing to do for " + "; ".join(unchanged[:10]) + ".", messages.INFO)
    if refused:
        model_admin.message_user(request, "Not sent: " + "; ".join(refused[:10]) + ".", messages.WARNING)
