"""What a new tenant ran into on a first day with the dashboard (a live app, a Celery worker, a
receiver that failed once and one that always answered 500), replayed in a real browser
(Playwright + Debian's Chromium). Deliveries are put in the states the engine leaves them in by
the test itself, so every step is deterministic."""

import pytest

from webhooks.models import Delivery, DeliveryAttempt

from .dashboard_helpers import build_world, work_driven_by_the_test
from .test_dashboard_browser import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


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
