"""Findings of the product trial in the dashboard: delivery states in words, readable durations, error pages."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations
from webhooks.templatetags.dashboard import duration_ms

from .dashboard_helpers import dead_delivery, ingest_stripe
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


def named_destination(organization, source, name: str) -> Destination:
    destination, _ = make_destination(organization, f"http://127.0.0.1:9/{name}", sources=[source])
    Destination.objects.filter(pk=destination.pk).update(name=name)
    destination.name = name
    return destination


def badges(html: str) -> list[str]:
    """The visible text of the delivery badges of the events list, in order."""
    return [
        re.sub(r"\s+", " ", text).strip()
        for text in re.findall(r'<span class="badge badge-\w+" title="[^"]*: [^"]*">([^<]*)</span>', html)
    ]


def test_events_list_says_each_delivery_state_in_words_not_only_in_colour(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    dead_to = named_destination(organization, source, "My app")
    retrying_to = named_destination(organization, source, "Billing")
    delivered_to = named_destination(organization, source, "Archive")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_states"))
    dead_delivery(event, dead_to)
    Delivery.objects.create(
        organization=organization,
        event=event,
        destination=retrying_to,
        status=Delivery.Status.PENDING,
        attempt_count=2,
        next_attempt_at=timezone.now(),
    )
    Delivery.objects.create(
        organization=organization,
        event=event,
        destination=delivered_to,
        status=Delivery.Status.SUCCEEDED,
        attempt_count=1,
        completed_at=timezone.now(),
    )
    client.force_login(owner)

    html = client.get(reverse("dashboard:events", args=["acme"])).content.decode()

    assert badges(html) == ["My app · dead", "Billing · retrying", "Archive"]
    assert 'title="My app: dead"' in html and 'title="Archive: Succeeded"' in html


def test_a_delivery_not_tried_yet_reads_queued(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination = named_destination(organization, source, "My app")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_queued"))
    Delivery.objects.create(
        organization=organization, event=event, destination=destination, status=Delivery.Status.PENDING
    )
    client.force_login(owner)
    html = client.get(reverse("dashboard:events", args=["acme"])).content.decode()
    assert badges(html) == ["My app · queued"]


@pytest.mark.parametrize(
    ("milliseconds", "shown"),
    [
        (None, "—"),
        (0, "0 ms"),
        (250, "250 ms"),
        (999.4, "999 ms"),
        (999.6, "1.0 s"),
        (1234, "1.2 s"),
        (59_940, "59.9 s"),
        (59_960, "1 min"),
        (79_420, "1 min 19 s"),
        (3_599_000, "59 min 59 s"),
        (3_600_000, "1 h"),
        (7_500_000, "2 h 5 min"),
    ],
)
def test_durations_read_in_the_unit_that_suits_them(milliseconds, shown):
    assert duration_ms(milliseconds) == shown


def test_overview_shows_latency_in_seconds_not_tens_of_thousands_of_ms(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination = named_destination(organization, source, "My app")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_slow"))
    Delivery.objects.create(
        organization=organization,
        event=event,
        destination=destination,
        status=Delivery.Status.SUCCEEDED,
        attempt_count=1,
        completed_at=event.received_at + timedelta(milliseconds=79_420),
    )
    client.force_login(owner)
    html = client.get(reverse("dashboard:overview", args=["acme"])).content.decode()
    assert '<div class="stat">1 min 19 s</div>' in html and "79420" not in html
