"""Deleting an organization: counts on the admin's confirmation page, the data in the background."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation
from organizations.models import ApiKey, AuditLog, Membership, MonthlyUsage, Organization, current_month
from organizations.services import audit_verify_chain
from webhooks import tasks
from webhooks.models import (
    BulkRetry,
    Delivery,
    DeliveryAttempt,
    Destination,
    PurgedEventKey,
    SignatureNonce,
    Source,
    Subscription,
    WebhookEvent,
)
from webhooks.services import batched_deletion, organization_deletion, processing
from webhooks.services.organization_deletion import (
    organization_contents,
    organization_deletion_run,
    organization_request_deletion,
)
from webhooks.tests.api_helpers import make_key
from webhooks.tests.factories import STRIPE_SECRET, make_destination, make_source
from webhooks.tests.signing import post_stripe

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
EVENTS = "events (and rejected requests)"


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def published(monkeypatch):
    """Runs published for a worker, noted instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *a, **k: sent.append(a))
    return sent


def fill(organization, count: int, *, prefix: str = "evt") -> tuple[Source, Destination]:
    """A source and a destination with ``count`` events, each with a delivery and an attempt."""
    source = make_source(organization, name=f"{prefix} source")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    add_events(source, destination, count, prefix=prefix)
    SignatureNonce.objects.create(source=source, nonce_digest=f"{prefix}-n", body_digest="b")
    return source, destination


def add_events(source, destination, count: int, *, prefix: str) -> None:
    existing = WebhookEvent.objects.filter(source=source).count()
    events = WebhookEvent.objects.bulk_create(
        WebhookEvent(
            organization_id=source.organization_id,
            source=source,
            provider_event_id=f"{prefix}_{existing + number}",
            event_type="invoice.paid",
            body=b"{}",
            status=WebhookEvent.Status.PROCESSED,
        )
        for number in range(count)
    )
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            organization_id=source.organization_id,
            event=event,
            destination=destination,
            status=Delivery.Status.DEAD,
            attempt_count=1,
        )
        for event in events
    )
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(organization_id=source.organization_id, delivery=delivery, attempt_number=1, duration_ms=5)
        for delivery in deliveries
    )


def rows_of(organization_id: int) -> dict[str, int]:
    return {
        kind: rows.count()
        for kind, rows in organization_deletion._kinds(organization_id)  # every kind the deletion knows
    }


def confirmation_page(admin, organization):
    url = reverse("admin:organizations_organization_delete", args=[organization.pk])
    with CaptureQueriesContext(connection) as queries:
        response = admin.get(url)
    assert response.status_code == 200
    return response, len(queries)


# --- The confirmation page -------------------------------------------------------------------


def test_the_confirmation_page_shows_counts_per_kind_in_queries_that_do_not_grow_with_the_events(admin, organization):
    source, destination = fill(organization, 50)
    response, with_fifty = confirmation_page(admin, organization)
    page = response.content.decode()
    assert "Events (and rejected requests): 50" in page and "Delivery attempts: 50" in page
    assert "Sources: 1" in page and "Members: 1" in page
    assert "in the background" in page
    assert "evt_1" not in page and "Delivery object" not in page  # no row is listed

    add_events(source, destination, 450, prefix="evt")
    response, with_five_hundred = confirmation_page(admin, organization)
    assert "Events (and rejected requests): 500" in response.content.decode()
    assert with_fifty == with_five_hundred


def test_counts_past_the_cap_say_so(admin, organization, monkeypatch):
    monkeypatch.setattr(organization_deletion, "COUNT_CAP", 5)
    fill(organization, 6)
    counts = {item.kind: item for item in organization_contents(organization=organization, cap=5)}
    assert counts[EVENTS].capped and counts[EVENTS].label == "more than 5"
    assert not counts["sources"].capped and counts["sources"].label == "1"
    response, _ = confirmation_page(admin, organization)
    assert "Events (and rejected requests): more than 5" in response.content.decode()


def test_staff_without_superuser_rights_cannot_delete_an_organization(client, organization):
    staff = get_user_model().objects.create_user("staff@hookline.example", "correct horse battery", is_staff=True)
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_organization", "delete_organization"]))
    client.force_login(staff)
    url = reverse("admin:organizations_organization_delete", args=[organization.pk])
    assert "platform admins only" in client.get(url).content.decode()
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert not Organization.objects.get(pk=organization.pk).being_deleted


# --- Asking for the deletion -----------------------------------------------------------------


def test_confirming_answers_at_once_and_leaves_the_data_to_the_background(
    admin, organization, superuser, published, django_capture_on_commit_callbacks
):
    fill(organization, 20)
    url = reverse("admin:organizations_organization_delete", args=[organization.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(url, {"post": "yes"})
    assert response.status_code == 302 and response.url == reverse("admin:organizations_organization_changelist")
    assert "under way" in next(str(m) for m in get_messages(response.wsgi_request))
    organization.refresh_from_db()
    assert not organization.is_active and organization.being_deleted
    assert organization.deletion_requested_by == superuser.email
    assert rows_of(organization.pk)[EVENTS] == 20  # not deleted in the request
    assert len(published) == 1  # a worker is asked to do it
    entry = AuditLog.objects.get(action=organization_deletion.DELETION_REQUESTED_ACTION)
    assert entry.actor_user_id == superuser.pk and entry.organization_id == organization.pk
    assert entry.changes["contents"][EVENTS] == "20"
    assert not AuditLog.objects.filter(action="admin.organizations.organization.deleted").exists()  # not yet

    listing = admin.get(reverse("admin:organizations_organization_changelist")).content.decode()
    assert "being deleted" in listing
    # It cannot be changed (made active again) on its way out.
    change = reverse("admin:organizations_organization_change", args=[organization.pk])
    assert admin.post(change, {"name": "Acme", "slug": "acme", "is_active": "on"}).status_code == 403
    assert not Organization.objects.get(pk=organization.pk).is_active


def test_the_bulk_action_asks_for_each_and_says_the_deletion_is_under_way(
    admin, organization, other_organization, published
):
    fill(organization, 3)
    changelist = reverse("admin:organizations_organization_changelist")
    selection = {"action": "delete_selected", "_selected_action": [organization.pk, other_organization.pk]}
    confirm = admin.post(changelist, selection)
    assert confirm.status_code == 200
    assert "Events (and rejected requests): 3" in confirm.content.decode()
    response = admin.post(changelist, {**selection, "post": "yes"}, follow=True)
    said = [str(m) for m in get_messages(response.wsgi_request)] + [response.content.decode()]
    assert any("under way" in text for text in said)
    assert not any("Successfully deleted" in text for text in said)
    assert Organization.objects.filter(deletion_requested_at__isnull=False).count() == 2
    assert AuditLog.objects.filter(action=organization_deletion.DELETION_REQUESTED_ACTION).count() == 2


def test_ingest_to_its_sources_answers_404_as_soon_as_the_deletion_is_asked_for(client, organization, published):
    source = make_source(organization)
    body = json.dumps({"id": "evt_before", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200  # and now in the source cache
    organization_request_deletion(organization=organization)
    body = json.dumps({"id": "evt_after", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 404


def test_its_members_are_told_it_is_being_deleted(client, organization, member, published):
    organization_request_deletion(organization=organization)
    client.force_login(member)
    response = client.get(reverse("dashboard:overview", args=["acme"]))
    assert response.status_code == 404
    page = response.content.decode()
    assert "<h1>Acme is being deleted</h1>" in page and "reactivated" not in page
    home = client.get("/").content.decode()
    assert "Acme is being deleted" in home and reverse("dashboard:overview", args=["acme"]) not in home


def test_asking_twice_is_one_request(organization, published):
    assert organization_request_deletion(organization=organization) is True
    assert organization_request_deletion(organization=organization) is False
    assert AuditLog.objects.filter(action=organization_deletion.DELETION_REQUESTED_ACTION).count() == 1


# --- The background deletion -----------------------------------------------------------------


@pytest.fixture
def two_tenants(organization, other_organization, owner, member, outsider):
    """Acme (to delete) and Globex (to keep), each with data of every kind; a user in both."""
    fill(organization, 23, prefix="acme")
    fill(other_organization, 7, prefix="globex")
    both = get_user_model().objects.create_user("both@example.com")
    for tenant in (organization, other_organization):
        Membership.objects.create(user=both, organization=tenant, role=Membership.Role.MEMBER)
        MonthlyUsage.objects.create(organization=tenant, month=current_month(), events=5)
        BulkRetry.objects.create(organization=tenant, total=1)
        Invitation.objects.create(
            organization=tenant,
            email=f"new@{tenant.slug}.example",
            role="member",
            token_digest=f"digest-{tenant.slug}",
            expires_at=timezone.now() + timedelta(days=1),
        )
    return organization, other_organization


def test_the_run_deletes_everything_of_the_organization_and_nothing_of_another(two_tenants, owner, member, published):
    acme, globex = two_tenants
    kept_before = rows_of(globex.pk)
    users_before = get_user_model().objects.count()
    organization_request_deletion(organization=acme)

    run = organization_deletion_run(organization_id=acme.pk, batch_size=5)
    assert run.finished
    assert not Organization.objects.filter(pk=acme.pk).exists()
    assert all(count == 0 for count in rows_of(acme.pk).values()), rows_of(acme.pk)
    assert rows_of(globex.pk) == kept_before
    assert Subscription.objects.filter(organization=globex).count() == 1
    # User accounts stay, also those of users who were only in Acme (owner, member): only memberships go.
    assert get_user_model().objects.count() == users_before
    assert not Membership.objects.filter(user__in=[owner, member]).exists()
    # The audit trail stays, with the request and the end.
    assert AuditLog.objects.filter(organization_id=acme.pk, action="organization.created").exists()
    done = AuditLog.objects.get(action=organization_deletion.DELETED_ACTION)
    assert done.organization_id == acme.pk and done.organization_label == "Acme"
    assert done.changes["deleted"][EVENTS] == 23 and done.changes["deleted"]["delivery attempts"] == 23
    assert done.changes["deleted"]["members"] == 3 and done.changes["deleted"]["sources"] == 1
    assert audit_verify_chain().ok

    again = organization_deletion_run(organization_id=acme.pk)  # a duplicate message: harmless
    assert again.finished and not again.deleted
    assert AuditLog.objects.filter(action=organization_deletion.DELETED_ACTION).count() == 1


def purged_keys(source, count: int) -> None:
    """Keys the retention purge kept of ``count`` events it deleted."""
    PurgedEventKey.objects.bulk_create(
        PurgedEventKey(
            source=source,
            event_id_digest=hashlib.sha256(f"{source.pk}-{number}".encode()).hexdigest(),  # 64 characters, as stored
            original_id=uuid.uuid4(),
            received_at=timezone.now() - timedelta(days=2),
            forget_after=timezone.now() + timedelta(days=5),
        )
        for number in range(count)
    )


def test_purged_events_keys_and_api_keys_are_counted_and_deleted_in_batches(two_tenants, admin, published):
    acme, globex = two_tenants
    purged_keys(Source.objects.get(organization=acme), 12)
    purged_keys(Source.objects.get(organization=globex), 3)
    make_key(acme)
    make_key(globex)
    page = confirmation_page(admin, acme)[0].content.decode()
    assert "Purged events&#x27; keys: 12" in page and "API keys: 1" in page

    organization_request_deletion(organization=acme)
    run = organization_deletion_run(organization_id=acme.pk, batch_size=5, max_seconds=0)  # one batch
    assert not run.finished and PurgedEventKey.objects.filter(source__organization=acme).count() == 12
    with CaptureQueriesContext(connection) as queries:
        assert organization_deletion_run(organization_id=acme.pk, batch_size=5).finished
    # In batches of their own (5, 5, 2), not all at once with their source (whose cascade finds none left).
    batches = [query["sql"] for query in queries if query["sql"].startswith('DELETE FROM "webhooks_purgedeventkey"')]
    assert [sql.count(",") + 1 for sql in batches if '"id" IN' in sql] == [5, 5, 2]
    done = AuditLog.objects.get(action=organization_deletion.DELETED_ACTION)
    assert done.changes["deleted"]["purged events' keys"] == 12 and done.changes["deleted"]["API keys"] == 1
    assert PurgedEventKey.objects.filter(source__organization=globex).count() == 3
    assert ApiKey.objects.filter(organization=globex).count() == 1


def test_a_run_stops_at_its_time_limit_and_publishes_the_next(two_tenants, published, monkeypatch):
    acme, _ = two_tenants
    organization_request_deletion(organization=acme)
    published.clear()
    monkeypatch.setattr(batched_deletion, "RUN_SECONDS", 0)  # one batch, then the limit
    monkeypatch.setattr(organization_deletion, "BATCH_SIZE", 5)
    assert tasks.delete_organization(acme.pk) is False
    assert rows_of(acme.pk)[EVENTS] == 18 and len(published) == 1
    assert Organization.objects.get(pk=acme.pk).deletion_progress[EVENTS] == 5


def test_the_list_shows_each_organizations_state_and_a_deletions_progress(admin, two_tenants, published, monkeypatch):
    acme, globex = two_tenants
    suspended = Organization.objects.create(name="Initech", slug="initech", is_active=False)
    organization_request_deletion(organization=acme)
    organization_deletion_run(organization_id=acme.pk, batch_size=5, max_seconds=0)  # one batch
    listing = admin.get(reverse("admin:organizations_organization_changelist")).content.decode()
    rows = {
        org.pk: row for org in (acme, globex, suspended) for row in listing.split("<tr") if f"/{org.pk}/change/" in row
    }
    assert (
        "being deleted" in rows[acme.pk] and "15 rows deleted so far" in rows[acme.pk]
    )  # 5 events, deliveries, attempts
    assert ">active<" in rows[globex.pk] and ">suspended<" in rows[suspended.pk]


def test_a_run_that_crashed_is_resumed_by_the_sweeper(
    two_tenants, published, monkeypatch, django_capture_on_commit_callbacks
):
    acme, globex = two_tenants
    with django_capture_on_commit_callbacks(execute=True):
        organization_request_deletion(organization=acme)
    assert len(published) == 1
    real_check = batched_deletion.check_foreign_keys
    calls = []

    def killed_in_the_third_batch():
        calls.append(1)
        if len(calls) == 3:
            raise SystemExit("worker killed")  # after the third batch's deletions, before its commit
        real_check()

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", killed_in_the_third_batch)
    with pytest.raises(SystemExit):
        organization_deletion_run(organization_id=acme.pk, batch_size=5)
    assert rows_of(acme.pk)[EVENTS] == 13  # two whole batches done, nothing of the third
    assert Organization.objects.get(pk=acme.pk).deletion_progress[EVENTS] == 10
    monkeypatch.setattr(batched_deletion, "check_foreign_keys", real_check)

    published.clear()
    assert processing.sweep()["organization_deletions"] == 0  # its message may still be on its way
    cache.clear()  # PUBLISHED_TTL_SECONDS later
    assert processing.sweep()["organization_deletions"] == 1 and len(published) == 1
    assert tasks.delete_organization(acme.pk) is True  # the worker picks it up
    assert not Organization.objects.filter(pk=acme.pk).exists()
    assert all(count == 0 for count in rows_of(acme.pk).values())
    assert AuditLog.objects.get(action=organization_deletion.DELETED_ACTION).changes["deleted"][EVENTS] == 23
    assert rows_of(globex.pk)[EVENTS] == 7
    assert processing.sweep()["organization_deletions"] == 0  # nothing left to resume


def test_one_run_at_a_time_per_organization(two_tenants, published):
    import psycopg

    acme, _ = two_tenants
    organization_request_deletion(organization=acme)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params) as other_worker:  # a run in another worker process, holding the lock
        other_worker.execute("SELECT pg_advisory_lock(%s)", [organization_deletion._DELETIONS.lock_prefix + acme.pk])
        assert tasks.delete_organization(acme.pk) is False
        assert rows_of(acme.pk)[EVENTS] == 23  # left to the run that holds it
    # That worker died: its connection, and so the lock, is gone (once its backend has exited,
    # which happens a moment after the client closed the socket).
    _wait_until_free(organization_deletion._DELETIONS.lock_prefix + acme.pk)
    assert tasks.delete_organization(acme.pk) is True


def _wait_until_free(lock_key: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock_key])
            if cursor.fetchone()[0]:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_key])
                return
            time.sleep(0.02)
    raise AssertionError("the advisory lock was never released")


def test_a_batch_that_met_a_row_committed_meanwhile_is_tried_again_and_counted_once(two_tenants, monkeypatch):
    from django.db import IntegrityError

    acme, _ = two_tenants
    organization_request_deletion(organization=acme)
    real_check = batched_deletion.check_foreign_keys
    calls = []

    class ForeignKeyViolation(Exception):
        sqlstate = "23503"

    def violated_once():
        calls.append(1)
        real_check()
        if len(calls) == 1:  # an attempt recorded for a delivery of the batch, committed meanwhile
            raise IntegrityError("violates foreign key constraint") from ForeignKeyViolation()

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", violated_once)
    assert organization_deletion_run(organization_id=acme.pk, batch_size=50).finished
    assert not Organization.objects.filter(pk=acme.pk).exists()
    done = AuditLog.objects.get(action=organization_deletion.DELETED_ACTION)
    assert done.changes["deleted"][EVENTS] == 23 and done.changes["deleted"]["deliveries"] == 23


@pytest.mark.django_db(transaction=True)
def test_a_send_in_flight_when_the_deletion_runs_is_dropped_not_recorded(client, organization, published):
    from webhooks.services import delivery as delivery_service

    source = make_source(organization)
    make_destination(organization, RECEIVER, sources=[source])
    for event_id in ("evt_in_flight", "evt_waiting"):
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    claimed = delivery_service.claim_due_deliveries(1)
    assert len(claimed) == 1
    results = [(delivery, delivery_service.send(delivery)) for delivery in claimed]  # port 9: refused

    organization_request_deletion(organization=organization)
    assert Delivery.objects.filter(status=Delivery.Status.PENDING).count() == 1
    assert delivery_service.claim_due_deliveries(10) == []  # the other one is no longer sent
    assert organization_deletion_run(organization_id=organization.pk).finished
    assert delivery_service.record_results(results) == []  # its delivery is gone: nothing to record
    assert not DeliveryAttempt.objects.exists() and not Delivery.objects.exists()


def test_an_organization_not_marked_is_never_deleted_by_a_run(organization):
    with pytest.raises(ValueError):
        organization_deletion_run(organization_id=organization.pk)
    assert Organization.objects.filter(pk=organization.pk).exists()


def test_the_keys_of_purged_events_are_deleted_in_batches_not_with_their_source(organization, published, monkeypatch):
    # A source's PurgedEventKey rows (one per event purged in the last KEPT_DAYS: as many as the events
    # of a week) must not all go in the transaction that deletes the source, by its cascade.
    source = make_source(organization, name="purged")
    PurgedEventKey.objects.bulk_create(
        PurgedEventKey(
            source=source,
            event_id_digest=f"{number:064x}",
            original_id=uuid.uuid4(),
            received_at=timezone.now(),
            forget_after=timezone.now() + timedelta(days=7),
        )
        for number in range(7)
    )
    organization_request_deletion(organization=organization)
    real_check = batched_deletion.check_foreign_keys
    left, removed_per_batch = [7], []

    def counting():  # inside each batch's transaction, after its deletions
        left.append(PurgedEventKey.objects.filter(source_id=source.pk).count())
        removed_per_batch.append(left[-2] - left[-1])
        real_check()

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", counting)
    assert organization_deletion_run(organization_id=organization.pk, batch_size=3).finished
    assert not PurgedEventKey.objects.filter(source_id=source.pk).exists()
    assert max(removed_per_batch) <= 3, removed_per_batch
