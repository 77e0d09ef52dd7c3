"""A delivery the platform itself put back unsent (a destination secret no key decrypts, its own bound
on DNS lookups) says so wherever what it waits for is shown, rather than read as a backoff after its
receiver failed; it carries the cause on its row until an attempt is made or it is retried by hand;
and operators see how many are held, by cause, and since when, since they are retried without end."""

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey
from webhooks import fields
from webhooks.models import Delivery, Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import platform_health, processing
from webhooks.services.delivery_waits import DELIVERY_WAITS, delivery_waits
from webhooks.services.operations import bulk_retry_request, bulk_retry_run

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source
from .test_platform_health import parse_prometheus
from .test_secret_unreadable_paths import foreign_token, store_raw

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def admin_client(db):
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return staff


def _send_due() -> None:
    """Claim every due delivery, send and record them as the dispatcher does."""
    claimed = delivery_service.claim_due_deliveries(50)
    delivery_service.record_results([(delivery, delivery_service.send(delivery)) for delivery in claimed])


def _make_due(delivery: Delivery) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def _loaded(delivery: Delivery) -> Delivery:
    # Without the destination's secrets, as the pages read it: this process cannot decrypt them.
    return (
        Delivery.objects.select_related("destination")
        .defer(*(f"destination__{name}" for name in delivery_service.DESTINATION_ENCRYPTED_FIELDS))
        .get(pk=delivery.pk)
    )


@pytest.fixture
def unreadable(organization, httpserver):
    """A due delivery, never attempted, to a destination whose secret no key of this process decrypts."""
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source], max_attempts=5)
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)
    store_raw(Destination, destination.pk, foreign_token())
    return delivery


def test_a_delivery_put_back_for_an_unreadable_secret_says_the_platform_holds_it_everywhere(
    client, organization, owner, admin_client, unreadable
):
    before = timezone.now()
    _send_due()
    after = timezone.now()

    held = _loaded(unreadable)
    assert (held.status, held.attempt_count) == (Delivery.Status.PENDING, 0)
    assert held.put_back_cause == Delivery.PutBackCause.SECRET_UNREADABLE
    assert before <= held.put_back_since <= after and held.put_back_times == 1
    # It was "next_attempt_time": the same words as a backoff after the receiver failed.
    assert delivery_waits([held]) == {held.pk: "platform_secret_unreadable"}
    assert "not its receiver" in DELIVERY_WAITS["platform_secret_unreadable"]

    # Put back again: the same run, since its first put-back.
    _make_due(held)
    _send_due()
    again = _loaded(held)
    assert (again.put_back_since, again.put_back_times) == (held.put_back_since, 2)

    # The keys read it again (here: a new secret stored): the pages that show it need them. Still held
    # until it is claimed again.
    store_raw(Destination, held.destination_id, fields.encrypt("whsec_" + "A" * 32))
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    assert api_get(client, key, f"/api/v1/deliveries/{held.pk}").json()["waiting_for"] == "platform_secret_unreadable"
    listed = api_get(client, key, f"/api/v1/events/{held.event_id}").json()["deliveries"]
    assert [row["waiting_for"] for row in listed] == ["platform_secret_unreadable"]

    out = io.StringIO()
    call_command("show_event", str(held.event_id), "--json", stdout=out)
    assert json.loads(out.getvalue())["events"][0]["deliveries"][0]["waiting_for"] == "platform_secret_unreadable"
    out = io.StringIO()
    call_command("show_event", str(held.event_id), stdout=out)
    assert "next attempt once the platform can decrypt the destination's secret, not the receiver's failure" in (
        out.getvalue()
    )
    assert f"waiting: {DELIVERY_WAITS['platform_secret_unreadable']}" in out.getvalue()

    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, held.event_id])).content.decode()
    assert "next try once the platform can decrypt the destination&#x27;s secret, not the receiver&#x27;s" in page
    event_page = admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[held.event_id])).content
    assert "The platform holds it, not its receiver" in event_page.decode()
    delivery_page = admin_client.get(reverse("admin:webhooks_delivery_change", args=[held.pk])).content.decode()
    assert "(platform_secret_unreadable)" in delivery_page

    # Once an attempt is made (the keys read it again; the receiver fails), it is the receiver's doing.
    _make_due(held)
    _send_due()
    failed = _loaded(held)
    assert (failed.status, failed.attempt_count) == (Delivery.Status.PENDING, 1)
    assert (failed.put_back_cause, failed.put_back_since, failed.put_back_times) == (None, None, None)
    assert delivery_waits([failed]) == {failed.pk: "next_attempt_time"}


def test_a_retry_by_hand_ends_the_platform_s_hold_on_the_row(organization, owner, unreadable):
    _send_due()
    store_raw(Destination, unreadable.destination_id, fields.encrypt("whsec_" + "A" * 32))
    delivery_service.delivery_retry(delivery=_loaded(unreadable), actor=owner)
    retried = _loaded(unreadable)
    assert retried.status == Delivery.Status.PENDING
    assert (retried.put_back_cause, retried.put_back_since, retried.put_back_times) == (None, None, None)


def test_a_bulk_retry_ends_the_platform_s_hold_on_the_row(organization, owner, unreadable):
    _send_due()
    Delivery.objects.filter(pk=unreadable.pk).update(status=Delivery.Status.DEAD, completed_at=timezone.now())
    job = bulk_retry_request(organization=organization, filters={"status": "dead"}, actor=owner)
    bulk_retry_run(job_id=job.pk)
    retried = _loaded(unreadable)
    assert retried.status == Delivery.Status.PENDING
    assert retried.put_back_cause is None and retried.put_back_times is None


def test_the_processing_health_counts_the_deliveries_the_platform_holds_and_since_when(
    organization, settings, admin_client, unreadable
):
    _send_due()
    # Held for ten minutes: tried again without end, the operators' to end.
    since = timezone.now() - timedelta(minutes=10)
    Delivery.objects.filter(pk=unreadable.pk).update(put_back_since=since)
    # Not held: dead (its cause left from before), or put back and then attempted.
    source = make_source(organization)
    other, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    dead = make_delivery(make_event(source), other, status=Delivery.Status.DEAD)
    Delivery.objects.filter(pk=dead.pk).update(put_back_cause="dns_lookups_busy", put_back_since=since)

    health = platform_health.processing_health()
    held = health.deliveries_held_by_platform
    assert {cause: backlog.count for cause, backlog in held.items()} == {"secret_unreadable": 1, "dns_lookups_busy": 0}
    assert 600 <= held["secret_unreadable"].oldest_seconds < 700
    assert held["dns_lookups_busy"].oldest_seconds == 0
    assert health.verdict != platform_health.OK
    assert any(
        reason.startswith("1 delivery is held by the platform, not sent (their destination's secret cannot be")
        and reason.endswith("the longest for 10 min: they are tried again until it ends")
        for reason in health.reasons
    )
    data = health.as_dict()
    assert data["deliveries_held_by_platform"]["secret_unreadable"]["count"] == 1
    assert data["deliveries_held_by_platform"]["secret_unreadable"]["capped"] is False

    metrics = parse_prometheus(platform_health.prometheus_text(health))
    assert metrics[("hookline_deliveries_held_by_platform", (("cause", "secret_unreadable"),))] == 1
    assert metrics[("hookline_deliveries_held_by_platform", (("cause", "dns_lookups_busy"),))] == 0
    oldest = metrics[("hookline_deliveries_held_by_platform_oldest_seconds", (("cause", "secret_unreadable"),))]
    assert 600 <= oldest < 700

    # The admin's Processing card, linking to the deliveries held (the link's filter is allowed).
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "Held by the platform: secret_unreadable" in index
    # (The list reads the destinations' secrets: with the keys fixed, and the delivery still held.)
    store_raw(Destination, unreadable.destination_id, fields.encrypt("whsec_" + "A" * 32))
    listed = admin_client.get(
        reverse("admin:webhooks_delivery_changelist"),
        {"status__in": "pending,in_flight", "put_back_cause__exact": "secret_unreadable"},
    )
    assert listed.status_code == 200 and list(listed.context["cl"].result_list) == [unreadable]

    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("platform_health", stdout=out)
    assert "Deliveries held by the platform, secret_unreadable: 1 (the longest held for 10 min)" in out.getvalue()


def test_the_held_deliveries_are_read_on_their_partial_index_alone(organization, unreadable):
    # Read on every admin page view and scrape: each query reads the few index entries of the
    # deliveries held now, never the deliveries table (an empty test table cannot show the planner's
    # choice, so a whole scan is ruled out).
    _send_due()
    with CaptureQueriesContext(connection) as queries:
        platform_health._deliveries_held_by_platform(timezone.now())
    assert len(queries.captured_queries) == 2 * len(delivery_service.PUT_BACK_CAUSES)
    for query in queries.captured_queries:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + query["sql"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "delivery_put_back" in plan, plan


def test_the_destination_page_counts_the_deliveries_the_platform_holds_apart_from_its_retries(
    client, organization, owner
):
    # Held ones were counted among those that "wait for a later retry … once your endpoint works
    # again", blaming the tenant's receiver, and "Send N waiting now" brought them forward, only for
    # the platform to put them back again.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    later = timezone.now() + timedelta(minutes=5)
    retrying = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=1)
    held = {
        cause: make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=attempts)
        for cause, attempts in (("secret_unreadable", 0), ("dns_lookups_busy", 1))
    }
    Delivery.objects.filter(pk__in=[retrying.pk, *(row.pk for row in held.values())]).update(next_attempt_at=later)
    for cause, row in held.items():
        Delivery.objects.filter(pk=row.pk).update(put_back_cause=cause, put_back_since=timezone.now(), put_back_times=1)

    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]))
    text = " ".join(page.content.decode().split())
    assert "1 delivery is retrying after a failed attempt" in text and "It waits for a later retry" in text
    assert "Send 1 waiting now" in text
    assert (
        "2 deliveries are held by the platform, not by your endpoint: nothing was sent and no attempt is counted."
        in text
    )
    assert "1: The platform&#x27;s own bound on DNS lookups in progress refused their send" in text
    assert "1: The platform&#x27;s workers cannot decrypt this destination&#x27;s signing secret" in text

    # "Send waiting now" brings forward what the page counts: the retry, not the held ones.
    response = client.post(reverse("dashboard:destination_send_waiting_now", args=[organization.slug, destination.pk]))
    assert response.status_code == 302
    due = set(Delivery.objects.filter(next_attempt_at__lte=timezone.now()).values_list("pk", flat=True))
    assert due == {retrying.pk}


def test_the_destination_page_answers_beside_a_cause_this_release_does_not_know(client, organization, owner):
    # A cause stored by a later release (a rolling release's new workers, or before a rollback): this
    # release's page counts the causes it knows, and must not answer a 500 for the others.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    later = timezone.now() + timedelta(minutes=5)
    known, unknown = (
        make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0) for _ in range(2)
    )
    for row, cause in ((known, "secret_unreadable"), (unknown, "a_later_cause")):
        Delivery.objects.filter(pk=row.pk).update(
            next_attempt_at=later, put_back_cause=cause, put_back_since=timezone.now(), put_back_times=1
        )

    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]))
    assert page.status_code == 200
    text = " ".join(page.content.decode().split())
    assert "1 delivery is held by the platform, not by your endpoint" in text


def _event_ids(response) -> set[str]:
    return {str(event.pk) for event in response.context["events"]}


def test_a_retry_the_platform_put_back_is_held_by_it_not_retrying_on_every_list_and_count(
    client, organization, owner, httpserver
):
    """A delivery that failed once, whose retry the platform then put back unsent, waits for the
    platform, not for its receiver: the destination's page counts it apart ("held by the platform"),
    and the events list's "retrying", the overview's and the destinations' counts, the API's and
    list_events' filters must not count it as retrying either; it stays findable as held."""
    source = make_source(organization)
    held_at, _ = make_destination(organization, httpserver.url_for("/held"), sources=[source], max_attempts=5)
    failing_at, _ = make_destination(organization, httpserver.url_for("/failing"), max_attempts=5)
    held = make_delivery(make_event(source), held_at, status=Delivery.Status.PENDING, attempts=1)
    store_raw(Destination, held_at.pk, foreign_token())
    _send_due()
    held = _loaded(held)
    assert (held.status, held.attempt_count) == (Delivery.Status.PENDING, 1)
    assert held.put_back_cause == Delivery.PutBackCause.SECRET_UNREADABLE
    # The pages read the destination's secret: the keys read it again, the row still held.
    store_raw(Destination, held_at.pk, fields.encrypt("whsec_" + "A" * 32))
    retrying = make_delivery(make_event(source), failing_at, status=Delivery.Status.PENDING, attempts=1)
    Delivery.objects.filter(pk=retrying.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    held_event, retrying_event = str(held.event_id), str(retrying.event_id)

    client.force_login(owner)
    events = reverse("dashboard:events", args=[organization.slug])
    assert _event_ids(client.get(events, {"status": "retrying"})) == {retrying_event}
    assert _event_ids(client.get(events, {"status": "retrying", "destination": held_at.pk})) == set()
    assert _event_ids(client.get(events, {"status": "held_by_platform"})) == {held_event}
    assert _event_ids(client.get(events, {"status": "held_by_platform", "destination": held_at.pk})) == {held_event}
    listing = client.get(events).content.decode()
    assert "held by the platform" in listing and listing.count("· retrying") == 1

    overview = client.get(reverse("dashboard:overview", args=[organization.slug])).context["overview"]
    assert overview.retrying_24h == 1
    assert [(row.destination, row.retrying) for row in overview.failing_destinations] == [(failing_at, 1)]
    health = client.get(reverse("dashboard:destinations", args=[organization.slug])).context["destinations"]
    retrying_events = {destination.pk: destination.health.retrying_events for destination in health}
    assert retrying_events == {held_at.pk: 0, failing_at.pk: 1}
    detail = client.get(reverse("dashboard:destination_detail", args=[organization.slug, held_at.pk]))
    assert "1 delivery is held by the platform" in detail.content.decode()
    # Its event's page gives the platform's reason as such, not as the last attempt's failure.
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, held.event_id])).content.decode()
    assert "Held by the platform, not by your endpoint:" in page and "Last attempt failed" not in page

    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    for status, expected in (("retrying", retrying_event), ("held_by_platform", held_event)):
        listed = api_get(client, key, "/api/v1/events", status=status).json()["results"]
        assert [row["id"] for row in listed] == [expected]
        listed = api_get(client, key, "/api/v1/deliveries", status=status).json()["results"]
        assert [row["event"] for row in listed] == [expected]
        out = io.StringIO()
        call_command("list_events", "--org", organization.slug, "--status", status, "--json", stdout=out)
        assert [row["id"] for row in json.loads(out.getvalue())["events"]] == [expected]


def test_the_admins_failed_filter_leaves_out_the_deliveries_the_platform_holds_and_lists_them_apart(
    organization, admin_client
):
    """The events list's "has failed deliveries" counted a delivery the platform put back unsent after
    a failed attempt as retrying, as the dashboard and the API no longer do; it is a choice of its own."""
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    dead = make_delivery(make_event(source), destination, status=Delivery.Status.DEAD)
    retrying = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=1)
    held = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=1)
    Delivery.objects.filter(pk=held.pk).update(
        put_back_cause=Delivery.PutBackCause.SECRET_UNREADABLE, put_back_since=timezone.now(), put_back_times=1
    )
    sent = make_delivery(make_event(source), destination, status=Delivery.Status.SUCCEEDED)

    def listed(failed: str) -> set:
        response = admin_client.get(reverse("admin:webhooks_webhookevent_changelist"), {"failed": failed})
        assert response.status_code == 200
        return {event.pk for event in response.context["cl"].result_list}

    assert listed("yes") == {dead.event_id, retrying.event_id}
    assert listed("held_by_platform") == {held.event_id}
    assert listed("no") == {held.event_id, sent.event_id}
    # The list's count of failed deliveries leaves it out too.
    response = admin_client.get(reverse("admin:webhooks_webhookevent_changelist"))
    counts = {event.pk: event.failed_delivery_count for event in response.context["cl"].result_list}
    assert counts == {dead.event_id: 1, retrying.event_id: 1, held.event_id: None, sent.event_id: None}
    assert "Held by the platform" in response.content.decode()
