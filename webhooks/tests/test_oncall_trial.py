"""What an on-call operator's trial of a running deployment found (a forged webhook, a receiver and a
worker down, Redis gone), each a page or figure that hid what the operator was asked about."""

from __future__ import annotations

import html
import io
import re

import pytest
from django.urls import reverse

from webhooks.models import Delivery, WebhookEvent
from webhooks.tests import test_admin
from webhooks.tests.dashboard_helpers import build_world, ingest_stripe

pytestmark = pytest.mark.django_db

# test_admin's: two tenants, a dead, a retrying and a delivered event; a superuser signed in.
setup = test_admin.setup
superuser = test_admin.superuser
admin = test_admin.admin


def test_a_rejected_request_found_by_the_id_it_claims_shows_that_id_on_its_row_and_page(admin, setup):
    # "Stripe says evt_forged was sent": the admin's search finds the refused request by the id it
    # claims, but its row and page showed "-" for the provider's id, and the id nowhere.
    source = setup["dead"].source
    rejected = WebhookEvent.objects.create(
        organization=source.organization,
        source=source,
        status=WebhookEvent.Status.REJECTED,
        claimed_event_id="evt_forged_by_someone",
        rejection_code="no_matching_secret",
        rejection_detail="the v1 signature does not match",
        body=b"{}",
    )

    listing = admin.get(reverse("admin:webhooks_webhookevent_changelist"), {"q": "evt_forged_by_someone"})
    assert test_admin.listed(listing) == [rejected]
    assert "claims evt_forged_by_someone" in listing.content.decode()

    page = admin.get(reverse("admin:webhooks_webhookevent_change", args=[rejected.pk])).content.decode()
    assert "Event id it claims (not verified)" in page
    assert "evt_forged_by_someone" in page


def test_the_overview_says_how_many_deliveries_retry_beside_a_success_rate_of_finished_ones(
    client, owner, organization
):
    # The receiver was down: its destination paused, every delivery but the one before waited for a
    # retry, and the overview's card read "100.0%, 1 delivered, 1 failed" with nothing about them.
    world = build_world(client, organization)
    for number in range(3):
        event = WebhookEvent.objects.get(pk=ingest_stripe(client, world.source, f"evt_down_{number}"))
        Delivery.objects.create(
            organization=organization,
            event=event,
            destination=world.destination,
            status=Delivery.Status.PENDING,
            attempt_count=2,
        )
    never_tried = WebhookEvent.objects.get(pk=ingest_stripe(client, world.source, "evt_new"))
    Delivery.objects.create(organization=organization, event=never_tried, destination=world.destination)

    client.force_login(owner)
    response = client.get(reverse("dashboard:overview", args=["acme"]))
    assert response.context["overview"].retrying_24h == 3
    [href] = re.findall(r'href="([^"]*status=retrying[^"]*)"[^>]*>3 retrying</a>', response.content.decode())
    # The link lists exactly the events it counts.
    listed = client.get(html.unescape(href))
    assert {event.provider_event_id for event in listed.context["events"]} == {f"evt_down_{n}" for n in range(3)}


def test_show_event_counts_what_processing_made_and_gives_each_delivery_its_webhook_id(
    client, organization, httpserver, monkeypatch
):
    # "evt_123 never reached us": after a replay, show_event said "processed: 2 deliveries" (the
    # replay counted as made by the processing), and never which webhook-id the receiver got.
    from webhooks.services import delivery as delivery_service
    from webhooks.services import processing
    from webhooks.tests.test_show_event import show_text
    from webhooks.tests.test_what_happened import received_twice_and_replayed

    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    event, replay = received_twice_and_replayed(client, organization, httpserver)
    original = Delivery.objects.get(event=event, is_replay=False)

    text = show_text(str(event.pk))
    assert "processed: 1 delivery\n" in text
    assert f"): succeeded, 1 attempt, webhook-id {original.message_id}\n" in text
    assert f"(replay): succeeded, 1 attempt, webhook-id {replay.message_id}\n" in text


def test_a_destination_the_circuit_breaker_paused_shows_in_metrics_and_platform_health(client, organization, settings):
    # The receiver was down and its destination paused: its deliveries wait on purpose, so no
    # backlog figure of /metrics moved and nothing there said a receiver was down.
    from django.core.management import call_command
    from django.utils import timezone

    from webhooks.models import Destination
    from webhooks.tests.factories import make_destination, make_source
    from webhooks.tests.test_platform_health import TOKEN, parse_prometheus

    source = make_source(organization)
    paused, _ = make_destination(organization, "http://127.0.0.1:9/down", sources=[source])
    make_destination(organization, "http://127.0.0.1:9/up", sources=[source])
    turned_off, _ = make_destination(organization, "http://127.0.0.1:9/off", sources=[source])
    Destination.objects.filter(pk=paused.pk).update(
        paused_at=timezone.now(), pause_reason="paused automatically after 20 consecutive failed attempts"
    )
    Destination.objects.filter(pk=turned_off.pk).update(paused_at=timezone.now(), is_active=False)

    settings.METRICS_TOKEN = TOKEN
    samples = parse_prometheus(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    assert samples[("hookline_destinations_paused", ())] == 1
    assert samples[("hookline_health_measure_up", (("measure", "destinations_paused"),))] == 1

    out = io.StringIO()
    with pytest.raises(SystemExit):  # no beat in this test: stalled, after the output
        call_command("platform_health", stdout=out)
    assert "Paused destinations (their deliveries wait): 1\n" in out.getvalue()


def test_the_sweeper_names_each_delivery_it_releases_after_its_worker_died(
    client, organization, httpserver, caplog, monkeypatch
):
    # A worker killed mid-send: the sweep logged "'released': 1", and the delivery's own lines went
    # from "processed" to "attempt 2", with nothing to say attempt 1 was lost and sent again.
    import logging
    from datetime import timedelta

    from django.utils import timezone

    from webhooks.services import delivery as delivery_service
    from webhooks.services import processing
    from webhooks.tests.factories import STRIPE_SECRET, make_destination, make_source
    from webhooks.tests.signing import post_stripe

    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    post_stripe(client, source, '{"id":"evt_midsend","object":"event","type":"invoice.paid"}', STRIPE_SECRET)
    processing.process_received_events()
    (claimed,) = delivery_service.claim_due_deliveries(1)  # and then its worker is killed

    with caplog.at_level(logging.INFO, logger="webhooks.services.delivery"):
        assert delivery_service.release_lost_claims(now=timezone.now() + timedelta(hours=1)) == 1
    assert Delivery.objects.get(pk=claimed.pk).status == Delivery.Status.PENDING
    [line] = [record.getMessage() for record in caplog.records if str(claimed.pk) in record.getMessage()]
    assert line.startswith(
        f"delivery {claimed.pk} of event {claimed.event_id} attempt 1: organization {organization.pk} "
        f"destination {destination.pk}: not recorded, its worker stopped mid-attempt"
    )
    assert line.endswith("released to be sent again with the same webhook-id")


def test_show_event_and_the_admin_say_which_attempt_its_dead_worker_left_unrecorded(
    admin, client, organization, httpserver, monkeypatch
):
    # After the worker was killed mid-send, show_event read "succeeded, 2 attempts" over one attempt
    # line, #2: nothing said what became of #1, which the receiver had got.
    from datetime import timedelta

    from django.utils import timezone

    from webhooks.services import delivery as delivery_service
    from webhooks.services import processing
    from webhooks.tests.delivering import deliver_now
    from webhooks.tests.factories import STRIPE_SECRET, make_destination, make_source
    from webhooks.tests.signing import post_stripe
    from webhooks.tests.test_show_event import show_text

    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    post_stripe(client, source, '{"id":"evt_lost_once","object":"event","type":"invoice.paid"}', STRIPE_SECRET)
    processing.process_received_events()
    (claimed,) = delivery_service.claim_due_deliveries(1)
    # Being sent: not yet an attempt to explain.
    assert "not recorded" not in show_text("evt_lost_once")

    delivery_service.release_lost_claims(now=timezone.now() + timedelta(hours=1))  # its worker was killed
    Delivery.objects.filter(pk=claimed.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    deliver_now(claimed.pk)

    text = show_text("evt_lost_once")
    assert "succeeded, 2 attempts" in text
    lost = text.index("      #1 not recorded: its worker stopped mid-attempt; the receiver may have got it")
    assert lost < text.index("  #2 200 in ")

    page = " ".join(
        admin.get(reverse("admin:webhooks_webhookevent_change", args=[claimed.event_id])).content.decode().split()
    )
    lost_row = page.index('<tr class="hookline-unrecorded-attempt"><td>1</td>')
    assert "not recorded: its worker stopped mid-attempt; the receiver may have got it" in page[lost_row:]
    assert lost_row < page.index("<td>2</td>")
