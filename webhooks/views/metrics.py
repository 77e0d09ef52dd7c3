"""GET /metrics: processing health in Prometheus's text format, for a scraper holding METRICS_TOKEN."""

import hmac
import logging

from django.conf import settings
from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET

from webhooks.services import platform_health

logger = logging.getLogger(__name__)

# One answer whether the token is missing, malformed or wrong: the scraper's owner learns what to
# send, and nobody probing learns which of those it was.
UNAUTHORIZED_TEXT = "401 Unauthorized: send the header Authorization: Bearer <METRICS_TOKEN>\n"


@require_GET
def metrics(request):
    expected = settings.METRICS_TOKEN
    if not expected:
        raise Http404  # not turned on: the same answer as any unknown path, so nothing tells it exists
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        response = HttpResponse(UNAUTHORIZED_TEXT, status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    try:
        health = platform_health.processing_health()
    except Exception:
        # The figures guard their own queries; this is for whatever else fails, so the scraper
        # still gets an answer that says the check did not run.
        logger.exception("processing health failed for /metrics")
        health = None
    response = HttpResponse(
        platform_health.prometheus_text(health), content_type=platform_health.PROMETHEUS_CONTENT_TYPE
    )
    response["Cache-Control"] = "no-store"
    return response
