"""/api/v1/ (namespace ``api``). A trailing slash is optional. Ids are taken as text and checked by
the views, so that a malformed one is the API's JSON 404 rather than the site's HTML page."""

from django.urls import re_path

from . import views
from . import views_manage as manage
from .authentication import json_not_found

ID = r"(?P<{}>[^/]+)"


def endpoint(pattern: str, view, name: str):
    return re_path(rf"^{pattern}/?$", view.as_view(), name=name)


app_name = "api"
urlpatterns = [
    # Creating, changing and deleting sources and destinations (views_manage). Listed before the read
    # endpoints of the same paths: their views extend those and answer GET the same way.
    endpoint("sources", manage.SourceListCreateView, "sources_manage"),
    endpoint(f"sources/{ID.format('source_id')}", manage.SourceDetailManageView, "source_manage"),
    endpoint(f"sources/{ID.format('source_id')}/rotate_secret", manage.SourceRotateSecretView, "source_rotate"),
    endpoint("destinations", manage.DestinationListCreateView, "destinations_manage"),
    endpoint(f"destinations/{ID.format('destination_id')}", manage.DestinationDetailManageView, "destination_manage"),
    endpoint(
        f"destinations/{ID.format('destination_id')}/rotate_secret",
        manage.DestinationRotateSecretView,
        "destination_rotate",
    ),
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
