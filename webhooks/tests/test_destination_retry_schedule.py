"""A destination's own retry schedule: the waits between its retries, set by admins and owners on the
dashboard, the API, the admin and create_destination, within bounds the service checks."""

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.destinations import (
    DestinationError,
    destination_create,
    destination_update,
    parse_retry_schedule,
    retry_policy_words,
    retry_schedule_text,
)
from webhooks.services.outbound import OutboundResponse
from webhooks.tests.delivering import deliver_now

from .api_helpers import api_get, api_patch, api_post, make_key
from .factories import make_destination, make_source
from .test_delivery import ingest, make_due

pytestmark = pytest.mark.django_db

DAY = 86400


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture(autouse=True)
def platform_schedule(settings):
    # Unlike any schedule below, so that a wait taken from the platform's shows.
    settings.DELIVERY_RETRY_SCHEDULE = [3600, 7200]


def failed(status=500, retry_after=None):
    return OutboundResponse(status=status, body="", duration_ms=1, retry_after=retry_after)


def update(destination, **policy):
    return destination_update(
        destination=destination,
        name=destination.name,
        url=destination.url,
        sources=[],
        event_types=[],
        timeout_seconds=destination.timeout_seconds,
        **policy,
    )


# --- decide_outcome -------------------------------------------------------------------------


def test_the_waits_are_the_destination_s_own_with_jitter_and_it_is_dead_after_the_last(organization):
    own = Destination(organization=organization, retry_schedule=[10, 60, 600])
    for attempt, wait in enumerate([10, 60, 600], start=1):
        outcome = delivery_service.decide_outcome(failed(), attempt_count=attempt, destination=own)
        assert outcome.status == Delivery.Status.PENDING and wait * 0.9 <= outcome.delay <= wait * 1.1
    last = delivery_service.decide_outcome(failed(), attempt_count=4, destination=own)
    assert last.status == Delivery.Status.DEAD and last.error == "HTTP 500: no retries left"

    # Attempts at most count on its own schedule: 2 is the first attempt and the 10 s retry.
    capped = Destination(organization=organization, retry_schedule=[10, 60, 600], max_attempts=2)
    assert delivery_service.decide_outcome(failed(), attempt_count=1, destination=capped).status == "pending"
    second = delivery_service.decide_outcome(failed(), attempt_count=2, destination=capped)
    assert second.error == "HTTP 500: no retries left (the destination allows 2 attempts)"

    # Without one, the platform's.
    platform = delivery_service.decide_outcome(failed(), attempt_count=1, destination=Destination())
    assert 3240 <= platform.delay <= 3960


def test_a_receiver_s_retry_after_lengthens_the_destination_s_wait_never_shortens_it(organization):
    own = Destination(organization=organization, retry_schedule=[30, 60])
    longer = delivery_service.decide_outcome(failed(503, 300), attempt_count=1, destination=own)
    assert longer.delay == 300
    shorter = delivery_service.decide_outcome(failed(429, 1), attempt_count=1, destination=own)
    assert 27 <= shorter.delay <= 33
    # The age limit still holds: the next step is moved up to it.
    limited = Destination(organization=organization, retry_schedule=[30, 3600], max_retry_age_seconds=600)
    moved = delivery_service.decide_outcome(failed(), attempt_count=2, destination=limited, age_seconds=100)
    assert moved.delay == 500


# --- Delivery to a real receiver -------------------------------------------------------------


def deliver_and_measure(delivery_id):
    """One attempt now; the delivery, and the earliest and latest times its wait may be counted from."""
    before = timezone.now()
    delivery = deliver_now(delivery_id)
    return delivery, before, timezone.now()


def test_a_failing_delivery_follows_the_destination_s_waits_and_is_dead_after_the_last(
    client, organization, httpserver
):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source], retry_schedule=[10, 60, 600])
    httpserver.expect_request("/hook").respond_with_data("down", status=503)
    ingest(client, source)
    processing.process_received_events()
    delivery_id = Delivery.objects.get().pk

    for wait in (10, 60, 600):
        delivery, before, after = deliver_and_measure(delivery_id)
        assert delivery.status == Delivery.Status.PENDING
        earliest, latest = before + timedelta(seconds=wait * 0.9), after + timedelta(seconds=wait * 1.1)
        assert earliest <= delivery.next_attempt_at <= latest, (wait, delivery.next_attempt_at - before)
        make_due(delivery)
    delivery = deliver_now(delivery_id)
    assert delivery.status == Delivery.Status.DEAD and delivery.attempt_count == 4
    assert delivery.last_error == "HTTP 503: no retries left" and delivery.next_attempt_at is None
    assert len(httpserver.log) == 4


def test_a_wait_a_receiver_s_retry_after_lengthened_is_said_with_the_error(client, organization, httpserver):
    # A 5 s schedule and a "next try in 59 min" beside a bare "HTTP 429" read as a fault of
    # Hookline's: the error says the receiver asked for the wait.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source], retry_schedule=[5, 5])
    httpserver.expect_request("/hook").respond_with_data("slow down", status=429, headers={"Retry-After": "3600"})
    ingest(client, source)
    processing.process_received_events()

    delivery, before, after = deliver_and_measure(Delivery.objects.get().pk)

    assert delivery.status == Delivery.Status.PENDING
    assert before + timedelta(seconds=3600) <= delivery.next_attempt_at <= after + timedelta(seconds=3600)
    assert delivery.last_error == "HTTP 429: next try in 1 h, as the receiver's Retry-After asks"

    # One the schedule's own wait outlasts is the plain error, as before.
    httpserver.clear()
    httpserver.expect_request("/hook").respond_with_data("down", status=503, headers={"Retry-After": "1"})
    make_due(delivery)
    delivery = deliver_now(delivery.pk)
    assert delivery.status == Delivery.Status.PENDING and delivery.last_error == "HTTP 503"


def test_a_retry_after_over_the_most_honoured_is_said_with_the_wait_kept(organization, settings):
    settings.RETRY_AFTER_MAX_SECONDS = 3600
    own = Destination(organization=organization, retry_schedule=[30, 60])
    outcome = delivery_service.decide_outcome(failed(503, 86400), attempt_count=1, destination=own)
    assert outcome.delay == 3600
    assert outcome.error == (
        "HTTP 503: next try in 1 h, the longest wait honoured (the receiver's Retry-After asks for 1 day)"
    )


def test_a_delivery_already_retrying_takes_its_next_wait_from_the_new_schedule(client, organization, httpserver):
    source = make_source(organization)
    destination, _ = make_destination(
        organization, httpserver.url_for("/hook"), sources=[source], retry_schedule=[10, 60, 600]
    )
    httpserver.expect_request("/hook").respond_with_data("down", status=500)
    ingest(client, source)
    processing.process_received_events()
    delivery, _, _ = deliver_and_measure(Delivery.objects.get().pk)
    waiting_until = delivery.next_attempt_at

    # Its next attempt keeps its time; the wait after it is the new schedule's second step.
    update(destination, retry_schedule=[20, 1800])
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == waiting_until
    make_due(delivery)
    delivery, before, after = deliver_and_measure(delivery.pk)
    assert before + timedelta(seconds=1620) <= delivery.next_attempt_at <= after + timedelta(seconds=1980)

    # A schedule with no step left for the attempts it made: its next failure is its last.
    update(destination, retry_schedule=[20])
    make_due(delivery)
    delivery = deliver_now(delivery.pk)
    assert delivery.status == Delivery.Status.DEAD and delivery.last_error == "HTTP 500: no retries left"
    assert len(httpserver.log) == 3


def test_a_result_that_cannot_be_recorded_waits_for_the_destination_s_own_next_step(
    organization, httpserver, monkeypatch
):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source], retry_schedule=[20])
    WebhookEvent.objects.create(organization=organization, source=source, body=b"{}")
    processing.process_event_batch()
    httpserver.expect_request("/hook").respond_with_data("ok")

    def decide_outcome(response, **kwargs):
        raise TypeError("a value the policy code does not expect")

    monkeypatch.setattr(delivery_service, "decide_outcome", decide_outcome)
    before = timezone.now()
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.PENDING and "could not be recorded" in delivery.last_error
    assert before + timedelta(seconds=18) <= delivery.next_attempt_at <= timezone.now() + timedelta(seconds=22)


# --- Reading it, and the service's bounds --------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("10s, 1m, 10m, 1h", [10, 60, 600, 3600]),
        ("10, 60, 600", [10, 60, 600]),
        (" 30 sec,2 min , 1.5h, 1 day, 2 Days, 1 hour,", [30, 120, 5400, DAY, 2 * DAY, 3600]),
        ("", None),
        (" , ", None),
    ],
)
def test_a_schedule_is_read_as_people_write_it(text, seconds):
    assert parse_retry_schedule(text) == seconds
    if seconds:
        assert parse_retry_schedule(retry_schedule_text(seconds)) == seconds
    assert retry_schedule_text([10, 60, 5400, 90061, DAY]) == "10s, 1m, 90m, 90061s, 1d"


@pytest.mark.parametrize(
    "text, message",
    [
        ("10x", "“10x” is not a wait: write seconds (600), or a number with s, m, h or d (10m)"),
        ("ten", "“ten” is not a wait"),
        ("-5", "“-5” is not a wait"),
        ("10s 1m 10m", "“10s 1m 10m” holds more than one wait: separate the waits with commas"),
        ("10 60", "“10 60” holds more than one wait"),
        ("1.5s", "“1.5s” is not a whole number of seconds"),
        # Other scripts' digits: Decimal read "٣٠" as 30, and a fullwidth "３０ｍ" as 30 minutes.
        ("٣٠", "“٣٠” is not a wait: write seconds in the digits 0-9 (600), or a number with s, m, h or d"),
        ("10s, ３０ｍ", "“３０ｍ” is not a wait: write seconds in the digits 0-9"),
        ("1.٥h", "“1.٥h” is not a wait: write seconds in the digits 0-9"),
        ("1٠s 1m", "“1٠s 1m” is not a wait: write seconds in the digits 0-9"),
    ],
)
def test_a_schedule_that_cannot_be_read_is_refused_saying_why(text, message):
    with pytest.raises(DestinationError) as refused:
        parse_retry_schedule(text)
    assert message in str(refused.value) and refused.value.field == "retry_schedule"


@pytest.mark.parametrize(
    "schedule, message",
    [
        ([], "a retry schedule is 1 to 20 waits"),
        ([10] * 21, "a retry schedule is 1 to 20 waits"),
        ("10,60", "a retry schedule is 1 to 20 waits"),
        ([10, 4], "from 5 s to 7 days (5 to 604800): wait 2 is 4 s"),
        ([0], "wait 1 is 0 s"),
        ([7 * DAY + 1], "wait 1 is 604801 s"),
        ([10, "60"], "wait 2 is not a whole number"),
        ([10.5], "wait 1 is not a whole number"),
        ([True], "wait 1 is not a whole number"),
        ([7 * DAY] * 4 + [3 * DAY], "add up to 31 days: at most 30 days in all"),
    ],
)
def test_the_service_refuses_a_schedule_out_of_bounds(organization, schedule, message):
    with pytest.raises(DestinationError) as refused:
        make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=schedule)
    assert message in str(refused.value) and refused.value.field == "retry_schedule"
    destination, _ = make_destination(organization, "http://127.0.0.1:9/y")
    with pytest.raises(DestinationError) as refused:
        update(destination, retry_schedule=schedule)
    assert message in str(refused.value) and refused.value.field == "retry_schedule"
    destination.refresh_from_db()
    assert destination.retry_schedule is None


def test_the_bounds_themselves_are_allowed(organization):
    for schedule in ([5], [7 * DAY] * 4 + [2 * DAY], list(range(5, 105, 5))):
        destination, _ = make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=schedule)
        assert Destination.objects.get(pk=destination.pk).retry_schedule == schedule


def test_attempts_at_most_are_bounded_by_the_destination_s_own_schedule(organization):
    # The platform's schedule has 2 steps (3 attempts); its own may allow more, or fewer.
    with pytest.raises(DestinationError) as refused:
        make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=[10, 60], max_attempts=4)
    assert refused.value.field == "max_attempts"
    assert "from 1 (no retries) to 3 (this destination's whole schedule)" in str(refused.value)
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/x", retry_schedule=list(range(5, 105, 5)), max_attempts=21
    )
    assert destination.max_attempts == 21

    # A shorter schedule under the attempts it keeps is refused on the schedule, saying what to do.
    with pytest.raises(DestinationError) as refused:
        update(destination, retry_schedule=[10, 60])
    assert refused.value.field == "retry_schedule"
    assert "allows 21 attempts, more than this schedule gives (3: the first and 2 retries)" in str(refused.value)
    # With the attempts in the same change it holds; so does going back to the platform's with fewer.
    update(destination, retry_schedule=[10, 60], max_attempts=3)
    update(destination, retry_schedule=None, max_attempts=None)
    destination.refresh_from_db()
    assert (destination.retry_schedule, destination.max_attempts) == (None, None)
    # Back on the platform's schedule, the attempts are bounded by it again.
    with pytest.raises(DestinationError) as refused:
        update(destination, max_attempts=4)
    assert "to 3 (the platform's whole schedule)" in str(refused.value)


def test_the_schedule_is_said_in_plain_words(organization):
    own = Destination(organization=organization, retry_schedule=[10, 60, 600])
    assert retry_policy_words(own).startswith(
        "up to 4 attempts (this destination's own schedule): 3 retries, after waits of about 10 s, 1 min, 10 min."
    )
    capped = Destination(organization=organization, retry_schedule=[10, 60, 600], max_attempts=2)
    assert retry_policy_words(capped).startswith(
        "up to 2 attempts (this destination's own schedule): 1 retry, after a wait of about 10 s."
    )
    one_step = Destination(organization=organization, retry_schedule=[300])
    assert retry_policy_words(one_step).startswith(
        "up to 2 attempts (this destination's own schedule): 1 retry, after a wait of about 5 min."
    )
    assert retry_policy_words(Destination(organization=organization)).startswith(
        "up to 3 attempts (the platform's whole schedule): 2 retries, after waits of about 1 h, 2 h."
    )


# --- Dashboard -----------------------------------------------------------------------------


def dashboard_form(**changes):
    return {"name": "Billing", "url": "http://127.0.0.1:9/billing", "timeout_seconds": "10", **changes}


def test_admins_set_the_schedule_on_the_dashboard_and_each_change_is_audited(client, owner, organization):
    client.force_login(owner)
    create_url = reverse("dashboard:destination_create", args=["acme"])
    assert 'name="retry_schedule"' in client.get(create_url).content.decode()
    response = client.post(create_url, dashboard_form(retry_schedule="10s, 1m, 10m"))
    assert response.status_code == 302, response.content
    destination = Destination.objects.get(name="Billing")
    assert destination.retry_schedule == [10, 60, 600]
    created = AuditLog.objects.get(action="destination.created", target_id=str(destination.pk))
    assert created.changes["retry_schedule"] == [10, 60, 600] and created.actor_user == owner

    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])).content.decode()
    assert (
        "up to 4 attempts (this destination&#x27;s own schedule): 3 retries, after waits of about 10 s, 1 min, 10 min"
    ) in detail

    edit_url = reverse("dashboard:destination_edit", args=["acme", destination.pk])
    assert 'value="10s, 1m, 10m"' in client.get(edit_url).content.decode()
    # Saved unchanged: nothing to audit.
    assert client.post(edit_url, dashboard_form(retry_schedule="10s, 1m, 10m")).status_code == 302
    assert not AuditLog.objects.filter(action="destination.updated").exists()
    assert client.post(edit_url, dashboard_form(retry_schedule="30, 120")).status_code == 302
    assert client.post(edit_url, dashboard_form(retry_schedule="")).status_code == 302
    destination.refresh_from_db()
    assert destination.retry_schedule is None
    changes = [
        entry.changes
        for entry in AuditLog.objects.filter(action="destination.updated", target_id=str(destination.pk)).order_by("id")
    ]
    assert changes == [{"retry_schedule": [[10, 60, 600], [30, 120]]}, {"retry_schedule": [[30, 120], None]}]
    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])).content.decode()
    assert "the platform&#x27;s whole schedule" in detail


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"retry_schedule": "10x, 1m"}, "retry_schedule", "“10x” is not a wait"),
        ({"retry_schedule": "٣٠, 1m"}, "retry_schedule", "“٣٠” is not a wait: write seconds in the digits 0-9"),
        ({"retry_schedule": "10s 1m"}, "retry_schedule", "separate the waits with commas"),
        ({"retry_schedule": "1h30m"}, "retry_schedule", "write each in one unit (90m rather than 1h 30m)"),
        ({"retry_schedule": "2s, 1m"}, "retry_schedule", "from 5 s to 7 days (5 to 604800): wait 1 is 2 s"),
        ({"retry_schedule": ", ".join(["1m"] * 21)}, "retry_schedule", "1 to 20 waits"),
        ({"retry_schedule": "7d, 7d, 7d, 7d, 7d"}, "retry_schedule", "add up to 35 days"),
        ({"retry_schedule": "1" * 501}, "retry_schedule", "at most 500 characters"),
        (
            {"retry_schedule": "10s, 1m", "max_attempts": "4"},
            "max_attempts",
            "to 3 (this destination's whole schedule)",
        ),
    ],
)
def test_the_dashboard_form_shows_a_bad_schedule_as_an_error_on_its_field(
    client, owner, organization, changes, field, message
):
    client.force_login(owner)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=[30])
    for url in (
        reverse("dashboard:destination_create", args=["acme"]),
        reverse("dashboard:destination_edit", args=["acme", destination.pk]),
    ):
        response = client.post(url, dashboard_form(**changes))
        assert response.status_code == 200, response.content
        errors = response.context["form"].errors
        assert list(errors) == [field] and message in errors[field][0], errors
        # What was typed is shown again, to be corrected.
        assert response.context["form"]["retry_schedule"].value() == changes["retry_schedule"]
    assert list(Destination.objects.values_list("name", flat=True)) == ["endpoint"]
    destination.refresh_from_db()
    assert destination.retry_schedule == [30]
    assert not AuditLog.objects.filter(action="destination.updated").exists()


def test_the_empty_box_shows_the_platform_s_schedule_it_stands_for(client, owner, organization, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [30, 300, 7200, 86400]
    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_create", args=["acme"])).content.decode()
    assert 'placeholder="platform&#x27;s: 30s, 5m, 2h, 1d"' in page


def test_members_read_the_schedule_but_cannot_change_it(client, member, organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=[10, 60])
    client.force_login(member)
    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])).content.decode()
    assert "waits of about 10 s, 1 min" in detail
    edit_url = reverse("dashboard:destination_edit", args=["acme", destination.pk])
    assert client.post(edit_url, dashboard_form(retry_schedule="5m")).status_code == 403
    destination.refresh_from_db()
    assert destination.retry_schedule == [10, 60]


# --- REST API ------------------------------------------------------------------------------


@pytest.fixture
def writer(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")


def test_the_api_creates_changes_clears_and_shows_the_schedule(client, organization, writer):
    api_key, key = writer
    body = {"name": "x", "url": "http://127.0.0.1:9/x", "retry_schedule": [10, 60, 600]}
    response = api_post(client, key, "/api/v1/destinations", body)
    assert response.status_code == 201, response.content
    assert response.json()["retry_schedule"] == [10, 60, 600]
    path = f"/api/v1/destinations/{response.json()['id']}"
    assert api_get(client, key, path).json()["retry_schedule"] == [10, 60, 600]
    listed = api_get(client, key, "/api/v1/destinations").json()["results"]
    assert [item["retry_schedule"] for item in listed] == [[10, 60, 600]]

    # Left out: unchanged. A new list replaces it; null goes back to the platform's.
    assert api_patch(client, key, path, {"timeout_seconds": 5}).json()["retry_schedule"] == [10, 60, 600]
    response = api_patch(client, key, path, {"retry_schedule": [30, 300], "max_attempts": 2})
    assert response.status_code == 200, response.content
    assert (response.json()["retry_schedule"], response.json()["max_attempts"]) == ([30, 300], 2)
    response = api_patch(client, key, path, {"retry_schedule": None})
    assert response.status_code == 200 and response.json()["retry_schedule"] is None
    assert Destination.objects.get().retry_schedule is None
    entries = AuditLog.objects.filter(action="destination.updated").order_by("id")
    assert [entry.changes for entry in entries] == [
        {"timeout_seconds": [15.0, 5]},
        {"retry_schedule": [[10, 60, 600], [30, 300]], "max_attempts": [None, 2]},
        {"retry_schedule": [[30, 300], None]},
    ]
    assert all(api_key.prefix in entry.actor_label for entry in entries)


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "a retry schedule is 1 to 20 waits"),
        ([1, 60], "wait 1 is 1 s"),
        ([10] * 21, "a retry schedule is 1 to 20 waits"),
        ([7 * DAY] * 5, "add up to 35 days"),
        ("10,60", "must be a list, not a string"),
        ([10.5], "item 1 must be a whole number (a JSON integer: no quotes, no fraction), not a number with a"),
        (["soon"], "item 1 must be a whole number (a JSON integer: no quotes, no fraction), not a string"),
        (["٣٠"], "item 1 must be a whole number (a JSON integer: no quotes, no fraction), not a string"),
        ({"0": 10}, "must be a list, not an object"),
    ],
)
def test_the_api_refuses_a_bad_schedule_with_a_400_naming_the_field(client, organization, writer, value, message):
    _, key = writer
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    created = api_post(
        client, key, "/api/v1/destinations", {"name": "y", "url": "http://127.0.0.1:9/y", "retry_schedule": value}
    )
    patched = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {"retry_schedule": value})
    for response in (created, patched):
        assert response.status_code == 400, response.content
        fields = response.json()["fields"]
        assert list(fields) == ["retry_schedule"] and message in json.dumps(fields), fields
    assert list(Destination.objects.values_list("name", flat=True)) == ["endpoint"]
    assert not AuditLog.objects.filter(action="destination.updated").exists()


def test_the_api_refuses_a_schedule_shorter_than_the_attempts_kept(client, organization, writer):
    _, key = writer
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/x", retry_schedule=[10, 60, 600], max_attempts=4
    )
    path = f"/api/v1/destinations/{destination.pk}"
    response = api_patch(client, key, path, {"retry_schedule": [10]})
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["retry_schedule"]
    assert "allows 4 attempts" in response.json()["fields"]["retry_schedule"][0]
    response = api_patch(client, key, path, {"max_attempts": 5})
    assert response.status_code == 400 and "to 4 (this destination" in response.json()["fields"]["max_attempts"][0]
    destination.refresh_from_db()
    assert (destination.retry_schedule, destination.max_attempts) == ([10, 60, 600], 4)


def test_a_read_only_key_reads_the_schedule_but_cannot_change_it(client, organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=[10])
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    path = f"/api/v1/destinations/{destination.pk}"
    assert api_get(client, key, path).json()["retry_schedule"] == [10]
    assert api_patch(client, key, path, {"retry_schedule": None}).status_code == 403
    destination.refresh_from_db()
    assert destination.retry_schedule == [10]


# --- Admin ---------------------------------------------------------------------------------


def test_the_admin_sets_the_schedule_within_the_same_bounds(client, organization):
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", retry_schedule=[10, 60])
    url = reverse("admin:webhooks_destination_change", args=[destination.pk])
    page = client.get(url).content.decode()
    assert 'name="retry_schedule"' in page and 'value="10s, 1m"' in page
    form = {
        "name": destination.name,
        "url": destination.url,
        "timeout_seconds": destination.timeout_seconds,
        "max_concurrency": "10",
        "rate_limit_per_second": "",
        "max_attempts": "",
        "max_retry_age_seconds": "",
        "is_active": "on",
        "new_secret": "",
        "subscriptions-TOTAL_FORMS": "0",
        "subscriptions-INITIAL_FORMS": "0",
    }
    for changes, message in (
        ({"retry_schedule": "1s"}, "wait 1 is 1 s"),
        ({"retry_schedule": "ten"}, "“ten” is not a wait"),
        ({"retry_schedule": "٣٠s"}, "“٣٠s” is not a wait: write seconds in the digits 0-9"),
        ({"retry_schedule": "10s, 1m", "max_attempts": "4"}, "to 3 (this destination&#x27;s whole schedule)"),
    ):
        refused = client.post(url, {**form, **changes})
        assert refused.status_code == 200 and message in refused.content.decode(), changes
    destination.refresh_from_db()
    assert (destination.retry_schedule, destination.max_attempts) == ([10, 60], None)

    saved = client.post(url, {**form, "retry_schedule": "30s, 5m, 1h", "max_attempts": "4"})
    assert saved.status_code == 302, saved.content
    destination.refresh_from_db()
    assert (destination.retry_schedule, destination.max_attempts) == ([30, 300, 3600], 4)
    entry = AuditLog.objects.filter(target_id=str(destination.pk)).latest("id")
    assert entry.changes["fields"]["retry_schedule"] == [[10, 60], [30, 300, 3600]]
    assert entry.actor_user == superuser

    # Emptied: the platform's schedule (whose 2 steps allow 3 attempts at most).
    assert client.post(url, {**form, "retry_schedule": ""}).status_code == 302
    destination.refresh_from_db()
    assert (destination.retry_schedule, destination.max_attempts) == (None, None)


# --- create_destination --------------------------------------------------------------------

DESTINATION_D = ("create_destination", "--org", "acme", "--name", "d", "--url", "http://127.0.0.1:9/d")


def test_create_destination_takes_a_retry_schedule(organization):
    out = io.StringIO()
    call_command(*DESTINATION_D, "--retry-schedule", "10,60,600", "--json", stdout=out)
    created = json.loads(out.getvalue())
    assert created["policy"]["retry_schedule"] == [10, 60, 600]
    assert Destination.objects.get(pk=created["id"]).retry_schedule == [10, 60, 600]
    assert AuditLog.objects.get(action="destination.created").changes["retry_schedule"] == [10, 60, 600]

    out = io.StringIO()
    call_command("create_destination", "--org", "acme", "--name", "e", "--url", "http://127.0.0.1:9/e",
                 "--retry-schedule", "30s, 5m", "--max-attempts", "2", stdout=out)  # fmt: skip
    assert "Retry policy: up to 2 attempts (this destination's own schedule): 1 retry, after a wait of about 30 s" in (
        out.getvalue()
    )
    assert Destination.objects.get(name="e").retry_schedule == [30, 300]


@pytest.mark.parametrize(
    "extra, reason",
    [
        (("--retry-schedule", "2,60"), "^--retry-schedule: each wait .* wait 1 is 2 s"),
        (("--retry-schedule", "10x"), "^--retry-schedule: “10x” is not a wait"),
        (("--retry-schedule", "10,٦٠"), "^--retry-schedule: “٦٠” is not a wait: write seconds in the digits 0-9"),
        (("--retry-schedule", ""), "^--retry-schedule: give at least one wait"),
        (("--retry-schedule", "10,60", "--max-attempts", "4"), r"^--max-attempts: .*to 3 \(this destination"),
    ],
)
def test_create_destination_refuses_a_bad_schedule_naming_the_flag(organization, extra, reason):
    out = io.StringIO()
    with pytest.raises(CommandError, match=reason) as refused:
        call_command(*DESTINATION_D, *extra, "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"error": str(refused.value)}
    assert not Destination.objects.exists()


def test_a_schedule_is_audited_as_created_even_through_the_service(organization):
    destination, _ = destination_create(
        organization=organization, name="svc", url="http://127.0.0.1:9/s", retry_schedule=(15, 45)
    )
    assert Destination.objects.get(pk=destination.pk).retry_schedule == [15, 45]
    assert AuditLog.objects.get(action="destination.created").changes["retry_schedule"] == [15, 45]
