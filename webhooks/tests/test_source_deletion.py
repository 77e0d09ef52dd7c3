"""Deleting a source: one short request, then its rows in batches in the background (source_deletion)."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from organizations.services import audit_verify_chain
from webhooks import tasks
from webhooks.api import views as api_views
from webhooks.forms import DestinationForm
from webhooks.models import (
    Delivery,
    DeliveryAttempt,
    Destination,
    PurgedEventKey,
    SignatureNonce,
    Source,
    Subscription,
    WebhookEvent,
)
from webhooks.services import alerts, batched_deletion, processing, source_deletion
from webhooks.services import delivery as delivery_service
from webhooks.services.organization_deletion import organization_deletion_run, organization_request_deletion
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion
from webhooks.services.sources import SourceBeingDeleted, source_rotate_secret, source_set_active, source_update

from .api_helpers import api_delete, api_get, api_patch, api_post, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe
from .test_organization_deletion import add_events

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
EVENTS = batched_deletion.EVENTS


@pytest.fixture
def published(monkeypatch):
    """Runs published for a worker, noted instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: sent.append(a))
    return sent


def page_text(response) -> str:
    return response.content.decode()


def fill(source, destination, count: int, *, prefix: str) -> None:
    """``count`` events of ``source``, each with a delivery to ``destination`` and an attempt, and a
    replay-protection record and a purged event's key."""
    add_events(source, destination, count, prefix=prefix)
    SignatureNonce.objects.create(source=source, nonce_digest=f"{prefix}-n", body_digest="b")
    PurgedEventKey.objects.create(
        source=source,
        event_id_digest=f"{prefix}-k",
        original_id=uuid.uuid4(),
        received_at=timezone.now(),
        forget_after=timezone.now(),
    )


def rows_of(source_id: int) -> dict[str, int]:
    return {
        "events": WebhookEvent.objects.filter(source_id=source_id).count(),
        "deliveries": Delivery.objects.filter(event__source_id=source_id).count(),
        "attempts": DeliveryAttempt.objects.filter(delivery__event__source_id=source_id).count(),
        "nonces": SignatureNonce.objects.filter(source_id=source_id).count(),
        "purged keys": PurgedEventKey.objects.filter(source_id=source_id).count(),
        "links": Subscription.objects.filter(source_id=source_id).count(),
        "source": Source.objects.filter(pk=source_id).count(),
    }


@pytest.fixture
def sources(organization, other_organization):
    """Acme's source to delete (23 events) and one to keep (7), both sending to one destination;
    Globex's source (5) with its own destination."""
    doomed = make_source(organization, name="doomed")
    kept = make_source(organization, name="kept")
    destination, _ = make_destination(organization, RECEIVER, sources=[doomed, kept])
    fill(doomed, destination, 23, prefix="doomed")
    fill(kept, destination, 7, prefix="kept")
    theirs = make_source(other_organization, name="theirs")
    their_destination, _ = make_destination(other_organization, RECEIVER, sources=[theirs])
    fill(theirs, their_destination, 5, prefix="theirs")
    return doomed, kept, theirs


# --- The request -----------------------------------------------------------------------------


def _delete_by_api(client, key, source) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        response = api_delete(client, key, f"/api/v1/sources/{source.pk}")
    assert response.status_code == 202, response.content
    return len(queries), response


def test_the_request_only_marks_the_source_in_queries_that_do_not_grow_with_its_events(
    client, organization, published, django_capture_on_commit_callbacks
):
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    destination, _ = make_destination(organization, RECEIVER)
    first, small, big = (make_source(organization, name=name) for name in ("first", "small", "big"))
    add_events(small, destination, 5, prefix="small")
    add_events(big, destination, 500, prefix="big")

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
    assert rows_of(big.pk)["events"] == 500  # nothing deleted yet: that is the task's
    entry = AuditLog.objects.get(action=source_deletion.DELETION_REQUESTED_ACTION, target_id=str(big.pk))
    assert entry.changes == {"provider": "stripe", "name": "big", "was_active": True}
    assert entry.actor_type == AuditLog.ActorType.API_KEY


def test_ingest_answers_404_right_after_the_request(client, organization, published):
    source = make_source(organization)
    body = json.dumps({"id": "evt_before", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200  # and now in the source cache
    source_request_deletion(source=source)
    body = json.dumps({"id": "evt_after", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 404


def test_asking_twice_writes_once_and_publishes_again(organization, published, django_capture_on_commit_callbacks):
    source = make_source(organization)
    with django_capture_on_commit_callbacks(execute=True):
        assert source_request_deletion(source=source) is True
    stale = Source.objects.get(pk=source.pk)
    from webhooks.services.scheduling import clear_flag

    clear_flag(f"source-deletion:{source.pk}:published")  # as if that run's message was lost
    with django_capture_on_commit_callbacks(execute=True):
        assert source_request_deletion(source=stale) is False
    assert AuditLog.objects.filter(action=source_deletion.DELETION_REQUESTED_ACTION).count() == 1
    assert len(published) == 2


def test_a_source_being_deleted_cannot_be_changed_resumed_or_linked(client, organization, owner, published):
    source = make_source(organization)
    loaded_before = Source.objects.get(pk=source.pk)  # as a form or PATCH read before the request
    source_request_deletion(source=source)
    for change in (
        lambda: source_set_active(source=loaded_before, active=True),
        lambda: source_update(source=loaded_before, name="renamed", options={}),
        lambda: source_rotate_secret(source=loaded_before, new_secret="whsec_other_secret_value"),
    ):
        with pytest.raises(SourceBeingDeleted):
            change()
    source.refresh_from_db()
    assert not source.is_active and source.name == "stripe source"
    form = DestinationForm(organization=organization)
    assert source.pk not in {choice.pk for choice in form.fields["sources"].queryset}


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


# --- The run ---------------------------------------------------------------------------------


def test_the_run_deletes_everything_of_the_source_and_nothing_of_another(sources, organization, published):
    doomed, kept, theirs = sources
    kept_before, theirs_before = rows_of(kept.pk), rows_of(theirs.pk)
    source_request_deletion(source=doomed)

    run = source_deletion_run(source_id=doomed.pk, batch_size=5)
    assert run.finished
    assert set(rows_of(doomed.pk).values()) == {0}
    assert rows_of(kept.pk) == kept_before and rows_of(theirs.pk) == theirs_before
    assert Destination.objects.count() == 2  # destinations stay; only the links went
    done = AuditLog.objects.get(action=source_deletion.DELETED_ACTION)
    assert done.organization_id == organization.pk and done.target_id == str(doomed.pk)
    assert done.changes["deleted"] == {
        EVENTS: 23,
        "deliveries": 23,
        "delivery attempts": 23,
        "replay-protection records": 1,
        "purged events' keys": 1,
        "source–destination links": 1,
    }
    assert done.changes["name"] == "doomed" and done.changes["requested_by"] == "system"
    assert audit_verify_chain().ok
    # Again (a duplicate message): nothing more to do, nothing written.
    assert source_deletion_run(source_id=doomed.pk).finished
    assert AuditLog.objects.filter(action=source_deletion.DELETED_ACTION).count() == 1


def test_a_run_that_died_in_a_batch_is_resumed_by_the_sweeper_and_counts_once(
    sources, published, monkeypatch, django_capture_on_commit_callbacks
):
    doomed, kept, _ = sources
    with django_capture_on_commit_callbacks(execute=True):
        source_request_deletion(source=doomed)
    real_check = batched_deletion.check_foreign_keys
    batches = []

    def killed_in_the_third_batch():
        batches.append(1)
        if len(batches) == 3:
            raise RuntimeError("worker killed")
        real_check()

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", killed_in_the_third_batch)
    with pytest.raises(RuntimeError):
        source_deletion_run(source_id=doomed.pk, batch_size=5)
    assert rows_of(doomed.pk)["events"] == 13  # two whole batches done, the third rolled back
    assert Source.objects.get(pk=doomed.pk).deletion_progress[EVENTS] == 10
    monkeypatch.setattr(batched_deletion, "check_foreign_keys", real_check)

    assert processing.sweep()["source_deletions"] == 0  # its message may still be on its way
    from webhooks.services.scheduling import clear_flag

    clear_flag(f"source-deletion:{doomed.pk}:published")  # PUBLISHED_TTL_SECONDS later
    assert processing.sweep()["source_deletions"] == 1 and len(published) == 2
    assert tasks.delete_source(doomed.pk) is True
    assert rows_of(doomed.pk)["source"] == 0 and rows_of(kept.pk)["events"] == 7
    assert AuditLog.objects.get(action=source_deletion.DELETED_ACTION).changes["deleted"][EVENTS] == 23
    assert processing.sweep()["source_deletions"] == 0  # nothing left to resume


def test_a_run_stops_at_its_time_limit_and_publishes_the_next(sources, published, monkeypatch):
    doomed, _, _ = sources
    source_request_deletion(source=doomed)
    published.clear()
    monkeypatch.setattr(batched_deletion, "RUN_SECONDS", 0)  # one batch, then the limit
    monkeypatch.setattr(source_deletion, "BATCH_SIZE", 5)
    assert tasks.delete_source(doomed.pk) is False
    assert rows_of(doomed.pk)["events"] == 18 and len(published) == 1


def test_one_run_at_a_time_per_source(sources, published):
    import psycopg

    doomed, _, _ = sources
    source_request_deletion(source=doomed)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params) as other_worker:  # a run in another worker process, holding the lock
        other_worker.execute("SELECT pg_advisory_lock(%s)", [source_deletion._DELETIONS.lock_prefix + doomed.pk])
        assert source_deletion_run(source_id=doomed.pk).busy
        assert rows_of(doomed.pk)["events"] == 23


def test_a_link_saved_meanwhile_is_deleted_by_the_next_run(sources, organization, published):
    doomed, _, _ = sources
    source_request_deletion(source=doomed)
    run = source_deletion_run(source_id=doomed.pk, batch_size=5, max_seconds=0)
    assert not run.finished
    late, _ = make_destination(organization, "http://127.0.0.1:9/late")
    Subscription.objects.create(organization=organization, source=doomed, destination=late)  # a stale form
    assert source_deletion_run(source_id=doomed.pk, batch_size=5).finished
    assert rows_of(doomed.pk)["source"] == 0 and Destination.objects.filter(pk=late.pk).exists()


def test_an_organization_with_a_source_being_deleted_is_still_deleted(sources, organization, published):
    doomed, _, _ = sources
    source_request_deletion(source=doomed)
    source_deletion_run(source_id=doomed.pk, batch_size=5, max_seconds=0)  # one batch, then stopped
    organization_request_deletion(organization=organization)
    assert organization_deletion_run(organization_id=organization.pk, batch_size=5).finished
    assert not Source.objects.filter(organization=organization).exists()
    assert tasks.delete_source(doomed.pk) is True  # its next run finds it gone
    assert not AuditLog.objects.filter(action=source_deletion.DELETED_ACTION).exists()  # the organization's says it


# --- Dashboard and API -----------------------------------------------------------------------


def test_the_dashboard_answers_at_once_and_lists_the_source_as_being_deleted(client, owner, sources, published):
    doomed, kept, _ = sources
    client.force_login(owner)
    response = client.post(reverse("dashboard:source_delete", args=["acme", doomed.pk]), follow=True)
    assert response.redirect_chain[-1] == (reverse("dashboard:sources", args=["acme"]), 302)
    text = page_text(response)
    assert "Source “doomed” is being deleted: its URL answers 404 within 5 seconds" in text
    assert "Being deleted" in text
    page = response.content.decode()
    assert reverse("dashboard:source_detail", args=["acme", doomed.pk]) not in page
    assert reverse("dashboard:source_detail", args=["acme", kept.pk]) in page
    for name in ("source_detail", "source_edit", "source_delete", "source_set_active"):
        assert client.get(reverse(f"dashboard:{name}", args=["acme", doomed.pk])).status_code == 404, name
    assert client.post(reverse("dashboard:source_delete", args=["acme", doomed.pk])).status_code == 404
    assert (
        client.post(reverse("dashboard:source_set_active", args=["acme", doomed.pk]), {"active": "1"}).status_code
        == 404
    )

    tasks.delete_source(doomed.pk)
    assert "doomed" not in page_text(client.get(reverse("dashboard:sources", args=["acme"])))


def test_the_api_hides_a_source_being_deleted(client, organization, sources, published):
    doomed, kept, _ = sources
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    path = f"/api/v1/sources/{doomed.pk}"
    assert api_delete(client, key, path).status_code == 202
    listed = api_get(client, key, "/api/v1/sources").json()
    assert [item["id"] for item in listed["results"]] == [kept.pk]
    assert api_get(client, key, path).status_code == 404
    assert api_patch(client, key, path, {"active": True}).status_code == 404
    assert api_post(client, key, f"{path}/rotate_secret", {"secret": "whsec_new_one_here"}).status_code == 404
    assert api_delete(client, key, path).status_code == 404  # asked already: as good as gone
    created = api_post(
        client, key, "/api/v1/destinations", {"name": "late", "url": RECEIVER + "/late", "sources": [doomed.pk]}
    )
    assert created.status_code == 400, created.content
    assert AuditLog.objects.filter(action=source_deletion.DELETION_REQUESTED_ACTION).count() == 1


def test_an_event_of_a_source_being_deleted_is_not_replayed(client, organization, sources, published):
    # Its delivery would be dead-lettered unsent and deleted with the event: a 202 would say otherwise.
    doomed, _, _ = sources
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    event = WebhookEvent.objects.filter(source=doomed).first()
    destination = Destination.objects.get(organization=organization)
    assert api_delete(client, key, f"/api/v1/sources/{doomed.pk}").status_code == 202
    before = Delivery.objects.count()
    response = api_post(client, key, f"/api/v1/events/{event.pk}/replay", {"destination": destination.pk})
    assert response.status_code == 409, response.content
    assert response.json()["detail"] == "the event's source is being deleted: its events are not sent again"
    assert Delivery.objects.count() == before


def test_replaying_an_event_its_sources_deletion_removed_meanwhile_answers_404(
    client, organization, sources, published, monkeypatch
):
    # Seen with a script: DELETE a source, then replay its events at once. The view found the event,
    # the worker's batch deleted it before the delivery was made: an IntegrityError, a 500.
    doomed, _, _ = sources
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    event = WebhookEvent.objects.filter(source=doomed).first()
    destination = Destination.objects.get(organization=organization)
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


def test_the_admin_deletes_a_source_in_the_background_too(client, sources, published):
    from django.contrib.auth import get_user_model

    doomed, _, _ = sources
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    url = reverse("admin:webhooks_source_delete", args=[doomed.pk])
    with CaptureQueriesContext(connection) as queries:
        confirmation = client.get(url)
    assert confirmation.status_code == 200 and "deleted in the background" in confirmation.content.decode()
    assert len(queries) < 30 and "doomed_1" not in confirmation.content.decode()  # no event is listed
    response = client.post(url, {"post": "yes"}, follow=True)
    assert "is under way" in response.content.decode()
    doomed.refresh_from_db()
    assert doomed.being_deleted and rows_of(doomed.pk)["events"] == 23
    listing = client.get(reverse("admin:webhooks_source_changelist")).content.decode()
    assert "being deleted" in listing
    change = reverse("admin:webhooks_source_change", args=[doomed.pk])
    assert client.post(change, {"name": "back", "is_active": "on"}).status_code == 403
    assert not Source.objects.get(pk=doomed.pk).is_active
