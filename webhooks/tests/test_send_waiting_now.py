"""'Send waiting retries now' for a destination: the service, the dashboard button, the REST API and
the admin action; and the strict switches the dashboard posts (a source's active, a destination's paused)."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from webhooks.models import Delivery, Destination, Source
from webhooks.services import delivery as delivery_service
from webhooks.services import operations
from webhooks.services.operations import NothingToDo, OperationError, destination_send_waiting_now
from webhooks.services.permissions import NotAllowed

from .api_helpers import api_post, make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def dispatches(monkeypatch):
    """Dispatches asked for are counted (after commit) instead of queued."""
    scheduled = []
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    return scheduled


@pytest.fixture
def source(organization):
    return make_source(organization, name="Stripe live")


@pytest.fixture
def destination(organization, source):
    return make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])[0]


def waiting_delivery(source, destination, *, in_hours: float = 3, attempts: int = 2) -> Delivery:
    """A delivery that failed ``attempts`` times and waits for its next retry ``in_hours`` from now."""
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=attempts)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() + timedelta(hours=in_hours))
    delivery.refresh_from_db()
    return delivery


def test_only_pending_deliveries_due_later_are_brought_forward_and_audited(
    organization, source, destination, owner, dispatches, django_capture_on_commit_callbacks
):
    later = [waiting_delivery(source, destination, in_hours=hours) for hours in (0.5, 6)]
    due_already = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)
    due_at = Delivery.objects.get(pk=due_already.pk).next_attempt_at
    untouched = {
        status: make_delivery(make_event(source), destination, status=status)
        for status in (Delivery.Status.IN_FLIGHT, Delivery.Status.SUCCEEDED, Delivery.Status.DEAD)
    }
    Delivery.objects.filter(pk=untouched[Delivery.Status.IN_FLIGHT].pk).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    other, _ = make_destination(organization, "http://127.0.0.1:9/other", sources=[source])
    elsewhere = waiting_delivery(source, other)
    before = {d.pk: (d.status, d.next_attempt_at, d.attempt_count, d.manual_attempts) for d in Delivery.objects.all()}

    with django_capture_on_commit_callbacks(execute=True):
        assert destination_send_waiting_now(destination=destination, actor=owner) == 2
    assert dispatches == [1]
    now = timezone.now()
    for delivery in later:
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.PENDING and delivery.next_attempt_at <= now
        # The scheduled attempt, sooner: neither counted as one more nor as one asked by hand.
        assert (delivery.attempt_count, delivery.manual_attempts) == (2, 0)
    assert later[0].next_attempt_at == later[1].next_attempt_at  # one time: sent in arrival order
    assert Delivery.objects.get(pk=due_already.pk).next_attempt_at == due_at
    for delivery in [*untouched.values(), elsewhere]:
        current = Delivery.objects.get(pk=delivery.pk)
        assert (current.status, current.next_attempt_at, current.attempt_count, current.manual_attempts) == before[
            delivery.pk
        ]
    (entry,) = AuditLog.objects.filter(action="destination.waiting_sent_now")
    assert entry.changes == {"brought_forward": 2} and entry.actor_user == owner
    assert entry.target_id == str(destination.pk) and entry.organization_id == organization.pk

    # Again: nothing waits any more, which is not an error, and not audited.
    with pytest.raises(NothingToDo, match="no delivery is waiting for a later retry"):
        destination_send_waiting_now(destination=destination, actor=owner)
    assert AuditLog.objects.filter(action="destination.waiting_sent_now").count() == 1


def test_a_paused_or_inactive_destination_is_refused(source, destination, owner):
    waiting = waiting_delivery(source, destination)
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now(), pause_reason="by hand")
    with pytest.raises(OperationError, match="the destination is paused: nothing is sent to it") as refused:
        destination_send_waiting_now(destination=destination, actor=owner)
    assert not isinstance(refused.value, NothingToDo)
    Destination.objects.filter(pk=destination.pk).update(paused_at=None, is_active=False)
    with pytest.raises(OperationError, match="inactive"):
        destination_send_waiting_now(destination=destination, actor=owner)
    assert Delivery.objects.get(pk=waiting.pk).next_attempt_at == waiting.next_attempt_at
    assert not AuditLog.objects.filter(action="destination.waiting_sent_now").exists()


def test_a_member_may_not_bring_retries_forward(source, destination, member):
    waiting_delivery(source, destination)
    with pytest.raises(NotAllowed):
        destination_send_waiting_now(destination=destination, actor=member)


def test_the_brought_forward_delivery_is_sent_by_the_next_dispatcher_run(client, organization, httpserver, owner):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    waiting = waiting_delivery(source, destination, attempts=1)
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("fixed", status=200)

    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 0  # not due for 3 hours
    assert destination_send_waiting_now(destination=destination, actor=owner) == 1
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1

    httpserver.check_assertions()
    request, _ = httpserver.log[0]
    assert request.headers["webhook-id"] == str(waiting.event_id)
    sent = Delivery.objects.get(pk=waiting.pk)
    assert sent.status == Delivery.Status.SUCCEEDED and sent.attempt_count == 2  # its second attempt, not a third


# --- Dashboard ------------------------------------------------------------------------------------


def test_the_destination_page_offers_the_button_to_admins_with_the_count(client, source, destination, owner, member):
    for _ in range(3):
        waiting_delivery(source, destination)
    page = reverse("dashboard:destination_detail", args=["acme", destination.pk])
    url = reverse("dashboard:destination_send_waiting_now", args=["acme", destination.pk])

    client.force_login(member)
    seen = client.get(page).content.decode()
    assert "3 deliveries are retrying after a failed attempt" in seen and "All wait for a later retry" in seen
    assert url not in seen
    assert client.post(url).status_code == 403
    assert Delivery.objects.filter(next_attempt_at__gt=timezone.now()).count() == 3

    client.force_login(owner)
    seen = client.get(page).content.decode()
    assert url in seen and "Send 3 waiting now</button>" in seen
    done = client.post(url, follow=True).content.decode()
    # Brought forward, not yet taken by a worker: still retrying (as the health card says), due now.
    assert "Sending 3 waiting deliveries now." in done and "Their retry is due: they are sent as soon as" in done
    assert "Send 3 waiting now</button>" not in done
    again = client.post(url, follow=True).content.decode()
    assert "Nothing to do: no delivery is waiting for a later retry." in again


def test_the_dashboard_refuses_a_paused_destination_and_hides_the_button(client, source, destination, owner):
    waiting_delivery(source, destination)
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    client.force_login(owner)
    url = reverse("dashboard:destination_send_waiting_now", args=["acme", destination.pk])
    page = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])).content.decode()
    assert "resuming it sends them at once" in page and url not in page
    refused = client.post(url, follow=True).content.decode()
    assert "Not sent: the destination is paused: nothing is sent to it" in refused


# --- REST API ---------------------------------------------------------------------------------------


def test_the_api_brings_them_forward_with_a_read_write_key(
    client, organization, other_organization, source, destination
):
    waiting_delivery(source, destination)
    waiting_delivery(source, destination)
    path = f"/api/v1/destinations/{destination.pk}/send_waiting_now"
    reader = make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")[1]
    assert api_post(client, reader, path).status_code == 403

    key = make_key(organization)[1]
    response = api_post(client, key, path)
    assert response.status_code == 200 and response.json() == {"id": destination.pk, "brought_forward": 2}
    # Repeated: nothing left, the same shape, no error.
    assert api_post(client, key, path).json() == {"id": destination.pk, "brought_forward": 0}
    (entry,) = AuditLog.objects.filter(action="destination.waiting_sent_now")
    assert entry.actor_type == AuditLog.ActorType.API_KEY and entry.changes == {"brought_forward": 2}

    theirs = make_key(other_organization)[1]
    assert api_post(client, theirs, path).status_code == 404
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    waiting_delivery(source, destination)
    paused = api_post(client, key, path)
    assert paused.status_code == 409 and "paused" in paused.json()["detail"]


# --- Admin -----------------------------------------------------------------------------------------


def test_the_admin_action_brings_each_selected_destination_forward(client, organization, source, destination):
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    paused, _ = make_destination(organization, "http://127.0.0.1:9/paused", sources=[source])
    Destination.objects.filter(pk=paused.pk).update(paused_at=timezone.now())
    waiting_delivery(source, destination)
    held = waiting_delivery(source, paused)
    response = client.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "send_waiting_now", "_selected_action": [destination.pk, paused.pk]},
        follow=True,
    )
    shown = " ".join(str(message) for message in response.context["messages"])
    assert "Sending now the waiting retries of" in shown and "(1)" in shown
    assert "Not sent:" in shown and "paused" in shown
    assert Delivery.objects.get(pk=held.pk).next_attempt_at == held.next_attempt_at
    (entry,) = AuditLog.objects.filter(action="destination.waiting_sent_now")
    assert entry.actor_user == superuser and entry.changes == {"brought_forward": 1}


# --- Strict switches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["x", "", "true", "01"])
def test_a_source_switch_takes_only_0_or_1(client, owner, source, value):
    client.force_login(owner)
    url = reverse("dashboard:source_set_active", args=["acme", source.pk])
    assert client.post(url, {"active": value}).status_code == 400
    assert client.post(url).status_code == 400  # none at all
    assert Source.objects.get(pk=source.pk).is_active
    assert client.post(url, {"active": "0"}).status_code == 302
    assert not Source.objects.get(pk=source.pk).is_active
    assert client.post(url, {"active": "1"}).status_code == 302
    assert Source.objects.get(pk=source.pk).is_active


@pytest.mark.parametrize("value", ["x", "", "yes", "2"])
def test_a_destination_pause_switch_takes_only_0_or_1(client, owner, destination, value):
    client.force_login(owner)
    url = reverse("dashboard:destination_set_paused", args=["acme", destination.pk])
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    assert client.post(url, {"paused": value}).status_code == 400
    assert Destination.objects.get(pk=destination.pk).paused_at is not None  # not resumed by a stray value
    assert not AuditLog.objects.filter(action="destination.resumed").exists()
    assert client.post(url, {"paused": "0"}).status_code == 302
    assert Destination.objects.get(pk=destination.pk).paused_at is None


def test_one_request_brings_forward_at_most_the_limit_soonest_first(client, monkeypatch, source, destination, owner):
    monkeypatch.setattr(operations, "SEND_WAITING_NOW_LIMIT", 2)
    latest, soonest, middle = (waiting_delivery(source, destination, in_hours=hours) for hours in (9, 1, 5))
    assert operations.destination_waiting_for_retry_count(destination=destination, limit=2) == 2
    assert destination_send_waiting_now(destination=destination, actor=owner) == 2
    now = timezone.now()
    assert {d.pk for d in Delivery.objects.filter(next_attempt_at__lte=now)} == {soonest.pk, middle.pk}
    client.force_login(owner)
    url = reverse("dashboard:destination_send_waiting_now", args=["acme", destination.pk])
    assert "Sending 1 waiting delivery now." in client.post(url, follow=True).content.decode()
    assert Delivery.objects.get(pk=latest.pk).next_attempt_at <= timezone.now()
