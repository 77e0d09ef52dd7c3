"""The claimed deliveries as the claim returns them on PostgreSQL (one plain statement that claims
and reads them, its rows made into instances without the ORM's query) must be the objects the
ORM's read made: every field of the delivery, its event and its destination, the secrets decrypted,
in the claim's order."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from webhooks.models import Delivery, Destination, Source, WebhookEvent
from webhooks.services import delivery as delivery_service

from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":  # the embedded mode claims and loads with the ORM
        pytest.skip("the claim's plain statement is PostgreSQL's")


def field_values(instance) -> dict:
    # The types too: a bytes body where the ORM gave a memoryview, or a str where it gave a UUID,
    # would compare equal and still differ.
    return {
        field.attname: (type(getattr(instance, field.attname)), getattr(instance, field.attname))
        for field in instance._meta.concrete_fields
    }


def as_loaded(delivery) -> dict:
    return {
        "delivery": field_values(delivery),
        "event": field_values(delivery.event),
        "destination": field_values(delivery.destination),
        "source_deletion_requested_at": delivery.source_deletion_requested_at,
        "state": (delivery._state.db, delivery._state.adding, delivery.destination._state.adding),
        "cached": (Delivery.event.is_cached(delivery), Delivery.destination.is_cached(delivery)),
    }


def test_the_claimed_rows_are_the_objects_the_orm_read_made(organization):
    source = make_source(organization)
    plain, _ = make_destination(organization, "http://127.0.0.1:9/plain", sources=[source])
    dressed, _ = make_destination(
        organization,
        "http://127.0.0.1:9/dressed",
        sources=[source],
        custom_headers={"Authorization": "Bearer gateway-key"},
        retry_schedule=[5, 60],
        timeout_seconds=3.5,
    )
    Destination.objects.filter(pk=dressed.pk).update(
        previous_secret="whsec_previous", previous_secret_expires_at=timezone.now() + timedelta(hours=1)
    )
    now = timezone.now()
    made = []
    for n, (destination, is_replay) in enumerate([(dressed, False), (plain, False), (dressed, True), (plain, True)]):
        event = WebhookEvent.objects.create(
            organization=organization,
            source=source,
            body=b'{"n": %d, "bytes": "\xc3\xa9"}' % n,
            headers={"Content-Type": "application/json", "X-N": str(n)},
            event_type="invoice.paid",
            remote_ip="203.0.113.7",
        )
        made.append(
            Delivery.objects.create(
                organization=organization,
                event=event,
                destination=destination,
                is_replay=is_replay,
                attempt_count=n,
                manual_attempts=n // 2,
                # Due in the reverse of their ids' order, two at the same instant: the claim's
                # order is (next_attempt_at, id).
                next_attempt_at=now - timedelta(seconds=10 - min(n, 2)),
            )
        )
    going = make_source(organization)
    going_event = WebhookEvent.objects.create(organization=organization, source=going, body=b"{}")
    made.append(
        Delivery.objects.create(
            organization=organization, event=going_event, destination=plain, next_attempt_at=now - timedelta(minutes=1)
        )
    )
    Source.objects.filter(pk=going.pk).update(deletion_requested_at=now)

    claimed = delivery_service._claim_once(10, owner="the-owner")[1]

    expected = list(
        delivery_service._with_source_state(Delivery.objects.filter(pk__in=[d.pk for d in made[:4]])).order_by(
            "next_attempt_at", "id"
        )
    )
    assert [d.pk for d in claimed] == [made[0].pk, made[1].pk, made[2].pk, made[3].pk]
    assert [as_loaded(d) for d in claimed] == [as_loaded(d) for d in expected]
    # As claimed: the row as the claiming UPDATE left it.
    first = claimed[0]
    assert first.status == Delivery.Status.IN_FLIGHT and first.claimed_by == "the-owner"
    assert first.attempt_count == 1 and first.claimed_at is not None
    # The encrypted fields decrypted, as the send reads them.
    assert first.destination.custom_header_values() == {"Authorization": "Bearer gateway-key"}
    assert first.destination.signing_secrets()[1] == "whsec_previous"
    assert bytes(first.event.body) == b'{"n": 0, "bytes": "\xc3\xa9"}'
    # The source being deleted: its delivery dead-lettered unsent, as before.
    going_delivery = Delivery.objects.get(pk=made[4].pk)
    assert going_delivery.status == Delivery.Status.DEAD
    assert going_delivery.last_error == delivery_service.SOURCE_BEING_DELETED_ERROR
    assert going_delivery.attempt_count == 0


def test_a_claim_dated_by_the_caller_is_dated_so(organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/dated", sources=[source])
    event = WebhookEvent.objects.create(organization=organization, source=source, body=b"{}")
    Delivery.objects.create(organization=organization, event=event, destination=destination)
    at = timezone.now() + timedelta(seconds=1)

    [claimed] = delivery_service.claim_due_deliveries(1, now=at)

    assert claimed.claimed_at == at == Delivery.objects.get(pk=claimed.pk).claimed_at


def test_of_a_claim_a_row_that_cannot_be_loaded_is_recorded_and_the_others_are_sent(organization):
    source = make_source(organization)
    good, _ = make_destination(organization, "http://127.0.0.1:9/good", sources=[source])
    bad, _ = make_destination(organization, "http://127.0.0.1:9/bad", sources=[source])
    made = {}
    for name, destination in (("bad", bad), ("good", good)):
        event = WebhookEvent.objects.create(organization=organization, source=source, body=b"{}")
        made[name] = Delivery.objects.create(organization=organization, event=event, destination=destination)
    with connection.cursor() as cursor:  # a custom header under a key no longer configured
        cursor.execute("UPDATE webhooks_destination SET custom_headers = 'gAAAAAnot-a-token' WHERE id = %s", [bad.pk])

    claimed = delivery_service.claim_due_deliveries(10)

    assert [d.pk for d in claimed] == [made["good"].pk]
    assert claimed[0].status == Delivery.Status.IN_FLIGHT
    unloadable = Delivery.objects.get(pk=made["bad"].pk)
    assert unloadable.status == Delivery.Status.PENDING and unloadable.claimed_at is None
    # Put back unsent, its attempt not counted: the platform's keys, not the receiver, are at fault
    # (test_secret_unreadable_paths).
    assert unloadable.attempt_count == 0
    assert unloadable.last_error.startswith("not sent: the destination's signing secret or custom headers is damaged")
    assert unloadable.attempts.count() == 0
