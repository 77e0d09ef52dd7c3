"""What happened to webhook X, part two: the destinations a filter left out, why a pending delivery
waits, and when things happened to the second, said alike on the dashboard, the API, the admin
and show_event."""

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, Organization
from webhooks import tasks
from webhooks.models import Delivery, DeliveryAttempt, Destination, WebhookEvent
from webhooks.services.delivery_waits import delivery_waits
from webhooks.services.destination_deletion import destination_request_deletion
from webhooks.services.destinations import destination_create, destination_set_paused
from webhooks.services.payload_filters import destinations_not_taking

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
BODY = b'{"id": "evt_customer_1", "type": "customer.created"}'


@pytest.fixture
def admin_client(db):
    # A client of its own: the tests sign the tenant's in with ``client``.
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return staff


def show(*args) -> dict:
    out = io.StringIO()
    call_command("show_event", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def show_text(*args) -> str:
    out = io.StringIO()
    call_command("show_event", *args, stdout=out)
    return out.getvalue()


def processed(source, *, event_type="customer.created", body=BODY, provider_event_id="evt_customer_1"):
    event = make_event(source, body=body, event_type=event_type, provider_event_id=provider_event_id)
    WebhookEvent.objects.filter(pk=event.pk).update(processed_at=timezone.now())
    event.refresh_from_db()
    return event


# --- 1. A destination whose event-type filter leaves the event out is named ------------------------


def test_a_destination_whose_event_types_leave_the_event_out_is_named_on_every_surface(
    client, organization, owner, admin_client
):
    # The tenant read "No destination subscribes to this source for customer.created" of a source
    # that Invoices subscribes to, with a filter that takes invoice.* only.
    source = make_source(organization, name="Stripe live")
    invoices, _ = destination_create(
        organization=organization, name="Invoices", url=RECEIVER, sources=[source], event_types=["invoice.*"]
    )
    event = processed(source)
    said = "by its current filters it takes only invoice.*, not customer.created"

    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, event.pk])).content.decode()
    assert f"Invoices</a>: {said}." in page
    assert "No destination subscribes" not in page

    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    data = api_get(client, key, f"/api/v1/events/{event.pk}").json()
    assert data["left_out_by_event_types"] == [
        {"destination": invoices.pk, "destination_name": "Invoices", "event_types": ["invoice.*"], "reason": said}
    ]
    assert data["left_out_by_payload_filters"] == []

    [story] = show(str(event.pk))["events"]
    assert story["left_out_by_event_types"] == [
        {"destination": {"id": invoices.pk, "name": "Invoices"}, "event_types": ["invoice.*"], "reason": said}
    ]
    assert f"not sent to Invoices: {said}" in show_text(str(event.pk))

    admin_page = admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    assert f"Invoices</a>: {said}." in admin_page

    # Judged by the filters as they are now: once Invoices takes every type, it is no longer named.
    invoices.subscriptions.update(event_types=[])
    assert api_get(client, key, f"/api/v1/events/{event.pk}").json()["left_out_by_event_types"] == []


def test_an_event_of_no_type_and_a_destination_with_a_delivery_are_said_right(organization):
    source = make_source(organization)
    named, _ = destination_create(
        organization=organization, name="Named", url=RECEIVER, sources=[source], event_types=["invoice.*", "charge.*"]
    )
    replayed, _ = destination_create(
        organization=organization, name="Replayed to", url=RECEIVER, sources=[source], event_types=["invoice.*"]
    )
    event = processed(source, event_type="")
    make_delivery(event, replayed)  # sent all the same (a replay): not left out
    assert [(refusal["name"], refusal["reason"]) for refusal in destinations_not_taking(event)] == [
        ("Named", "by its current filters it takes only invoice.*, charge.*, and the event has no type")
    ]


def test_naming_the_destinations_left_out_reads_the_same_queries_for_one_or_many(organization, settings):
    source = make_source(organization)
    event = processed(source)

    def queries_with(count: int) -> int:
        Destination.objects.filter(organization=organization).delete()
        for number in range(count):
            destination_create(
                organization=organization,
                name=f"Invoices {number}",
                url=RECEIVER,
                sources=[source],
                event_types=["invoice.*"],
            )
        WebhookEvent.objects.filter(pk=event.pk).update(processed_at=timezone.now())  # after they were made
        event.refresh_from_db()
        with CaptureQueriesContext(connection) as queries:
            assert len(destinations_not_taking(event)) == count
        return len(queries)

    settings.MAX_DESTINATIONS_PER_ORGANIZATION = 40
    assert queries_with(1) == queries_with(40) == 1


# --- 2. Why a pending delivery waits: one rule on every surface ------------------------------------


def pending(event, destination, **fields) -> Delivery:
    return Delivery.objects.create(
        organization_id=event.organization_id,
        event=event,
        destination=destination,
        status=Delivery.Status.PENDING,
        attempt_count=1,
        next_attempt_at=fields.pop("next_attempt_at", timezone.now() - timedelta(minutes=4)),
        **fields,
    )


def test_a_suspended_organizations_pending_delivery_says_why_it_waits_on_every_surface(organization, admin_client):
    # The admin's retry messages said it; the event page and show_event named only a paused or
    # inactive destination, so a suspended organization's delivery read as on its way.
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = processed(source, event_type="invoice.paid")
    delivery = pending(event, destination)
    Organization.objects.filter(pk=organization.pk).update(is_active=False)
    said = (
        "Its organization is suspended: it is sent once the organization is active again (if held too long, "
        "it is marked dead: the organization page in the admin says from when)"
    )

    admin_page = admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    assert f"waits: {said}" in admin_page
    delivery_page = admin_client.get(reverse("admin:webhooks_delivery_change", args=[delivery.pk])).content.decode()
    assert f"{said} (organization_suspended)" in delivery_page

    [story] = show(str(event.pk))["events"]
    assert story["deliveries"][0]["waiting_for"] == "organization_suspended"
    text = show_text(str(event.pk))
    assert f"waiting: {said}" in text
    assert "next attempt when the organization is active again (due " in text


def test_a_pending_delivery_of_a_destination_being_deleted_says_so_on_every_surface(
    client, organization, owner, admin_client, monkeypatch
):
    # It read "Its destination is inactive: ... is soon marked dead (retry it once the destination is
    # active again)": neither happens to it. It waits unsent until the deletion deletes it.
    monkeypatch.setattr(tasks.delete_destination, "apply_async", lambda *args, **kwargs: None)
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = processed(source, event_type="invoice.paid")
    delivery = pending(event, destination)
    # A replay that died: not waiting, but what its destination is now is said too.
    dead = Delivery.objects.create(
        organization=organization, event=event, destination=destination, status=Delivery.Status.DEAD, is_replay=True
    )
    destination_request_deletion(destination=destination)
    said = "Its destination is being deleted: nothing more is sent to it"

    admin_page = admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    assert f"waits: {said}" in admin_page
    assert "(destination being deleted)" in admin_page and "(destination inactive)" not in admin_page
    delivery_page = admin_client.get(reverse("admin:webhooks_delivery_change", args=[delivery.pk])).content.decode()
    assert f"{said} (destination_being_deleted)" in delivery_page

    [story] = show(str(event.pk))["events"]
    waiting_for = {row["id"]: row["waiting_for"] for row in story["deliveries"]}
    assert waiting_for == {str(delivery.pk): "destination_being_deleted", str(dead.pk): None}
    assert {row["destination"]["being_deleted"] for row in story["deliveries"]} == {True}
    text = show_text(str(event.pk))
    assert f"waiting: {said}" in text
    assert "next attempt none: the destination is being deleted (due " in text
    assert "dead, destination being deleted" in text
    assert "inactive" not in text

    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    shown = api_get(client, key, f"/api/v1/events/{event.pk}").json()["deliveries"]
    assert {row["id"]: row["waiting_for"] for row in shown} == waiting_for
    listed = api_get(client, key, "/api/v1/deliveries", event=str(event.pk)).json()["results"]
    assert {row["id"]: row["waiting_for"] for row in listed} == waiting_for
    assert api_get(client, key, f"/api/v1/deliveries/{delivery.pk}").json()["waiting_for"] == (
        "destination_being_deleted"
    )

    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, event.pk])).content.decode()
    assert "next try none: the destination is being deleted (it was due <time" in page
    # Named, not linked: its page is gone (a 404), as on the destination list.
    assert "Being deleted" in page
    assert reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]) not in page
    assert "while the destination is inactive" not in page


def test_the_api_says_what_each_pending_delivery_waits_for(client, organization, owner):
    source = make_source(organization)
    event = processed(source, event_type="invoice.paid")

    def destination(name, **fields):
        made, _ = destination_create(organization=organization, name=name, url=RECEIVER, sources=[source])
        Destination.objects.filter(pk=made.pk).update(**fields)
        return Destination.objects.get(pk=made.pk)

    paused = destination("Paused")
    destination_set_paused(destination=paused, paused=True, actor=owner)
    busy = destination("Busy", max_concurrency=1)
    Delivery.objects.create(
        organization=organization, event=make_event(source), destination=busy, status=Delivery.Status.IN_FLIGHT
    )
    waits = {
        pending(event, paused).pk: "destination_paused",
        pending(event, busy).pk: "destination_concurrency",
        pending(event, destination("Later"), next_attempt_at=timezone.now() + timedelta(hours=1)).pk: (
            "next_attempt_time"
        ),
        pending(event, destination("Due")).pk: None,
        make_delivery(event, destination("Dead")).pk: None,
    }
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    shown = api_get(client, key, f"/api/v1/events/{event.pk}").json()["deliveries"]
    assert {row["id"]: row["waiting_for"] for row in shown} == {str(pk): code for pk, code in waits.items()}
    listed = api_get(client, key, "/api/v1/deliveries", event=str(event.pk)).json()["results"]
    assert {row["id"]: row["waiting_for"] for row in listed} == {str(pk): code for pk, code in waits.items()}
    one = next(pk for pk, code in waits.items() if code == "destination_paused")
    assert api_get(client, key, f"/api/v1/deliveries/{one}").json()["waiting_for"] == "destination_paused"

    # The dispatcher's rate window is one second: read in a second whose count is used up, that is
    # what a due delivery waits for (the time is given: the test cannot stay within one second).
    now = timezone.now().replace(microsecond=500_000)
    limited = destination(
        "Limited", rate_limit_per_second=2, rate_window_started_at=now.replace(microsecond=0), rate_window_count=2
    )
    rate_limited = Delivery.objects.select_related("destination").get(pk=pending(event, limited).pk)
    assert delivery_waits([rate_limited], now=now) == {rate_limited.pk: "destination_rate_limit"}
    assert delivery_waits([rate_limited], now=now + timedelta(seconds=1)) == {rate_limited.pk: None}


def test_a_due_delivery_of_an_organization_at_its_limit_says_it_waits_for_it(
    organization, other_organization, settings
):
    # ORGANIZATION_MAX_CONCURRENCY: the dispatcher passes the organization over until an attempt ends.
    settings.ORGANIZATION_MAX_CONCURRENCY = 2
    source = make_source(organization)
    event = processed(source, event_type="invoice.paid")
    first, _ = destination_create(organization=organization, name="First", url=RECEIVER, sources=[source])
    second, _ = destination_create(organization=organization, name="Second", url=RECEIVER, sources=[source])
    Delivery.objects.create(
        organization=organization, event=make_event(source), destination=first, status=Delivery.Status.IN_FLIGHT
    )
    due = Delivery.objects.select_related("destination").get(pk=pending(event, second).pk)
    assert delivery_waits([due]) == {due.pk: None}

    Delivery.objects.create(
        organization=organization, event=make_event(source), destination=first, status=Delivery.Status.IN_FLIGHT
    )
    assert delivery_waits([due]) == {due.pk: "organization_concurrency"}
    # Another organization's attempts in flight are not this one's.
    theirs = make_source(other_organization)
    other, _ = destination_create(organization=other_organization, name="Other", url=RECEIVER, sources=[theirs])
    other_due = Delivery.objects.select_related("destination").get(
        pk=pending(processed(theirs, event_type="invoice.paid"), other).pk
    )
    assert delivery_waits([due, other_due]) == {due.pk: "organization_concurrency", other_due.pk: None}


@pytest.mark.parametrize(
    ("platform", "own", "in_flight", "waits_for"),
    [
        # Its own cap below the platform's: it waits at 1, where the platform's would send it.
        (5, 1, 1, "organization_concurrency"),
        # Its own cap above the platform's: 2 in flight reach the platform's, not its own.
        (2, 3, 2, None),
        (2, 3, 3, "organization_concurrency"),
        # Empty: the platform's.
        (2, None, 1, None),
        (2, None, 2, "organization_concurrency"),
    ],
)
def test_a_due_delivery_waits_for_its_organizations_own_cap_where_it_has_one(
    organization, settings, platform, own, in_flight, waits_for
):
    settings.ORGANIZATION_MAX_CONCURRENCY = platform
    Organization.objects.filter(pk=organization.pk).update(max_concurrency=own)
    source = make_source(organization)
    event = processed(source, event_type="invoice.paid")
    first, _ = destination_create(organization=organization, name="First", url=RECEIVER, sources=[source])
    second, _ = destination_create(organization=organization, name="Second", url=RECEIVER, sources=[source])
    for _ in range(in_flight):
        Delivery.objects.create(
            organization=organization, event=make_event(source), destination=first, status=Delivery.Status.IN_FLIGHT
        )
    due = Delivery.objects.select_related("destination").get(pk=pending(event, second).pk)
    # Still at most three queries: the cap comes with the organization's state, read anyway.
    with CaptureQueriesContext(connection) as queries:
        assert delivery_waits([due]) == {due.pk: waits_for}
    assert len(queries) == 3


# --- 3. A paused destination's "next try" is when it is resumed -----------------------------------


def test_a_paused_destinations_delivery_reads_when_it_is_tried_not_a_time_gone_by(client, organization, owner):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = processed(source, event_type="invoice.paid")
    pending(event, destination)  # due 4 minutes ago
    destination_set_paused(destination=destination, paused=True, actor=owner)
    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, event.pk])).content.decode()
    assert "next try when the destination is resumed (it was due <time" in page
    assert "(destination paused)" not in page


# --- 4. The admin's change pages give times to the second ----------------------------------------


def test_the_admin_change_pages_give_times_to_the_second(organization, admin_client):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    received = datetime(2026, 3, 4, 20, 42, 17, tzinfo=UTC)
    event = make_event(source, received_at=received)
    WebhookEvent.objects.filter(pk=event.pk).update(
        processed_at=received + timedelta(seconds=1),
        duplicate_count=1,
        last_duplicate_at=received + timedelta(seconds=41),
    )
    delivery = make_delivery(event, destination)
    Delivery.objects.filter(pk=delivery.pk).update(created_at=received + timedelta(seconds=2))
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    DeliveryAttempt.objects.filter(pk=attempt.pk).update(started_at=received + timedelta(seconds=3))

    page = admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    for moment in ("2026-03-04 20:42:17 UTC", "2026-03-04 20:42:18 UTC", "2026-03-04 20:42:58 UTC"):
        assert moment in page  # received, processed, the last duplicate
    page = admin_client.get(reverse("admin:webhooks_delivery_change", args=[delivery.pk])).content.decode()
    assert "2026-03-04 20:42:19 UTC" in page  # created
    assert "2026-03-04 20:42:20 UTC" in page  # its attempt, in the inline
    page = admin_client.get(reverse("admin:webhooks_deliveryattempt_change", args=[attempt.pk])).content.decode()
    assert "2026-03-04 20:42:20 UTC" in page


# --- 5. An operator command does not import what only the web process and workers use ------------


def test_setting_django_up_leaves_the_ingest_service_and_the_sign_in_audit_unimported():
    # show_event took 4-8 s of wall-clock for ~1 s of CPU on a busy machine: all of it imports. The
    # apps' start-up imported the ingest service (the providers, the delivery engine, Celery's
    # tasks) and the sign-in audit, which a command never uses.
    script = (
        "import sys, django; django.setup(); "
        "print(sorted(name for name in ('webhooks.services.ingest', 'organizations.team', 'accounts.services') "
        "if name in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script],
        cwd=django_settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "[]", found.stderr
