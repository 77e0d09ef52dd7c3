"""What a platform admin's trial of /admin/ found: a bulk retry started without asking, a destination's
page without its buttons or state, a source switched off unlike the dashboard does it, and an event's
page that showed no sent headers but every signature to view-only staff."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from organizations.models import AuditLog
from webhooks.admin import configuration
from webhooks.models import BulkRetry, Delivery
from webhooks.selectors import SIGNATURE_HIDDEN
from webhooks.services.ingest import ingest_request
from webhooks.tests import test_admin
from webhooks.tests.factories import make_source
from webhooks.tests.test_admin import deliver, make_event, source_form

pytestmark = pytest.mark.django_db

DESTINATIONS = "admin:webhooks_destination_changelist"


# test_admin's: two tenants, a dead, a retrying and a delivered event; a superuser signed in.
setup = test_admin.setup
superuser = test_admin.superuser
admin = test_admin.admin


def destination_page(destination) -> str:
    return reverse("admin:webhooks_destination_change", args=[destination.pk])


# --- 1. Retrying every dead delivery asks first --------------------------------------------------


def test_retrying_every_dead_delivery_asks_with_a_count_and_starts_only_once_confirmed(admin, setup):
    destination = setup["destination"]
    selection = {"action": "retry_dead_deliveries", "_selected_action": [destination.pk]}
    asked = admin.post(reverse(DESTINATIONS) + "?state=sending", selection)
    assert asked.status_code == 200
    assert not BulkRetry.objects.exists()
    assert not AuditLog.objects.filter(action__contains="retry_dead_deliveries").exists()  # not done yet
    page = asked.content.decode()
    assert "Send 1 dead delivery again?" in page
    assert f"{destination.organization.name} · {destination.name}: 1 dead" in page
    assert 'name="confirm" value="yes"' in page and "csrfmiddlewaretoken" in page
    # "No" goes back to the list as it was filtered.
    assert f'href="{reverse(DESTINATIONS)}?state=sending"' in page

    done = admin.post(reverse(DESTINATIONS) + "?state=sending", {**selection, "confirm": "yes"})
    assert done.status_code == 302
    job = BulkRetry.objects.get()
    assert job.filters == {"destination": destination.pk} and job.total == 1
    assert AuditLog.objects.filter(action="admin.webhooks.destination.action.retry_dead_deliveries").count() == 1


def test_the_confirmation_counts_dead_deliveries_up_to_a_cap(admin, setup, monkeypatch):
    destination, source = setup["destination"], setup["source"]
    for number in range(3):
        deliver(make_event(source, f"evt_more_dead_{number}", "invoice.paid"), destination, Delivery.Status.DEAD, 1)
    monkeypatch.setattr(configuration, "DEAD_COUNT_CAP", 2)
    asked = admin.post(reverse(DESTINATIONS), {"action": "retry_dead_deliveries", "_selected_action": [destination.pk]})
    page = asked.content.decode()
    assert "Send more than 2 dead deliveries again?" in page
    # The count reads at most cap + 1 rows, never COUNT(*) over them all.
    with CaptureQueriesContext(connection) as queries:
        admin.post(reverse(DESTINATIONS), {"action": "retry_dead_deliveries", "_selected_action": [destination.pk]})
    counts = [
        query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"] and "delivery" in query["sql"]
    ]
    assert counts and all("LIMIT 3" in sql for sql in counts), counts


def test_the_confirmation_offers_no_retry_when_nothing_is_dead(admin, setup):
    destination = setup["destination"]
    Delivery.objects.filter(destination=destination, status=Delivery.Status.DEAD).delete()
    asked = admin.post(reverse(DESTINATIONS), {"action": "retry_dead_deliveries", "_selected_action": [destination.pk]})
    page = asked.content.decode()
    assert "no dead deliveries: there is nothing to retry" in page
    assert 'id="confirm-action"' not in page and "No, take me back" in page
    assert not BulkRetry.objects.exists()


def test_the_dead_count_reads_the_failed_deliveries_index(setup):
    deliveries = Delivery.objects.filter(destination_id=setup["destination"].pk, status=Delivery.Status.DEAD)
    sql, params = deliveries.order_by().values("pk")[:10].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        # Only the indexes of failed or dead deliveries and the organization-led ones could serve
        # it (which one, their sizes decide); take the others away.
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert any(index in plan for index in ("delivery_failed", "delivery_dead_completed", "delivery_org_status_id")), (
        plan
    )
    assert "Seq Scan" not in plan, plan


# --- 2. A destination's own page: its state, Pause, Resume, Retry dead ----------------------------


def test_a_destinations_page_shows_its_state_and_pauses_and_resumes_it(admin, setup):
    destination = setup["destination"]
    page = admin.get(destination_page(destination)).content.decode()
    assert 'id="destination-state"' in page and "<strong>Sending</strong>" in page
    assert 'id="pause-destination"' in page and 'id="resume-destination"' not in page
    assert 'name="action" value="pause"' in page and 'name="return_to_object"' in page

    paused = admin.post(
        reverse(DESTINATIONS),
        {"action": "pause", "_selected_action": [destination.pk], "return_to_object": destination.pk},
    )
    assert paused.status_code == 302 and paused["Location"] == destination_page(destination)
    destination.refresh_from_db()
    assert destination.paused_at is not None and destination.pause_reason == "paused from the platform admin"
    assert AuditLog.objects.filter(action="destination.paused").exists()

    page = admin.get(destination_page(destination)).content.decode()
    assert '<strong class="hookline-bad">Paused</strong> since' in page and "paused from the platform admin" in page
    assert 'id="resume-destination"' in page and 'id="pause-destination"' not in page

    resumed = admin.post(
        reverse(DESTINATIONS),
        {"action": "resume", "_selected_action": [destination.pk], "return_to_object": destination.pk},
    )
    assert resumed["Location"] == destination_page(destination)
    destination.refresh_from_db()
    assert destination.paused_at is None


def test_a_failing_destinations_page_says_since_when_and_how_many_failures(admin, setup):
    from django.utils import timezone

    destination = setup["destination"]
    destination.failing_since = timezone.now()
    destination.consecutive_failures = 7
    destination.save(update_fields=["failing_since", "consecutive_failures"])
    page = admin.get(destination_page(destination)).content.decode()
    assert "Failing since" in page and "7 consecutive failed attempts" in page


def test_retry_dead_from_a_destinations_page_asks_then_comes_back_to_it(admin, setup):
    destination = setup["destination"]
    page = admin.get(destination_page(destination)).content.decode()
    assert 'id="retry-dead-deliveries"' in page
    form = {"action": "retry_dead_deliveries", "_selected_action": [destination.pk], "return_to_object": destination.pk}
    asked = admin.post(reverse(DESTINATIONS), form)
    assert asked.status_code == 200 and not BulkRetry.objects.exists()
    content = asked.content.decode()
    assert f'href="{destination_page(destination)}"' in content  # "No" goes back to the destination
    assert f'name="return_to_object" value="{destination.pk}"' in content
    done = admin.post(reverse(DESTINATIONS), {**form, "confirm": "yes"})
    assert done.status_code == 302 and done["Location"] == destination_page(destination)
    assert BulkRetry.objects.filter(filters__destination=destination.pk).exists()


def test_view_only_staff_get_no_pause_or_retry_buttons(client, setup):
    staff = get_user_model().objects.create_user("viewer@hookline.example", "another horse battery", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename="view_destination"))
    client.force_login(staff)
    page = client.get(destination_page(setup["destination"])).content.decode()
    assert 'id="destination-state"' in page
    assert 'id="pause-destination"' not in page and 'id="retry-dead-deliveries"' not in page
    client.post(
        reverse(DESTINATIONS),
        {"action": "pause", "_selected_action": [setup["destination"].pk], "return_to_object": setup["destination"].pk},
    )
    setup["destination"].refresh_from_db()
    assert setup["destination"].paused_at is None


# --- 3. Stopping a source in the admin is the dashboard's Stop ------------------------------------


def test_unticking_is_active_stops_the_source_through_the_service_and_says_what_follows(admin, organization):
    source = make_source(organization, name="Billing")
    source.refresh_from_db()  # its options as the provider completed them
    url = reverse("admin:webhooks_source_change", args=[source.pk])
    # As a browser posts it: a JSON field's form also carries its initial value (show_hidden_initial).
    options = {"options": json.dumps(source.options), "initial-options": json.dumps(source.options)}
    form = source_form(source, **options)
    del form["is_active"]
    response = admin.post(url, form, follow=True)
    assert response.status_code == 200
    source.refresh_from_db()
    assert not source.is_active
    assert AuditLog.objects.filter(action="source.paused", target_id=str(source.pk)).count() == 1
    # Only receiving changed: no second, admin-shaped entry for the same change.
    assert not AuditLog.objects.filter(action="admin.webhooks.source.changed").exists()
    shown = " ".join(str(message) for message in response.context["messages"])
    assert "answers 404" in shown and "nothing sent to it is stored" in shown
    stored = ingest_request(token=source.ingest_token, body=b"{}", headers={}, remote_ip="203.0.113.7")
    assert stored.status_code == 404

    again = admin.post(url, source_form(source, name="Billing EU", **options), follow=True)
    assert again.status_code == 200
    source.refresh_from_db()
    assert source.is_active and source.name == "Billing EU"
    assert AuditLog.objects.filter(action="source.resumed").count() == 1
    change = AuditLog.objects.get(action="admin.webhooks.source.changed")
    assert change.changes["fields"] == {"name": ["Billing", "Billing EU"]}  # is_active is the service's entry
    assert "Receiving again" in " ".join(str(message) for message in again.context["messages"])


# --- 4. An event's page: the headers each attempt sent; signatures masked for view-only staff ------


def test_an_events_page_shows_each_attempts_sent_headers(admin, setup):
    dead = Delivery.objects.get(event=setup["dead"])
    dead.attempts.update(request_headers={"webhook-id": str(dead.event_id), "webhook-signature": "v1,c2lnbmVk"})
    page = admin.get(reverse("admin:webhooks_webhookevent_change", args=[setup["dead"].pk])).content.decode()
    assert "webhook-id: " + str(dead.event_id) in page
    assert "webhook-signature: v1,c2lnbmVk" in page  # a superuser may change events: shown whole
    assert "t=1,v1=abc" in page


def test_view_only_staff_see_event_and_attempt_signatures_masked(client, setup):
    dead = Delivery.objects.get(event=setup["dead"])
    dead.attempts.update(request_headers={"webhook-id": str(dead.event_id), "webhook-signature": "v1,c2lnbmVk"})
    staff = get_user_model().objects.create_user("viewer@hookline.example", "another horse battery", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=["view_webhookevent", "view_deliveryattempt"]))
    client.force_login(staff)
    page = client.get(reverse("admin:webhooks_webhookevent_change", args=[setup["dead"].pk])).content.decode()
    assert page and "t=1,v1=abc" not in page and "v1,c2lnbmVk" not in page
    assert "webhook-id: " + str(dead.event_id) in page and "application/json" in page
    assert page.count(SIGNATURE_HIDDEN) == 2  # Stripe-Signature, and ours on the attempt
    attempt_page = client.get(
        reverse("admin:webhooks_deliveryattempt_change", args=[dead.attempts.get().pk])
    ).content.decode()
    assert attempt_page and "v1,c2lnbmVk" not in attempt_page and SIGNATURE_HIDDEN in attempt_page
