"""The REST API's changes: retry, replay, pause and resume, with the dashboard's rules and audit."""

import json

import pytest

from organizations.models import ApiKey, AuditLog
from webhooks.models import Delivery, WebhookEvent

from .api_helpers import api_post, make_delivery, make_event, make_key
from .factories import make_destination, make_source


@pytest.fixture
def setup(organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = make_event(source, provider_event_id="evt_1")
    api_key, key = make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")
    return source, destination, event, api_key, key


def _entry(action) -> AuditLog:
    return AuditLog.objects.filter(action=action).get()


def _assert_by_key(entry: AuditLog, api_key: ApiKey, organization):
    assert entry.actor_type == AuditLog.ActorType.API_KEY and entry.actor_user is None
    assert "ops-script" in entry.actor_label and api_key.prefix in entry.actor_label
    assert entry.organization == organization


def test_retry_a_dead_delivery(client, organization, setup):
    _, destination, event, api_key, key = setup
    delivery = make_delivery(event, destination)
    response = api_post(client, key, f"/api/v1/deliveries/{delivery.pk}/retry")
    assert response.status_code == 202, response.content
    assert response.json()["id"] == str(delivery.pk) and response.json()["status"] == "pending"
    assert (
        response["Location"] == f"http://testserver/api/v1/deliveries/{delivery.pk}"
    )  # to follow, as a bulk retry's job
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.manual_attempts == 1
    _assert_by_key(_entry("delivery.retried"), api_key, organization)


def test_retrying_a_succeeded_delivery_is_a_conflict(client, setup):
    _, destination, event, _, key = setup
    delivery = make_delivery(event, destination, status=Delivery.Status.SUCCEEDED)
    response = api_post(client, key, f"/api/v1/deliveries/{delivery.pk}/retry")
    assert response.status_code == 409 and response.json()["error"] == "conflict"
    assert "already succeeded" in response.json()["detail"]
    assert not AuditLog.objects.filter(action="delivery.retried").exists()


def test_replay_an_event_to_a_destination(client, organization, setup):
    _, destination, event, api_key, key = setup
    response = api_post(client, key, f"/api/v1/events/{event.pk}/replay", {"destination": destination.pk})
    assert response.status_code == 202, response.content
    replay = Delivery.objects.get(pk=response.json()["id"])
    assert replay.is_replay and replay.event == event and replay.destination == destination
    assert response["Location"] == f"http://testserver/api/v1/deliveries/{replay.pk}"
    assert response.json()["webhook_id"] == str(replay.pk)
    entry = _entry("event.replayed")
    _assert_by_key(entry, api_key, organization)
    assert entry.changes == {"destination": destination.pk, "delivery": str(replay.pk)}


def test_replay_refusals(client, organization, other_organization, setup):
    source, destination, event, _, key = setup
    theirs, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs")
    path = f"/api/v1/events/{event.pk}/replay"
    for body in ({}, {"destination": "x"}, {"destination": theirs.pk}, {"destination": 10**30}):
        response = api_post(client, key, path, body)
        assert response.status_code == 400 and response.json()["error"] == "invalid", body
        assert "destination" in response.json()["fields"]
    rejected = make_event(source, status=WebhookEvent.Status.REJECTED)
    response = api_post(client, key, f"/api/v1/events/{rejected.pk}/replay", {"destination": destination.pk})
    assert response.status_code == 409 and "rejected" in response.json()["detail"]
    theirs_event = make_event(make_source(other_organization))
    response = api_post(client, key, f"/api/v1/events/{theirs_event.pk}/replay", {"destination": destination.pk})
    assert response.status_code == 404
    assert not Delivery.objects.filter(is_replay=True).exists()
    assert not AuditLog.objects.filter(action="event.replayed").exists()


def test_pause_and_resume_a_destination(client, organization, setup):
    _, destination, event, api_key, key = setup
    waiting = make_delivery(event, destination, status=Delivery.Status.PENDING, attempts=0)
    response = api_post(client, key, f"/api/v1/destinations/{destination.pk}/pause")
    assert response.status_code == 200, response.content
    assert response.json()["paused_at"] and response.json()["pause_reason"] == "paused through the API"
    _assert_by_key(_entry("destination.paused"), api_key, organization)
    response = api_post(client, key, f"/api/v1/destinations/{destination.pk}/resume")
    assert response.status_code == 200 and response.json()["paused_at"] is None
    entry = _entry("destination.resumed")
    _assert_by_key(entry, api_key, organization)
    assert entry.changes == {"queued_deliveries": 1}
    waiting.refresh_from_db()
    assert waiting.status == Delivery.Status.PENDING


def test_pausing_twice_answers_the_same_and_changes_nothing(client, organization, setup):
    _, destination, _, _, key = setup
    first = api_post(client, key, f"/api/v1/destinations/{destination.pk}/pause")
    again = api_post(client, key, f"/api/v1/destinations/{destination.pk}/pause")
    assert again.status_code == 200, again.content
    assert again.json()["paused_at"] == first.json()["paused_at"]
    assert AuditLog.objects.filter(action="destination.paused").count() == 1
    api_post(client, key, f"/api/v1/destinations/{destination.pk}/resume")
    again = api_post(client, key, f"/api/v1/destinations/{destination.pk}/resume")
    assert again.status_code == 200 and again.json()["paused_at"] is None
    assert AuditLog.objects.filter(action="destination.resumed").count() == 1


def test_changes_to_another_organizations_objects_are_404(client, other_organization, setup):
    *_, key = setup
    theirs_source = make_source(other_organization)
    theirs_destination, _ = make_destination(other_organization, "http://127.0.0.1:9/theirs", sources=[theirs_source])
    theirs_delivery = make_delivery(make_event(theirs_source), theirs_destination)
    for path in (
        f"/api/v1/deliveries/{theirs_delivery.pk}/retry",
        f"/api/v1/destinations/{theirs_destination.pk}/pause",
        f"/api/v1/destinations/{theirs_destination.pk}/resume",
    ):
        assert api_post(client, key, path).status_code == 404, path
    theirs_delivery.refresh_from_db()
    theirs_destination.refresh_from_db()
    assert theirs_delivery.status == Delivery.Status.DEAD and theirs_destination.paused_at is None
    assert not AuditLog.objects.filter(actor_type=AuditLog.ActorType.API_KEY).exists()


def test_changes_answer_get_with_405(client, setup):
    _, destination, *_, key = setup
    response = client.get(f"/api/v1/destinations/{destination.pk}/pause", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_a_replay_body_must_be_json(client, setup):
    _, destination, event, _, key = setup
    path = f"/api/v1/events/{event.pk}/replay"
    response = client.post(path, "{not json", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    response = client.post(path, {"destination": destination.pk}, HTTP_AUTHORIZATION=f"Bearer {key}")  # a form
    assert response.status_code == 415 and response.json() == {
        "error": "unsupported_media_type",
        "detail": "send the body as JSON, with Content-Type: application/json (this one came as multipart/form-data)",
    }
    assert not Delivery.objects.filter(is_replay=True).exists()


def test_a_body_without_a_content_type_is_told_to_send_json(client, setup):
    # As curl -d without -H, or a client that sends bytes without saying what they are.
    _, destination, event, _, key = setup
    body = json.dumps({"destination": destination.pk})
    response = client.generic(
        "POST", f"/api/v1/events/{event.pk}/replay", body, content_type="", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 415 and response.json() == {
        "error": "unsupported_media_type",
        "detail": "send the body as JSON, with Content-Type: application/json (this one had none)",
    }
    assert not Delivery.objects.filter(is_replay=True).exists()


def test_a_body_too_large_is_the_api_s_json_413(client, setup, settings):
    _, destination, event, _, key = setup
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"destination": destination.pk, "padding": "x" * 2000})
    response = client.post(
        f"/api/v1/events/{event.pk}/replay", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 413 and response["Content-Type"] == "application/json"
    assert response.json()["error"] == "request_too_large"
    assert not Delivery.objects.filter(is_replay=True).exists()


def test_too_many_query_parameters_is_the_api_s_json_400(client, setup, settings):
    *_, key = setup
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = client.get(
        "/api/v1/events?" + "&".join(f"p{n}=1" for n in range(20)), HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["error"] == "bad_request"
