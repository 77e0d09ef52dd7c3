"""Two paths that lock the same rows and the audit log's chain lock take them in one order: neither
waits for the other in a cycle, which PostgreSQL breaks by failing one of them (a 500, or a run lost)."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import update_last_login
from django.db import IntegrityError, connections
from django.db.models.query import QuerySet
from django.utils import timezone

from organizations import api_keys, team
from organizations.models import ApiKey, AuditLog, Membership, Organization
from webhooks import tasks
from webhooks.models import Delivery, Destination, Source, Subscription, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import (
    destination_deletion,
    encryption,
    lifecycle,
    operations,
    organization_deletion,
    source_deletion,
)
from webhooks.services import destinations as destination_service
from webhooks.services import sources as sources_service
from webhooks.services.destinations import destination_update
from webhooks.services.organization_deletion import organization_deletion_run, organization_request_deletion
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion

from .api_helpers import make_event
from .delivering import claim_now
from .factories import make_destination, make_source
from .test_destination_delete_races import Paused, run_alongside

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "http://127.0.0.1:9/hooks"


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    for module in (delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def published(monkeypatch):
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)


@pytest.fixture
def emptied_source(organization, published):
    """A source whose deletion has nothing left to do but its final step (the source's row)."""
    source = make_source(organization, name="doomed")
    source_request_deletion(source=source)
    return source


def _run_alongside(first: Paused, second) -> list:
    """Start ``first``, let ``second`` run once ``first`` has paused, then let ``first`` go on."""
    first.thread.start()
    assert first.reached.wait(10)
    other = Paused(second)
    other.thread.start()
    other.thread.join(0.5)  # time for it to reach the locks it waits for
    first.released.set()
    first.thread.join(15)
    other.thread.join(15)
    assert not first.thread.is_alive() and not other.thread.is_alive()
    return first.errors + other.errors


def _does_not_wait(first: Paused, second) -> list:
    """``second`` runs to its end while ``first`` holds its locks, then ``first`` goes on."""
    first.thread.start()
    assert first.reached.wait(10)
    other = Paused(second)
    other.thread.start()
    other.thread.join(10)
    assert not other.thread.is_alive(), "the second transaction waited for the first one's locks"
    first.released.set()
    first.thread.join(15)
    assert not first.thread.is_alive()
    return first.errors + other.errors


def _deadlocks(errors) -> list:
    return [exc for exc in errors if getattr(exc.__cause__, "sqlstate", None) == "40P01"]


def test_a_destination_created_for_a_source_whose_deletion_ends_meanwhile_does_not_deadlock(
    organization, emptied_source, monkeypatch
):
    # The creation has linked the source and audited the link (the audit chain's lock is held to
    # its commit); the deletion's last step locks the source's row and then wants the audit lock.
    real_check = destination_service.check_foreign_keys
    creation = Paused(lambda: make_destination(organization, RECEIVER, sources=[emptied_source]))

    def pause_then_check(**kwargs):
        creation.pause()
        return real_check(**kwargs)

    monkeypatch.setattr(destination_service, "check_foreign_keys", pause_then_check)
    runs = []
    errors = _run_alongside(creation, lambda: runs.append(source_deletion_run(source_id=emptied_source.pk)))

    assert errors == [], _deadlocks(errors) or errors
    # The link was committed first: the run saw it and left the source to its next run, which takes the link.
    assert [run.finished for run in runs] == [False]
    assert Subscription.objects.filter(source=emptied_source).exists()
    assert source_deletion_run(source_id=emptied_source.pk).finished
    assert not Source.objects.filter(pk=emptied_source.pk).exists()
    assert AuditLog.objects.filter(action="source.deleted").count() == 1
    connections.close_all()


def test_a_destination_created_while_the_source_is_deleted_is_refused_without_a_deadlock(
    organization, emptied_source, monkeypatch
):
    # The creation holds its organization's row (its count of destinations) and is about to lock the
    # sources it links; the deletion's last step locks the source's row, and only that row.
    real_lock = destination_service.lock_sources_against_deletion
    creation = Paused(lambda: make_destination(organization, RECEIVER, sources=[emptied_source]))

    def pause_then_lock(source_ids):
        source_ids = list(source_ids)
        creation.pause()
        return real_lock(source_ids)

    monkeypatch.setattr(destination_service, "lock_sources_against_deletion", pause_then_lock)
    runs = []
    errors = _does_not_wait(creation, lambda: runs.append(source_deletion_run(source_id=emptied_source.pk)))

    assert not _deadlocks(errors), errors
    # The deletion went first: the creation finds the source gone (the API's 409), and nothing of it stays.
    assert [type(exc) for exc in errors] == [IntegrityError]
    assert [run.finished for run in runs] == [True]
    assert not Source.objects.filter(pk=emptied_source.pk).exists()
    assert not Destination.objects.exists() and not Subscription.objects.exists()
    connections.close_all()


def test_a_destination_linked_to_a_source_whose_deletion_ends_meanwhile_does_not_deadlock(
    organization, emptied_source, monkeypatch
):
    destination, _ = make_destination(organization, RECEIVER)
    real_create = destination_service.subscription_create
    update = Paused(
        lambda: destination_update(
            destination=destination,
            name=destination.name,
            url=destination.url,
            sources=[emptied_source],
            event_types=[],
            timeout_seconds=destination.timeout_seconds,
        )
    )

    def create_then_pause(**kwargs):
        subscription = real_create(**kwargs)  # audited: the audit lock is held to the commit
        update.pause()
        return subscription

    monkeypatch.setattr(destination_service, "subscription_create", create_then_pause)
    runs = []
    errors = _run_alongside(update, lambda: runs.append(source_deletion_run(source_id=emptied_source.pk)))

    assert errors == [], _deadlocks(errors) or errors
    assert [run.finished for run in runs] == [False]
    assert source_deletion_run(source_id=emptied_source.pk).finished
    assert not Source.objects.filter(pk=emptied_source.pk).exists()
    connections.close_all()


# --- A resume and the recording of a send to the same destination ------------------------------
# The recording locks the deliveries it finishes (in flight), then the destination (its health); a
# resume locks the destination, then its pending deliveries. Never the same deliveries: one in
# flight is not pending, to the resume, until its recording has committed.


@pytest.fixture
def sent_while_paused(organization):
    """A destination paused while one delivery was in flight (claimed, sent: to be recorded, a
    failure) and another waits for its retry in an hour."""
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook")
    in_flight = Delivery.objects.create(organization=organization, event=make_event(source), destination=destination)
    claimed = claim_now(in_flight.pk)
    waiting = Delivery.objects.create(
        organization=organization,
        event=make_event(source),
        destination=destination,
        status=Delivery.Status.PENDING,
        attempt_count=1,
        next_attempt_at=timezone.now() + timedelta(hours=1),
    )
    operations.destination_pause(destination=destination)
    return destination, claimed, delivery_service.send(claimed), waiting


def _check_both_went_through(destination, claimed, waiting, resumed_at) -> None:
    destination.refresh_from_db()
    assert destination.paused_at is None and destination.consecutive_failures == 1
    claimed.refresh_from_db()
    assert claimed.status == Delivery.Status.PENDING and claimed.last_error  # its failure, recorded
    waiting.refresh_from_db()
    assert resumed_at <= waiting.next_attempt_at <= timezone.now()  # brought forward by the resume
    assert AuditLog.objects.filter(action="destination.resumed").count() == 1


def test_a_resume_while_a_recording_holds_its_deliveries_does_not_wait_for_it(sent_while_paused, monkeypatch):
    destination, claimed, result, waiting = sent_while_paused
    real_health = delivery_service._update_destination_health
    recording = Paused(lambda: delivery_service.record_results([(claimed, result)]))

    def pause_then_update_health(*args):
        recording.pause()  # its delivery updated and locked, the destination not yet
        return real_health(*args)

    monkeypatch.setattr(delivery_service, "_update_destination_health", pause_then_update_health)
    resumed_at = timezone.now()
    errors = _does_not_wait(recording, lambda: operations.destination_resume(destination=destination))

    assert errors == [], _deadlocks(errors) or errors
    _check_both_went_through(destination, claimed, waiting, resumed_at)


def test_a_recording_while_a_resume_holds_the_destination_waits_for_it(sent_while_paused, monkeypatch):
    destination, claimed, result, waiting = sent_while_paused
    real_update = QuerySet.update
    resume = Paused(lambda: operations.destination_resume(destination=destination))

    def update_then_pause(queryset, **kwargs):
        updated = real_update(queryset, **kwargs)
        if queryset.model is Destination:
            resume.pause()  # the destination locked, its pending deliveries not yet
        return updated

    monkeypatch.setattr(QuerySet, "update", update_then_pause)
    resumed_at = timezone.now()
    # The recording finishes its delivery, then waits for the destination; the resume's UPDATE of
    # the pending deliveries then passes that one by (in flight as far as it can see).
    errors = run_alongside(resume, lambda: delivery_service.record_results([(claimed, result)]))

    assert errors == [], _deadlocks(errors) or errors
    _check_both_went_through(destination, claimed, waiting, resumed_at)


def claim_all() -> list[Delivery]:
    return delivery_service.claim_due_deliveries(10)


@pytest.fixture
def two_failing(organization):
    """Two destinations, each with a delivery claimed and sent (port 9: refused), to be recorded in one batch."""
    source = make_source(organization)
    first, _ = make_destination(organization, "http://127.0.0.1:9/first")
    second, _ = make_destination(organization, "http://127.0.0.1:9/second")
    # One failure from its breaker (see below); the second none.
    Destination.objects.filter(pk=first.pk).update(consecutive_failures=1, failing_since=timezone.now())
    deliveries = [
        Delivery.objects.create(organization=organization, event=make_event(source), destination=destination)
        for destination in (first, second)
    ]
    claimed = claim_all()
    assert {delivery.pk for delivery in claimed} == {delivery.pk for delivery in deliveries}
    return first, second, [(delivery, delivery_service.send(delivery)) for delivery in claimed]


@pytest.mark.parametrize("resume", [False, True], ids=["pause", "resume"])
def test_a_recording_that_trips_one_breaker_and_a_pause_or_resume_of_the_next_destination_do_not_deadlock(
    two_failing, settings, monkeypatch, resume
):
    # The recording trips the first destination's breaker (an audit entry), then counts the second
    # one's failure; a pause or a resume of the second locks it, then writes its audit entry.
    settings.CIRCUIT_BREAKER_FAILURES, settings.CIRCUIT_BREAKER_PERIOD_SECONDS = 2, 0
    first, second, results = two_failing
    if resume:
        operations.destination_pause(destination=second)
    real_health, calls = delivery_service._update_destination_health, []
    recording = Paused(lambda: delivery_service.record_results(results))

    def pause_before_the_second(destination_id, successes, now):
        calls.append(destination_id)
        if destination_id == second.pk:
            recording.pause()  # the first destination counted (and its breaker tripped), the second not yet
        return real_health(destination_id, successes, now)

    monkeypatch.setattr(delivery_service, "_update_destination_health", pause_before_the_second)
    change = operations.destination_resume if resume else operations.destination_pause
    errors = _run_alongside(recording, lambda: change(destination=second))

    assert errors == [], _deadlocks(errors) or errors
    assert calls == [first.pk, second.pk]  # recorded in one go, not again one by one after a failure
    first.refresh_from_db()
    assert first.paused_at is not None
    assert AuditLog.objects.filter(action="destination.paused", target_id=str(first.pk)).count() == 1
    second.refresh_from_db()
    assert (second.paused_at is None, second.consecutive_failures) == (resume, 1)
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.PENDING}


# --- An audited change to an organization and the last step of its deletion ---------------------
# The deletion's last step locks the organization's row (FOR UPDATE), then takes the audit lock.
# A change that inserts a row referencing the organization takes a key-share lock on it only when
# that reference is checked, at its commit, after its audit entry took the audit lock: the other
# order. audit_record therefore takes the key share first, before the audit lock.


@pytest.fixture
def emptied_organization(organization, monkeypatch):
    """An organization being deleted, its run not started: nothing in the way of its last step but
    its own rows, which the run's batches delete first."""
    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: None)
    assert organization_request_deletion(organization=organization)
    return organization


def _make_key_pausing_after_its_audit_entry(organization, monkeypatch) -> Paused:
    # The platform's own key (no actor: the create_api_key command), which an inactive organization does not refuse.
    real_audit = api_keys.audit_record
    creation = Paused(lambda: api_keys.api_key_create(organization=organization, name="late"))

    def audit_then_pause(**kwargs):
        entry = real_audit(**kwargs)  # the audit lock is held to the commit, the key's reference checked at it
        creation.pause()
        return entry

    monkeypatch.setattr(api_keys, "audit_record", audit_then_pause)
    return creation


def test_an_api_key_made_while_its_organizations_deletion_ends_does_not_deadlock(emptied_organization, monkeypatch):
    creation = _make_key_pausing_after_its_audit_entry(emptied_organization, monkeypatch)
    runs = []
    errors = _run_alongside(
        creation, lambda: runs.append(organization_deletion_run(organization_id=emptied_organization.pk))
    )

    assert errors == [], _deadlocks(errors) or errors
    # The key was committed first: the run saw it and left the organization to its next run, which deletes the key.
    assert [run.finished for run in runs] == [False]
    assert ApiKey.objects.filter(organization=emptied_organization, name="late").exists()
    assert organization_deletion_run(organization_id=emptied_organization.pk).finished
    assert not Organization.objects.filter(pk=emptied_organization.pk).exists()
    assert AuditLog.objects.filter(action="organization.deleted").count() == 1
    connections.close_all()


def test_an_api_key_made_while_its_organizations_deletion_ends_waits_for_it_and_is_refused(
    emptied_organization, monkeypatch
):
    # The deletion's last step holds the organization's row, and is about to take the audit lock.
    real_audit = organization_deletion.audit_record
    deletion = Paused(lambda: organization_deletion_run(organization_id=emptied_organization.pk))

    def pause_then_audit(**kwargs):
        deletion.pause()
        return real_audit(**kwargs)

    monkeypatch.setattr(organization_deletion, "audit_record", pause_then_audit)
    errors = run_alongside(deletion, lambda: api_keys.api_key_create(organization=emptied_organization, name="late"))

    assert not _deadlocks(errors), errors
    # The deletion went first: the key's reference to the organization fails at its commit, and nothing of it stays.
    assert [type(exc) for exc in errors] == [IntegrityError]
    assert not Organization.objects.filter(pk=emptied_organization.pk).exists()
    assert not ApiKey.objects.exists() and not AuditLog.objects.filter(action="api_key.created").exists()
    connections.close_all()


def test_two_recordings_for_destinations_of_two_organizations_do_not_deadlock(
    organization, other_organization, monkeypatch
):
    # Each recording locks its destinations in id order, and only them: Destination's ordering joins
    # its organization, whose row a lock without OF took too, in another order than the destinations'.
    source = make_source(organization)
    other_source = make_source(other_organization)
    urls = ("http://127.0.0.1:9/a1", "http://127.0.0.1:9/b1", "http://127.0.0.1:9/b2", "http://127.0.0.1:9/a2")
    owners = (organization, other_organization, other_organization, organization)
    destinations = [make_destination(owner, url)[0] for owner, url in zip(owners, urls, strict=True)]
    for destination in destinations:
        origin = source if destination.organization_id == organization.pk else other_source
        Delivery.objects.create(
            organization=destination.organization, event=make_event(origin), destination=destination
        )
    sent = {delivery.destination_id: (delivery, delivery_service.send(delivery)) for delivery in claim_all()}
    first_two, last_two = (
        [sent[destination.pk] for destination in pair] for pair in (destinations[:2], destinations[2:])
    )
    real_health, calls = delivery_service._update_destination_health, []
    recording = Paused(lambda: delivery_service.record_results(first_two))

    def pause_before_the_second(destination_id, successes, now):
        calls.append(destination_id)
        if destination_id == destinations[1].pk:
            recording.pause()  # the first organization's destination locked, the other's not yet
        return real_health(destination_id, successes, now)

    monkeypatch.setattr(delivery_service, "_update_destination_health", pause_before_the_second)
    errors = _run_alongside(recording, lambda: delivery_service.record_results(last_two))

    assert errors == [], _deadlocks(errors) or errors
    # Each recorded in one go, not again one by one after a failure (a deadlock, which it logs and survives).
    assert sorted(calls) == [destination.pk for destination in destinations]
    assert list(Destination.objects.order_by("pk").values_list("consecutive_failures", flat=True)) == [1, 1, 1, 1]
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.PENDING}


# --- A member's own row and a change to their membership -------------------------------------------
# A role change or a removal locks the membership, and only it: the member's user row (read with
# it for the audit entry) is theirs, which a sign-in or a change of their profile updates.


@pytest.mark.parametrize("change", ["role", "removal"])
def test_a_member_signs_in_while_their_membership_changes_without_waiting_for_it(
    organization, owner, member, monkeypatch, change
):
    membership = Membership.objects.get(organization=organization, user=member)
    real_audit = team.audit_record
    if change == "role":
        changing = Paused(
            lambda: team.member_role_change(
                organization=organization, actor=owner, membership=membership, role=Membership.Role.ADMIN
            )
        )
    else:
        changing = Paused(lambda: team.member_remove(organization=organization, actor=owner, membership=membership))

    def pause_then_audit(**kwargs):
        changing.pause()  # the membership locked and changed, not yet committed
        return real_audit(**kwargs)

    monkeypatch.setattr(team, "audit_record", pause_then_audit)
    # What login() does last for every sign-in: stamp the user's row.
    errors = _does_not_wait(changing, lambda: update_last_login(None, get_user_model().objects.get(pk=member.pk)))

    assert errors == []
    member.refresh_from_db()
    assert member.last_login is not None
    memberships = Membership.objects.filter(organization=organization, user=member)
    assert list(memberships.values_list("role", flat=True)) == ([Membership.Role.ADMIN] if change == "role" else [])


# --- A change to one source or destination and its organization's row ------------------------------
# Source's and Destination's ordering joins their organization: a lock of one row read with .first()
# locked the organization's row too, unless taken OF the row itself. A destination created meanwhile
# (which locks its organization's row to count its destinations) then waited for it.


@pytest.mark.parametrize(
    "module, change",
    [
        (
            sources_service,
            lambda source, destination: sources_service.source_rotate_secret(
                source=source, new_secret="whsec_rotated_secret_from_stripe"
            ),
        ),
        (
            destination_service,
            lambda source, destination: destination_service.destination_rotate_secret(destination=destination),
        ),
        (
            destination_service,
            lambda source, destination: destination_service.destination_set_custom_headers(
                destination=destination, changes={"X-Tenant": "acme"}
            ),
        ),
        (source_deletion, lambda source, destination: source_request_deletion(source=source)),
    ],
    ids=["source secret rotation", "destination secret rotation", "custom headers", "source deletion request"],
)
def test_a_destination_created_while_another_row_of_its_organization_changes_does_not_wait(
    organization, published, monkeypatch, module, change
):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER)
    real_audit = module.audit_record
    changing = Paused(lambda: change(source, destination))

    def pause_then_audit(**kwargs):
        changing.pause()  # its row locked and changed, not yet committed
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", pause_then_audit)
    errors = _does_not_wait(changing, lambda: make_destination(organization, "http://127.0.0.1:9/another"))

    assert errors == []
    assert Destination.objects.filter(url="http://127.0.0.1:9/another").exists()


@pytest.mark.parametrize("meanwhile", ["event received", "destination created"])
def test_a_change_while_an_organizations_secrets_are_reencrypted_does_not_wait(organization, monkeypatch, meanwhile):
    # The re-encryption locks each row FOR NO KEY UPDATE, and only that row: FOR UPDATE of the source
    # and of its organization (through Source's ordering) held up the key shares every new event's
    # references to them take at its commit, and a destination's creation (its organization's row).
    source = make_source(organization)
    real_check = encryption._under_older_key
    reencrypting = Paused(encryption.reencrypt_all_secrets)

    def pause_then_check(token, **kwargs):
        reencrypting.pause()  # the row locked, its secrets not yet written back
        return real_check(token, **kwargs)

    monkeypatch.setattr(encryption, "_under_older_key", pause_then_check)
    if meanwhile == "event received":
        errors = _does_not_wait(reencrypting, lambda: make_event(source))
    else:
        errors = _does_not_wait(reencrypting, lambda: make_destination(organization, RECEIVER))

    assert errors == []
    assert (WebhookEvent.objects.count(), Destination.objects.count()) == (
        (1, 0) if meanwhile == "event received" else (0, 1)
    )
    assert AuditLog.objects.filter(action="secrets.reencrypted").count() == 1


# --- A destination's deletion, and the give-up of a long-paused destination's held deliveries ---------
# Each locks the destination's row alone (of=("self",), or an explicit order where the query is a
# values() one): through Destination's ordering (or a select_related), its organization's row was
# locked with it, and a destination created in that organization meanwhile waited for them.


@pytest.fixture
def deletion_not_published(monkeypatch):
    monkeypatch.setattr(tasks.delete_destination, "apply_async", lambda *a, **k: None)


def _pausing_audit(module, monkeypatch, paused_ref: list) -> None:
    real_audit = module.audit_record

    def pause_then_audit(**kwargs):
        paused_ref[0].pause()  # the destination's row locked (and changed), not yet committed
        return real_audit(**kwargs)

    monkeypatch.setattr(module, "audit_record", pause_then_audit)


def test_a_destination_created_while_another_ones_deletion_is_asked_for_does_not_wait(
    organization, deletion_not_published, monkeypatch
):
    doomed, _ = make_destination(organization, RECEIVER)
    asking = [Paused(lambda: destination_deletion.destination_request_deletion(destination=doomed))]
    _pausing_audit(destination_deletion, monkeypatch, asking)

    errors = _does_not_wait(asking[0], lambda: make_destination(organization, "http://127.0.0.1:9/another"))

    assert errors == []
    assert Destination.objects.get(pk=doomed.pk).being_deleted
    assert Destination.objects.filter(url="http://127.0.0.1:9/another").exists()


def test_a_destination_created_while_another_ones_deletion_ends_does_not_wait(
    organization, deletion_not_published, monkeypatch
):
    doomed, _ = make_destination(organization, RECEIVER)
    assert destination_deletion.destination_request_deletion(destination=doomed)
    ending = [Paused(lambda: destination_deletion.destination_deletion_run(destination_id=doomed.pk))]
    _pausing_audit(destination_deletion, monkeypatch, ending)  # the last step's destination.deleted entry

    errors = _does_not_wait(ending[0], lambda: make_destination(organization, "http://127.0.0.1:9/another"))

    assert errors == []
    assert not Destination.objects.filter(pk=doomed.pk).exists()
    assert Destination.objects.filter(url="http://127.0.0.1:9/another").exists()


def test_a_destination_created_while_a_long_paused_ones_held_deliveries_are_given_up_does_not_wait(
    organization, settings, monkeypatch
):
    source = make_source(organization)
    paused, _ = make_destination(organization, RECEIVER)
    long_ago = timezone.now() - timedelta(days=settings.PAUSED_DESTINATION_HOLD_DAYS + 1)
    Destination.objects.filter(pk=paused.pk).update(paused_at=long_ago, pause_reason="circuit breaker")
    held = Delivery.objects.create(
        organization=organization,
        event=make_event(source),
        destination=paused,
        status=Delivery.Status.PENDING,
        next_attempt_at=long_ago,
    )
    giving_up = Paused(lifecycle.give_up_long_held_deliveries)
    real_update = QuerySet.update

    def pause_then_update(queryset, **kwargs):
        if queryset.model is Delivery and kwargs.get("status") == Delivery.Status.DEAD:
            giving_up.pause()  # the paused destination's row locked, its deliveries not yet marked
        return real_update(queryset, **kwargs)

    monkeypatch.setattr(QuerySet, "update", pause_then_update)
    errors = _does_not_wait(giving_up, lambda: make_destination(organization, "http://127.0.0.1:9/another"))

    assert errors == []
    held.refresh_from_db()
    assert held.status == Delivery.Status.DEAD
    assert Destination.objects.filter(url="http://127.0.0.1:9/another").exists()


def test_an_admin_actions_entries_for_two_organizations_while_the_second_ones_deletion_ends_do_not_deadlock(
    organization, other_organization, monkeypatch
):
    # An admin action over rows of two organizations writes one entry per organization in one
    # transaction: the first entry took the audit lock, and the second's key share on its
    # organization then waited for that organization's deletion, which held its row and waited for
    # the audit lock. PostgreSQL killed one: the action, done, answered a 500 with none of its entries.
    from django.contrib import admin as django_admin
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    from organizations.admin import ActionOutcomes

    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: None)
    first, second = sorted((organization, other_organization), key=lambda each: each.pk)
    assert organization_request_deletion(organization=second)
    real_audit = organization_deletion.audit_record
    deletion = Paused(lambda: organization_deletion_run(organization_id=second.pk))

    def pause_then_audit(**kwargs):
        deletion.pause()  # the organization's row locked (FOR UPDATE), the audit lock not yet taken
        return real_audit(**kwargs)

    monkeypatch.setattr(organization_deletion, "audit_record", pause_then_audit)
    request = RequestFactory().post("/admin/webhooks/destination/")
    request.user = AnonymousUser()
    destination_admin = django_admin.site._registry[Destination]
    selections = {
        first.pk: {"selected": ["1"], "selected_count": 1},
        second.pk: {"selected": ["2"], "selected_count": 1},
    }
    errors = _run_alongside(
        deletion, lambda: destination_admin._audit_action(request, "pause", selections, False, ActionOutcomes())
    )

    assert errors == [], _deadlocks(errors) or errors
    assert not Organization.objects.filter(pk=second.pk).exists()
    entries = AuditLog.objects.filter(action="admin.webhooks.destination.action.pause")
    # The deleted organization's entry stays, with no organization to belong to.
    assert sorted((entry.organization_id or 0) for entry in entries) == [0, first.pk]
