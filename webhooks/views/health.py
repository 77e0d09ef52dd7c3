"""Liveness and readiness probes for the platform's router and for operators."""

from django.core.cache import cache
from django.core.exceptions import DisallowedHost
from django.db import connection
from django.http import JsonResponse

from webhooks.services import secret_health


def livez(request):
    """The process answers; used as the baseline of bench/ingest.py."""
    return JsonResponse({"status": "ok"})


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Ready when the database answers; the cache is reported but not required (ingest survives without it).

    "degraded" (still 200: the process serves every request that needs no such secret, and taking
    it out of the router would turn a rolling deploy's minute into an outage) while this process
    failed to decrypt a stored secret within HEALTH_SECRET_UNREADABLE_SECONDS, saying why."""
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
    secrets = secret_health.this_process()
    checks["secrets"] = f"degraded: {secrets.reason_words(public=True)}" if secrets.recent else "ok"
    status = "unavailable" if not ready else "degraded" if secrets.recent else "ok"
    return JsonResponse({"status": status, "checks": checks}, status=200 if ready else 503)


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
