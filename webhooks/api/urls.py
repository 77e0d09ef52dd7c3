"""/api/v1/ (namespace ``api``). A trailing slash is optional. Ids are taken as text and checked by
the views, so that a malformed one is the API's JSON 404 rather than the site's HTML page."""

from django.urls import re_path

from . import views
from . import views_manage as manage
from .authentication import json_not_found
from .schema_view import ApiSchemaView

ID = r"(?P<{}>[^/]+)"


def endpoint(pattern: str, view, name: str):
    return re_path(rf"^{pattern}/?$", view.as_view(), name=name)


app_name = "api"
urlpatterns = [
    endpoint("events", views.EventListView, "events"),
    endpoint(f"events/{ID.format('event_id')}", views.EventDetailView, "event"),
    endpoint(f"events/{ID.format('event_id')}/replay", views.EventReplayView, "event_replay"),
    endpoint("deliveries", views.DeliveryListView, "deliveries"),
    # Before deliveries/<id>, which would take "retry" for an id.
    endpoint("deliveries/retry", views.DeliveryBulkRetryView, "deliveries_retry"),
    endpoint("bulk_retries", views.BulkRetryListView, "bulk_retries"),
    endpoint(f"bulk_retries/{ID.format('job_id')}", views.BulkRetryDetailView, "bulk_retry"),
    endpoint(f"deliveries/{ID.format('delivery_id')}", views.DeliveryDetailView, "delivery"),
    endpoint(f"deliveries/{ID.format('delivery_id')}/retry", views.DeliveryRetryView, "delivery_retry"),
    # Sources and destinations: views_manage's views read them as views' do, and also create,
    # change, rotate secrets and delete.
    endpoint("sources", manage.SourceListCreateView, "sources"),
    endpoint(f"sources/{ID.format('source_id')}", manage.SourceDetailManageView, "source"),
    endpoint(f"sources/{ID.format('source_id')}/rotate_secret", manage.SourceRotateSecretView, "source_rotate"),
    endpoint("destinations", manage.DestinationListCreateView, "destinations"),
    endpoint(f"destinations/{ID.format('destination_id')}", manage.DestinationDetailManageView, "destination"),
    endpoint(
        f"destinations/{ID.format('destination_id')}/rotate_secret",
        manage.DestinationRotateSecretView,
        "destination_rotate",
    ),
    endpoint(f"destinations/{ID.format('destination_id')}/pause", views.DestinationPauseView, "destination_pause"),
    endpoint(f"destinations/{ID.format('destination_id')}/resume", views.DestinationResumeView, "destination_resume"),
    endpoint(
        f"destinations/{ID.format('destination_id')}/send_waiting_now",
        manage.DestinationSendWaitingNowView,
        "destination_send_waiting_now",
    ),
    # The OpenAPI document of the endpoints above (webhooks/api/schema.py); read without a key.
    endpoint("schema", ApiSchemaView, "schema"),
    re_path(r"^.*$", json_not_found),
]
