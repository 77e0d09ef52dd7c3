"""The REST API's bulk retry: the dashboard's job (dead deliveries only, one overlapping job at a time)
with the delivery list's filters, followed at /bulk_retries/<id>, for read-write keys, audited."""

from datetime import UTC, datetime, timedelta

import pytest

from organizations.models import ApiKey, AuditLog
from webhooks import tasks
from webhooks.models import BulkRetry, Delivery
from webhooks.services import operations
from webhooks.services.destinations import destination_bulk_retry
from webhooks.services.permissions import NotAllowed
from webhooks.services.source_deletion import source_request_deletion

from .api_helpers import api_get, api_post, make_delivery, make_event, make_key
from .factories import make_destination, make_source

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    # The job is run by hand below; nothing is sent anywhere.
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def world(organization):
    source = make_source(organization, name="Stripe live")
    other_source = make_source(organization, name="GitHub")
    billing, _ = make_destination(organization, "http://127.0.0.1:9/billing", sources=[source, other_source])
    crm, _ = make_destination(organization, "http://127.0.0.1:9/crm", sources=[source])
    dead = {
        "paid_billing": make_delivery(
            make_event(source, event_type="invoice.paid", received_at=NOW - timedelta(hours=2)), billing
        ),
        "failed_billing": make_delivery(
            make_event(source, event_type="invoice.payment_failed", received_at=NOW - timedelta(days=2)), billing
        ),
        "customer_crm": make_delivery(
            make_event(source, event_type="customer.created", received_at=NOW - timedelta(hours=1)), crm
        ),
        "push_billing": make_delivery(
            make_event(other_source, event_type="push", received_at=NOW - timedelta(hours=3)), billing
        ),
    }
    make_delivery(make_event(source), billing, status=Delivery.Status.SUCCEEDED)
    make_delivery(make_event(source), crm, status=Delivery.Status.PENDING)
    api_key, key = make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")
    return {"source": source, "other_source": other_source, "billing": billing, "crm": crm, "dead": dead} | {
        "api_key": api_key,
        "key": key,
    }


def _retry(client, key, **body):
    return api_post(client, key, "/api/v1/deliveries/retry", body)


def test_a_bulk_retry_is_a_job_to_follow_until_every_dead_delivery_is_retried(client, organization, world):
    response = _retry(client, world["key"])
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["status"] == "queued" and job["total"] == 4 and job["retried"] == 0
    assert job["filters"] == {"status": "dead"} and job["finished_at"] is None
    assert response["Location"] == f"http://testserver/api/v1/bulk_retries/{job['id']}"
    # A read-only key may follow it.
    _, reader = make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")
    assert api_get(client, reader, f"/api/v1/bulk_retries/{job['id']}").json() == job

    operations.bulk_retry_run(job["id"])
    done = api_get(client, reader, f"/api/v1/bulk_retries/{job['id']}").json()
    assert done["status"] == "done" and done["retried"] == 4 and done["finished_at"]
    for delivery in world["dead"].values():
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.PENDING

    entry = AuditLog.objects.get(action="deliveries.bulk_retry_requested")
    assert entry.actor_type == AuditLog.ActorType.API_KEY and entry.actor_user is None
    assert "ops-script" in entry.actor_label and world["api_key"].prefix in entry.actor_label
    assert entry.organization == organization and entry.changes["matching"] == 4
    assert BulkRetry.objects.get().requested_by is None  # a key is no user: the audit entry names it


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"destination": "billing"}, {"paid_billing", "failed_billing", "push_billing"}),
        ({"source": "other_source"}, {"push_billing"}),
        ({"event_type": "invoice.*"}, {"paid_billing", "failed_billing"}),
        ({"event_type": "invoice, customer.created"}, {"paid_billing", "failed_billing", "customer_crm"}),
        ({"received_after": NOW - timedelta(days=1)}, {"paid_billing", "customer_crm", "push_billing"}),
        ({"received_before": NOW - timedelta(hours=2)}, {"failed_billing", "push_billing"}),
        (
            {"destination": "billing", "event_type": "invoice.paid", "received_after": NOW - timedelta(hours=2)},
            {"paid_billing"},
        ),
    ],
)
def test_filters_choose_the_dead_deliveries_retried(client, world, body, expected):
    body = {key: world[value].pk if key in ("destination", "source") else value for key, value in body.items()}
    body = {key: value.isoformat() if isinstance(value, datetime) else value for key, value in body.items()}
    response = _retry(client, world["key"], **body)
    assert response.status_code == 202, response.content
    assert response.json()["total"] == len(expected)
    operations.bulk_retry_run(response.json()["id"])
    retried = {name for name, delivery in world["dead"].items() if Delivery.objects.get(pk=delivery.pk).attempt_count}
    pending = {
        name
        for name, delivery in world["dead"].items()
        if Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.PENDING
    }
    assert pending == expected and retried == set(world["dead"])


def test_the_delivery_list_with_the_same_filters_shows_what_a_bulk_retry_takes(client, world):
    filters = {"status": "dead", "destination": world["billing"].pk, "received_after": "2026-11-30T11:00:00Z"}
    listed = api_get(client, world["key"], "/api/v1/deliveries", **filters).json()["results"]
    assert {item["id"] for item in listed} == {str(world["dead"][n].pk) for n in ("paid_billing", "push_billing")}
    job = _retry(client, world["key"], **filters).json()
    assert job["total"] == len(listed)
    assert job["filters"] == filters  # its time as sent, in Z as every time the API answers


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "pending"}, "status"),
        ({"status": "succeeded"}, "status"),
        ({"destination": "abc"}, "destination"),
        ({"destination": 0}, "destination"),
        ({"source": 2**63}, "source"),
        ({"received_after": "yesterday"}, "received_after"),
        ({"received_after": "2026-12-01T10:00:00Z", "received_before": "2026-12-01T09:00:00Z"}, "received_before"),
        ({"event_type": "x" * 1001}, "event_type"),
        # Patterns a destination's filter refuses: they would match nothing (409 nothing_to_retry).
        ({"event_type": "invoice.*,[bad"}, "event_type"),
        ({"event_type": "invoice paid"}, "event_type"),
    ],
)
def test_bad_bodies_are_a_400_naming_the_field(client, world, body, field):
    response = _retry(client, world["key"], **body)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid" and list(response.json()["fields"]) == [field]
    assert not BulkRetry.objects.exists()


def test_another_organizations_ids_are_unknown(client, organization, other_organization, world):
    theirs_source = make_source(other_organization, name="Theirs")
    theirs_destination, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs", sources=[theirs_source])
    theirs_dead = make_delivery(make_event(theirs_source), theirs_destination)
    for field, theirs in (("destination", theirs_destination.pk), ("source", theirs_source.pk)):
        response = _retry(client, world["key"], **{field: theirs})
        assert response.status_code == 400 and response.json()["fields"] == {field: [f"no such {field}"]}
    assert not BulkRetry.objects.exists()
    # Every destination means every one of ours.
    job = _retry(client, world["key"]).json()
    assert job["total"] == 4
    operations.bulk_retry_run(job["id"])
    theirs_dead.refresh_from_db()
    assert theirs_dead.status == Delivery.Status.DEAD
    # Their key does not see our job.
    _, their_key = make_key(other_organization)
    response = api_get(client, their_key, f"/api/v1/bulk_retries/{job['id']}")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    for malformed in ("abc", "0", "-1", "99999999999999999999"):
        assert api_get(client, world["key"], f"/api/v1/bulk_retries/{malformed}").status_code == 404


def test_the_bulk_retry_path_is_not_taken_for_a_delivery_id(client, world):
    response = api_get(client, world["key"], "/api/v1/deliveries/retry")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_a_read_only_key_cannot_start_one(client, organization, world):
    _, reader = make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")
    response = _retry(client, reader)
    assert response.status_code == 403 and response.json()["error"] == "read_only_key"
    assert not BulkRetry.objects.exists() and not AuditLog.objects.filter(action__startswith="deliveries.").exists()


def test_nothing_to_retry_is_a_conflict_without_a_job(client, world):
    response = _retry(client, world["key"], event_type="charge.*")
    assert response.status_code == 409 and response.json()["error"] == "nothing_to_retry"
    assert "nothing to retry" in response.json()["detail"]
    assert not BulkRetry.objects.exists() and not AuditLog.objects.filter(action__startswith="deliveries.").exists()


def test_an_inactive_destination_is_refused(client, world):
    world["crm"].is_active = False
    world["crm"].save(update_fields=["is_active"])
    response = _retry(client, world["key"], destination=world["crm"].pk)
    assert response.status_code == 409 and "inactive" in response.json()["detail"]
    assert not BulkRetry.objects.exists()


def test_one_job_at_a_time_for_the_same_deliveries_as_on_the_dashboard(client, organization, world):
    billing, crm = world["billing"], world["crm"]
    first = _retry(client, world["key"], destination=billing.pk)
    assert first.status_code == 202
    # The same destination, or every destination, may take the same deliveries: refused.
    for body, what in (
        ({"destination": billing.pk, "event_type": "push"}, "this destination"),
        ({}, f"destination {billing.pk}"),
    ):
        again = _retry(client, world["key"], **body)
        assert again.status_code == 409 and f"a bulk retry of {what} is already queued" in again.json()["detail"]
    with pytest.raises(operations.OperationError, match="already queued"):
        destination_bulk_retry(destination=billing)
    # Another destination takes other deliveries.
    assert _retry(client, world["key"], destination=crm.pk).status_code == 202
    operations.bulk_retry_run(first.json()["id"])
    # An organization-wide job holds back every destination's, the dashboard's button included.
    BulkRetry.objects.update(status=BulkRetry.Status.DONE)
    make_delivery(make_event(world["source"]), crm)
    assert _retry(client, world["key"]).status_code == 202
    with pytest.raises(operations.OperationError, match="a bulk retry of every destination is already queued"):
        destination_bulk_retry(destination=crm)
    response = _retry(client, world["key"], destination=crm.pk)
    assert response.status_code == 409 and "every destination" in response.json()["detail"]


def test_the_service_itself_refuses_a_read_only_key(organization, world):
    read_only, _ = make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")
    with pytest.raises(NotAllowed):
        operations.bulk_retry_request(organization=organization, filters={}, actor=read_only)
    assert not BulkRetry.objects.exists()


def test_the_jobs_are_listed_newest_first_as_each_one_is_shown(client, organization, other_organization, world):
    # A client that lost a job's URL finds it again: the API's jobs and the dashboard's, not another organization's.
    first = _retry(client, world["key"], destination=world["billing"].pk).json()
    operations.bulk_retry_run(first["id"])
    dashboards = destination_bulk_retry(destination=world["crm"])
    BulkRetry.objects.create(organization=other_organization, filters={"statuses": ["dead"]})
    _, reader = make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")

    listed = api_get(client, reader, "/api/v1/bulk_retries")
    assert listed.status_code == 200, listed.content
    shown = [api_get(client, reader, f"/api/v1/bulk_retries/{pk}").json() for pk in (dashboards.pk, first["id"])]
    assert listed.json()["results"] == shown and listed.json()["next"] is None
    assert [job["status"] for job in shown] == ["queued", "done"]

    assert api_get(client, reader, "/api/v1/bulk_retries", status="done").json()["results"] == [shown[1]]
    assert api_get(client, reader, "/api/v1/bulk_retries", status="queued").json()["results"] == [shown[0]]
    assert api_get(client, reader, "/api/v1/bulk_retries", status="running").json()["results"] == []
    page = api_get(client, reader, "/api/v1/bulk_retries", limit=1).json()
    assert page["results"] == [shown[0]]
    following = client.get(page["next"], HTTP_AUTHORIZATION=f"Bearer {reader}").json()
    assert following["results"] == [shown[1]] and following["next"] is None

    for params, field in (({"status": "dead"}, "status"), ({"destination": world["billing"].pk}, "destination")):
        refused = api_get(client, reader, "/api/v1/bulk_retries", **params)
        assert refused.status_code == 400 and list(refused.json()["fields"]) == [field], refused.content


def test_an_organization_id_past_32_bits_can_ask_for_a_bulk_retry(client, organization, organization_ids_from):
    # Organization ids are bigint: the lock that serializes an organization's requests took the id
    # as it was, and PostgreSQL has no pg_advisory_xact_lock(integer, bigint): every request was a 500.
    from organizations.services import organization_create

    organization_ids_from(2**31 + organization.pk)
    large = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    assert large.pk > 2**31
    source = make_source(large)
    destination, _ = make_destination(large, "http://127.0.0.1:9/hook", sources=[source])
    make_delivery(make_event(source), destination)
    _, key = make_key(large, access=ApiKey.Access.READ_WRITE, name="ops-script")

    response = _retry(client, key)

    assert response.status_code == 202, response.content
    assert BulkRetry.objects.filter(organization=large).count() == 1


def test_a_bulk_retry_counts_and_leaves_out_the_deliveries_of_a_source_being_deleted(client, world, monkeypatch):
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)
    source_request_deletion(source=world["other_source"])
    response = _retry(client, world["key"])
    assert response.status_code == 202, response.content
    job = response.json()
    assert (job["total"], job["retried"], job["left_out"]) == (4, 0, 1)

    operations.bulk_retry_run(job["id"])
    done = api_get(client, world["key"], f"/api/v1/bulk_retries/{job['id']}").json()
    assert (done["status"], done["total"], done["retried"], done["left_out"]) == ("done", 4, 3, 1)
    world["dead"]["push_billing"].refresh_from_db()
    assert world["dead"]["push_billing"].status == Delivery.Status.DEAD
    # Left with only those: nothing to retry, and the answer says why.
    refused = _retry(client, world["key"])
    assert refused.status_code == 409
    assert "the 1 that match are left out, their source is being deleted" in refused.content.decode()
