"""Locks that change no key take FOR NO KEY UPDATE, not FOR UPDATE: a row inserted meanwhile that
references a locked row (its foreign key check takes a key share on it) does not wait for them.

Seen from a second real connection (a thread's own), with a lock_timeout: one that had to wait for
the lock gives up with lock_not_available instead of inserting."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services import delivery as delivery_service
from webhooks.services import lifecycle

from .api_helpers import make_delivery, make_event
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "http://127.0.0.1:9/hooks"


class _RolledBack(Exception):
    pass


def insert_from_another_connection(insert, *, keep: bool) -> str:
    """Run ``insert`` in a transaction of another connection that waits at most 2 s for a lock; what
    came of it: "inserted", or the SQLSTATE it failed with (55P03: it waited for a lock in vain).
    ``keep``: commit it, else roll it back."""
    outcome = []

    def run():
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '2s'")
                    # Django's foreign keys are checked at the commit: here at the INSERT, rolled back or not.
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                insert()
                outcome.append("inserted")
                if not keep:
                    raise _RolledBack
        except _RolledBack:
            pass
        except OperationalError as exc:
            outcome.append(getattr(exc.__cause__, "sqlstate", None) or str(exc))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    return outcome[0]


def test_releasing_lost_claims_does_not_hold_up_an_attempt_recorded_meanwhile(organization):
    # The sweeper locked the claims it releases FOR UPDATE, which blocks the key share an attempt's
    # foreign key check takes: a dispatcher recording an attempt of one of them waited for it.
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    lost = Delivery.objects.create(
        organization=organization,
        event=make_event(source),
        destination=destination,
        status=Delivery.Status.IN_FLIGHT,
        attempt_count=1,
        claimed_at=timezone.now() - timedelta(days=1),
    )

    def record_an_attempt():
        DeliveryAttempt.objects.create(organization=organization, delivery_id=lost.pk, attempt_number=1, duration_ms=5)

    with transaction.atomic():  # the sweeper's transaction, held open while the other connection inserts
        assert delivery_service.release_lost_claims(now=timezone.now()) == 1
        assert insert_from_another_connection(record_an_attempt, keep=False) == "inserted"
    lost.refresh_from_db()
    assert (lost.status, lost.claimed_at) == (Delivery.Status.PENDING, None)


def test_retention_keeping_the_keys_does_not_hold_up_a_replay_which_keeps_its_event(organization, monkeypatch):
    # The step that writes the purged events' keys locked the events FOR UPDATE though it deletes
    # none of them: a replay's delivery to one of them waited for it. Made meanwhile, that delivery
    # keeps its event: the deleting step looks at the events again.
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = make_event(source, provider_event_id="evt_old", received_at=timezone.now() - timedelta(days=400))
    make_delivery(event, destination, status=Delivery.Status.SUCCEEDED)
    Delivery.objects.filter(event=event).update(completed_at=timezone.now() - timedelta(days=399))
    keep_keys, replays = lifecycle._keep_keys, []

    def replay():
        Delivery.objects.create(
            organization=organization,
            event_id=event.pk,
            destination=destination,
            status=Delivery.Status.PENDING,
            is_replay=True,
        )

    def keeping_keys_while_a_replay_comes(events, **kwargs):
        wrote = keep_keys(events, **kwargs)
        replays.append(insert_from_another_connection(replay, keep=True))
        return wrote

    monkeypatch.setattr(lifecycle, "_keep_keys", keeping_keys_while_a_replay_comes)
    deleted = lifecycle.purge_expired_events()
    assert replays == ["inserted"]
    assert deleted == 0
    assert Delivery.objects.filter(event_id=event.pk, is_replay=True, status=Delivery.Status.PENDING).exists()
