"""What happened to webhook X, asked with the id as people paste it, on every surface.

A tenant copies the id from wherever they saw it: a header line of their receiver's log
("webhook-id: 01…"), a JSON member of Stripe's payload ("id": "evt_…",), a quoted string, or the
address of the event's page a colleague sent. Each of these must land on the event, as the bare
id does: on the dashboard, in the REST API, in the admin and with the operator commands.
"""

import io
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from organizations.models import ApiKey
from webhooks.models import Delivery, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.destinations import destination_replay_event
from webhooks.tests.delivering import deliver_now

from .api_helpers import api_get, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

BODY = '{"id":"evt_1QpastedId","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1"}}}'


@pytest.fixture(autouse=True)
def _work_is_driven_by_the_test(monkeypatch):
    # No Celery worker: the test processes events and sends deliveries itself.
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr("webhooks.services.ingest.schedule_event_processing", lambda **_: None)


def received_twice_and_replayed(client, organization, httpserver):
    """evt_1QpastedId sent by Stripe twice, delivered once with 200, then replayed (a delivery with
    its own webhook-id)."""
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    first = post_stripe(client, source, BODY, STRIPE_SECRET).json()
    again = post_stripe(client, source, BODY, STRIPE_SECRET).json()
    assert again == {"id": first["id"], "duplicate": True}
    processing.process_received_events()
    event = WebhookEvent.objects.get()
    deliver_now(Delivery.objects.get(event=event).pk)
    replay = destination_replay_event(event=event, destination=destination)
    deliver_now(replay.pk)
    return event, replay


def pasted_forms(event: WebhookEvent, replay: Delivery) -> list[tuple[str, str]]:
    """(what is pasted, what it should find) — each form of each id a tenant holds."""
    return [
        ('"evt_1QpastedId"', "provider id in quotes"),
        ('"id": "evt_1QpastedId",', "a JSON member of the payload"),
        (f"webhook-id: {event.pk}", "the receiver's header line"),
        (f"webhook-id: {replay.pk}", "a replay's header line"),
        (f"'{replay.pk}'", "a replay's webhook-id in quotes"),
        (f"https://hookline.example/o/acme/events/{event.pk}/", "the event page's address"),
    ]


@pytest.mark.django_db
def test_the_dashboard_search_finds_the_event_by_the_id_as_pasted(client, organization, owner, httpserver):
    event, replay = received_twice_and_replayed(Client(), organization, httpserver)
    client.force_login(owner)
    for pasted, what in pasted_forms(event, replay):
        page = client.get(f"/o/{organization.slug}/events/", {"q": pasted})
        assert [row.pk for row in page.context["events"]] == [event.pk], what


@pytest.mark.django_db
def test_the_api_searches_any_id_as_pasted_and_shows_when_the_duplicates_came(client, organization, httpserver):
    event, replay = received_twice_and_replayed(Client(), organization, httpserver)
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    event.refresh_from_db()
    assert event.duplicate_count == 1 and event.last_duplicate_at is not None

    for pasted, what in [(str(replay.pk), "a replay's bare webhook-id"), *pasted_forms(event, replay)]:
        answer = api_get(client, key, "/api/v1/events", search=pasted)
        assert answer.status_code == 200, what
        [found] = answer.json()["results"]
        assert found["id"] == str(event.pk), what
    # When the provider sent it again, on the list as on the event itself.
    assert found["duplicate_count"] == 1
    assert found["last_duplicate_at"] == event.last_duplicate_at.isoformat().replace("+00:00", "Z")
    detail = api_get(client, key, f"/api/v1/events/{event.pk}").json()
    assert detail["last_duplicate_at"] == found["last_duplicate_at"]
    # An id no event has is an empty page, and the search combines with the other filters.
    assert api_get(client, key, "/api/v1/events", search="evt_nobody").json()["results"] == []
    assert api_get(client, key, "/api/v1/events", search="evt_1QpastedId", status="rejected").json()["results"] == []


@pytest.mark.django_db
def test_the_api_search_is_the_organizations_own(client, organization, other_organization, httpserver):
    event, replay = received_twice_and_replayed(Client(), organization, httpserver)
    _, outsider_key = make_key(other_organization, access=ApiKey.Access.READ_ONLY)
    for pasted in (str(event.pk), str(replay.pk), "evt_1QpastedId"):
        assert api_get(client, outsider_key, "/api/v1/events", search=pasted).json()["results"] == []


@pytest.mark.django_db
def test_the_admin_finds_an_event_and_a_delivery_by_a_pasted_header_line(client, organization, httpserver):
    event, replay = received_twice_and_replayed(Client(), organization, httpserver)
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    events = client.get("/admin/webhooks/webhookevent/", {"q": f"webhook-id: {replay.pk}"})
    assert [row.pk for row in events.context["cl"].result_list] == [event.pk]
    deliveries = client.get("/admin/webhooks/delivery/", {"q": f"webhook-id: {replay.pk}"})
    assert [row.pk for row in deliveries.context["cl"].result_list] == [replay.pk]


@pytest.mark.django_db
def test_show_event_takes_a_quoted_id_and_says_why_a_dead_delivery_failed(client, organization, httpserver):
    source = make_source(organization, name="Stripe live")
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("who are you?", status=401)
    post_stripe(client, source, BODY, STRIPE_SECRET)
    processing.process_received_events()
    delivery = deliver_now(Delivery.objects.get().pk)
    assert delivery.status == Delivery.Status.DEAD  # a 4xx is not retried by default

    out = io.StringIO()
    call_command("show_event", '"evt_1QpastedId"', stdout=out)
    # The attempt says 401; only the dead-letter reason says that no retry will come.
    assert f"why it failed: {delivery.last_error}" in out.getvalue()
    assert "not retried" in delivery.last_error


@pytest.mark.django_db
def test_an_event_committed_after_the_batch_read_its_clock_is_not_processed_before_it_was_received(
    organization, monkeypatch
):
    source = make_source(organization)
    received_at = timezone.now() + timedelta(seconds=2)  # the batch's clock reading comes first
    event = WebhookEvent.objects.create(
        organization=organization, source=source, provider_event_id="evt_late", body=b"{}", received_at=received_at
    )
    processing.process_event_batch()
    event.refresh_from_db()
    assert event.status == WebhookEvent.Status.PROCESSED
    assert event.processed_at >= event.received_at


@pytest.mark.django_db(transaction=True)
def test_pasting_the_receivers_header_line_into_the_dashboard_search_lands_on_the_event(
    browser, live_server, organization, owner, httpserver
):
    event, replay = received_twice_and_replayed(Client(), organization, httpserver)
    session = Client()
    session.force_login(owner)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies(
        [
            {
                "name": django_settings.SESSION_COOKIE_NAME,
                "value": session.cookies[django_settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{live_server.url}/o/{organization.slug}/events/")
    page.get_by_label("Search", exact=True).fill(f"webhook-id: {replay.pk}")
    page.keyboard.press("Enter")
    expect(page.locator("#event-results tbody tr")).to_have_count(1)
    expect(page.locator("#event-results")).to_contain_text("evt_1QpastedId")
    page.locator("#event-results").get_by_role("link", name="invoice.paid").click()
    expect(page.locator("main")).to_contain_text(f"webhook-id {replay.pk}")
    expect(page.locator("main")).to_contain_text("The provider sent it 2 times; processed once")
    context.close()


@pytest.mark.django_db
def test_a_pasted_address_that_cannot_be_parsed_is_searched_as_given_not_a_server_error(
    client, organization, owner, httpserver
):
    # urlsplit refuses an unclosed IPv6 bracket (ValueError): anything may be pasted in the search.
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(owner)
    for pasted in ("http://[evt_1", "https://[::1/o/acme/events/", "http://[::1"):
        assert api_get(client, key, "/api/v1/events", search=pasted).json()["results"] == [], pasted
        page = client.get(f"/o/{organization.slug}/events/", {"q": pasted})
        assert page.status_code == 200 and page.context["events"] == [], pasted
