"""Deleting a destination: one short request, then its rows in batches in the background (destination_deletion).

What only a destination's deletion does; what it shares with a source's is tested for both in
test_source_and_destination_deletion."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from webhooks import tasks
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import alerts, batched_deletion, destination_deletion, operations, processing
from webhooks.services import delivery as delivery_service
from webhooks.services.destination_deletion import destination_deletion_run, destination_request_deletion
from webhooks.services.scheduling import clear_flag

from .api_helpers import api_post, make_event, make_key
from .delivering import claim_now
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe
from .test_organization_deletion import add_events
from .test_source_and_destination_deletion import three_destinations

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
LINKS = batched_deletion.LINKS


@pytest.fixture
def published(monkeypatch):
    """Runs published for a worker, noted instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.delete_destination, "apply_async", lambda *a, **k: sent.append(a))
    return sent


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def destinations(organization, other_organization):
    return three_destinations(organization, other_organization)


# --- The request -----------------------------------------------------------------------------


def test_deleting_one_makes_room_for_another_at_once(organization, published, settings):
    settings.MAX_DESTINATIONS_PER_ORGANIZATION = 1
    destination, _ = make_destination(organization, RECEIVER)
    destination_request_deletion(destination=destination)
    replacement, _ = make_destination(organization, RECEIVER + "/new")
    assert replacement.pk != destination.pk


def test_events_received_after_the_request_get_no_delivery_to_it(client, organization, published):
    source = make_source(organization)
    doomed, _ = make_destination(organization, RECEIVER + "/doomed", sources=[source])
    kept, _ = make_destination(organization, RECEIVER + "/kept", sources=[source])
    destination_request_deletion(destination=doomed)
    body = json.dumps({"id": "evt_after", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk]


def test_deliveries_queued_before_the_request_are_not_sent_nor_dead_lettered(
    client, organization, published, httpserver
):
    source = make_source(organization)
    doomed, _ = make_destination(organization, httpserver.url_for("/doomed"), sources=[source])
    kept, _ = make_destination(organization, httpserver.url_for("/kept"), sources=[source])
    httpserver.expect_request("/kept").respond_with_data("ok")
    for event_id in ("evt_1", "evt_2"):
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    destination_request_deletion(destination=doomed)

    assert delivery_service.dispatch_due_deliveries(max_seconds=5, threads=4, linger_seconds=0) == 2
    assert [request.path for request, _ in httpserver.log] == ["/kept", "/kept"]
    # The sweeper's dead-lettering of inactive destinations' deliveries (one UPDATE of all of them)
    # leaves them to the deletion's batches, and the sweeper publishes the deletion's run.
    clear_flag(f"destination-deletion:{doomed.pk}:published")
    swept = processing.sweep()
    assert swept["inactive"] == 0 and swept["destination_deletions"] == 1
    assert set(Delivery.objects.filter(destination=doomed).values_list("status", flat=True)) == {
        Delivery.Status.PENDING
    }
    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert AuditLog.objects.get(action=destination_deletion.DELETED_ACTION).changes["deleted"] == {
        "deliveries": 2,
        LINKS: 1,
    }


def test_retries_replays_and_bulk_retries_to_it_are_refused_with_the_reason(organization, published):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    add_events(source, destination, 1, prefix="one")  # one dead delivery
    event, dead = WebhookEvent.objects.get(), Delivery.objects.get()
    stale = Destination.objects.get(pk=destination.pk)  # read before the request
    destination_request_deletion(destination=destination)
    reason = "the destination is being deleted: nothing more is sent to it"
    with pytest.raises(operations.OperationError, match=reason):
        operations.event_replay(event=event, destination=stale)
    with pytest.raises(operations.OperationError, match=reason):
        operations.event_replay(event=event, destination=Destination.objects.get(pk=destination.pk))
    with pytest.raises(delivery_service.DeliveryRetryError, match="its destination is being deleted"):
        delivery_service.delivery_retry(delivery=dead)
    with pytest.raises(operations.OperationError, match=reason):
        operations.bulk_retry_request(organization=organization, filters={"destination": destination.pk})
    with pytest.raises(operations.OperationError, match=reason):
        operations.destination_send_waiting_now(destination=stale)
    assert Delivery.objects.filter(destination=destination, status=Delivery.Status.PENDING).count() == 0


# --- The run ---------------------------------------------------------------------------------


def test_each_batch_is_bounded_and_its_own_transaction(destinations, published):
    doomed, _, _ = destinations
    destination_request_deletion(destination=doomed)
    progress = []
    real_batch = batched_deletion.BatchDeleter.batch

    def noting_batch(self, work):
        real_batch(self, work)
        # Committed, as seen from the table: not one transaction around the whole run.
        progress.append(Delivery.objects.filter(destination_id=doomed.pk).count())

    batched_deletion.BatchDeleter.batch, saved = noting_batch, real_batch
    try:
        assert destination_deletion_run(destination_id=doomed.pk, batch_size=5).finished
    finally:
        batched_deletion.BatchDeleter.batch = saved
    assert progress == [18, 13, 8, 3, 0, 0]  # five batches of deliveries (at most 5 each), one of links


# --- Dashboard, API and admin ----------------------------------------------------------------


def test_the_api_refuses_a_replay_or_retry_to_it_with_the_reason(client, organization, destinations, published):
    doomed, _, _ = destinations
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    delivery = Delivery.objects.filter(destination=doomed).first()
    destination_request_deletion(destination=doomed)
    replay = api_post(client, key, f"/api/v1/events/{delivery.event_id}/replay", {"destination": doomed.pk})
    assert replay.status_code == 409, replay.content
    assert "the destination is being deleted: nothing more is sent to it" in replay.json()["detail"]
    retry = api_post(client, key, f"/api/v1/deliveries/{delivery.pk}/retry", {})
    assert retry.status_code == 409, retry.content
    assert "its destination is being deleted" in retry.json()["detail"]
    assert Delivery.objects.filter(destination=doomed).count() == 23  # none more, none retried
    assert not Delivery.objects.filter(destination=doomed, status=Delivery.Status.PENDING).exists()


def test_the_overview_no_longer_lists_it_as_failing_or_paused(client, owner, organization, destinations, published):
    # Its row linked to its page (a 404 once it is being deleted) and to the events list filtered by it
    # (which no longer offers it).
    from webhooks.services.dashboard_stats import organization_overview
    from webhooks.services.destinations import destination_set_paused

    doomed, kept, _ = destinations
    destination_set_paused(destination=doomed, paused=True, actor=owner)
    destination_set_paused(destination=kept, paused=True, actor=owner)
    overview = organization_overview(organization=organization)
    assert {row.destination.pk for row in overview.failing_destinations} == {doomed.pk, kept.pk}
    assert {destination.pk for destination in overview.paused_destinations} == {doomed.pk, kept.pk}

    destination_request_deletion(destination=doomed)
    overview = organization_overview(organization=organization)
    assert [row.destination.pk for row in overview.failing_destinations] == [kept.pk]
    assert [destination.pk for destination in overview.paused_destinations] == [kept.pk]


def test_a_pause_or_resume_of_it_is_refused_with_the_reason(organization, published):
    # The admin's Pause and Resume actions list it (its list shows it as being deleted): a resume
    # brought every waiting delivery forward in one UPDATE, however many (what the deletion's
    # batches avoid), and said "Resumed; what queued up is being sent", audited, though nothing is.
    source = make_source(organization)
    paused, _ = make_destination(organization, RECEIVER, sources=[source])
    active, _ = make_destination(organization, "http://127.0.0.1:9/active", sources=[source])
    add_events(source, paused, 1, prefix="waiting")
    Delivery.objects.filter(destination=paused).update(status=Delivery.Status.PENDING)
    waiting_until = Delivery.objects.get(destination=paused).next_attempt_at
    operations.destination_pause(destination=paused)
    stale_paused, stale_active = (Destination.objects.get(pk=d.pk) for d in (paused, active))
    destination_request_deletion(destination=paused)
    destination_request_deletion(destination=active)
    reason = "the destination is being deleted: nothing more is sent to it"

    with pytest.raises(operations.OperationError, match=reason) as refused:
        operations.destination_resume(destination=stale_paused)
    assert not isinstance(refused.value, operations.NothingToDo)
    with pytest.raises(operations.OperationError, match=reason):
        operations.destination_pause(destination=stale_active)

    assert Destination.objects.get(pk=paused.pk).paused_at is not None
    assert Destination.objects.get(pk=active.pk).paused_at is None
    assert Delivery.objects.get(destination=paused).next_attempt_at == waiting_until
    assert not AuditLog.objects.filter(action="destination.resumed").exists()
    assert AuditLog.objects.filter(action="destination.paused").count() == 1  # the pause before the request


def test_a_failure_recorded_after_the_request_trips_no_breaker_and_emails_no_one(
    organization, owner, published, settings, django_capture_on_commit_callbacks
):
    # A failing receiver is just what a tenant deletes; a send of it in flight at that moment fails
    # too, and its recording tripped the circuit breaker of the destination being deleted: paused,
    # audited, and its admins emailed "Destination paused" with a link to a page that is gone.
    settings.CIRCUIT_BREAKER_FAILURES, settings.CIRCUIT_BREAKER_PERIOD_SECONDS = 1, 0
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    delivery = Delivery.objects.create(organization=organization, event=make_event(source), destination=destination)
    claimed = claim_now(delivery.pk)
    destination_request_deletion(destination=destination)

    with django_capture_on_commit_callbacks(execute=True):
        delivery_service.record_results([(claimed, delivery_service.send(claimed))])

    destination.refresh_from_db()
    assert (destination.paused_at, destination.pause_notice_due_at) == (None, None)
    assert not AuditLog.objects.filter(action="destination.paused").exists()
    assert not [message for message in mail.outbox if "paused" in message.subject.lower()]


def test_a_pause_email_still_owed_when_the_deletion_is_asked_for_is_not_sent(organization, owner, published):
    # Tripped just before the request, its email failed (or the worker went) and the sweeper tries it again.
    destination, _ = make_destination(organization, RECEIVER)
    now = timezone.now()
    Destination.objects.filter(pk=destination.pk).update(
        paused_at=now, pause_reason="paused automatically", pause_notice_due_at=now
    )
    destination_request_deletion(destination=destination)

    assert alerts.alert_destination_paused(destination.pk, now=now + timedelta(minutes=1)) is False

    assert mail.outbox == []
    assert Destination.objects.get(pk=destination.pk).pause_notice_due_at is None  # nothing owed any more


def test_the_admins_change_form_refuses_a_destination_whose_deletion_was_asked_for_while_it_was_posted(
    client, destinations, published, monkeypatch
):
    # The change page refuses one being deleted (read-only); a deletion asked for between the POST's
    # read of the object and its save is refused by the form, or the save would make it active again.
    from django.contrib import admin as django_admin
    from django.contrib.auth import get_user_model

    from .test_admin import destination_form

    doomed, _, _ = destinations
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    destination_admin = type(django_admin.site._registry[Destination])
    real_get_object = destination_admin.get_object

    def read_then_deletion_asked(self, request, object_id, from_field=None):
        obj = real_get_object(self, request, object_id, from_field)
        if request.method == "POST" and obj is not None:
            destination_request_deletion(destination=Destination.objects.get(pk=obj.pk))
        return obj

    monkeypatch.setattr(destination_admin, "get_object", read_then_deletion_asked)
    response = client.post(
        reverse("admin:webhooks_destination_change", args=[doomed.pk]), destination_form(doomed, name="back")
    )

    assert response.status_code == 200
    assert "This destination is being deleted: it can no longer be changed." in response.content.decode()
    doomed.refresh_from_db()
    assert doomed.being_deleted and not doomed.is_active and doomed.name != "back"
