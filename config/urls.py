from django.contrib import admin
from django.urls import include, path, re_path

from webhooks.api.authentication import json_not_found
from webhooks.views.api_reference import api_reference_page
from webhooks.views.csp_reports import csp_report
from webhooks.views.dashboard.home import HomeView, InvitationJoinView
from webhooks.views.health import healthz, livez, readyz
from webhooks.views.ingest import IngestView, not_an_ingest_url
from webhooks.views.metrics import metrics

urlpatterns = [
    path("in/<str:token>/", IngestView.as_view(), name="ingest"),
    # The same without the slash: providers do not follow a redirect with their POST body,
    # so APPEND_SLASH's 301 would lose the webhook without a trace.
    path("in/<str:token>", IngestView.as_view(), name="ingest-without-slash"),
    # Any other path under /in/ (a doubled slash, a segment more): a provider's JSON 404, not a page.
    re_path(r"^in(?:/|$)", not_an_ingest_url),
    path("livez", livez, name="livez"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Processing health for a Prometheus scraper; a 404 unless METRICS_TOKEN is set.
    path("metrics", metrics, name="metrics"),
    # Browsers' reports of what the Content-Security-Policy blocked (SECURE_CSP's report-uri).
    path("csp-reports", csp_report, name="csp_reports"),
    path("admin/", admin.site.urls),
    # The tenant REST API, authenticated by organization API keys only (webhooks/api/).
    path("api/v1/", include("webhooks.api.urls")),
    # Any other path under /api/ (another version, a typo): the API's JSON 404, not the dashboard's page.
    re_path(r"^api(?:/|$)", json_not_found),
    # The API's reference for people, a page made from the same OpenAPI document as /api/v1/schema,
    # read by whoever may read that document (without signing in).
    path("docs/api/", api_reference_page, name="api_reference"),
    # Tenants' dashboard: sign-in and invitations, then everything under one organization.
    path("accounts/", include("accounts.urls")),
    path("o/<slug:org_slug>/team/", include("organizations.urls")),
    path("o/<slug:org_slug>/", include("webhooks.urls_dashboard")),
    # Where a signed-in user lands: their organization, or a choice of them.
    path("invitations/<int:invitation_id>/join/", InvitationJoinView.as_view(), name="invitation_join"),
    path("", HomeView.as_view(), name="home"),
]

# A 400 Django gives before any view (a Host header not this site's) and a 500 are JSON under /api/
# and /in/, like every other answer there.
handler400 = "webhooks.api.authentication.bad_request"
handler500 = "webhooks.api.authentication.server_error"
