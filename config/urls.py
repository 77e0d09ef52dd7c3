from django.contrib import admin
from django.urls import path

from webhooks.views.health import healthz, livez, readyz
from webhooks.views.ingest import IngestView

admin.site.site_header = "Hookline administration"
admin.site.site_title = "Hookline"

urlpatterns = [
    path("in/<str:token>/", IngestView.as_view(), name="ingest"),
    path("livez", livez, name="livez"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
]
