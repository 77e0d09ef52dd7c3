"""The dead-letter email: correct plurals and a link straight to what failed."""

from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail

from webhooks.models import WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services.alerts import send_dead_letter_digests

from .dashboard_helpers import dead_delivery, ingest_stripe
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)


def dead_events(client, organization, count: int):
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    for number in range(count):
        event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, f"evt_dead_{number}"))
        dead_delivery(event, destination)
    return destination


def test_one_dead_delivery_is_one_delivery_and_the_mail_links_to_it(client, organization, owner):
    destination = dead_events(client, organization, 1)

    assert send_dead_letter_digests() == 1

    message = mail.outbox[0]
    assert message.subject == "[Hookline] 1 delivery to endpoint failed permanently"
    assert "1 delivery to endpoint" in message.body and "1 deliveries" not in message.body
    assert "was refused" in message.body and "It is kept" in message.body
    events_link = f"http://testserver/o/acme/events/?status=failed&destination={destination.pk}"
    destination_link = f"http://testserver/o/acme/destinations/{destination.pk}/"
    assert events_link in message.body and destination_link in message.body
    html = message.alternatives[0][0]
    assert f'href="{events_link.replace("&", "&amp;")}"' in html and "1 delivery to endpoint" in html

    # The link opens the events list filtered to what failed there.
    client.force_login(owner)
    url = urlsplit(events_link)
    page = client.get(url.path, parse_qs(url.query))
    assert page.status_code == 200 and "evt_dead_0" in page.content.decode()


def test_several_dead_deliveries_are_plural(client, organization):
    dead_events(client, organization, 3)
    assert send_dead_letter_digests() == 1
    message = mail.outbox[0]
    assert message.subject == "[Hookline] 3 deliveries to endpoint failed permanently"
    assert "3 deliveries to endpoint" in message.body and "were refused" in message.body
    assert "3 × 503" in message.body and "They are kept" in message.body
    assert message.to == ["owner@acme.example"]
