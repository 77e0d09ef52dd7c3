"""Recording a batch of results takes its rows in id order, so it cannot deadlock with another locker."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from django.db import connection, connections

from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def receiver():
    """Answers 500 on /fail and 200 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500 if self.path == "/fail" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _waiting_on_a_lock(params) -> bool:
    # Its own autocommit connection: a transaction would keep reading one snapshot of the statistics.
    with psycopg.connect(**params, autocommit=True) as probe:
        return bool(
            probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0]
        )


def test_two_outcomes_recorded_while_another_transaction_locks_the_same_rows_in_id_order_do_not_deadlock(
    client, organization, receiver
):
    source = make_source(organization)
    # Created first, so its delivery has the lower id: it fails, the other one succeeds.
    make_destination(organization, f"{receiver}/fail", sources=[source])
    make_destination(organization, f"{receiver}/ok", sources=[source])
    body = '{"id":"evt_lock_order","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    claimed = sorted(delivery_service.claim_due_deliveries(10), key=lambda d: d.pk)
    assert len(claimed) == 2
    lower, higher = claimed
    # The success first: grouped by outcome, its UPDATE would run before the failure's.
    results = [(delivery, delivery_service.send(delivery)) for delivery in (higher, lower)]
    assert [sent.response.status for _, sent in results] == [200, 500]

    errors = []

    def record():
        try:
            delivery_service._record_results(results)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params) as other:
        # Another transaction (the sweeper's release, a deletion) locks the same rows in id order.
        other.execute("SELECT 1 FROM webhooks_delivery WHERE id = %s FOR UPDATE", [lower.pk])
        recording = threading.Thread(target=record)
        recording.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(params) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert recording.is_alive(), "the recording did not wait for the row the other transaction holds"
        # Out of order, the recording would now hold the higher row and wait for the lower one:
        # this statement would close the cycle and PostgreSQL would cancel one side.
        other.execute("SELECT 1 FROM webhooks_delivery WHERE id = %s FOR UPDATE", [higher.pk])
        other.commit()
        recording.join(10)

    assert not recording.is_alive() and errors == []
    assert dict(Delivery.objects.values_list("pk", "status")) == {
        lower.pk: Delivery.Status.PENDING,
        higher.pk: Delivery.Status.SUCCEEDED,
    }
    assert DeliveryAttempt.objects.count() == 2
