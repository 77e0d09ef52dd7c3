"""Liveness and readiness probes for the platform's router and for operators."""

from django.core.cache import cache
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
