"""The tenant dashboard under /o/<org_slug>/ (namespace ``dashboard``)."""

from django.urls import path

from webhooks.views.dashboard import api_keys, audit, base, destinations, events, overview, sources

app_name = "dashboard"
urlpatterns = [
    path("", overview.OverviewView.as_view(), name="overview"),
    path("events/", events.EventListView.as_view(), name="events"),
    path("find/", events.FindEventView.as_view(), name="find_event"),
    path("events/live/", events.EventLiveView.as_view(), name="events_live"),
    path("events/<uuid:event_id>/", events.EventDetailView.as_view(), name="event_detail"),
    path("events/<uuid:event_id>/replay/", events.EventReplayView.as_view(), name="event_replay"),
    path("events/<uuid:event_id>/progress/", events.EventProgressView.as_view(), name="event_progress"),
    path("deliveries/<uuid:delivery_id>/retry/", events.DeliveryRetryView.as_view(), name="delivery_retry"),
    path("secret/<str:token>/", base.SecretOnceView.as_view(), name="secret_once"),
    path("sources/", sources.SourceListView.as_view(), name="sources"),
    path("sources/new/", sources.ProviderPickerView.as_view(), name="source_providers"),
    path("sources/new/<str:provider>/", sources.SourceCreateView.as_view(), name="source_create"),
    path("sources/<int:source_id>/", sources.SourceDetailView.as_view(), name="source_detail"),
    path("sources/<int:source_id>/edit/", sources.SourceEditView.as_view(), name="source_edit"),
    path("sources/<int:source_id>/secret/", sources.SourceRotateSecretView.as_view(), name="source_rotate"),
    path("sources/<int:source_id>/active/", sources.SourceSetActiveView.as_view(), name="source_set_active"),
    path("sources/<int:source_id>/delete/", sources.SourceDeleteView.as_view(), name="source_delete"),
    path("sources/<int:source_id>/test/", sources.SourceTestView.as_view(), name="source_test"),
    path("sources/<int:source_id>/rejected/", sources.SourceRejectedView.as_view(), name="source_rejected"),
    path("destinations/", destinations.DestinationListView.as_view(), name="destinations"),
    path("destinations/new/", destinations.DestinationCreateView.as_view(), name="destination_create"),
    path("destinations/<int:destination_id>/", destinations.DestinationDetailView.as_view(), name="destination_detail"),
    path(
        "destinations/<int:destination_id>/edit/", destinations.DestinationEditView.as_view(), name="destination_edit"
    ),
    path(
        "destinations/<int:destination_id>/secret/",
        destinations.DestinationRotateSecretView.as_view(),
        name="destination_rotate",
    ),
    path(
        "destinations/<int:destination_id>/delete/",
        destinations.DestinationDeleteView.as_view(),
        name="destination_delete",
    ),
    path(
        "destinations/<int:destination_id>/paused/",
        destinations.DestinationSetPausedView.as_view(),
        name="destination_set_paused",
    ),
    path(
        "destinations/<int:destination_id>/retry-failed/",
        destinations.DestinationBulkRetryView.as_view(),
        name="destination_bulk_retry",
    ),
    path(
        "destinations/<int:destination_id>/bulk-retries/",
        destinations.DestinationBulkRetriesView.as_view(),
        name="destination_bulk_retries",
    ),
    path(
        "destinations/<int:destination_id>/send-waiting-now/",
        destinations.DestinationSendWaitingNowView.as_view(),
        name="destination_send_waiting_now",
    ),
    path("audit/", audit.AuditLogView.as_view(), name="audit"),
    path("api-keys/", api_keys.ApiKeysView.as_view(), name="api_keys"),
    path("api-keys/<int:api_key_id>/revoke/", api_keys.ApiKeyRevokeView.as_view(), name="api_key_revoke"),
]
