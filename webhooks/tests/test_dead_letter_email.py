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


def test_the_digest_points_to_the_dashboard_not_to_the_platform_admin(client, organization):
    dead_events(client, organization, 2)
    assert send_dead_letter_digests() == 1
    message = mail.outbox[0]
    html = message.alternatives[0][0]
    for text in (message.body, html):
        assert "retry_delivery" not in text and "the admin" not in text
        assert "Retry all failed deliveries" in text and "Retry now" in text


def test_the_pause_email_links_to_the_destination_says_how_to_resume_and_counts_as_its_page(
    client, organization, owner, settings
):
    from django.urls import reverse
    from django.utils import timezone

    from webhooks.models import Delivery, Destination
    from webhooks.services.alerts import alert_destination_paused

    destination = dead_events(client, organization, 1)  # a dead one: not waiting
    event = WebhookEvent.objects.get()
    for status in (Delivery.Status.PENDING, Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT):
        Delivery.objects.create(
            organization=organization, event=event, destination=destination, is_replay=True, status=status
        )
    Destination.objects.filter(pk=destination.pk).update(
        paused_at=timezone.now(),
        pause_reason="paused automatically after 5 consecutive failed attempts",
        pause_notice_due_at=timezone.now(),
    )
    assert alert_destination_paused(destination.pk) is True

    message = mail.outbox[0]
    html = message.alternatives[0][0]
    link = f"{settings.PUBLIC_BASE_URL}/o/acme/destinations/{destination.pk}/"
    assert message.subject == "[Hookline] Destination paused: endpoint" and message.to == ["owner@acme.example"]
    assert link in message.body and f'href="{link}"' in html
    for text in (message.body, html):
        assert "press &quot;Resume&quot;" in text or 'press "Resume"' in text
        assert "5 consecutive failed attempts" in text
    # What the destination's page calls "Waiting" (queued or being sent), and the same number.
    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk]))
    assert page.context["health"].waiting == 3
    assert 'Waiting deliveries of the last 7 days: 3 (the "Waiting, 7 days" count' in message.body
    assert alert_destination_paused(destination.pk) is False  # sent: no longer owed


def test_a_line_break_in_one_tenants_destination_name_stops_no_ones_digest(client, organization, other_organization):
    """A name saved before names refused control characters: Django refuses a header holding a
    line break, which made the digest task fail there and skip every destination after it."""
    from webhooks.models import Destination

    ours = dead_events(client, organization, 1)
    Destination.objects.filter(pk=ours.pk).update(name="Evil\r\nBcc: someone@evil.example")
    theirs = dead_events(client, other_organization, 1)
    Destination.objects.filter(pk=theirs.pk).update(name="Globex endpoint")

    assert send_dead_letter_digests() == 2

    subjects = sorted(message.subject for message in mail.outbox)
    assert subjects == [
        "[Hookline] 1 delivery to Evil Bcc: someone@evil.example failed permanently",
        "[Hookline] 1 delivery to Globex endpoint failed permanently",
    ]
    assert all(message.bcc == [] for message in mail.outbox)
    assert all("someone@evil.example" not in message.recipients() for message in mail.outbox)


def test_the_pause_email_of_a_destination_whose_name_has_a_line_break_is_sent(client, organization):
    from django.utils import timezone

    from webhooks.models import Destination
    from webhooks.services.alerts import alert_destination_paused

    destination = dead_events(client, organization, 1)
    Destination.objects.filter(pk=destination.pk).update(
        name="Evil\nX-Injected: 1", paused_at=timezone.now(), pause_notice_due_at=timezone.now()
    )

    assert alert_destination_paused(destination.pk) is True
    assert mail.outbox[0].subject == "[Hookline] Destination paused: Evil X-Injected: 1"
    assert "X-Injected" not in mail.outbox[0].extra_headers


def test_a_destination_paused_again_within_the_alert_interval_or_resumed_before_its_email_is_not_emailed(
    client, organization, owner
):
    from django.utils import timezone

    from webhooks.models import Destination
    from webhooks.services import operations
    from webhooks.services.alerts import alert_destination_paused

    destination = dead_events(client, organization, 1)
    paused = Destination.objects.filter(pk=destination.pk)
    paused.update(paused_at=timezone.now(), pause_notice_due_at=timezone.now())
    assert alert_destination_paused(destination.pk) is True

    # Resumed and paused again within ALERT_INTERVAL_SECONDS: the admins heard of it already.
    operations.destination_resume(destination=destination, actor=owner)
    paused.update(paused_at=timezone.now(), pause_notice_due_at=timezone.now())
    assert alert_destination_paused(destination.pk) is False
    # Resumed before its email went out (by a release that did not clear it): nothing to say any more.
    operations.destination_resume(destination=destination, actor=owner)
    paused.update(last_alerted_at=None, pause_notice_due_at=timezone.now())
    assert alert_destination_paused(destination.pk) is False
    assert len(mail.outbox) == 1 and paused.get().pause_notice_due_at is None
