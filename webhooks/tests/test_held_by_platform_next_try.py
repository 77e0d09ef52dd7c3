"""What the event page and the test sender's progress panel say of a delivery the platform put back
unsent (Delivery.put_back_cause): what it waits for, even once its time has come, and never the bare
"next try <time>" of a delivery retried after its receiver failed; and the panels that follow it
notice the put-back, which changes neither its status nor its attempt count."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Delivery

from .api_helpers import make_delivery, make_event
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

SECRET_WAIT = "once the platform can decrypt the destination&#x27;s secret"


@pytest.fixture
def tenant(client, owner):
    client.force_login(owner)
    return client


def pending(organization, attempts: int) -> Delivery:
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    return make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=attempts)


def put_back(delivery: Delivery, *, due_in: timedelta) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(
        put_back_cause=Delivery.PutBackCause.SECRET_UNREADABLE,
        put_back_since=timezone.now(),
        put_back_times=3,
        next_attempt_at=timezone.now() + due_in,
        last_error="not sent: the destination's signing secret cannot be decrypted",
    )


def next_try(html: str) -> str:
    found = re.findall(r"next try ([^<]*)", html)
    assert found, html[:2000]
    return found[0]


def test_the_event_page_says_what_a_held_delivery_waits_for_once_its_time_has_come(tenant, organization):
    delivery = pending(organization, attempts=2)
    put_back(delivery, due_in=timedelta(minutes=-5))  # due: no worker has taken it again yet

    html = tenant.get(reverse("dashboard:event_detail", args=[organization.slug, delivery.event_id])).content.decode()

    assert next_try(html).startswith(SECRET_WAIT)  # was "next try 5 min ago", as a retrying one
    assert "it was due" in html


@pytest.mark.parametrize("attempts", [0, 2])
def test_the_progress_panel_says_what_a_held_delivery_waits_for(tenant, organization, attempts):
    delivery = pending(organization, attempts=attempts)
    put_back(delivery, due_in=timedelta(minutes=1))

    html = tenant.get(reverse("dashboard:event_progress", args=[organization.slug, delivery.event_id])).content.decode()

    assert "Held by the platform" in html
    # Was "next try in 1 min" after failed attempts, like a retrying one, and nothing before any.
    assert next_try(html).startswith(SECRET_WAIT)


def test_a_put_back_changes_what_the_following_panels_have_seen(tenant, organization):
    delivery = pending(organization, attempts=1)
    progress = reverse("dashboard:event_progress", args=[organization.slug, delivery.event_id])
    seen = re.search(r"seen=([0-9a-f]+)", tenant.get(progress).content.decode()).group(1)
    assert tenant.get(progress, {"seen": seen}).status_code == 204

    put_back(delivery, due_in=timedelta(seconds=30))

    # Was 204 (nothing new): the panel and the event page went on saying it was retried after a failure.
    changed = tenant.get(progress, {"seen": seen})
    assert changed.status_code == 200 and "Held by the platform" in changed.content.decode()
