"""Liveness and readiness probes for the platform's router and for operators."""

from django.core.cache import cache
from django.core.exceptions import DisallowedHost
from django.db import connection
from django.http import JsonResponse


def livez(request):
    """The process answers; used as the baseline of bench/ingest.py."""
    return JsonResponse({"status": "ok"})


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Ready when the database answers; the cache is reported but not required (ingest survives without it)."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        cache.set("readyz", "1", timeout=5)
        checks["cache"] = "ok"
    except Exception as exc:
        checks["cache"] = f"error: {exc.__class__.__name__}"
    ready = checks["database"] == "ok"
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


# The paths config/urls.py gives the probes (a test keeps the two the same).
PROBES_BY_PATH = {"/livez": livez, "/healthz": healthz, "/readyz": readyz}


def probes_from_any_host(get_response):
    """Middleware: the probes answer whatever Host header they come with.

    A platform's or orchestrator's health check often names the instance's own address, which
    ALLOWED_HOSTS rightly refuses for everything else: a probe answered 400 would keep a healthy
    deploy from going live. Only a refused host takes this way; every other request, probes
    with an allowed host included, goes through the whole stack as before.
    """

    def middleware(request):
        probe = PROBES_BY_PATH.get(request.path_info)
        if probe is not None:
            try:
                request.get_host()
            except DisallowedHost:
                return probe(request)
        return get_response(request)

    return middleware
