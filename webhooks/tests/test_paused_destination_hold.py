"""Deliveries held by a destination paused for longer than PAUSED_DESTINATION_HOLD_DAYS are marked
dead by the retention run (with the reason), can be retried once it is resumed, and let their events
reach retention; a destination resumed before the bound, or at the same moment, keeps them."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from django.core import mail
from django.db import connection, connections, transaction
from django.urls import reverse
from django.utils import timezone

from organizations.audit_actions import audit_action_label
from organizations.models import AuditLog
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import lifecycle, operations
from webhooks.services.alerts import alert_destination_paused
from webhooks.tests import test_admin

from .api_helpers import api_get, make_event, make_key
from .factories import make_destination, make_source

superuser = test_admin.superuser
admin = test_admin.admin

HOLD_DAYS = 30


@pytest.fixture(autouse=True)
def hold_days(settings, monkeypatch):
    settings.PAUSED_DESTINATION_HOLD_DAYS = HOLD_DAYS
    # Resume and retry publish a dispatcher run: no worker here to take it.
    for module in (operations, delivery_service):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)


def paused_since(destination, days: float) -> None:
    Destination.objects.filter(pk=destination.pk).update(
        paused_at=timezone.now() - timedelta(days=days), pause_reason="paused automatically after 20 failures"
    )
    destination.refresh_from_db()


def held_delivery(destination, *, due_days_ago: float) -> Delivery:
    """A pending delivery of ``destination`` due that long ago (received then, or a retry due then)."""
    received_at = timezone.now() - timedelta(days=due_days_ago)
    event = make_event(make_source(destination.organization), received_at=received_at)
    return Delivery.objects.create(
        organization=destination.organization,
        event=event,
        destination=destination,
        status=Delivery.Status.PENDING,
        attempt_count=3,
        next_attempt_at=received_at,
        created_at=received_at,
    )


def state(delivery) -> tuple:
    delivery.refresh_from_db()
    return delivery.status, delivery.last_error


def test_the_retention_run_marks_dead_what_a_long_paused_destination_held_and_the_event_is_then_kept_its_retention(
    organization,
):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    old = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    # Arrived during the pause: held as long as the others, from its own arrival.
    recent = held_delivery(destination, due_days_ago=2)

    lifecycle.purge_expired_events()

    reason = f"the destination was paused for more than {HOLD_DAYS} days: not sent (retry once it is resumed)"
    assert state(old) == (Delivery.Status.DEAD, reason)
    assert old.completed_at is not None and old.next_attempt_at is None
    assert state(recent) == (Delivery.Status.PENDING, "")
    # Retention (30 days) counts from the death: the event received 40 days ago is still there.
    assert WebhookEvent.objects.filter(pk=old.event_id).exists()
    entry = AuditLog.objects.get(action=lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION)
    assert entry.organization_id == organization.pk
    assert entry.changes["deliveries"] == 1
    assert entry.changes["hold_days"] == HOLD_DAYS
    assert entry.changes["reason"] == reason
    # In the audit log's words, the destination (the target) after them.
    assert audit_action_label(entry.action) == "marked dead the deliveries held too long of the paused destination"

    # Past the retention after its death, the event goes like any other finished one.
    lifecycle.purge_expired_events(now=timezone.now() + timedelta(days=organization.retention_days + 1))
    assert not WebhookEvent.objects.filter(pk=old.event_id).exists()


def test_a_destination_paused_for_less_than_the_bound_or_not_paused_keeps_its_deliveries(organization):
    briefly_paused = make_destination(organization, "http://127.0.0.1:9/paused")[0]
    paused_since(briefly_paused, HOLD_DAYS - 1)
    sending = make_destination(organization, "http://127.0.0.1:9/sending")[0]
    waiting_behind_pause = held_delivery(briefly_paused, due_days_ago=HOLD_DAYS + 10)
    # A retry due long ago on a destination that sends (a dispatcher backlog): not this rule's business.
    overdue = held_delivery(sending, due_days_ago=HOLD_DAYS + 10)

    assert lifecycle.give_up_long_held_deliveries() == 0

    assert state(waiting_behind_pause) == (Delivery.Status.PENDING, "")
    assert state(overdue) == (Delivery.Status.PENDING, "")
    assert not AuditLog.objects.filter(action=lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION).exists()


def test_a_destination_resumed_before_the_bound_keeps_its_deliveries(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    delivery = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)

    operations.destination_resume(destination=destination)
    assert lifecycle.give_up_long_held_deliveries() == 0
    assert state(delivery) == (Delivery.Status.PENDING, "")

    # Paused again at once: the bound counts from this pause, and from the due time resume gave them.
    operations.destination_pause(destination=destination)
    assert lifecycle.give_up_long_held_deliveries() == 0
    assert state(delivery) == (Delivery.Status.PENDING, "")


def test_a_given_up_delivery_is_retried_once_the_destination_is_resumed(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    deliveries = [held_delivery(destination, due_days_ago=HOLD_DAYS + 1) for _ in range(3)]

    assert lifecycle.give_up_long_held_deliveries(batch_size=2) == 3
    assert {state(delivery)[0] for delivery in deliveries} == {Delivery.Status.DEAD}

    operations.destination_resume(destination=destination)
    retried = delivery_service.delivery_retry(delivery=deliveries[0])
    assert retried.status == Delivery.Status.PENDING
    job = operations.bulk_retry_start(organization=organization, filters={"destination": destination.pk})
    operations.bulk_retry_run(job.pk)
    assert {state(delivery)[0] for delivery in deliveries} == {Delivery.Status.PENDING}


def test_the_api_and_the_dashboard_say_when_held_deliveries_are_given_up(client, organization, owner):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, 3)
    given_up_from = destination.paused_at + timedelta(days=HOLD_DAYS)
    _, key = make_key(organization)

    shown = api_get(client, key, f"/api/v1/destinations/{destination.pk}").json()
    assert shown["held_deliveries_given_up_from"] == given_up_from.isoformat().replace("+00:00", "Z")

    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]))
    page = page.content.decode()
    assert f"held here for more than {HOLD_DAYS} days is marked dead" in page
    assert given_up_from.strftime("%Y") in page

    operations.destination_resume(destination=destination)
    shown = api_get(client, key, f"/api/v1/destinations/{destination.pk}").json()
    assert shown["held_deliveries_given_up_from"] is None


def test_the_pause_email_and_the_admins_page_say_when_held_deliveries_are_given_up(admin, organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, 1)
    given_up_from = destination.paused_at + timedelta(days=HOLD_DAYS)
    Destination.objects.filter(pk=destination.pk).update(pause_notice_due_at=timezone.now())

    assert alert_destination_paused(destination.pk)
    (email,) = mail.outbox
    assert f"From {given_up_from:%-d %b %Y, %H:%M} UTC on, a delivery held here for more than {HOLD_DAYS} days" in (
        email.body
    )
    assert "Nothing is lost" not in email.body

    page = admin.get(reverse("admin:webhooks_destination_change", args=[destination.pk])).content.decode()
    state = page.split('id="destination-state"', 1)[1].split("</p>", 1)[0]
    assert f"from {given_up_from:%Y-%m-%d %H:%M:%S} UTC on, the retention run marks dead" in state
    assert lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION in state


def _waiting_on_a_lock(params) -> bool:
    # Its own autocommit connection: a transaction would keep reading one snapshot of the statistics.
    with psycopg.connect(**params, autocommit=True) as probe:
        return bool(
            probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0]
        )


def give_up_while_uncommitted(competing_change) -> list:
    """Run the give-up while ``competing_change`` (a resume, a retry by hand) has made its UPDATEs in
    a transaction of its own and not committed them; commit it once the give-up waits on a lock
    it holds. What the give-up returned."""
    uncommitted, commit = threading.Event(), threading.Event()
    errors, given_up = [], []

    def compete():
        try:
            with transaction.atomic():
                competing_change()
                uncommitted.set()
                commit.wait(30)
        except Exception as exc:
            errors.append(exc)
            uncommitted.set()
        finally:
            connections.close_all()

    def give_up():
        try:
            given_up.append(lifecycle.give_up_long_held_deliveries())
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    competitor = threading.Thread(target=compete)
    competitor.start()
    assert uncommitted.wait(30)
    settler = threading.Thread(target=give_up)
    settler.start()
    try:
        params = connection.get_connection_params()
        while settler.is_alive() and not _waiting_on_a_lock(params):
            threading.Event().wait(0.01)
    finally:
        commit.set()
        competitor.join(30)
        settler.join(30)
    assert not errors
    return given_up


@pytest.mark.django_db(transaction=True)
def test_a_resume_committing_while_the_deliveries_are_given_up_keeps_them_pending(organization):
    # Both the give-up's lock on the destination and, without it, its UPDATE wait on the resume.
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    deliveries = [held_delivery(destination, due_days_ago=HOLD_DAYS + 10) for _ in range(3)]

    given_up = give_up_while_uncommitted(
        lambda: operations.destination_resume(destination=Destination.objects.get(pk=destination.pk))
    )

    assert given_up == [0]
    assert {state(delivery) for delivery in deliveries} == {(Delivery.Status.PENDING, "")}


@pytest.mark.django_db(transaction=True)
def test_a_retry_by_hand_committing_while_the_deliveries_are_given_up_keeps_it_pending(organization):
    # The give-up picks its batch, then a retry by hand (or a bulk retry of waiting deliveries) makes
    # one due now and commits while the UPDATE waits on its row: held from now on, it must not die.
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    delivery = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)

    given_up = give_up_while_uncommitted(
        lambda: delivery_service.delivery_retry(delivery=Delivery.objects.get(pk=delivery.pk))
    )

    assert given_up == [0]
    assert state(delivery) == (Delivery.Status.PENDING, "")


@pytest.mark.django_db(transaction=True)
def test_the_batches_given_up_before_a_failing_one_are_audited(organization):
    # The org purge audits what its earlier batches deleted when a later one fails; giving up held
    # deliveries must too: the first batch's deliveries are dead for good, whatever comes after.
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    first = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    second = held_delivery(destination, due_days_ago=HOLD_DAYS + 9)

    locked, release = threading.Event(), threading.Event()

    def hold_the_second_row():
        try:
            with transaction.atomic():
                Delivery.objects.select_for_update().filter(pk=second.pk).first()
                locked.set()
                release.wait(30)
        finally:
            locked.set()
            connections.close_all()

    holder = threading.Thread(target=hold_the_second_row)
    holder.start()
    try:
        assert locked.wait(30)
        with connection.cursor() as cursor:
            # The second batch's UPDATE gives up waiting on the held row: a batch that fails.
            cursor.execute("SET lock_timeout = '200ms'")
        try:
            with pytest.raises(Exception, match="lock timeout"):
                lifecycle.give_up_long_held_deliveries(batch_size=1)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    finally:
        release.set()
        holder.join(30)

    assert state(first)[0] == Delivery.Status.DEAD
    assert state(second) == (Delivery.Status.PENDING, "")
    entry = AuditLog.objects.get(action=lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION)
    assert entry.changes["deliveries"] == 1


def test_the_dead_letter_digest_says_given_up_deliveries_were_held_not_what_an_older_attempt_answered(organization):
    from webhooks.services.alerts import send_dead_letter_digests

    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    held = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    Delivery.objects.filter(pk=held.pk).update(last_status_code=503, last_error="HTTP 503")
    failed = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    Delivery.objects.filter(pk=failed.pk).update(
        status=Delivery.Status.DEAD,
        completed_at=timezone.now(),
        next_attempt_at=None,
        last_status_code=503,
        last_error="HTTP 503: no retries left",
    )
    lifecycle.purge_expired_events()
    assert state(held)[0] == Delivery.Status.DEAD

    assert send_dead_letter_digests() == 1

    message = mail.outbox[-1]
    html = message.alternatives[0][0]
    for text in (message.body, html):
        assert "1 × held too long behind a pause, not sent" in text
        assert "1 × 503" in text  # the one that failed, not 2 × 503
        assert "were held too long behind a pause" in text


def test_the_audit_entry_shows_the_pause_that_held_them_even_if_a_resume_commits_right_after(organization, monkeypatch):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    paused_since(destination, HOLD_DAYS + 5)
    held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    give_up_batch = lifecycle._give_up_held_batch

    def batch_then_resumed(*args, **kwargs):
        done = give_up_batch(*args, **kwargs)
        # Committed between the batch and its audit entry: the pause it gave up under is gone.
        operations.destination_resume(destination=Destination.objects.get(pk=destination.pk))
        return done

    monkeypatch.setattr(lifecycle, "_give_up_held_batch", batch_then_resumed)
    assert lifecycle.give_up_long_held_deliveries() == 1

    entry = AuditLog.objects.get(action=lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION)
    assert entry.changes["paused_at"] == destination.paused_at.isoformat()
    assert entry.changes["pause_reason"] == "paused automatically after 20 failures"


def test_a_long_paused_destination_being_deleted_leaves_its_deliveries_to_its_deletion(organization, monkeypatch):
    # Its deletion deletes them in batches: marking them dead first would only write (and audit,
    # and email about) every one of them for nothing.
    from webhooks.services import destination_deletion

    monkeypatch.setattr(destination_deletion, "publish_destination_deletion", lambda destination_id: True)
    doomed = make_destination(organization, "http://127.0.0.1:9/doomed")[0]
    paused_since(doomed, HOLD_DAYS + 1)
    held = held_delivery(doomed, due_days_ago=HOLD_DAYS + 10)
    destination_deletion.destination_request_deletion(destination=doomed)

    assert lifecycle.give_up_long_held_deliveries() == 0

    assert state(held) == (Delivery.Status.PENDING, "")
    assert not AuditLog.objects.filter(action=lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION).exists()
    assert destination_deletion.destination_deletion_run(destination_id=doomed.pk).finished
    assert not Delivery.objects.filter(pk=held.pk).exists()
