"""What a new tenant ran into on a first day with the dashboard (a live app, a Celery worker, a
receiver that failed once and one that always answered 500), replayed in a real browser
(Playwright + Debian's Chromium). Deliveries are put in the states the engine leaves them in by
the test itself, so every step is deterministic."""

from datetime import timedelta

import pytest

from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services.destinations import destination_create, destination_replay_event

from .dashboard_helpers import build_world, ingest_stripe, work_driven_by_the_test
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 375, "height": 740}


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


def test_an_attempt_being_sent_or_never_recorded_is_listed_under_its_number(
    browser, live_server, client, organization, owner
):
    """Just after a replay, the event page said "In flight · 1 attempt" over "No attempt yet.": the
    worker counts an attempt when it takes the delivery, before its answer is recorded. A number
    counted but never recorded (a worker killed mid-send) was missing from the list too."""
    world = build_world(client, organization)
    # Attempt #2 taken by a worker, its answer not in yet (#1 failed with a 503: build_world).
    Delivery.objects.filter(pk=world.delivery.pk).update(
        status=Delivery.Status.IN_FLIGHT, attempt_count=2, completed_at=None
    )
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/{world.event.pk}/")
    delivery = page.locator(".delivery")
    assert "2 attempts" in delivery.inner_text()
    assert "No attempt yet" not in delivery.inner_text()
    heads = delivery.locator(".timeline-head").all_inner_texts()
    assert [head.split()[0] for head in heads] == ["#1", "#2"]
    assert "Being sent" in heads[1]

    # Dead after three counted attempts, of which #2 was never recorded: listed in its place.
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.DEAD, attempt_count=3)
    DeliveryAttempt.objects.create(
        organization_id=organization.pk, delivery=world.delivery, attempt_number=3, response_status=500
    )
    page.reload()
    heads = delivery.locator(".timeline-head").all_inner_texts()
    assert [head.split()[0] for head in heads] == ["#1", "#2", "#3"]
    assert "Not recorded" in heads[1] and "HTTP 500" in heads[2]
    assert "worker stopped mid-attempt" in delivery.locator(".attempt-unrecorded").inner_text()


def test_a_source_s_recent_events_tell_events_apart_show_dead_deliveries_and_fit_a_phone(
    browser, live_server, client, organization, owner
):
    """A source's "Recent events" listed two "invoice.paid" rows with nothing to tell them apart,
    each with a green "Processed" while its delivery was dead; at 375 px the table scrolled sideways
    and cut the status off."""
    world = build_world(client, organization)  # evt_world_1: invoice.paid, its delivery dead
    ingest_stripe(client, world.source, "evt_1QtrialWillEndLongId0001", "customer.subscription.trial_will_end")
    ingest_stripe(client, world.source, "evt_world_2")  # invoice.paid again, not processed yet
    # One load, read at both widths (the window resized: the layout is the style sheet's alone, no
    # script measures the window).
    page = sign_in(browser, live_server, owner, **PHONE)
    page.goto(f"{live_server.url}/o/acme/sources/{world.source.pk}/")
    for viewport in (PHONE, {"width": 1280, "height": 900}):
        page.set_viewport_size(viewport)
        assert page.evaluate("window.innerWidth") == viewport["width"]
        rows = page.locator("table[aria-labelledby=recent-heading] tbody tr")
        assert rows.count() == 3
        dead_row = rows.filter(has_text="evt_world_1")
        assert "invoice.paid" in dead_row.inner_text()
        assert dead_row.locator(".badge", has_text="1 dead").count() == 1
        assert "endpoint · dead" in dead_row.inner_text()
        assert rows.filter(has_text="evt_world_2").count() == 1
        overflowing = page.evaluate(
            "[...document.querySelectorAll('.table-wrap')].filter((w) => w.scrollWidth > w.clientWidth).length"
        )
        assert overflowing == 0, viewport


def test_a_replay_is_told_apart_from_the_first_delivery_in_the_lists(browser, live_server, client, organization, owner):
    """After a replay to a destination whose delivery had died, the events list and the source's
    recent events showed "endpoint · dead" and "endpoint · dead" side by side, as if the event had
    been delivered twice by mistake."""
    world = build_world(client, organization)
    replay = destination_replay_event(event=world.event, destination=world.destination, actor=owner)
    Delivery.objects.filter(pk=replay.pk).update(status=Delivery.Status.DEAD, attempt_count=1)
    page = sign_in(browser, live_server, owner)
    for path in ("/o/acme/events/", f"/o/acme/sources/{world.source.pk}/"):
        page.goto(f"{live_server.url}{path}")
        row = page.locator("main table tbody tr", has_text="evt_world_1")
        badges = row.locator(".badge[title^=endpoint]").all_inner_texts()
        assert sorted(badges) == ["endpoint · dead", "endpoint · replay · dead"], path


def test_the_replay_choice_fits_a_phone_whatever_the_destination_names(
    browser, live_server, client, organization, owner
):
    """A destination with a long name made the "Replay to" list as wide as the fields' 560 px at
    375 px: the whole event page scrolled sideways."""
    world = build_world(client, organization)
    destination_create(
        organization=organization,
        name="Order fulfilment service behind the EU API gateway (Frankfurt), production, v2",
        url="http://127.0.0.1:9/fulfilment",
        sources=[world.source],
    )
    page = sign_in(browser, live_server, owner, **PHONE)
    page.goto(f"{live_server.url}/o/acme/events/{world.event.pk}/")
    replay_to = page.get_by_label("Replay to")
    assert replay_to.locator("option", has_text="Frankfurt").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
    assert replay_to.bounding_box()["x"] + replay_to.bounding_box()["width"] <= PHONE["width"]


def test_a_failed_attempt_later_delivered_is_said_to_be_so(browser, live_server, client, organization, owner):
    """A receiver that answered 503 once, then 200 on the retry: its destination read "Success
    100.0%" beside "Last failure: HTTP 503", with nothing to say that this delivery arrived."""
    world = build_world(client, organization)  # attempt #1: 503
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.SUCCEEDED, attempt_count=2)
    DeliveryAttempt.objects.create(
        organization_id=organization.pk, delivery=world.delivery, attempt_number=2, response_status=200
    )
    page = sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/")
    last_failure = page.locator(".card", has_text="Last failure")
    assert "100.0%" in page.locator(".card", has_text="Success, 7 days").inner_text()
    assert "HTTP 503" in last_failure.inner_text()
    assert "then delivered on a later attempt" in last_failure.inner_text()
    page.goto(f"{live_server.url}/o/acme/destinations/")
    assert "(then delivered)" in page.locator("td[data-label='Last failure']").inner_text()

    # Out of retries: no such words.
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.DEAD)
    DeliveryAttempt.objects.filter(delivery=world.delivery, attempt_number=2).update(response_status=500)
    page.goto(f"{live_server.url}/o/acme/destinations/{world.destination.pk}/")
    assert "HTTP 500" in last_failure.inner_text() and "delivered" not in last_failure.inner_text()


def test_each_attempt_says_how_long_after_the_one_before_it_was_sent(browser, live_server, client, organization, owner):
    """Attempts seconds apart all read "just now" (and hours apart, "2 h ago" and "2 h ago"): how
    the retries were spaced was only in tooltips, which a phone or a keyboard never shows."""
    world = build_world(client, organization)  # attempt #1: 503
    first = world.delivery.attempts.get()
    first.started_at -= timedelta(hours=1)
    first.save(update_fields=["started_at"])
    Delivery.objects.filter(pk=world.delivery.pk).update(attempt_count=3)
    for number, after in ((2, timedelta(seconds=30)), (3, timedelta(minutes=10, seconds=30))):
        DeliveryAttempt.objects.create(
            organization_id=organization.pk,
            delivery=world.delivery,
            attempt_number=number,
            response_status=500,
            started_at=first.started_at + after,
        )
    page = sign_in(browser, live_server, owner, **PHONE)
    page.goto(f"{live_server.url}/o/acme/events/{world.event.pk}/")
    gaps = page.locator(".delivery .timeline li").all_inner_texts()
    assert "sent" not in gaps[0]
    assert "sent 30.0 s after #1" in gaps[1]
    assert "sent 10 min after #2" in gaps[2]
