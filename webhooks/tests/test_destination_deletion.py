"""Deleting a destination: one short request, then its rows in batches in the background (destination_deletion)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from organizations.services import audit_verify_chain
from webhooks import tasks
from webhooks.forms import ReplayForm
from webhooks.models import Delivery, DeliveryAttempt, Destination, Subscription, WebhookEvent
from webhooks.services import alerts, batched_deletion, destination_deletion, operations, processing
from webhooks.services import delivery as delivery_service
from webhooks.services.destination_deletion import destination_deletion_run, destination_request_deletion
from webhooks.services.destinations import (
    DestinationBeingDeleted,
    destination_rotate_secret,
    destination_set_custom_headers,
    destination_update,
)
from webhooks.services.organization_deletion import organization_deletion_run, organization_request_deletion
from webhooks.services.scheduling import clear_flag

from .api_helpers import api_delete, api_get, api_patch, api_post, make_event, make_key
from .delivering import claim_now
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe
from .test_organization_deletion import add_events

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


def rows_of(destination_id: int) -> dict[str, int]:
    return {
        "deliveries": Delivery.objects.filter(destination_id=destination_id).count(),
        "attempts": DeliveryAttempt.objects.filter(delivery__destination_id=destination_id).count(),
        "links": Subscription.objects.filter(destination_id=destination_id).count(),
        "destination": Destination.objects.filter(pk=destination_id).count(),
    }


@pytest.fixture
def destinations(organization, other_organization):
    """Acme's destination to delete (23 deliveries, each with an attempt) and one to keep (7), both of
    one source; Globex's destination (5) of its own source."""
    source = make_source(organization, name="shared")
    doomed, _ = make_destination(organization, RECEIVER + "/doomed", sources=[source])
    kept, _ = make_destination(organization, RECEIVER + "/kept", sources=[source])
    add_events(source, doomed, 23, prefix="doomed")
    add_events(source, kept, 7, prefix="kept")
    theirs_source = make_source(other_organization, name="theirs")
    theirs, _ = make_destination(other_organization, RECEIVER, sources=[theirs_source])
    add_events(theirs_source, theirs, 5, prefix="theirs")
    return doomed, kept, theirs


# --- The request -----------------------------------------------------------------------------


def _delete_by_api(client, key, destination):
    with CaptureQueriesContext(connection) as queries:
        response = api_delete(client, key, f"/api/v1/destinations/{destination.pk}")
    assert response.status_code == 202, response.content
    return len(queries), response


def test_the_request_only_marks_the_destination_in_queries_that_do_not_grow_with_its_deliveries(
    client, organization, published, django_capture_on_commit_callbacks
):
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    source = make_source(organization)
    first, _ = make_destination(organization, RECEIVER + "/first")
    small, _ = make_destination(organization, RECEIVER + "/small", sources=[source])
    big, _ = make_destination(organization, RECEIVER + "/big", sources=[source])
    add_events(source, small, 5, prefix="small")
    add_events(source, big, 500, prefix="big")

    _delete_by_api(client, key, first)  # the key's first use writes its last use too
    with django_capture_on_commit_callbacks(execute=True):
        with_five, _ = _delete_by_api(client, key, small)
    with django_capture_on_commit_callbacks(execute=True):
        with_five_hundred, response = _delete_by_api(client, key, big)
    assert with_five == with_five_hundred
    assert response.json() == {"id": big.pk, "state": "deleting"}
    assert len(published) == 2  # one run for each (the first's commit callbacks were not run)
    big.refresh_from_db()
    assert big.being_deleted and not big.is_active and "script" in big.deletion_requested_by
    assert rows_of(big.pk)["deliveries"] == 500  # nothing deleted yet: that is the task's
    entry = AuditLog.objects.get(action=destination_deletion.DELETION_REQUESTED_ACTION, target_id=str(big.pk))
    assert entry.changes == {"name": "endpoint", "url": RECEIVER + "/big", "was_active": True}
    assert entry.actor_type == AuditLog.ActorType.API_KEY


def test_asking_twice_writes_once_and_publishes_again(organization, published, django_capture_on_commit_callbacks):
    destination, _ = make_destination(organization, RECEIVER)
    with django_capture_on_commit_callbacks(execute=True):
        assert destination_request_deletion(destination=destination) is True
    stale = Destination.objects.get(pk=destination.pk)
    clear_flag(f"destination-deletion:{destination.pk}:published")  # as if that run's message was lost
    with django_capture_on_commit_callbacks(execute=True):
        assert destination_request_deletion(destination=stale) is False
    assert AuditLog.objects.filter(action=destination_deletion.DELETION_REQUESTED_ACTION).count() == 1
    assert len(published) == 2


def test_a_destination_being_deleted_cannot_be_changed(organization, published):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER)
    loaded_before = Destination.objects.get(pk=destination.pk)  # as a form or PATCH read before the request
    destination_request_deletion(destination=destination)
    for change in (
        lambda: destination_update(
            destination=loaded_before,
            name="renamed",
            url=RECEIVER,
            sources=[source],
            event_types=[],
            timeout_seconds=10,
        ),
        lambda: destination_rotate_secret(destination=loaded_before),
        lambda: destination_set_custom_headers(destination=loaded_before, changes={"X-Key": "value"}),
    ):
        with pytest.raises(DestinationBeingDeleted):
            change()
    destination.refresh_from_db()
    assert destination.name == "endpoint" and not destination.is_active
    assert not Subscription.objects.filter(destination=destination).exists()
    assert destination.pk not in {
        choice.pk for choice in ReplayForm(organization=organization).fields["destination"].queryset
    }


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


# --- The run ---------------------------------------------------------------------------------


def test_the_run_deletes_everything_of_the_destination_and_nothing_else(destinations, organization, published):
    doomed, kept, theirs = destinations
    kept_before, theirs_before = rows_of(kept.pk), rows_of(theirs.pk)
    events_before = WebhookEvent.objects.count()
    destination_request_deletion(destination=doomed)

    run = destination_deletion_run(destination_id=doomed.pk, batch_size=5)
    assert run.finished
    assert set(rows_of(doomed.pk).values()) == {0}
    assert rows_of(kept.pk) == kept_before and rows_of(theirs.pk) == theirs_before
    assert WebhookEvent.objects.count() == events_before  # the events stay
    done = AuditLog.objects.get(action=destination_deletion.DELETED_ACTION)
    assert done.organization_id == organization.pk and done.target_id == str(doomed.pk)
    assert done.changes["deleted"] == {"deliveries": 23, "delivery attempts": 23, LINKS: 1}
    assert done.changes["name"] == "endpoint" and done.changes["requested_by"] == "system"
    assert audit_verify_chain().ok
    # Again (a duplicate message): nothing more to do, nothing written.
    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert AuditLog.objects.filter(action=destination_deletion.DELETED_ACTION).count() == 1


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


def test_a_run_that_died_in_a_batch_is_resumed_by_the_sweeper_and_counts_once(
    destinations, published, monkeypatch, django_capture_on_commit_callbacks
):
    doomed, kept, _ = destinations
    with django_capture_on_commit_callbacks(execute=True):
        destination_request_deletion(destination=doomed)
    real_check = batched_deletion.check_foreign_keys
    batches = []

    def killed_in_the_third_batch():
        batches.append(1)
        if len(batches) == 3:
            raise RuntimeError("worker killed")
        real_check()

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", killed_in_the_third_batch)
    with pytest.raises(RuntimeError):
        destination_deletion_run(destination_id=doomed.pk, batch_size=5)
    assert rows_of(doomed.pk)["deliveries"] == 13  # two whole batches done, the third rolled back
    assert Destination.objects.get(pk=doomed.pk).deletion_progress == {"deliveries": 10, "delivery attempts": 10}
    monkeypatch.setattr(batched_deletion, "check_foreign_keys", real_check)

    assert processing.sweep()["destination_deletions"] == 0  # its message may still be on its way
    clear_flag(f"destination-deletion:{doomed.pk}:published")  # PUBLISHED_TTL_SECONDS later
    assert processing.sweep()["destination_deletions"] == 1 and len(published) == 2
    assert tasks.delete_destination(doomed.pk) is True
    assert rows_of(doomed.pk)["destination"] == 0 and rows_of(kept.pk)["deliveries"] == 7
    deleted = AuditLog.objects.get(action=destination_deletion.DELETED_ACTION).changes["deleted"]
    assert deleted == {"deliveries": 23, "delivery attempts": 23, LINKS: 1}
    assert processing.sweep()["destination_deletions"] == 0  # nothing left to resume


def test_a_run_stops_at_its_time_limit_and_publishes_the_next(destinations, published, monkeypatch):
    doomed, _, _ = destinations
    destination_request_deletion(destination=doomed)
    published.clear()
    monkeypatch.setattr(batched_deletion, "RUN_SECONDS", 0)  # one batch, then the limit
    monkeypatch.setattr(destination_deletion, "BATCH_SIZE", 5)
    assert tasks.delete_destination(doomed.pk) is False
    assert rows_of(doomed.pk)["deliveries"] == 18 and len(published) == 1


def test_one_run_at_a_time_per_destination(destinations, published):
    import psycopg

    doomed, _, _ = destinations
    destination_request_deletion(destination=doomed)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params) as other_worker:  # a run in another worker process, holding the lock
        other_worker.execute("SELECT pg_advisory_lock(%s)", [destination_deletion._DELETIONS.lock_prefix + doomed.pk])
        assert destination_deletion_run(destination_id=doomed.pk).busy
        assert rows_of(doomed.pk)["deliveries"] == 23


def test_rows_that_came_back_meanwhile_are_deleted_by_the_next_run(destinations, organization, published):
    doomed, _, _ = destinations
    destination_request_deletion(destination=doomed)
    assert not destination_deletion_run(destination_id=doomed.pk, batch_size=5, max_seconds=0).finished
    # A delivery made by a replay, and a link saved by a form, both read before the request.
    source = make_source(organization, name="late")
    add_events(source, doomed, 1, prefix="late")
    Subscription.objects.create(organization=organization, source=source, destination=doomed)
    run = destination_deletion_run(destination_id=doomed.pk, batch_size=5)
    assert run.finished and rows_of(doomed.pk)["destination"] == 0
    deleted = AuditLog.objects.get(action=destination_deletion.DELETED_ACTION).changes["deleted"]
    assert deleted == {"deliveries": 24, "delivery attempts": 24, LINKS: 2}


def test_an_organization_with_a_destination_being_deleted_is_still_deleted(destinations, organization, published):
    doomed, _, _ = destinations
    destination_request_deletion(destination=doomed)
    destination_deletion_run(destination_id=doomed.pk, batch_size=5, max_seconds=0)  # one batch, then stopped
    organization_request_deletion(organization=organization)
    assert organization_deletion_run(organization_id=organization.pk, batch_size=5).finished
    assert not Destination.objects.filter(organization=organization).exists()
    assert tasks.delete_destination(doomed.pk) is True  # its next run finds it gone
    assert not AuditLog.objects.filter(action=destination_deletion.DELETED_ACTION).exists()


# --- Dashboard, API and admin ----------------------------------------------------------------


def test_the_dashboard_answers_at_once_and_lists_the_destination_as_being_deleted(
    client, owner, destinations, published
):
    doomed, kept, _ = destinations
    Destination.objects.filter(pk=doomed.pk).update(name="doomed")
    client.force_login(owner)
    response = client.post(reverse("dashboard:destination_delete", args=["acme", doomed.pk]), follow=True)
    assert response.redirect_chain[-1] == (reverse("dashboard:destinations", args=["acme"]), 302)
    page = response.content.decode()
    assert "Destination “doomed” is being deleted: nothing more is sent to it" in page
    assert "Being deleted" in page
    assert reverse("dashboard:destination_detail", args=["acme", doomed.pk]) not in page
    assert reverse("dashboard:destination_detail", args=["acme", kept.pk]) in page
    for name in ("destination_detail", "destination_edit", "destination_delete"):
        assert client.get(reverse(f"dashboard:{name}", args=["acme", doomed.pk])).status_code == 404, name
    assert client.post(reverse("dashboard:destination_delete", args=["acme", doomed.pk])).status_code == 404
    assert rows_of(doomed.pk)["deliveries"] == 23

    tasks.delete_destination(doomed.pk)
    assert "doomed" not in client.get(reverse("dashboard:destinations", args=["acme"])).content.decode()


def test_the_api_hides_a_destination_being_deleted(client, organization, destinations, published):
    doomed, kept, _ = destinations
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    path = f"/api/v1/destinations/{doomed.pk}"
    assert api_delete(client, key, path).status_code == 202
    listed = api_get(client, key, "/api/v1/destinations").json()
    assert [item["id"] for item in listed["results"]] == [kept.pk]
    assert api_get(client, key, path).status_code == 404
    assert api_patch(client, key, path, {"name": "back"}).status_code == 404
    assert api_post(client, key, f"{path}/rotate_secret", {}).status_code == 404
    assert api_post(client, key, f"{path}/pause", {}).status_code == 404
    assert api_post(client, key, f"{path}/send_waiting_now", {}).status_code == 404
    assert api_delete(client, key, path).status_code == 404  # asked already: as good as gone
    assert AuditLog.objects.filter(action=destination_deletion.DELETION_REQUESTED_ACTION).count() == 1


def test_the_admin_deletes_a_destination_in_the_background_too(client, destinations, published):
    from django.contrib.auth import get_user_model

    doomed, _, _ = destinations
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    url = reverse("admin:webhooks_destination_delete", args=[doomed.pk])
    response = client.post(url, {"post": "yes"}, follow=True)
    assert "is under way" in response.content.decode()
    doomed.refresh_from_db()
    assert doomed.being_deleted and rows_of(doomed.pk)["deliveries"] == 23
    assert AuditLog.objects.filter(action=destination_deletion.DELETION_REQUESTED_ACTION).count() == 1
    listing = client.get(reverse("admin:webhooks_destination_changelist")).content.decode()
    assert "being deleted" in listing
    filtered = client.get(reverse("admin:webhooks_destination_changelist") + "?state=being_deleted")
    assert list(filtered.context["cl"].result_list) == [doomed]
    change = reverse("admin:webhooks_destination_change", args=[doomed.pk])
    assert "Being deleted" in client.get(change).content.decode()
    assert client.post(change, {"name": "back", "is_active": "on"}).status_code == 403
    assert not Destination.objects.get(pk=doomed.pk).is_active


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


def test_a_waiting_delivery_of_it_says_its_destination_is_being_deleted(client, organization, destinations, published):
    # It read "Its destination is inactive: it is sent nothing, and is soon marked dead (retry it once
    # the destination is active again)": it is not marked dead (its deletion takes it) and the
    # destination is never active again.
    doomed, _, _ = destinations
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    delivery = Delivery.objects.filter(destination=doomed).first()
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.PENDING, next_attempt_at=timezone.now())
    destination_request_deletion(destination=doomed)

    answer = api_get(client, key, f"/api/v1/deliveries/{delivery.pk}")
    assert answer.status_code == 200, answer.content
    assert answer.json()["waiting_for"] == "destination_being_deleted"
    listed = api_get(client, key, "/api/v1/deliveries?status=pending")
    assert [row["waiting_for"] for row in listed.json()["results"]] == ["destination_being_deleted"]
    story = call_show_event(str(delivery.event_id))
    assert "waiting: Its destination is being deleted" in story and "soon marked dead" not in story


def call_show_event(event_id: str) -> str:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("show_event", event_id, stdout=out)
    return out.getvalue()
