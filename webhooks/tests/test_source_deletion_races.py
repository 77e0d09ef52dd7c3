"""A source's deletion asked for while one of its events is replayed: the replay's check that the
source is not being deleted and its new delivery are one with respect to the request. Either the
replay comes first (its delivery made before the deletion was asked for, then taken by the deletion
as any other) or it is refused; never a "queued" answer for a delivery made after the request."""

import pytest

from organizations.models import ApiKey
from webhooks import tasks
from webhooks.models import Delivery, Source, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, organization_deletion, source_deletion
from webhooks.services.source_deletion import source_request_deletion

from .api_helpers import api_post, make_event, make_key
from .delivering import claim_now
from .factories import make_destination, make_source
from .lock_waits import waits_for_a_lock
from .test_destination_delete_races import Paused

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "http://127.0.0.1:9/hooks"
BEING_DELETED = "the event's source is being deleted: its events are not sent again"


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    for module in (delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)


@pytest.fixture
def replayable(organization):
    source = make_source(organization, name="doomed")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    return source, destination, make_event(source)


def test_a_deletion_asked_for_during_a_replay_waits_for_its_delivery_and_then_takes_it(replayable, monkeypatch):
    source, destination, event = replayable
    replay = Paused(lambda: operations.event_replay(event=event, destination=destination))
    real_lock = operations.lock_destinations_against_deletion

    def checked_then_pause(destination_ids):
        locked = real_lock(destination_ids)
        replay.pause()  # the source checked, the delivery not made yet
        return locked

    monkeypatch.setattr(operations, "lock_destinations_against_deletion", checked_then_pause)
    replay.thread.start()
    assert replay.reached.wait(10)
    request = Paused(lambda: source_request_deletion(source=source))
    request.thread.start()
    waited = waits_for_a_lock(request.thread)
    replay.released.set()
    replay.thread.join(10)
    request.thread.join(10)
    assert replay.errors == request.errors == []
    # Not waited for, the request was committed before the replay's delivery, which it never saw.
    assert waited, "the deletion's request did not wait for the replay under way"
    assert Source.objects.get(pk=source.pk).being_deleted
    # Made before the request, the delivery is the deletion's as any other: dead-lettered unsent.
    replayed = Delivery.objects.get(is_replay=True)
    assert claim_now(replayed.pk) is None
    replayed.refresh_from_db()
    assert (replayed.status, replayed.last_error) == (Delivery.Status.DEAD, delivery_service.SOURCE_BEING_DELETED_ERROR)


def test_a_replay_during_a_deletions_request_waits_for_it_and_is_refused(replayable, monkeypatch):
    source, destination, event = replayable
    request = Paused(lambda: source_request_deletion(source=source))
    real_audit = source_deletion.audit_record

    def marked_then_pause(**kwargs):
        request.pause()  # the source marked as being deleted, not committed yet
        return real_audit(**kwargs)

    monkeypatch.setattr(source_deletion, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    replay = Paused(lambda: operations.event_replay(event=event, destination=destination))
    replay.thread.start()
    waited = waits_for_a_lock(replay.thread)
    request.released.set()
    request.thread.join(10)
    replay.thread.join(10)
    assert request.errors == []
    assert [str(error) for error in replay.errors] == [BEING_DELETED]
    assert waited
    assert not Delivery.objects.exists()


def test_the_api_refuses_with_409_a_replay_that_met_the_request_under_way(
    client, organization, replayable, monkeypatch
):
    source, destination, event = replayable
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    request = Paused(lambda: source_request_deletion(source=source))
    real_audit = source_deletion.audit_record

    def marked_then_pause(**kwargs):
        request.pause()
        return real_audit(**kwargs)

    monkeypatch.setattr(source_deletion, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    answers = []
    replay = Paused(
        lambda: answers.append(
            api_post(client, key, f"/api/v1/events/{event.pk}/replay", {"destination": destination.pk})
        )
    )
    replay.thread.start()
    assert waits_for_a_lock(replay.thread)
    request.released.set()
    request.thread.join(10)
    replay.thread.join(10)
    assert request.errors == replay.errors == []
    assert answers[0].status_code == 409, answers[0].content
    assert answers[0].json()["detail"] == BEING_DELETED
    assert not Delivery.objects.exists()
    assert WebhookEvent.objects.filter(pk=event.pk).exists()


def test_a_replay_during_its_organizations_deletion_request_waits_for_it_and_is_refused(
    organization, replayable, monkeypatch
):
    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: None)
    _, destination, event = replayable
    request = Paused(lambda: organization_deletion.organization_request_deletion(organization=organization))
    real_audit = organization_deletion.audit_record

    def marked_then_pause(**kwargs):
        request.pause()
        return real_audit(**kwargs)

    monkeypatch.setattr(organization_deletion, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    replay = Paused(lambda: operations.event_replay(event=event, destination=destination))
    replay.thread.start()
    waited = waits_for_a_lock(replay.thread)
    request.released.set()
    request.thread.join(10)
    replay.thread.join(10)
    assert request.errors == []
    assert [str(error) for error in replay.errors] == ["the organization is being deleted: nothing more is sent"]
    assert waited
    assert not Delivery.objects.exists()
