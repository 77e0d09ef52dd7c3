"""One tenant's delivery that recording or claiming trips on must not stop the others' sends."""

import pytest
from django.db import connection

from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import processing

from .factories import make_destination, make_source


@pytest.fixture(autouse=True)
def _no_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def two_tenants(organization, other_organization, httpserver):
    """One due delivery per tenant; acme's is made first, so it is the older one."""
    made = {}
    for org in (organization, other_organization):
        source = make_source(org)
        destination, _ = make_destination(org, httpserver.url_for(f"/{org.slug}"), sources=[source])
        WebhookEvent.objects.create(organization=org, source=source, body=b"{}")
        made[org.slug] = destination
        httpserver.expect_request(f"/{org.slug}").respond_with_data("ok")
    assert processing.process_event_batch() == 2
    return {slug: Delivery.objects.get(destination=destination) for slug, destination in made.items()}


def test_a_result_that_cannot_be_recorded_leaves_neither_it_nor_the_others_in_flight(two_tenants, monkeypatch):
    bad = two_tenants["acme"]
    decide = delivery_service.decide_outcome

    def decide_outcome(response, *, attempt_count, destination, age_seconds=0.0):
        if destination.pk == bad.destination_id:
            raise TypeError("a value the policy code does not expect")
        return decide(response, attempt_count=attempt_count, destination=destination, age_seconds=age_seconds)

    monkeypatch.setattr(delivery_service, "decide_outcome", decide_outcome)
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 2

    good = two_tenants["globex"]
    good.refresh_from_db()
    assert good.status == Delivery.Status.SUCCEEDED and good.attempts.count() == 1
    bad.refresh_from_db()
    # Sent once, so not left in flight for the sweeper to release and send again: waits for a retry.
    assert bad.status == Delivery.Status.PENDING and bad.claimed_at is None
    assert bad.attempt_count == 1 and bad.next_attempt_at is not None
    assert "its result could not be recorded (TypeError)" in bad.last_error


def test_a_destination_whose_secret_cannot_be_read_does_not_stop_the_other_tenants_sends(two_tenants, httpserver):
    bad = two_tenants["acme"]
    with connection.cursor() as cursor:  # a secret under a key no longer configured
        cursor.execute(
            "UPDATE webhooks_destination SET secret = 'gAAAAAnot-a-token' WHERE id = %s", [bad.destination_id]
        )
    # Only globex's is sent: acme's is put back unsent, its attempt not counted (see
    # test_secret_unreadable_paths).
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1

    good = two_tenants["globex"]
    good.refresh_from_db()
    assert good.status == Delivery.Status.SUCCEEDED
    bad.refresh_from_db()
    assert bad.status == Delivery.Status.PENDING and bad.claimed_at is None and bad.attempt_count == 0
    assert bad.last_error.startswith("not sent: the destination's signing secret")
    assert [request.path for request, _ in httpserver.log] == ["/globex"]
    assert Destination.objects.filter(pk=bad.destination_id).exists()
