"""Where browsers send Content-Security-Policy violation reports (the policy's report-uri)."""

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from config import csp_reports


@csrf_exempt  # Browsers post reports without a token, and the endpoint changes nothing but a log.
@require_POST
def csp_report(request):
    content_type = request.content_type or ""
    if content_type not in csp_reports.REPORT_CONTENT_TYPES:
        return JsonResponse(
            {
                "error": "unsupported_media_type",
                "detail": f"Send a report as one of: {', '.join(csp_reports.REPORT_CONTENT_TYPES)}.",
            },
            status=415,
        )
    body = request.read(csp_reports.MAX_REPORT_BYTES + 1)
    if len(body) > csp_reports.MAX_REPORT_BYTES:
        return JsonResponse(
            {"error": "report_too_large", "detail": f"A report may be at most {csp_reports.MAX_REPORT_BYTES} bytes."},
            status=413,
        )
    try:
        csp_reports.record_reports(body)
    except csp_reports.MalformedReport as exc:
        return JsonResponse({"error": "malformed_report", "detail": str(exc)}, status=400)
    return HttpResponse(status=204)
