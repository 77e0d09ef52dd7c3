"""The periodic tasks that go through every tenant's rows: one row that trips a step or a task
must not keep the other steps, or the other tenants, from their turn."""

from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import alerts, lifecycle, processing

from .factories import make_destination, make_source


def test_one_failing_sweeper_step_does_not_stop_the_others(organization, monkeypatch):
    published = []
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: published.append(slot))
    source = make_source(organization)
    make_destination(organization, "http://127.0.0.1:19600/hook", sources=[source])
    WebhookEvent.objects.create(organization=organization, source=source, body=b"{}")
    processing.process_event_batch()
    published.clear()

    def broken(now=None):
        raise RuntimeError("a row this step trips on")

    monkeypatch.setattr(processing, "release_lost_claims", broken)
    result = processing.sweep(now=timezone.now() + timedelta(seconds=1))
    assert result["failed_steps"] == 1 and result["released"] == 0
    assert result["due"] == 1 and published == [0]  # the last step still ran


@pytest.fixture
def dead_at_both(organization, other_organization):
    """A destination per tenant, each with a newly dead delivery; acme's first."""
    destinations = {}
    for org in (organization, other_organization):
        source = make_source(org)
        destination, _ = make_destination(org, f"http://127.0.0.1:19600/{org.slug}", sources=[source])
        event = WebhookEvent.objects.create(
            organization=org, source=source, body=b"{}", status=WebhookEvent.Status.PROCESSED
        )
        Delivery.objects.create(
            organization=org,
            event=event,
            destination=destination,
            status=Delivery.Status.DEAD,
            attempt_count=1,
            completed_at=timezone.now(),
            last_status_code=500,
            last_error="HTTP 500: no retries left",
        )
        destinations[org.slug] = destination
    return destinations


def test_a_destination_whose_secret_cannot_be_read_does_not_stop_the_other_digests(dead_at_both):
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE webhooks_destination SET secret = 'gAAAAAnot-a-token' WHERE id = %s", [dead_at_both["acme"].pk]
        )
    assert alerts.send_dead_letter_digests() == 2
    assert sorted(message.to[0] for message in mail.outbox) == ["owner@acme.example", "owner@globex.example"]


def test_a_digest_that_cannot_be_sent_holds_back_no_other_and_stays_owed(dead_at_both, monkeypatch):
    send = alerts._send_dead_letter_digest

    def sending(*, destination, **kwargs):
        if destination.pk == dead_at_both["acme"].pk:
            raise RuntimeError("a value the template trips on")
        send(destination=destination, **kwargs)

    monkeypatch.setattr(alerts, "_send_dead_letter_digest", sending)
    assert alerts.send_dead_letter_digests() == 1
    assert [message.to for message in mail.outbox] == [["owner@globex.example"]]
    assert Destination.objects.get(pk=dead_at_both["acme"].pk).dead_digest_sent_at is None  # still owed
    monkeypatch.setattr(alerts, "_send_dead_letter_digest", send)
    assert alerts.send_dead_letter_digests() == 1
    assert mail.outbox[-1].to == ["owner@acme.example"]


def test_one_organization_whose_purge_fails_does_not_keep_the_others_from_their_retention(
    organization, other_organization, monkeypatch
):
    long_ago = timezone.now() - timedelta(days=400)
    for org in (organization, other_organization):
        WebhookEvent.objects.create(
            organization=org,
            source=make_source(org),
            body=b"{}",
            status=WebhookEvent.Status.PROCESSED,
            received_at=long_ago,
        )
    purge = lifecycle._purge_organization

    def purging(org, *args):
        if org.pk == organization.pk:
            raise RuntimeError("a row this organization's purge trips on")
        return purge(org, *args)

    monkeypatch.setattr(lifecycle, "_purge_organization", purging)
    assert lifecycle.purge_expired_events() == 1
    assert list(WebhookEvent.objects.values_list("organization_id", flat=True)) == [organization.pk]
