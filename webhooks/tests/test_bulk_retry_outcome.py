"""What became of the deliveries a bulk retry retried: succeeded, dead again, still pending; counted
over the deliveries it last retried (a later retry, by hand or by another job, takes them over; a
deleted one is no longer counted), on the API, the dashboard's live status and the admin."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.html import strip_tags
from werkzeug import Response

from organizations.models import ApiKey
from webhooks.models import BulkRetry, Delivery, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.delivery import delivery_retry

from .api_helpers import api_get, api_post, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db

# How the fixed receiver answers each event when the bulk retry sends it again: the first three are
# taken, one is refused for good (dead again), one fails for now (retried later on the schedule).
AFTER_THE_FIX = {"evt_0": 200, "evt_1": 200, "evt_2": 200, "evt_3": 410, "evt_4": 503}


@pytest.fixture(autouse=True)
def run_by_the_test(monkeypatch):
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)


class Receiver:
    """A destination's receiver: refuses everything until fixed, then answers by AFTER_THE_FIX."""

    def __init__(self) -> None:
        self.fixed = False

    def __call__(self, request):
        if not self.fixed:
            return Response("broken", status=400)
        return Response("", status=AFTER_THE_FIX[json.loads(request.get_data())["id"]])


def send_due() -> None:
    delivery_service.dispatch_due_deliveries(max_seconds=10, linger_seconds=0)


@pytest.fixture
def world(client, organization, httpserver):
    """Five dead deliveries to a receiver that refused them all, now fixed; a read-write key."""
    receiver = Receiver()
    httpserver.expect_request("/hook", method="POST").respond_with_handler(receiver)
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    for event_id in AFTER_THE_FIX:
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_received_events()
    send_due()
    assert Delivery.objects.filter(destination=destination, status=Delivery.Status.DEAD).count() == 5
    receiver.fixed = True
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    return {"destination": destination, "key": key}


def delivery_of(event_id: str) -> Delivery:
    return Delivery.objects.get(event__provider_event_id=event_id)


def retry_in_bulk(client, key, **filters) -> int:
    asked = api_post(client, key, "/api/v1/deliveries/retry", filters)
    assert asked.status_code == 202, asked.content
    assert asked.json()["outcome"] == {"succeeded": 0, "dead": 0, "pending": 0, "not_followed": 0}
    operations.bulk_retry_run(asked.json()["id"])
    return asked.json()["id"]


def outcome(client, key, job_id) -> dict:
    return api_get(client, key, f"/api/v1/bulk_retries/{job_id}").json()["outcome"]


def test_the_outcome_follows_the_retried_deliveries_as_they_are_sent(client, world):
    job_id = retry_in_bulk(client, world["key"])
    assert outcome(client, world["key"], job_id) == {"succeeded": 0, "dead": 0, "pending": 5, "not_followed": 0}

    send_due()
    assert outcome(client, world["key"], job_id) == {"succeeded": 3, "dead": 1, "pending": 1, "not_followed": 0}
    assert (delivery_of("evt_3").status, delivery_of("evt_4").status) == ("dead", "pending")
    listed = api_get(client, world["key"], "/api/v1/bulk_retries").json()["results"]
    assert [(job["id"], job["retried"], job["outcome"]) for job in listed] == [
        (job_id, 5, {"succeeded": 3, "dead": 1, "pending": 1, "not_followed": 0})
    ]


def test_a_delivery_retried_again_belongs_to_the_newest_retry_and_a_deleted_one_is_not_counted(client, world):
    first = retry_in_bulk(client, world["key"])
    send_due()

    # Retried by hand: what happens to it now is no bulk retry's doing.
    delivery_retry(delivery=delivery_of("evt_3"))
    assert outcome(client, world["key"], first) == {"succeeded": 3, "dead": 0, "pending": 1, "not_followed": 1}
    assert Delivery.objects.get(pk=delivery_of("evt_3").pk).bulk_retry_id is None

    # Dead again, then taken by a second job: the second job's now.
    send_due()
    assert delivery_of("evt_3").status == Delivery.Status.DEAD
    second = retry_in_bulk(client, world["key"])
    assert outcome(client, world["key"], second) == {"succeeded": 0, "dead": 0, "pending": 1, "not_followed": 0}
    assert delivery_of("evt_3").bulk_retry_id == second

    # Deleted (as retention deletes events, with their deliveries): counted nowhere any more.
    WebhookEvent.objects.filter(provider_event_id="evt_0").delete()
    assert outcome(client, world["key"], first) == {"succeeded": 2, "dead": 0, "pending": 1, "not_followed": 2}


def test_a_deleted_job_leaves_its_deliveries_in_place(client, world):
    job_id = retry_in_bulk(client, world["key"])
    BulkRetry.objects.filter(pk=job_id).delete()  # as an organization's deletion deletes its jobs
    assert Delivery.objects.filter(bulk_retry__isnull=True, status=Delivery.Status.PENDING).count() == 5


def test_a_job_from_before_outcomes_were_recorded_shows_none(client, organization, world):
    old = BulkRetry.objects.create(
        organization=organization, filters={"statuses": ["dead"]}, status="done", total=4, retried=4
    )
    BulkRetry.objects.filter(pk=old.pk).update(outcome_recorded=False)
    assert outcome(client, world["key"], old.pk) is None


def test_another_organization_sees_neither_the_job_nor_its_outcome(client, world, other_organization):
    job_id = retry_in_bulk(client, world["key"])
    send_due()
    _, their_key = make_key(other_organization, access=ApiKey.Access.READ_WRITE)
    theirs = BulkRetry.objects.create(organization=other_organization, filters={"statuses": ["dead"]})

    assert api_get(client, their_key, f"/api/v1/bulk_retries/{job_id}").status_code == 404
    listed = api_get(client, their_key, "/api/v1/bulk_retries").json()["results"]
    assert [(job["id"], job["outcome"]) for job in listed] == [
        (theirs.pk, {"succeeded": 0, "dead": 0, "pending": 0, "not_followed": 0})
    ]
    ours = api_get(client, world["key"], "/api/v1/bulk_retries").json()["results"]
    assert [job["id"] for job in ours] == [job_id]


def words(html: str) -> str:
    return " ".join(strip_tags(html).split())


def test_the_dashboard_status_shows_the_outcome_and_follows_it_while_it_is_being_sent(client, owner, world):
    client.force_login(owner)
    partial = reverse("dashboard:destination_bulk_retries", args=["acme", world["destination"].pk])
    retry_in_bulk(client, world["key"], destination=world["destination"].pk)  # the page lists its own

    # Finished queueing, all five due: the status keeps polling for their outcome.
    queued = client.get(partial)
    status = queued.content.decode()
    assert "5 of 5 sent again, one more attempt each: 0 delivered, 0 failed again, 5 still pending" in words(status)
    assert 'hx-trigger="every 2s"' in status
    seen = queued.context["bulk_retry_seen"]
    assert client.get(partial, {"seen": seen}).status_code == 204  # nothing new

    send_due()
    sent = client.get(partial, {"seen": seen})
    status = sent.content.decode()
    assert sent.status_code == 200
    assert "3 delivered, 1 failed again, 1 still pending" in words(status)
    # The one left waits for its next scheduled attempt, not due now: following stops.
    assert "hx-trigger" not in status


def test_the_admin_shows_the_outcome(client, world):
    job_id = retry_in_bulk(client, world["key"])
    send_due()
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    listed = client.get(reverse("admin:webhooks_bulkretry_changelist")).content.decode()
    shown = client.get(reverse("admin:webhooks_bulkretry_change", args=[job_id])).content.decode()
    for page in (listed, shown):
        assert "3 delivered, 1 failed again, 1 pending or being sent" in page


def test_the_outcome_is_counted_from_the_bulk_retry_index(organization):
    from django.db import connection

    from webhooks.selectors import bulk_retries_for_organization

    counted = bulk_retries_for_organization(organization=organization)
    sql, params = counted.query.sql_with_params()
    with connection.cursor() as cursor:
        # A near-empty table would be read whole: with only bitmap scans left, the plan shows
        # which index can serve the counts (test_admin_indexes does the same).
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan on delivery_bulk_retry_status" in plan
