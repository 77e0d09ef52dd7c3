"""Hookline's admin site: branded, with an operations overview on its index page.

Installed in place of ``django.contrib.admin`` (see INSTALLED_APPS). This module imports no
models at import time, because Django loads the AdminConfig before the models are ready.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.core.cache import cache
from django.core.exceptions import BadRequest
from django.db import models
from django.urls import reverse

logger = logging.getLogger(__name__)

OVERVIEW_CACHE_SECONDS = 60
OVERVIEW_CACHE_KEY = "admin:platform_overview"
# The overview names tenants and counts their events, deliveries and destinations: it is shown
# only to staff who may view those (every staff account reaches the index).
OVERVIEW_PERMISSIONS = (
    "organizations.view_organization",
    "webhooks.view_webhookevent",
    "webhooks.view_delivery",
    "webhooks.view_destination",
)


def platform_overview() -> dict:
    """Counts for the admin index; cached for a minute so a busy index page stays cheap.

    Without the cache (Redis down) the counts are computed for every request rather than fail the
    page: the admin is where an operator looks during an outage.
    """
    try:
        cached = cache.get(OVERVIEW_CACHE_KEY)
    except Exception as exc:
        logger.warning("cache unavailable for the admin overview: %s", exc)
        return _compute_platform_overview()
    if cached is not None:
        return cached
    overview = _compute_platform_overview()
    try:
        cache.set(OVERVIEW_CACHE_KEY, overview, OVERVIEW_CACHE_SECONDS)
    except Exception as exc:  # went down since the get
        logger.warning("cache unavailable for the admin overview: %s", exc)
    return overview


def _compute_platform_overview() -> dict:
    from django.db.models import Count, F
    from django.utils import timezone

    from organizations.models import MonthlyUsage, current_month
    from webhooks.models import WebhookEvent
    from webhooks.selectors import uuid7_floor

    now = timezone.now()
    # Ids are UUIDv7: "received in the last 24 h" is a primary-key range, not a scan of received_at.
    recent = WebhookEvent.objects.filter(id__gte=uuid7_floor(now - timedelta(hours=24)))
    by_status = dict(recent.order_by().values_list("status").annotate(count=Count("id")))
    usage = MonthlyUsage.objects.filter(month=current_month()).select_related("organization")
    overview = {
        "events_24h": [
            {"status": value, "label": label, "count": by_status.get(value, 0)}
            for value, label in WebhookEvent.Status.choices
        ],
        "events_24h_total": sum(by_status.values()),
        # Dead deliveries are not counted here but with the processing figures, live: cached for a
        # minute, the card said 0 next to their "Dead, last 24 h: 8" in the middle of an incident.
        "top_organizations": list(
            usage.order_by("-events").values(
                "organization_id", "organization__name", "events", "organization__monthly_event_quota"
            )[:10]
        ),
        "quota_overruns": list(
            usage.filter(events__gt=F("organization__monthly_event_quota"))
            .order_by("-events")
            .values("organization_id", "organization__name", "events", "organization__monthly_event_quota")[:20]
        ),
        "computed_at": now,
    }
    return overview


def destinations_needing_attention() -> dict:
    """The paused destinations and how many are failing, for the admin index; read on every load,
    not cached: two queries on the (small) destinations table, and the lists they link to are live."""
    from webhooks.admin.configuration import DestinationFailingFilter
    from webhooks.models import Destination

    return {
        "paused_destinations": list(
            # As the destination list's "Paused" filter: an inactive one's page says Inactive.
            Destination.objects.filter(is_active=True, paused_at__isnull=False)
            .select_related("organization")
            .order_by("paused_at")
            .values("pk", "name", "organization__name", "paused_at", "pause_reason")[:20]
        ),
        # As the list's "Failing" filter, which the count links to: paused or not, whatever its state.
        "failing_destinations": Destination.objects.filter(DestinationFailingFilter.FAILING).count(),
    }


class AsciiObjectIdsMixin:
    """An object's id in its admin URL is read in ASCII digits only, as the API and the dashboard
    read ids (webhooks.selectors.parse_event_id): int() and uuid.UUID take any script's digits, so
    /admin/webhooks/source/٣/change/ opened source 3. Such an id names no object, and its page
    answers as the admin does for an id that names none (a message, and back to the index)."""

    def get_object(self, request, object_id, from_field=None):
        field = self.opts.get_field(from_field) if from_field else self.opts.pk
        # Only where the id is read as a number or a UUID: a text key could hold other scripts.
        read_as_number = isinstance(field, (models.IntegerField, models.UUIDField))
        if read_as_number and isinstance(object_id, str) and not object_id.isascii():
            return None
        return super().get_object(request, object_id, from_field)


class HooklineAdminSite(admin.AdminSite):
    site_header = "Hookline operations"
    site_title = "Hookline admin"
    index_title = "Platform overview"
    index_template = "admin/hookline_index.html"

    def admin_view(self, view, cacheable=False):
        protected = super().admin_view(view, cacheable)

        @wraps(view)
        def refusing_nul_characters(request, *args, **kwargs):
            # PostgreSQL refuses a NUL character in text, so a list filter's value holding one (the
            # status, an audit action) failed the page's query with a 500 instead of saying so.
            if any("\x00" in text for name, values in request.GET.lists() for text in (name, *values)):
                raise BadRequest("A parameter of this page holds a NUL character.")
            return protected(request, *args, **kwargs)

        return refusing_nul_characters

    def register(self, model_or_iterable, admin_class=None, **options):
        # Every ModelAdmin, this project's and a package's (django-celery-beat's), reads ids in ASCII:
        # added here rather than to each class so that one registered later cannot miss it.
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, AsciiObjectIdsMixin):
            admin_class = type(
                admin_class.__name__,
                (AsciiObjectIdsMixin, admin_class),
                {"__module__": admin_class.__module__, "__qualname__": admin_class.__qualname__},
            )
        super().register(model_or_iterable, admin_class, **options)

    def index(self, request, extra_context=None):
        overview = processing = dead_24h_query = None
        if request.user.has_perms(OVERVIEW_PERMISSIONS):
            # Both import models (see the module docstring).
            from webhooks.admin.filters import CompletedDateFilter
            from webhooks.services.platform_health import processing_health

            overview = {**platform_overview(), **destinations_needing_attention()}
            # Not cached with the overview: bounded queries, and an operator checking whether a restart
            # took wants now, not a minute ago. The dead deliveries' cards read it too, so that their
            # two figures are of the same moment.
            processing = processing_health()
            # The deliveries that "Dead, last 24 h" counted, and none that died since the count.
            dead_24h_query = CompletedDateFilter.query_string(
                processing.deliveries_dead_24h_since, processing.checked_at
            )
        context = {"overview": overview, "processing": processing, "dead_24h_query": dead_24h_query}
        return super().index(request, {**(extra_context or {}), **context})

    @property
    def login_form(self):
        # Imported when first asked for: the form's module imports the auth models (see the module docstring).
        from webhooks.admin.login import AdminLoginForm

        return AdminLoginForm

    def login(self, request, extra_context=None):
        from accounts import services as sign_in  # imports the auth models (see the module docstring)

        response = super().login(request, extra_context)
        if request.method == "POST" and request.user.is_authenticated and response.status_code == 302:
            # This browser is now known for this address: a stranger's failures cannot lock it out.
            response.set_cookie(
                sign_in.ADMIN_DEVICE_COOKIE,
                sign_in.admin_device_cookie_value(request.user),
                max_age=sign_in.ADMIN_DEVICE_MAX_AGE,
                path=reverse("admin:index"),
                secure=settings.SESSION_COOKIE_SECURE or request.is_secure(),
                httponly=True,
                samesite="Lax",
            )
            return response
        form = (getattr(response, "context_data", None) or {}).get("form")
        retry_after = form.retry_after_seconds() if hasattr(form, "retry_after_seconds") else None
        if retry_after is not None:
            # Still the sign-in page with its message, but a client or a monitor can tell it is a refusal.
            response.status_code = 429
            response["Retry-After"] = str(retry_after)
        return response


class HooklineAdminConfig(AdminConfig):
    default_site = "webhooks.admin_site.HooklineAdminSite"
