"""A destination's own delivery policy: its retries (attempts, age), concurrency and rate limit,
set by admins and owners on the dashboard and the API, within the bounds the service checks."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from webhooks.models import Delivery, DeliveryAttempt, Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.destinations import DestinationError, destination_update, retry_policy_words
from webhooks.services.outbound import OutboundResponse
from webhooks.services.text import duration_words
from webhooks.tests.delivering import deliver_now

from .api_helpers import api_get, api_patch, api_post, make_key
from .factories import make_destination, make_source
from .test_delivery import ingest, make_due

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)


def failed(status=500, retry_after=None):
    return OutboundResponse(status=status, body="", duration_ms=1, retry_after=retry_after)


# --- decide_outcome -------------------------------------------------------------------------


def test_max_attempts_ends_retries_before_the_schedule_does(organization, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300, 900]
    capped = Destination(organization=organization, max_attempts=2)
    first = delivery_service.decide_outcome(failed(), attempt_count=1, destination=capped)
    assert first.status == Delivery.Status.PENDING and 54 <= first.delay <= 66
    second = delivery_service.decide_outcome(failed(), attempt_count=2, destination=capped)
    assert second.status == Delivery.Status.DEAD
    assert second.error == "HTTP 500: no retries left (the destination allows 2 attempts)"

    no_retries = Destination(organization=organization, max_attempts=1)
    only = delivery_service.decide_outcome(failed(503), attempt_count=1, destination=no_retries)
    assert only.status == Delivery.Status.DEAD and "allows no retries" in only.error

    # Empty, or the whole schedule: every step of it, as before.
    for max_attempts in (None, 4):
        whole = Destination(organization=organization, max_attempts=max_attempts)
        assert delivery_service.decide_outcome(failed(), attempt_count=3, destination=whole).status == "pending"
        last = delivery_service.decide_outcome(failed(), attempt_count=4, destination=whole)
        assert last.status == Delivery.Status.DEAD and last.error == "HTTP 500: no retries left"


def test_max_retry_age_moves_the_last_retry_up_to_the_limit_and_ends_there(organization, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 3600, 21600]
    limited = Destination(organization=organization, max_retry_age_seconds=6 * 3600)
    early = delivery_service.decide_outcome(failed(), attempt_count=1, destination=limited, age_seconds=0)
    assert early.status == Delivery.Status.PENDING and 54 <= early.delay <= 66
    # Three hours in, the schedule's 6 h step would come after the limit: it is moved up to it.
    moved = delivery_service.decide_outcome(failed(), attempt_count=3, destination=limited, age_seconds=3 * 3600)
    assert moved.status == Delivery.Status.PENDING and moved.delay == 3 * 3600
    # The try at the limit was the last one.
    late = delivery_service.decide_outcome(failed(), attempt_count=3, destination=limited, age_seconds=6 * 3600 + 2)
    assert late.status == Delivery.Status.DEAD
    assert late.error == "HTTP 500: no retries left (older than the destination's retry limit of 6 h)"
    # Success is success whatever the age; a destination without a limit retries on.
    assert delivery_service.decide_outcome(
        failed(200), attempt_count=3, destination=limited, age_seconds=1e6
    ).status == ("succeeded")
    unlimited = Destination(organization=organization)
    assert delivery_service.decide_outcome(
        failed(), attempt_count=3, destination=unlimited, age_seconds=1e6
    ).status == ("pending")


def test_a_retry_after_past_the_age_limit_ends_the_retries(organization, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300]
    settings.RETRY_AFTER_MAX_SECONDS = 3600
    limited = Destination(organization=organization, max_retry_age_seconds=600)
    waits = delivery_service.decide_outcome(failed(429, 120), attempt_count=1, destination=limited, age_seconds=0)
    assert waits.status == Delivery.Status.PENDING and waits.delay == 120
    too_late = delivery_service.decide_outcome(failed(429, 1800), attempt_count=1, destination=limited, age_seconds=0)
    assert too_late.status == Delivery.Status.DEAD
    # Only the end of the retries: a "next try in 30 min" before it would contradict it.
    assert (
        too_late.error
        == "HTTP 429: no retries left (Retry-After asks to wait past the destination's retry limit of 10 min)"
    )
    already_old = delivery_service.decide_outcome(
        failed(429, 1800), attempt_count=1, destination=limited, age_seconds=600
    )
    assert already_old.error == "HTTP 429: no retries left (older than the destination's retry limit of 10 min)"


@pytest.mark.parametrize(
    "seconds, words",
    [
        (45, "45 s"),
        (90, "1 min 30 s"),
        (3600, "1 h"),
        (21600, "6 h"),
        (5400, "1 h 30 min"),
        (86400 * 2 + 7200, "2 days 2 h"),
    ],
)
def test_durations_in_words(seconds, words):
    assert duration_words(seconds) == words


# --- Delivery to a real receiver -------------------------------------------------------------


def test_a_failing_receiver_is_dead_lettered_after_the_destination_s_attempts(
    client, organization, httpserver, settings
):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300, 900, 3600]
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source], max_attempts=2)
    httpserver.expect_request("/hook").respond_with_data("boom", status=500)

    ingest(client, source)
    processing.process_received_events()
    delivery = deliver_now(Delivery.objects.get().pk)
    assert delivery.status == Delivery.Status.PENDING
    make_due(delivery)
    delivery = deliver_now(delivery.pk)
    assert delivery.status == Delivery.Status.DEAD and delivery.attempt_count == 2
    assert delivery.last_error == "HTTP 500: no retries left (the destination allows 2 attempts)"
    assert len(httpserver.log) == 2 and DeliveryAttempt.objects.count() == 2

    # A retry by hand is one attempt on top of the destination's attempts: it is made, and a
    # failure leaves the delivery dead again rather than scheduling more.
    delivery_service.delivery_retry(delivery=delivery)
    delivery = deliver_now(delivery.pk)
    assert delivery.status == Delivery.Status.DEAD and len(httpserver.log) == 3
    httpserver.clear()
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    delivery_service.delivery_retry(delivery=delivery)
    assert deliver_now(delivery.pk).status == Delivery.Status.SUCCEEDED


def test_a_delivery_older_than_the_destination_s_limit_is_not_retried(client, organization, httpserver, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300]
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source], max_retry_age_seconds=3600)
    httpserver.expect_request("/hook").respond_with_data("boom", status=503)
    ingest(client, source)
    processing.process_received_events()
    # Created two hours ago (the destination was paused meanwhile, say): its first failure is final.
    Delivery.objects.update(created_at=timezone.now() - timedelta(hours=2))
    delivery = deliver_now(Delivery.objects.get().pk)
    assert delivery.status == Delivery.Status.DEAD and len(httpserver.log) == 1
    assert delivery.last_error == "HTTP 503: no retries left (older than the destination's retry limit of 1 h)"
    # A replay is a new delivery, with an age of its own.
    replay = operations.event_replay(event=delivery.event, destination=delivery.destination)
    replay = deliver_now(replay.pk)
    assert replay.status == Delivery.Status.PENDING and len(httpserver.log) == 2


# --- The service's bounds ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_concurrency", 0),
        ("max_concurrency", 51),
        ("rate_limit_per_second", 0),
        ("rate_limit_per_second", 1001),
        ("max_attempts", 0),
        ("max_attempts", 9),  # the default schedule has 7 steps: 8 attempts at most
        ("max_retry_age_seconds", 59),
        ("max_retry_age_seconds", 31 * 86400),
    ],
)
def test_the_service_refuses_a_policy_out_of_bounds_and_names_the_field(organization, field, value):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    with pytest.raises(DestinationError) as refused:
        destination_update(
            destination=destination,
            name="endpoint",
            url=destination.url,
            sources=[],
            event_types=[],
            timeout_seconds=15,
            **{field: value},
        )
    assert refused.value.field == field
    destination.refresh_from_db()
    assert getattr(destination, field) == Destination._meta.get_field(field).get_default()


def test_the_policy_is_said_in_plain_words(organization, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300, 3600]
    assert retry_policy_words(Destination(organization=organization)).startswith(
        "up to 4 attempts (the platform's whole schedule): 3 retries, after waits of about 1 min, 5 min, 1 h"
    )
    assert retry_policy_words(Destination(organization=organization, max_attempts=1)).startswith("no retries")
    words = retry_policy_words(Destination(organization=organization, max_attempts=2, max_retry_age_seconds=21600))
    assert words.startswith("up to 2 attempts: 1 retry, after a wait of about 1 min; none later than 6 h after")


# --- Dashboard -----------------------------------------------------------------------------


def dashboard_form(**changes):
    return {"name": "Billing", "url": "http://127.0.0.1:9/billing", "timeout_seconds": "10", **changes}


def test_admins_set_the_policy_on_the_dashboard_and_each_change_is_audited(client, owner, organization):
    client.force_login(owner)
    form = client.get(reverse("dashboard:destination_create", args=["acme"])).content.decode()
    assert "Concurrent attempts" in form and "Attempts at most" in form and "Stop retrying after (hours)" in form
    response = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        dashboard_form(max_concurrency="3", rate_limit_per_second="20", max_attempts="4", max_retry_age_hours="6"),
    )
    assert response.status_code == 302, response.content  # to the page that shows the secret once
    destination = Destination.objects.get(name="Billing")
    assert (destination.max_concurrency, destination.rate_limit_per_second) == (3, 20)
    assert (destination.max_attempts, destination.max_retry_age_seconds) == (4, 21600)
    created = AuditLog.objects.get(action="destination.created", target_id=str(destination.pk))
    assert created.changes["max_attempts"] == 4 and created.changes["max_retry_age_seconds"] == 21600
    assert created.actor_user == owner

    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])).content.decode()
    assert "up to 4 attempts: 3 retries" in detail and "none later than 6 h after the event" in detail
    assert "at most 3 at a time" in detail and "at most 20 attempts a second" in detail

    edit_url = reverse("dashboard:destination_edit", args=["acme", destination.pk])
    form = client.get(edit_url).context["form"]
    assert form["max_retry_age_hours"].value() == "6" and form["max_attempts"].value() == 4
    # Emptied: the default concurrency, no rate limit, the whole schedule, no age limit.
    response = client.post(edit_url, dashboard_form())
    assert response.status_code == 302, response.content
    destination.refresh_from_db()
    assert (destination.max_concurrency, destination.rate_limit_per_second) == (10, None)
    assert (destination.max_attempts, destination.max_retry_age_seconds) == (None, None)
    updated = AuditLog.objects.get(action="destination.updated", target_id=str(destination.pk))
    assert updated.changes == {
        "max_concurrency": [3, 10],
        "rate_limit_per_second": [20, None],
        "max_attempts": [4, None],
        "max_retry_age_seconds": [21600, None],
    }
    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])).content.decode()
    assert "the platform&#x27;s whole schedule" in detail and "<dd>none</dd>" in detail


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_concurrency", "0", "from 1 to 50"),
        ("max_concurrency", "500", "from 1 to 50"),
        ("rate_limit_per_second", "-1", "from 1 to 1000"),
        ("max_attempts", "99", "from 1 (no retries) to 8 (the platform's whole schedule)"),
        ("max_attempts", "two", "Enter a whole number"),
        ("max_retry_age_hours", "0", "from 1 min to 30 days"),
        ("max_retry_age_hours", "1e300", "from 1 min to 30 days"),
        # Finite hours whose seconds are not: round() of an infinity raised, a 500.
        ("max_retry_age_hours", "1e306", "from 1 min to 30 days"),
        ("max_retry_age_hours", "-1e306", "from 1 min to 30 days"),
        ("max_retry_age_hours", "inf", "Enter a number"),
    ],
)
def test_the_dashboard_form_shows_out_of_range_values_as_errors_on_their_field(
    client, owner, organization, field, value, message
):
    client.force_login(owner)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    for url in (
        reverse("dashboard:destination_create", args=["acme"]),
        reverse("dashboard:destination_edit", args=["acme", destination.pk]),
    ):
        response = client.post(url, dashboard_form(**{field: value}))
        assert response.status_code == 200, response.content
        errors = response.context["form"].errors
        assert list(errors) == [field] and message in errors[field][0], errors
    assert list(Destination.objects.values_list("name", flat=True)) == ["endpoint"]
    assert not AuditLog.objects.filter(action="destination.updated").exists()


def test_members_read_the_policy_but_cannot_change_it(client, member, organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", max_attempts=3)
    client.force_login(member)
    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk]))
    assert detail.status_code == 200 and "up to 3 attempts" in detail.content.decode()
    edit_url = reverse("dashboard:destination_edit", args=["acme", destination.pk])
    assert client.get(edit_url).status_code == 403
    assert client.post(edit_url, dashboard_form(max_attempts="1", max_concurrency="1")).status_code == 403
    assert client.post(reverse("dashboard:destination_create", args=["acme"]), dashboard_form()).status_code == 403
    destination.refresh_from_db()
    assert destination.max_attempts == 3 and destination.max_concurrency == 10
    assert not AuditLog.objects.filter(action="destination.updated").exists()


# --- REST API ------------------------------------------------------------------------------


@pytest.fixture
def writer(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")


def test_the_api_creates_changes_and_shows_the_policy(client, organization, writer):
    api_key, key = writer
    body = {"name": "x", "url": "http://127.0.0.1:9/x", "max_attempts": 3, "max_retry_age_seconds": 7200}
    response = api_post(client, key, "/api/v1/destinations", {**body, "rate_limit_per_second": 5})
    assert response.status_code == 201, response.content
    shown = response.json()
    assert (shown["max_attempts"], shown["max_retry_age_seconds"]) == (3, 7200)
    assert (shown["max_concurrency"], shown["rate_limit_per_second"]) == (10, 5)
    path = f"/api/v1/destinations/{shown['id']}"

    response = api_patch(client, key, path, {"max_concurrency": 2, "max_attempts": None, "timeout_seconds": 5})
    assert response.status_code == 200, response.content
    shown = api_get(client, key, path).json()
    assert (shown["max_concurrency"], shown["max_attempts"], shown["max_retry_age_seconds"]) == (2, None, 7200)
    assert shown["rate_limit_per_second"] == 5 and shown["timeout_seconds"] == 5  # left out: unchanged
    entry = AuditLog.objects.get(action="destination.updated")
    assert entry.changes == {"timeout_seconds": [15.0, 5], "max_concurrency": [10, 2], "max_attempts": [3, None]}
    assert api_key.prefix in entry.actor_label


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_concurrency", 0),
        ("max_concurrency", 51),
        ("max_concurrency", None),
        ("max_concurrency", 2.5),
        ("rate_limit_per_second", 0),
        ("rate_limit_per_second", 10**12),
        ("max_attempts", 0),
        ("max_attempts", 9),
        ("max_attempts", "many"),
        ("max_retry_age_seconds", 1),
        ("max_retry_age_seconds", 10**20),
    ],
)
def test_the_api_refuses_an_out_of_range_policy_with_a_400_naming_the_field(client, organization, writer, field, value):
    _, key = writer
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    created = api_post(client, key, "/api/v1/destinations", {"name": "y", "url": "http://127.0.0.1:9/y", field: value})
    patched = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {field: value})
    for response in (created, patched):
        assert response.status_code == 400, response.content
        assert list(response.json()["fields"]) == [field], response.json()
    assert list(Destination.objects.values_list("name", flat=True)) == ["endpoint"]
    assert not AuditLog.objects.filter(action="destination.updated").exists()


def test_a_read_only_key_reads_the_policy_but_cannot_change_it(client, organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", max_retry_age_seconds=600)
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    path = f"/api/v1/destinations/{destination.pk}"
    assert api_get(client, key, path).json()["max_retry_age_seconds"] == 600
    response = api_patch(client, key, path, {"max_retry_age_seconds": None})
    assert response.status_code == 403
    destination.refresh_from_db()
    assert destination.max_retry_age_seconds == 600


# --- Admin ---------------------------------------------------------------------------------


def test_the_admin_sets_the_retry_policy_within_the_same_bounds(client, organization):
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    url = reverse("admin:webhooks_destination_change", args=[destination.pk])
    page = client.get(url).content.decode()
    assert 'name="max_attempts"' in page and 'name="max_retry_age_seconds"' in page
    form = {
        "name": destination.name,
        "url": destination.url,
        "timeout_seconds": destination.timeout_seconds,
        "max_concurrency": "10",
        "rate_limit_per_second": "",
        "is_active": "on",
        "new_secret": "",
        "subscriptions-TOTAL_FORMS": "0",
        "subscriptions-INITIAL_FORMS": "0",
    }
    refused = client.post(url, {**form, "max_attempts": "9", "max_retry_age_seconds": "3600"})
    assert refused.status_code == 200 and "to 8 (the platform&#x27;s whole schedule)" in refused.content.decode()
    destination.refresh_from_db()
    assert destination.max_attempts is None and destination.max_retry_age_seconds is None

    saved = client.post(url, {**form, "max_attempts": "2", "max_retry_age_seconds": "3600"})
    assert saved.status_code == 302, saved.content
    destination.refresh_from_db()
    assert (destination.max_attempts, destination.max_retry_age_seconds) == (2, 3600)
    entry = AuditLog.objects.filter(target_id=str(destination.pk)).latest("id")
    assert "max_attempts" in str(entry.changes) and entry.actor_user == superuser
