"""/api/v1/ (namespace ``api``). Ids are taken as text and checked by the views, so that a
malformed one is the API's JSON 404 rather than the site's HTML page."""

from django.urls import path, re_path

from . import views
from .authentication import json_not_found

app_name = "api"
urlpatterns = [
    path("events", views.EventListView.as_view(), name="events"),
    path("events/<str:event_id>", views.EventDetailView.as_view(), name="event"),
    path("events/<str:event_id>/replay", views.EventReplayView.as_view(), name="event_replay"),
    path("deliveries", views.DeliveryListView.as_view(), name="deliveries"),
    path("deliveries/<str:delivery_id>", views.DeliveryDetailView.as_view(), name="delivery"),
    path("deliveries/<str:delivery_id>/retry", views.DeliveryRetryView.as_view(), name="delivery_retry"),
    path("sources", views.SourceListView.as_view(), name="sources"),
    path("sources/<str:source_id>", views.SourceDetailView.as_view(), name="source"),
    path("destinations", views.DestinationListView.as_view(), name="destinations"),
    path("destinations/<str:destination_id>", views.DestinationDetailView.as_view(), name="destination"),
    path("destinations/<str:destination_id>/pause", views.DestinationPauseView.as_view(), name="destination_pause"),
    path("destinations/<str:destination_id>/resume", views.DestinationResumeView.as_view(), name="destination_resume"),
    re_path(r"^.*$", json_not_found),
]
