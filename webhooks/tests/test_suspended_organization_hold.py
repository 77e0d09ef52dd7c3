"""A suspended organization's deliveries wait, unclaimed, and go out once it is active again within its
caps; held longer than SUSPENDED_ORGANIZATION_HOLD_DAYS, the retention run marks them dead (with the
reason, audited), so that its events reach retention; they can be retried once it is active again. A
reactivation before the bound, or at the same moment, keeps them. (Its ingest URLs answering 404:
test_ingest's "organization suspended" cases.)"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from organizations.models import AuditLog, Organization
from organizations.services import organization_set_active
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import lifecycle, operations
from webhooks.services.alerts import send_dead_letter_digests
from webhooks.tests import test_admin

from .factories import make_destination
from .test_paused_destination_hold import give_up_while_uncommitted, held_delivery, state

superuser = test_admin.superuser
admin = test_admin.admin

HOLD_DAYS = 20  # not the paused hold's 30: each bound is its own setting
REASON = f"held too long while the organization was suspended (more than {HOLD_DAYS} days): not sent (retry once it is active again)"


@pytest.fixture(autouse=True)
def hold_days(settings, monkeypatch):
    settings.SUSPENDED_ORGANIZATION_HOLD_DAYS = HOLD_DAYS
    settings.PAUSED_DESTINATION_HOLD_DAYS = 30
    # Retry publishes a dispatcher run: no worker here to take it.
    for module in (operations, delivery_service):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)


def suspended_since(organization, days: float) -> None:
    organization_set_active(organization=organization, active=False)
    Organization.objects.filter(pk=organization.pk).update(suspended_at=timezone.now() - timedelta(days=days))
    organization.refresh_from_db()


def test_suspending_sets_when_and_reactivating_clears_it(organization):
    before = timezone.now()
    organization_set_active(organization=organization, active=False)
    organization.refresh_from_db()
    assert organization.suspended_at >= before
    assert organization.held_deliveries_given_up_from == organization.suspended_at + timedelta(days=HOLD_DAYS)

    organization_set_active(organization=organization, active=True)
    organization.refresh_from_db()
    assert organization.suspended_at is None and organization.held_deliveries_given_up_from is None


def test_held_deliveries_are_not_claimed_and_keep_their_events_while_finished_ones_still_go(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, HOLD_DAYS - 1)
    held = held_delivery(destination, due_days_ago=HOLD_DAYS + 40)
    finished = held_delivery(destination, due_days_ago=HOLD_DAYS + 40)
    long_ago = timezone.now() - timedelta(days=HOLD_DAYS + 40)
    Delivery.objects.filter(pk=finished.pk).update(
        status=Delivery.Status.SUCCEEDED, completed_at=long_ago, next_attempt_at=None
    )

    assert delivery_service.claim_due_deliveries(10) == []
    lifecycle.purge_expired_events()

    # A suspension does not stop retention: the finished event (60 days old) goes, the held one waits.
    assert not WebhookEvent.objects.filter(pk=finished.event_id).exists()
    assert state(held) == (Delivery.Status.PENDING, "")
    assert WebhookEvent.objects.filter(pk=held.event_id).exists()


def test_the_retention_run_marks_dead_what_a_long_suspended_organization_held_and_then_purges_its_events(
    organization, other_organization
):
    destinations = [make_destination(organization, f"http://127.0.0.1:9/hook{n}")[0] for n in range(2)]
    suspended_since(organization, HOLD_DAYS + 5)
    old = [held_delivery(destination, due_days_ago=HOLD_DAYS + 10) for destination in destinations]
    # Retried by hand (or arrived) during the suspension: held as long as the others, from then on.
    recent = held_delivery(destinations[0], due_days_ago=2)
    # Another organization's overdue delivery (a dispatcher backlog) is not this rule's business.
    sending = held_delivery(make_destination(other_organization, "http://127.0.0.1:9/other")[0], due_days_ago=99)

    lifecycle.purge_expired_events()

    for delivery in old:
        assert state(delivery) == (Delivery.Status.DEAD, REASON)
        assert delivery.completed_at is not None and delivery.next_attempt_at is None
        # Retention (30 days) counts from the death: the event received 30 days ago is still there.
        assert WebhookEvent.objects.filter(pk=delivery.event_id).exists()
    assert state(recent) == (Delivery.Status.PENDING, "")
    assert state(sending) == (Delivery.Status.PENDING, "")
    entry = AuditLog.objects.get(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION)
    assert entry.organization_id == organization.pk and entry.target_id == str(organization.pk)
    assert entry.changes == {
        "deliveries": 2,
        "hold_days": HOLD_DAYS,
        "reason": REASON,
        "suspended_at": organization.suspended_at.isoformat(),
    }

    # Past the retention after their death, the events go like any other finished one.
    lifecycle.purge_expired_events(now=timezone.now() + timedelta(days=organization.retention_days + 1))
    assert not WebhookEvent.objects.filter(pk__in=[delivery.event_id for delivery in old]).exists()


def test_an_organization_suspended_for_less_than_the_bound_or_being_deleted_keeps_its_deliveries(
    organization, other_organization
):
    suspended_since(organization, HOLD_DAYS - 1)
    briefly = held_delivery(make_destination(organization, "http://127.0.0.1:9/a")[0], due_days_ago=HOLD_DAYS + 10)
    suspended_since(other_organization, HOLD_DAYS + 10)
    Organization.objects.filter(pk=other_organization.pk).update(deletion_requested_at=timezone.now())
    going = held_delivery(make_destination(other_organization, "http://127.0.0.1:9/b")[0], due_days_ago=HOLD_DAYS + 10)

    assert lifecycle.give_up_long_held_deliveries() == 0

    assert state(briefly) == (Delivery.Status.PENDING, "")
    assert state(going) == (Delivery.Status.PENDING, "")  # its deletion takes it, with no digest
    assert not AuditLog.objects.filter(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION).exists()


def test_a_long_suspended_organizations_destination_being_deleted_leaves_its_deliveries_to_its_deletion(
    organization,
):
    # As a long-paused destination being deleted does (test_paused_destination_hold): its batches
    # delete them soon, and marked dead they would be counted in the audit entry and told to the
    # organization's admins in the dead-letter digest, for a destination they asked to delete.
    kept = held_delivery(make_destination(organization, "http://127.0.0.1:9/kept")[0], due_days_ago=HOLD_DAYS + 10)
    doomed, _ = make_destination(organization, "http://127.0.0.1:9/doomed")
    going = held_delivery(doomed, due_days_ago=HOLD_DAYS + 10)
    Destination.objects.filter(pk=doomed.pk).update(is_active=False, deletion_requested_at=timezone.now())
    suspended_since(organization, HOLD_DAYS + 5)

    assert lifecycle.give_up_long_held_deliveries() == 1

    assert state(kept) == (Delivery.Status.DEAD, REASON)
    assert state(going) == (Delivery.Status.PENDING, "")  # its deletion takes it
    entry = AuditLog.objects.get(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION)
    assert entry.changes["deliveries"] == 1


def test_a_suspension_made_some_other_way_is_held_from_the_next_run_and_a_reactivation_clears_it(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    delivery = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    Organization.objects.filter(pk=organization.pk).update(is_active=False)  # a shell's UPDATE: no time
    first_run = timezone.now()

    assert lifecycle.give_up_long_held_deliveries(now=first_run) == 0
    organization.refresh_from_db()
    assert organization.suspended_at == first_run
    assert lifecycle.give_up_long_held_deliveries(now=first_run + timedelta(days=HOLD_DAYS + 1)) == 1
    assert state(delivery) == (Delivery.Status.DEAD, REASON)

    # Made active again the same way: a later suspension must not find its time already past.
    Organization.objects.filter(pk=organization.pk).update(is_active=True)
    lifecycle.give_up_long_held_deliveries()
    organization.refresh_from_db()
    assert organization.suspended_at is None


def test_a_reactivation_before_the_bound_sends_everything_held_within_the_caps(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    Destination.objects.filter(pk=destination.pk).update(max_concurrency=10)
    Organization.objects.filter(pk=organization.pk).update(max_concurrency=3)
    suspended_since(organization, HOLD_DAYS + 5)
    held = [held_delivery(destination, due_days_ago=HOLD_DAYS + 10 - n) for n in range(5)]

    organization_set_active(organization=organization, active=True)
    assert lifecycle.give_up_long_held_deliveries() == 0

    # Not all at once: the organization's cap, oldest first, and the rest as those end.
    claimed = delivery_service.claim_due_deliveries(10)
    assert [delivery.pk for delivery in claimed] == [delivery.pk for delivery in held[:3]]
    assert delivery_service.claim_due_deliveries(10) == []
    Delivery.objects.filter(pk__in=[delivery.pk for delivery in claimed]).update(
        status=Delivery.Status.SUCCEEDED, completed_at=timezone.now()
    )
    assert [delivery.pk for delivery in delivery_service.claim_due_deliveries(10)] == [d.pk for d in held[3:]]

    # Suspended again at once: the bound counts from this suspension.
    Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).update(status=Delivery.Status.PENDING)
    organization_set_active(organization=organization, active=False)
    assert lifecycle.give_up_long_held_deliveries() == 0


def test_a_given_up_delivery_is_retried_once_the_organization_is_active_again(client, organization, owner):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, HOLD_DAYS + 5)
    deliveries = [held_delivery(destination, due_days_ago=HOLD_DAYS + 1) for _ in range(3)]
    assert lifecycle.give_up_long_held_deliveries(batch_size=2) == 3
    assert AuditLog.objects.get(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION).changes["deliveries"] == 3

    organization_set_active(organization=organization, active=True)
    # The dashboard's audit log (open again) says who did what to whom: the run, to the organization.
    client.force_login(owner)
    page = client.get(reverse("dashboard:audit", args=[organization.slug])).content.decode()
    row = page.split('<code class="muted small">organization.held_deliveries_given_up</code>', 1)[0]
    assert row.rsplit('data-label="Action">', 1)[1].strip() == (
        "marked dead the deliveries held too long of the suspended organization"
    )
    assert delivery_service.delivery_retry(delivery=deliveries[0]).status == Delivery.Status.PENDING
    job = operations.bulk_retry_start(organization=organization, filters={"destination": destination.pk})
    operations.bulk_retry_run(job.pk)
    assert {state(delivery) for delivery in deliveries} == {(Delivery.Status.PENDING, "")}
    assert {d.pk for d in delivery_service.claim_due_deliveries(10)} == {d.pk for d in deliveries}


@pytest.mark.django_db(transaction=True)
def test_a_reactivation_committing_while_the_deliveries_are_given_up_keeps_them_pending(organization):
    # The give-up's lock on the organization (and, without it, its UPDATE's check) waits on the reactivation.
    destinations = [make_destination(organization, f"http://127.0.0.1:9/hook{n}")[0] for n in range(2)]
    suspended_since(organization, HOLD_DAYS + 5)
    deliveries = [held_delivery(destination, due_days_ago=HOLD_DAYS + 10) for destination in destinations]

    given_up = give_up_while_uncommitted(
        lambda: organization_set_active(organization=Organization.objects.get(pk=organization.pk), active=True)
    )

    assert given_up == [0]
    assert {state(delivery) for delivery in deliveries} == {(Delivery.Status.PENDING, "")}
    assert not AuditLog.objects.filter(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION).exists()


def test_the_dead_letter_digest_says_they_were_held_while_the_organization_was_suspended(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, HOLD_DAYS + 5)
    held = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    Delivery.objects.filter(pk=held.pk).update(last_status_code=503, last_error="HTTP 503")
    lifecycle.purge_expired_events()
    assert state(held) == (Delivery.Status.DEAD, REASON)

    assert send_dead_letter_digests() == 1

    message = mail.outbox[-1]
    for text in (message.body, message.alternatives[0][0]):
        assert "1 × held too long while the organization was suspended, not sent" in text
        assert "503" not in text
        # Nothing is wrong with the endpoint: what a retry waits for is the organization.
        assert "endpoint works" not in text
        assert "Once Acme is active again, retry it from" in text
    assert "in the dashboard once Acme is active again (it is closed while the organization is suspended)" in (
        message.body
    )
    assert "Acme is suspended: its dashboard is closed" in message.alternatives[0][0]


def test_the_dead_letter_digest_of_an_organization_active_again_says_what_each_retry_waits_for(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, HOLD_DAYS + 5)
    held = held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    lifecycle.purge_expired_events()
    assert state(held) == (Delivery.Status.DEAD, REASON)
    organization_set_active(organization=organization, active=True)

    # Only held while it was suspended: retried at once, nothing to wait for.
    assert send_dead_letter_digests() == 1
    message = mail.outbox[-1]
    for text in (message.body, message.alternatives[0][0]):
        assert "Retry it from" in text
        assert "endpoint works" not in text and "active again," not in text
    assert "in the dashboard:" in message.body

    # One that failed at the endpoint too: that one waits for the endpoint.
    failed = held_delivery(destination, due_days_ago=1)
    Delivery.objects.filter(pk=failed.pk).update(
        status=Delivery.Status.DEAD, completed_at=timezone.now(), last_status_code=503, last_error="HTTP 503"
    )
    assert send_dead_letter_digests(now=timezone.now() + timedelta(days=1)) == 1
    message = mail.outbox[-1]
    for text in (message.body, message.alternatives[0][0]):
        assert "Once your endpoint works again, retry it from" in text


def test_the_dead_letter_digest_of_a_suspended_organization_with_failures_says_both(organization):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, 3)
    failed = held_delivery(destination, due_days_ago=1)
    Delivery.objects.filter(pk=failed.pk).update(
        status=Delivery.Status.DEAD, completed_at=timezone.now(), last_status_code=503, last_error="HTTP 503"
    )

    assert send_dead_letter_digests() == 1
    message = mail.outbox[-1]
    for text in (message.body, message.alternatives[0][0]):
        assert "1 × 503" in text
        assert "Once Acme is active again and your endpoint works, retry it from" in text


def test_the_admin_and_the_suspended_page_say_when_held_deliveries_are_given_up(admin, client, organization, owner):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, 3)
    given_up_from = organization.suspended_at + timedelta(days=HOLD_DAYS)

    page = admin.get(reverse("admin:webhooks_destination_change", args=[destination.pk])).content.decode()
    said = page.split('id="destination-state"', 1)[1].split("</p>", 1)[0]
    assert "its organization is suspended; its deliveries wait until it is active again" in said
    assert f"from {given_up_from:%Y-%m-%d %H:%M:%S} UTC on, the retention run marks dead those held longer" in said
    assert f"than {HOLD_DAYS} days" in said and lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION in said

    page = admin.get(reverse("admin:organizations_organization_change", args=[organization.pk])).content.decode()
    assert f"suspended since {organization.suspended_at:%Y-%m-%d %H:%M:%S} UTC" in page
    assert f"from {given_up_from:%Y-%m-%d %H:%M:%S} UTC on, the retention run marks dead" in page

    client.force_login(owner)
    for response in (client.get("/"), client.get(reverse("dashboard:overview", args=[organization.slug]))):
        text = response.content.decode()
        assert f"From {given_up_from:%-d %b %Y, %H:%M} UTC on, those held for more than {HOLD_DAYS} days" in text


@pytest.mark.django_db(transaction=True)
def test_the_migration_counts_the_hold_of_organizations_suspended_at_the_upgrade_from_the_upgrade():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("organizations", "0009_retention_days_help_text")]
    executor = MigrationExecutor(connection)
    # The state migrate leaves is the models as they were at 0009 (rendering it again took as long).
    old_state = executor.migrate(before)
    try:
        old_organization = old_state.apps.get_model("organizations", "Organization")
        suspended = old_organization.objects.create(name="Initech", slug="initech", is_active=False)
        active = old_organization.objects.create(name="Hooli", slug="hooli")
        upgraded_at = timezone.now()
    finally:
        # The upgrade: 0010_organization_suspended_at, and with it every app's latest again (going
        # back to 0009 also unapplied the migrations of other apps that depend on 0010), which the
        # tests after this one need: one migrate rather than one to 0010 and another after it.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert Organization.objects.get(pk=suspended.pk).suspended_at >= upgraded_at
    assert Organization.objects.get(pk=active.pk).suspended_at is None


def _row_lock_mark(model, pk) -> str:
    # xmax: a row lock (FOR NO KEY UPDATE) leaves its transaction's id there, a row written by nobody since none.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT xmax::text FROM {model._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_a_long_hold_with_nothing_left_to_give_up_locks_no_holder_each_run(organization, other_organization):
    # What a long suspension (or pause) held is dead after the first run; each hourly run after it
    # must not lock the organization once per destination (a row written, a reactivation kept
    # waiting) only to find nothing.
    for n in range(3):
        destination = make_destination(organization, f"http://127.0.0.1:9/hook{n}")[0]
        held_delivery(destination, due_days_ago=1)  # arrived during the suspension: held a while yet
    suspended_since(organization, HOLD_DAYS + 5)
    paused = make_destination(other_organization, "http://127.0.0.1:9/paused")[0]
    Destination.objects.filter(pk=paused.pk).update(paused_at=timezone.now() - timedelta(days=40))
    marks = (_row_lock_mark(Organization, organization.pk), _row_lock_mark(Destination, paused.pk))

    assert lifecycle.give_up_long_held_deliveries() == 0

    assert (_row_lock_mark(Organization, organization.pk), _row_lock_mark(Destination, paused.pk)) == marks


def test_the_run_keeps_to_its_deadline_across_a_suspended_organizations_destinations(organization):
    destinations = [make_destination(organization, f"http://127.0.0.1:9/hook{n}")[0] for n in range(3)]
    suspended_since(organization, HOLD_DAYS + 5)
    deliveries = [held_delivery(d, due_days_ago=HOLD_DAYS + 10) for d in destinations for _ in range(2)]

    # Its time already out: one batch, of the first destination, then the run stops (and audits it).
    assert lifecycle.give_up_long_held_deliveries(batch_size=1, deadline=time.monotonic()) == 1
    assert [state(delivery)[0] for delivery in deliveries].count(Delivery.Status.DEAD) == 1
    assert AuditLog.objects.get(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION).changes["deliveries"] == 1

    # The next run goes on with the rest.
    assert lifecycle.give_up_long_held_deliveries(batch_size=1) == 5
    assert {state(delivery) for delivery in deliveries} == {(Delivery.Status.DEAD, REASON)}


def test_a_paused_destination_of_a_suspended_organization_gives_each_delivery_up_once_for_the_first_bound_passed(
    organization,
):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, HOLD_DAYS + 15)
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now() - timedelta(days=40))
    behind_both = held_delivery(destination, due_days_ago=35)  # past the pause's 30 days and the suspension's 20
    behind_the_suspension = held_delivery(destination, due_days_ago=HOLD_DAYS + 2)  # past the suspension's only
    recent = held_delivery(destination, due_days_ago=HOLD_DAYS - 2)

    assert lifecycle.give_up_long_held_deliveries() == 2

    paused_reason = "the destination was paused for more than 30 days: not sent (retry once it is resumed)"
    assert state(behind_both) == (Delivery.Status.DEAD, paused_reason)
    assert state(behind_the_suspension) == (Delivery.Status.DEAD, REASON)
    assert state(recent) == (Delivery.Status.PENDING, "")
    # Each audit entry counts what its own hold gave up: no delivery twice.
    entries = {
        entry.action: entry.changes["deliveries"] for entry in AuditLog.objects.filter(action__contains="given_up")
    }
    assert entries == {
        lifecycle.HELD_DELIVERIES_GIVEN_UP_ACTION: 1,
        lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION: 1,
    }


def test_a_reactivation_and_a_new_suspension_saved_some_other_way_count_the_hold_from_the_new_suspension(
    organization,
):
    # A shell's save() between two retention runs: the old suspension's time must not carry over to
    # the new one (its deliveries would be given up at once, 20 days early).
    delivery = held_delivery(make_destination(organization, "http://127.0.0.1:9/hook")[0], due_days_ago=HOLD_DAYS + 10)
    suspended_since(organization, HOLD_DAYS + 5)
    organization.is_active = True
    organization.save()
    organization.is_active = False
    organization.save(update_fields=["is_active"])
    before = timezone.now() - timedelta(seconds=1)

    assert lifecycle.give_up_long_held_deliveries() == 0
    assert state(delivery) == (Delivery.Status.PENDING, "")
    organization.refresh_from_db()
    assert organization.suspended_at >= before


def test_an_organization_added_suspended_in_the_admin_has_its_suspensions_time_at_once(superuser, admin):
    response = admin.post(
        reverse("admin:organizations_organization_add"),
        {
            "name": "Initech",
            "slug": "initech",
            "plan": "free",
            "monthly_event_quota": 10000,
            "retention_days": 30,
            "memberships-TOTAL_FORMS": 0,
            "memberships-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    added = Organization.objects.get(slug="initech")
    assert not added.is_active and added.suspended_at is not None


def test_the_audit_entry_shows_the_suspension_that_held_them_even_if_a_reactivation_commits_right_after(
    organization, monkeypatch
):
    destination = make_destination(organization, "http://127.0.0.1:9/hook")[0]
    suspended_since(organization, HOLD_DAYS + 5)
    held_delivery(destination, due_days_ago=HOLD_DAYS + 10)
    give_up_batch = lifecycle._give_up_held_batch

    def batch_then_reactivated(*args, **kwargs):
        done = give_up_batch(*args, **kwargs)
        # Committed between the batch and its audit entry: the suspension it gave up under is gone.
        organization_set_active(organization=Organization.objects.get(pk=organization.pk), active=True)
        return done

    monkeypatch.setattr(lifecycle, "_give_up_held_batch", batch_then_reactivated)
    assert lifecycle.give_up_long_held_deliveries() == 1

    entry = AuditLog.objects.get(action=lifecycle.SUSPENDED_HELD_DELIVERIES_GIVEN_UP_ACTION)
    assert entry.changes["suspended_at"] == organization.suspended_at.isoformat()
