"""/api/v1/ (namespace ``api``). A trailing slash is optional. Ids are taken as text and checked by
the views, so that a malformed one is the API's JSON 404 rather than the site's HTML page."""

from django.urls import re_path

from . import views
from .authentication import json_not_found

ID = r"(?P<{}>[^/]+)"


def endpoint(pattern: str, view, name: str):
    return re_path(rf"^{pattern}/?$", view.as_view(), name=name)


app_name = "api"
urlpatterns = [
    endpoint("events", views.EventListView, "events"),
    endpoint(f"events/{ID.format('event_id')}", views.EventDetailView, "event"),
    endpoint(f"events/{ID.format('event_id')}/replay", views.EventReplayView, "event_replay"),
    endpoint("deliveries", views.DeliveryListView, "deliveries"),
    endpoint(f"deliveries/{ID.format('delivery_id')}", views.DeliveryDetailView, "delivery"),
    endpoint(f"deliveries/{ID.format('delivery_id')}/retry", views.DeliveryRetryView, "delivery_retry"),
    endpoint("sources", views.SourceListView, "sources"),
    endpoint(f"sources/{ID.format('source_id')}", views.SourceDetailView, "source"),
    endpoint("destinations", views.DestinationListView, "destinations"),
    endpoint(f"destinations/{ID.format('destination_id')}", views.DestinationDetailView, "destination"),
    endpoint(f"destinations/{ID.format('destination_id')}/pause", views.DestinationPauseView, "destination_pause"),
    endpoint(f"destinations/{ID.format('destination_id')}/resume", views.DestinationResumeView, "destination_resume"),
    re_path(r"^.*$", json_not_found),
]
