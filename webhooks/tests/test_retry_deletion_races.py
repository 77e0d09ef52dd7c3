"""Retrying a delivery by hand while its source's, destination's or organization's deletion is asked for: the
retry's check that none of them is being deleted and its update are one with respect to the request.
Either the retry comes first (then the deletion takes the delivery as any other) or it is refused;
never a "queued" answer for a delivery that waits unsent until the deletion removes it."""

import pytest

from webhooks import tasks
from webhooks.models import BulkRetry, Delivery
from webhooks.services import delivery as delivery_service
from webhooks.services import destination_deletion, operations, organization_deletion, source_deletion
from webhooks.services.delivery import DeliveryRetryError, delivery_retry

from .api_helpers import make_event
from .factories import make_destination, make_source
from .lock_waits import waits_for_a_lock
from .test_destination_delete_races import Paused

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "http://127.0.0.1:9/hooks"


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)
    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: None)
    monkeypatch.setattr(tasks.delete_destination, "apply_async", lambda *a, **k: None)


@pytest.fixture
def dead(organization):
    source = make_source(organization, name="doomed")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = make_event(source)
    return Delivery.objects.create(
        organization=organization,
        event=event,
        destination=destination,
        status=Delivery.Status.DEAD,
        attempt_count=1,
        last_error="HTTP 500: no retries left",
    )


REQUESTS = {
    "destination": (
        destination_deletion,
        lambda delivery: destination_deletion.destination_request_deletion(destination=delivery.destination),
    ),
    "source": (source_deletion, lambda delivery: source_deletion.source_request_deletion(source=delivery.event.source)),
    "organization": (
        organization_deletion,
        lambda delivery: organization_deletion.organization_request_deletion(organization=delivery.organization),
    ),
}
REFUSALS = {
    "destination": "its destination is being deleted: nothing more is sent to it",
    "source": "its event's source is being deleted: its events are not sent again",
    "organization": "its organization is being deleted: nothing more is sent",
}


@pytest.mark.parametrize("owner", ["source", "organization", "destination"])
def test_a_retry_during_a_deletions_request_waits_for_it_and_is_refused(dead, owner, monkeypatch):
    module, ask = REQUESTS[owner]
    request = Paused(lambda: ask(dead))
    real_audit = module.audit_record

    def marked_then_pause(**kwargs):
        request.pause()  # marked as being deleted, not committed yet
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    retry = Paused(lambda: delivery_retry(delivery=dead))
    retry.thread.start()
    waited = waits_for_a_lock(retry.thread)
    request.released.set()
    request.thread.join(10)
    retry.thread.join(10)
    assert request.errors == []
    assert [(type(error), str(error)) for error in retry.errors] == [(DeliveryRetryError, REFUSALS[owner])]
    assert waited
    assert Delivery.objects.get(pk=dead.pk).status == Delivery.Status.DEAD


@pytest.mark.parametrize("owner", ["source", "organization", "destination"])
def test_a_deletion_asked_for_during_a_retry_waits_for_it(dead, owner, monkeypatch):
    _, ask = REQUESTS[owner]
    retry = Paused(lambda: delivery_retry(delivery=dead))
    real_audit = delivery_service.audit_record

    def retried_then_pause(**kwargs):
        retry.pause()  # checked and made pending, not committed yet
        return real_audit(**kwargs)

    monkeypatch.setattr(delivery_service, "audit_record", retried_then_pause)
    retry.thread.start()
    assert retry.reached.wait(10)
    request = Paused(lambda: ask(dead))
    request.thread.start()
    waited = waits_for_a_lock(request.thread)
    retry.released.set()
    retry.thread.join(10)
    request.thread.join(10)
    assert retry.errors == request.errors == []
    assert waited, "the deletion's request did not wait for the retry under way"
    assert Delivery.objects.get(pk=dead.pk).status == Delivery.Status.PENDING


def test_a_delivery_of_a_source_being_deleted_is_not_retried(dead):
    source_deletion.source_request_deletion(source=dead.event.source)
    with pytest.raises(DeliveryRetryError, match="source is being deleted"):
        delivery_retry(delivery=dead)
    assert Delivery.objects.get(pk=dead.pk).status == Delivery.Status.DEAD


def test_a_bulk_retry_during_an_organizations_deletion_request_waits_for_it_and_is_refused(dead, monkeypatch):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    module, ask = REQUESTS["organization"]
    request = Paused(lambda: ask(dead))
    real_audit = module.audit_record

    def marked_then_pause(**kwargs):
        request.pause()
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    bulk = Paused(lambda: operations.bulk_retry_request(organization=dead.organization, filters={}))
    bulk.thread.start()
    waited = waits_for_a_lock(bulk.thread)
    request.released.set()
    request.thread.join(10)
    bulk.thread.join(10)
    assert request.errors == []
    assert [str(error) for error in bulk.errors] == ["the organization is being deleted: nothing more is sent"]
    assert waited
    assert not BulkRetry.objects.exists()


def test_an_organizations_deletion_asked_for_during_a_bulk_retry_request_waits_for_its_job(dead, monkeypatch):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    real_start = operations.bulk_retry_start

    def checked_then_pause(**kwargs):
        bulk.pause()  # the organization checked, its job not created yet
        return real_start(**kwargs)

    monkeypatch.setattr(operations, "bulk_retry_start", checked_then_pause)
    bulk = Paused(lambda: operations.bulk_retry_request(organization=dead.organization, filters={}))
    bulk.thread.start()
    assert bulk.reached.wait(10)
    _, ask = REQUESTS["organization"]
    request = Paused(lambda: ask(dead))
    request.thread.start()
    waited = waits_for_a_lock(request.thread)
    bulk.released.set()
    bulk.thread.join(10)
    request.thread.join(10)
    assert bulk.errors == request.errors == []
    assert waited, "the deletion's request did not wait for the bulk retry's request under way"
    assert BulkRetry.objects.count() == 1


def test_a_bulk_retry_of_a_source_during_its_deletions_request_waits_for_it_and_is_refused(dead, monkeypatch):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    module, ask = REQUESTS["source"]
    request = Paused(lambda: ask(dead))
    real_audit = module.audit_record

    def marked_then_pause(**kwargs):
        request.pause()
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    source_id = dead.event.source_id
    bulk = Paused(lambda: operations.bulk_retry_request(organization=dead.organization, filters={"source": source_id}))
    bulk.thread.start()
    waited = waits_for_a_lock(bulk.thread)
    request.released.set()
    request.thread.join(10)
    bulk.thread.join(10)
    assert request.errors == []
    assert [str(error) for error in bulk.errors] == ["the source is being deleted: its events are not sent again"]
    assert waited
    assert not BulkRetry.objects.exists()


@pytest.fixture
def dead_of_two_sources(organization):
    """A destination with a dead delivery of a source about to be deleted and one of a source that stays."""
    doomed = make_source(organization, name="doomed")
    kept = make_source(organization, name="kept")
    destination, _ = make_destination(organization, RECEIVER, sources=[doomed, kept])

    def dead_of(source):
        return Delivery.objects.create(
            organization=organization,
            event=make_event(source),
            destination=destination,
            status=Delivery.Status.DEAD,
            attempt_count=1,
            last_error="HTTP 500: no retries left",
        )

    return dead_of(doomed), dead_of(kept)


def test_a_bulk_retry_of_every_source_leaves_out_the_deliveries_of_sources_being_deleted(
    dead_of_two_sources, monkeypatch
):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    doomed, kept = dead_of_two_sources
    source_deletion.source_request_deletion(source=doomed.event.source)

    job = operations.bulk_retry_request(organization=doomed.organization, filters={})
    assert (job.total, job.left_out, job.to_retry) == (2, 1, 1)  # told when asked for
    job = operations.bulk_retry_run(job.pk)

    assert (job.total, job.retried, job.left_out) == (2, 1, 1)
    assert Delivery.objects.get(pk=doomed.pk).status == Delivery.Status.DEAD
    assert Delivery.objects.get(pk=kept.pk).status == Delivery.Status.PENDING


def test_a_bulk_retry_of_another_organizations_source_is_refused_without_locking_it(dead, other_organization):
    # The API checks the source first; the service must not lean on it (nor hold another tenant's row).
    other = make_source(other_organization, name="theirs")
    with pytest.raises(operations.OperationError, match="the source has been deleted"):
        operations.bulk_retry_request(organization=dead.organization, filters={"source": other.pk})
    assert not BulkRetry.objects.exists()


def test_a_bulk_retry_that_would_retry_only_deliveries_of_sources_being_deleted_has_nothing_to_retry(dead, monkeypatch):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    source_deletion.source_request_deletion(source=dead.event.source)
    with pytest.raises(operations.NothingToRetry, match="the 1 that match are left out, their source is being deleted"):
        operations.bulk_retry_request(organization=dead.organization, filters={})
    assert not BulkRetry.objects.exists()


@pytest.mark.parametrize("owner", ["source", "destination", "organization"])
def test_a_bulk_retry_batch_during_a_deletions_request_waits_for_it_and_leaves_the_deliveries_out(
    dead_of_two_sources, owner, monkeypatch
):
    # The job was asked for, and its run read its page, before the deletion was asked for: its batch
    # must see the deletion committed meanwhile, or wait for one under way, and not send them again.
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    doomed, kept = dead_of_two_sources
    job = operations.bulk_retry_request(
        organization=doomed.organization, filters={"destination": doomed.destination_id}
    )
    module, ask = REQUESTS[owner]
    request = Paused(lambda: ask(doomed))
    real_audit = module.audit_record

    def marked_then_pause(**kwargs):
        request.pause()  # marked as being deleted, not committed yet
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", marked_then_pause)
    request.thread.start()
    assert request.reached.wait(10)
    run = Paused(lambda: operations.bulk_retry_run(job.pk))
    run.thread.start()
    waited = waits_for_a_lock(run.thread)
    request.released.set()
    request.thread.join(10)
    run.thread.join(10)
    assert request.errors == run.errors == []
    assert waited, "the bulk retry's batch did not wait for the deletion's request under way"
    job.refresh_from_db()
    assert Delivery.objects.get(pk=doomed.pk).status == Delivery.Status.DEAD
    if owner == "source":
        assert Delivery.objects.get(pk=kept.pk).status == Delivery.Status.PENDING
        assert (job.status, job.total, job.retried, job.left_out) == ("done", 2, 1, 1)
    else:  # both deliveries are to the destination, or of the organization, being deleted
        assert Delivery.objects.get(pk=kept.pk).status == Delivery.Status.DEAD
        assert (job.status, job.total, job.retried, job.left_out) == ("done", 2, 0, 2)


def test_a_sources_deletion_asked_for_during_a_bulk_retry_batch_waits_for_it(dead_of_two_sources, monkeypatch):
    # Then the deletion finds the deliveries retried as any retried before it was asked for.
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    doomed, kept = dead_of_two_sources
    job = operations.bulk_retry_request(organization=doomed.organization, filters={})
    real_outcome = operations.revived_last_outcome

    def locked_then_pause():
        run.pause()  # the batch's owners locked, its deliveries not updated yet
        return real_outcome()

    monkeypatch.setattr(operations, "revived_last_outcome", locked_then_pause)
    run = Paused(lambda: operations.bulk_retry_run(job.pk))
    run.thread.start()
    assert run.reached.wait(10)
    _, ask = REQUESTS["source"]
    request = Paused(lambda: ask(doomed))
    request.thread.start()
    waited = waits_for_a_lock(request.thread)
    run.released.set()
    run.thread.join(10)
    request.thread.join(10)
    assert run.errors == request.errors == []
    assert waited, "the deletion's request did not wait for the bulk retry's batch under way"
    assert Delivery.objects.get(pk=doomed.pk).status == Delivery.Status.PENDING
    assert Delivery.objects.get(pk=kept.pk).status == Delivery.Status.PENDING
