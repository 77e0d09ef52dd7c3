"""A dead delivery retried by hand or in bulk is pending again: it no longer says why it died ("no
retries left", an inactive destination), but what its last attempt left, as a delivery waiting for
its scheduled retry does; the retry's audit entry keeps the reason."""

import io

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils.html import strip_tags

from organizations.models import ApiKey, AuditLog
from webhooks.models import Delivery, DeliveryAttempt, Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.delivery import INACTIVE_DESTINATION_ERROR, delivery_retry

from .api_helpers import api_get, api_post, make_key
from .dashboard_helpers import ingest_stripe
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def run_by_the_test(monkeypatch):
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)


def send_due() -> None:
    delivery_service.dispatch_due_deliveries(max_seconds=10, linger_seconds=0)


def dead_after_its_one_attempt(client, organization, url: str, event_id: str = "evt_1") -> Delivery:
    """A delivery whose destination allows no retries, dead after one failed attempt to ``url``."""
    source = make_source(organization, name=f"source {event_id}")
    make_destination(organization, url, sources=[source], max_attempts=1, timeout_seconds=1)
    ingest_stripe(client, source, event_id)
    processing.process_received_events()
    send_due()
    delivery = Delivery.objects.get(event__provider_event_id=event_id)
    assert delivery.status == Delivery.Status.DEAD and delivery.attempt_count == 1
    return delivery


def dead_unsent(client, organization, url: str, event_id: str = "evt_unsent") -> Delivery:
    """A delivery dead-lettered without an attempt: its destination was turned off, then on again."""
    source = make_source(organization, name=f"source {event_id}")
    destination, _ = make_destination(organization, url, sources=[source])
    ingest_stripe(client, source, event_id)
    processing.process_received_events()
    Destination.objects.filter(pk=destination.pk).update(is_active=False)
    delivery_service.dead_letter_deliveries_of_inactive_destinations()
    Destination.objects.filter(pk=destination.pk).update(is_active=True)
    delivery = Delivery.objects.get(event__provider_event_id=event_id)
    assert delivery.status == Delivery.Status.DEAD and delivery.attempt_count == 0
    assert delivery.last_error == INACTIVE_DESTINATION_ERROR
    return delivery


def event_page(client, organization, delivery: Delivery) -> str:
    url = reverse("dashboard:event_detail", args=[organization.slug, delivery.event_id])
    return " ".join(strip_tags(client.get(url).content.decode()).split())


def show_event(delivery: Delivery) -> str:
    out = io.StringIO()
    call_command("show_event", str(delivery.event_id), stdout=out)
    return out.getvalue()


def test_a_delivery_retried_by_hand_after_its_retries_shows_its_last_attempt_s_error_everywhere(
    client, owner, organization, httpserver
):
    httpserver.expect_request("/hook").respond_with_data("down", status=503)
    delivery = dead_after_its_one_attempt(client, organization, httpserver.url_for("/hook"))
    dead_reason = delivery.last_error
    assert dead_reason == "HTTP 503: no retries left (the destination allows no retries)"

    client.force_login(owner)
    client.post(reverse("dashboard:delivery_retry", args=[organization.slug, delivery.pk]))
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert (delivery.last_status_code, delivery.last_error) == (503, "HTTP 503")

    page = event_page(client, organization, delivery)
    assert "Last attempt failed: HTTP 503" in page and "no retries left" not in page
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    shown = api_get(client, key, f"/api/v1/deliveries/{delivery.pk}").json()
    assert (shown["status"], shown["last_status_code"], shown["last_error"]) == ("pending", 503, "HTTP 503")
    assert "no retries left" not in show_event(delivery)
    # Why it died is not lost: the retry's audit entry holds it.
    entry = AuditLog.objects.get(action="delivery.retried")
    assert entry.changes["last_error"] == [dead_reason, "HTTP 503"]

    # Failing again, it takes the new attempt's outcome, as before.
    httpserver.clear()
    httpserver.expect_request("/hook").respond_with_data("bad gateway", status=502)
    send_due()
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DEAD
    assert (delivery.last_status_code, delivery.last_error) == (
        502,
        "HTTP 502: no retries left (the destination allows no retries)",
    )


def test_a_retried_delivery_whose_last_attempt_got_no_answer_shows_that_attempt_s_error(client, organization):
    delivery = dead_after_its_one_attempt(client, organization, "http://127.0.0.1:9/unreachable")
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.response_status is None and attempt.error.startswith("connection failed")

    delivery = delivery_retry(delivery=delivery)
    assert (delivery.last_status_code, delivery.last_error) == (None, attempt.error)


def test_a_delivery_that_died_unsent_retried_by_hand_has_no_last_error(client, owner, organization, httpserver):
    delivery = dead_unsent(client, organization, httpserver.url_for("/hook"))
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    assert api_post(client, key, f"/api/v1/deliveries/{delivery.pk}/retry").status_code == 202
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert (delivery.last_status_code, delivery.last_error) == (None, "")
    assert AuditLog.objects.get(action="delivery.retried").changes["last_error"] == [INACTIVE_DESTINATION_ERROR, ""]

    client.force_login(owner)
    assert "the destination is inactive" not in event_page(client, organization, delivery)
    assert "the destination is inactive" not in show_event(delivery)


def test_a_bulk_retry_leaves_each_dead_delivery_its_last_attempt_s_error_and_a_waiting_one_its_own(
    client, owner, organization, httpserver
):
    httpserver.expect_request("/hook").respond_with_data("down", status=500)
    after_attempt = dead_after_its_one_attempt(client, organization, httpserver.url_for("/hook"))
    unsent = dead_unsent(client, organization, httpserver.url_for("/hook"))
    # One waiting for its scheduled retry, whose last_error is not from an attempt row's own words.
    waiting = dead_after_its_one_attempt(client, organization, httpserver.url_for("/hook"), event_id="evt_waiting")
    Delivery.objects.filter(pk=waiting.pk).update(
        status=Delivery.Status.PENDING,
        last_error="its result could not be recorded (OperationalError); tried again later",
    )

    # Dead and waiting alike, as the service allows (the API and the dashboard ask for dead ones).
    asked = operations.bulk_retry_start(organization=organization, filters={"statuses": ["dead", "pending"]})
    job = operations.bulk_retry_run(asked.pk)
    assert job.retried == 3

    after_attempt.refresh_from_db()
    unsent.refresh_from_db()
    waiting.refresh_from_db()
    assert (after_attempt.status, after_attempt.last_status_code, after_attempt.last_error) == (
        Delivery.Status.PENDING,
        500,
        "HTTP 500",
    )
    assert (unsent.status, unsent.last_status_code, unsent.last_error) == (Delivery.Status.PENDING, None, "")
    assert waiting.last_error == "its result could not be recorded (OperationalError); tried again later"

    client.force_login(owner)
    page = event_page(client, organization, after_attempt)
    assert "Last attempt failed: HTTP 500" in page and "no retries left" not in page
    assert "the destination is inactive" not in event_page(client, organization, unsent)
