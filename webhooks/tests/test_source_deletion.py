"""Deleting a source: one short request, then its rows in batches in the background (source_deletion).

What only a source's deletion does; what it shares with a destination's is tested for both in
test_source_and_destination_deletion."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from webhooks import tasks
from webhooks.api import views as api_views
from webhooks.models import Delivery, DeliveryAttempt, WebhookEvent
from webhooks.services import alerts, processing, source_deletion
from webhooks.services import delivery as delivery_service
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion

from .api_helpers import api_delete, api_post, make_event, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"


@pytest.fixture
def published(monkeypatch):
    """Runs published for a worker, noted instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: sent.append(a))
    return sent


# --- The request -----------------------------------------------------------------------------


def test_ingest_answers_404_right_after_the_request(client, organization, published):
    source = make_source(organization)
    body = json.dumps({"id": "evt_before", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200  # and now in the source cache
    source_request_deletion(source=source)
    body = json.dumps({"id": "evt_after", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 404


def test_its_received_events_get_no_new_deliveries(client, organization, published):
    source = make_source(organization)
    make_destination(organization, RECEIVER, sources=[source])
    body = json.dumps({"id": "evt_queued", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    source_request_deletion(source=source)
    processing.process_event_batch()
    assert not Delivery.objects.exists()


def test_deliveries_queued_before_the_request_are_dead_lettered_unsent(
    client, organization, published, httpserver, monkeypatch
):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    doomed, kept = make_source(organization, name="doomed"), make_source(organization, name="kept")
    make_destination(organization, httpserver.url_for("/hook"), sources=[doomed, kept])
    httpserver.expect_request("/hook").respond_with_data("ok")
    for source, event_id in ((doomed, "evt_doomed_1"), (doomed, "evt_doomed_2"), (kept, "evt_kept")):
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    assert Delivery.objects.filter(status=Delivery.Status.PENDING).count() == 3
    source_request_deletion(source=doomed)

    # The dispatcher sends the kept source's delivery only.
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, threads=4, linger_seconds=0) == 1

    assert [request.get_json()["id"] for request, _ in httpserver.log] == ["evt_kept"]
    assert Delivery.objects.get(event__source=kept).status == Delivery.Status.SUCCEEDED
    for delivery in Delivery.objects.filter(event__source=doomed):
        assert delivery.status == Delivery.Status.DEAD
        assert delivery.last_error == delivery_service.SOURCE_BEING_DELETED_ERROR
        assert (delivery.attempt_count, delivery.claimed_at, delivery.next_attempt_at) == (0, None, None)
    assert not DeliveryAttempt.objects.filter(delivery__event__source=doomed).exists()
    assert alerts.send_dead_letter_digests() == 0  # no news for the destination's owners
    # They go with the source's events, counted with them.
    assert source_deletion_run(source_id=doomed.pk).finished
    assert AuditLog.objects.get(action=source_deletion.DELETED_ACTION).changes["deleted"]["deliveries"] == 2


def test_a_claim_that_met_only_deliveries_of_a_source_being_deleted_claims_again(
    client, organization, published, monkeypatch
):
    # The dispatcher takes an empty claim for "nothing is due" and stops: a first pick made only of
    # the doomed source's deliveries must not hide the kept source's delivery due behind them.
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    doomed, kept = make_source(organization, name="doomed"), make_source(organization, name="kept")
    make_destination(organization, "http://127.0.0.1:9/hook", sources=[doomed, kept])
    for source, event_id in ((doomed, "evt_doomed_1"), (doomed, "evt_doomed_2"), (kept, "evt_kept")):
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    # The kept source's delivery is due last.
    Delivery.objects.filter(event__provider_event_id="evt_kept").update(next_attempt_at=timezone.now())
    source_request_deletion(source=doomed)

    claimed = delivery_service.claim_due_deliveries(2)

    assert [delivery.event.provider_event_id for delivery in claimed] == ["evt_kept"]
    assert set(Delivery.objects.filter(event__source=doomed).values_list("status", flat=True)) == {Delivery.Status.DEAD}


def test_an_events_page_names_its_source_being_deleted_without_a_link(client, owner, organization, published):
    # The link led to the source's page, a 404 once it is being deleted; its events are listed until
    # their batch deletes them.
    source = make_source(organization, name="doomed")
    event = make_event(source)
    source_request_deletion(source=source)
    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, event.pk])).content.decode()
    assert "doomed" in page and "Being deleted" in page
    assert reverse("dashboard:source_detail", args=[organization.slug, source.pk]) not in page


def test_an_event_of_a_source_being_deleted_is_not_replayed(client, organization, published):
    # Its delivery would be dead-lettered unsent and deleted with the event: a 202 would say otherwise.
    doomed = make_source(organization, name="doomed")
    event = make_event(doomed)
    destination, _ = make_destination(organization, RECEIVER, sources=[doomed])
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    assert api_delete(client, key, f"/api/v1/sources/{doomed.pk}").status_code == 202
    before = Delivery.objects.count()
    response = api_post(client, key, f"/api/v1/events/{event.pk}/replay", {"destination": destination.pk})
    assert response.status_code == 409, response.content
    assert response.json()["detail"] == "the event's source is being deleted: its events are not sent again"
    assert Delivery.objects.count() == before


def test_replaying_an_event_its_sources_deletion_removed_meanwhile_answers_404(
    client, organization, published, monkeypatch
):
    # Seen with a script: DELETE a source, then replay its events at once. The view found the event,
    # the worker's batch deleted it before the delivery was made: an IntegrityError, a 500.
    doomed = make_source(organization, name="doomed")
    event = make_event(doomed)
    destination, _ = make_destination(organization, RECEIVER, sources=[doomed])
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    found = api_views.event_for_organization

    def found_then_deleted(**kwargs):
        row = found(**kwargs)
        # The deletion's batches before its mark is read: the source as the lookup saw it, rows gone.
        Delivery.objects.filter(event__source=doomed).delete()
        WebhookEvent.objects.filter(source=doomed).delete()
        return row

    monkeypatch.setattr(api_views, "event_for_organization", found_then_deleted)
    response = api_post(client, key, f"/api/v1/events/{event.pk}/replay", {"destination": destination.pk})
    assert response.status_code == 404, response.content
    assert response.json() == {"error": "not_found", "detail": "not found"}
    assert not Delivery.objects.filter(event_id=event.pk).exists()
