"""The "send test event" simulator posts over real HTTP to a live server, and the event is there."""

import html
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from organizations.models import AuditLog
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import processing
from webhooks.services.sample_sender import fixtures_for_provider
from webhooks.tests.delivering import deliver_all_due, deliver_now

from .dashboard_helpers import ingest_stripe
from .factories import make_destination, make_source


@pytest.fixture(autouse=True)
def no_processing_schedule(monkeypatch):
    monkeypatch.setattr(processing, "schedule_event_processing", lambda **_: None)
    monkeypatch.setattr("webhooks.services.ingest.schedule_event_processing", lambda **_: None)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("provider,secret", [("stripe", "whsec_live_sender"), ("github", "gh-secret-value-123")])
def test_test_event_is_signed_posted_to_the_live_server_and_recorded(
    client, live_server, settings, organization, owner, provider, secret
):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider=provider, secret=secret)
    client.force_login(owner)
    url = reverse("dashboard:source_test", args=["acme", source.pk])
    # The sample is named from the service, not from response.context: that also collects the
    # templates the live server thread renders meanwhile (for an earlier test's browser).
    fixture = fixtures_for_provider(provider)[0]
    assert f'value="{fixture}"' in client.get(url).content.decode()

    response = client.post(url, {"fixture": fixture})

    result = response.context["result"]
    assert result.response.status == 200, result.response.body
    event = WebhookEvent.objects.get(source=source)
    assert result.event == event and event.status == WebhookEvent.Status.RECEIVED
    assert str(event.pk) in response.content.decode()
    assert AuditLog.objects.filter(action="source.test_sent", actor_user=owner).exists()


@pytest.mark.django_db(transaction=True)
def test_edited_payload_is_signed_and_sent_with_htmx(client, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    client.force_login(owner)
    url = reverse("dashboard:source_test", args=["acme", source.pk])
    payload = '{"id": "evt_edited", "object": "event", "type": "customer.updated"}'

    response = client.post(url, {"payload": payload}, HTTP_HX_REQUEST="true")

    # The answer is the result fragment alone. Judged by its body: response.templates also
    # collects templates the live server thread renders meanwhile (for an earlier test's browser).
    body = response.content.decode()
    assert response.status_code == 200
    assert 'class="card test-result"' in body and "<html" not in body
    event = WebhookEvent.objects.get(source=source)
    assert str(event.pk) in body
    assert event.event_type == "customer.updated"


def test_the_sample_sent_by_default_is_not_one_that_undoes_something():
    # The first sample is what the sender and `make run` send unasked, to real destinations.
    stripe_samples = fixtures_for_provider("stripe")
    assert stripe_samples[0] == "invoice.paid"
    assert stripe_samples[-1] == "customer.subscription.deleted"


# An edited payload is sent exactly as typed, with the selected sample's headers.


def _send(client, source, data, **extra):
    url = reverse("dashboard:source_test", args=[source.organization.slug, source.pk])
    return client.post(url, data, **extra)


def _header(event, name):
    return {key.lower(): value for key, value in event.headers.items()}.get(name.lower())


@pytest.mark.django_db(transaction=True)
def test_edited_github_payload_keeps_the_selected_samples_event_header(
    client, live_server, settings, organization, owner
):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider="github", secret="gh-secret-value-123")
    destination, _ = make_destination(
        organization, "http://127.0.0.1:19701/hook", sources=[source], event_types=["pull_request.*"]
    )
    client.force_login(owner)
    payload = '{"action":"opened","number":7,\n "pull_request":{"title":"typed by hand"}}'

    changed = payload.replace('"number":7', '"number":8')
    first = _send(client, source, {"fixture": "pull_request.opened", "payload": payload})
    again = _send(client, source, {"fixture": "pull_request.opened", "payload": payload})
    second = _send(client, source, {"fixture": "pull_request.opened", "payload": changed})

    assert first.context["result"].response.status == 200, first.context["result"].response.body
    # GitHub's id is the X-GitHub-Delivery header, fresh on each send but not signed: the same
    # payload again is a duplicate of the first, as a captured delivery posted again would be.
    assert again.context["result"].duplicate and again.context["result"].by_payload
    assert "Hookline already has an event with this payload" in again.content.decode()
    assert again.context["result"].event.pk == first.context["result"].event.pk
    events = list(WebhookEvent.objects.filter(source=source).order_by("received_at"))
    assert len(events) == 2 and not second.context["result"].duplicate
    assert [bytes(event.body) for event in events] == [payload.encode(), changed.encode()]
    for event in events:
        assert event.event_type == "pull_request.opened"
        assert _header(event, "X-GitHub-Event") == "pull_request"
    assert events[0].provider_event_id != events[1].provider_event_id
    # The filtered destination gets it.
    processing.process_event_batch()
    assert Delivery.objects.filter(destination=destination).count() == 2


@pytest.mark.django_db(transaction=True)
def test_edited_shopify_payload_is_not_rewritten_and_keeps_its_topic(
    client, live_server, settings, organization, owner
):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider="shopify", secret="shpss_sender_secret")
    client.force_login(owner)

    for _ in range(2):
        response = _send(client, source, {"fixture": "orders_create", "payload": '{"id": 99}'})
        assert response.context["result"].response.status == 200, response.context["result"].response.body
        assert not response.context["result"].duplicate

    events = list(WebhookEvent.objects.filter(source=source))
    assert len(events) == 2  # X-Shopify-Event-Id is fresh each time
    for event in events:
        assert bytes(event.body) == b'{"id": 99}'
        assert event.event_type == "orders/create"
        assert _header(event, "X-Shopify-Topic") == "orders/create"


@pytest.mark.django_db(transaction=True)
def test_edited_stripe_payload_sent_twice_is_shown_as_a_duplicate(client, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    client.force_login(owner)
    payload = '{\r\n  "id": "evt_typed", "object": "event",\r\n  "type": "invoice.paid"}\r\n'

    first = _send(client, source, {"fixture": "invoice.paid", "payload": payload}, HTTP_HX_REQUEST="true")
    second = _send(client, source, {"fixture": "invoice.paid", "payload": payload}, HTTP_HX_REQUEST="true")

    event = WebhookEvent.objects.get(source=source)
    # As typed (the browser's CRLF line breaks are the textarea's LF), the id not replaced.
    assert bytes(event.body) == payload.replace("\r\n", "\n").encode()
    assert event.provider_event_id == "evt_typed" and event.duplicate_count == 1
    assert "Duplicate" not in first.content.decode()
    body = second.content.decode()
    assert second.context["result"].duplicate and "Duplicate: not delivered again." in body
    assert "change the id in it to send a new event" in body and str(event.pk) in body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("provider,secret", [("stripe", "whsec_live_sender"), ("shopify", "shpss_sender_secret")])
def test_invalid_json_is_refused_in_the_form_and_not_sent(
    client, live_server, settings, organization, owner, provider, secret
):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider=provider, secret=secret)
    client.force_login(owner)

    response = _send(client, source, {"payload": "{not json"})

    assert response.context["result"] is None
    assert "The payload is not valid JSON" in response.content.decode()
    assert not WebhookEvent.objects.filter(source=source).exists()
    assert not AuditLog.objects.filter(action="source.test_sent").exists()


@pytest.mark.django_db(transaction=True)
def test_providers_with_form_bodies_take_a_form_but_not_broken_json(client, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider="github", secret="gh-secret-value-123")
    client.force_login(owner)

    refused = _send(client, source, {"fixture": "pull_request.opened", "payload": "{not json"})
    assert "neither valid JSON" in refused.content.decode()

    # GitHub's application/x-www-form-urlencoded content type: the JSON in a "payload" field.
    form_body = "payload=%7B%22action%22%3A%22closed%22%7D"
    response = _send(client, source, {"fixture": "pull_request.opened", "payload": form_body})
    assert response.context["result"].response.status == 200, response.context["result"].response.body
    event = WebhookEvent.objects.get(source=source)
    assert bytes(event.body) == form_body.encode() and event.event_type == "pull_request.closed"
    assert _header(event, "Content-Type") == "application/x-www-form-urlencoded"


@pytest.mark.django_db(transaction=True)
def test_a_generic_source_takes_any_body(client, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider="generic_hmac", secret="generic-secret-value", header="X-Signature")
    client.force_login(owner)

    response = _send(client, source, {"payload": "plain text, not JSON"})

    assert response.context["result"].response.status == 200, response.context["result"].response.body
    assert bytes(WebhookEvent.objects.get(source=source).body) == b"plain text, not JSON"


@pytest.mark.django_db(transaction=True)
def test_the_unedited_sample_still_gets_a_fresh_id_each_time(client, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    client.force_login(owner)

    for _ in range(2):
        response = _send(client, source, {"fixture": "invoice.paid"})
        assert response.context["result"].response.status == 200 and not response.context["result"].duplicate

    assert WebhookEvent.objects.filter(source=source).values("provider_event_id").distinct().count() == 2


@pytest.mark.django_db(transaction=True)
def test_invalid_json_sent_with_htmx_shows_the_error_in_the_result(client, live_server, settings, organization, owner):
    # The page posts with htmx and swaps in the result fragment only: the field's error must be there.
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    client.force_login(owner)

    response = _send(client, source, {"fixture": "invoice.paid", "payload": "{not json"}, HTTP_HX_REQUEST="true")

    body = response.content.decode()
    assert "<html" not in body and 'role="alert"' in body
    # On the box itself, in the form swapped in beside the result: marked invalid, described by the
    # error under it, and focused. The error was "Or an edited payload: The payload is not valid JSON…".
    assert re.search(r'<form id="test-form"[^>]*hx-swap-oob="true"', body)
    box = re.search(r"<textarea[^>]*>", body).group(0)
    assert 'aria-invalid="true"' in box and 'aria-describedby="id_payload_helptext id_payload_error"' in box
    assert "autofocus" in box
    error = re.search(r'<ul class="errorlist" id="id_payload_error"><li>([^<]*)</li>', body).group(1)
    assert html.unescape(error).startswith("The payload is not valid JSON")
    assert "Or an edited payload" not in body and ": The payload" not in body
    assert not WebhookEvent.objects.filter(source=source).exists()


@pytest.mark.django_db(transaction=True)
def test_a_corrected_payload_clears_the_mark_on_its_box(client, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    client.force_login(owner)

    typed = '{"id": "evt_corrected", "object": "event", "type": "invoice.paid", "data": {"object": {}}}'
    response = _send(client, source, {"fixture": "invoice.paid", "payload": typed}, HTTP_HX_REQUEST="true")

    body = response.content.decode()
    assert response.context["result"].response.status == 200
    box = re.search(r"<textarea[^>]*>", body).group(0)
    assert "aria-invalid" not in box and "errorlist" not in body


@pytest.mark.django_db
def test_a_request_the_sender_cannot_build_is_said_beside_the_form_not_as_a_field_s_error(client, organization, owner):
    from webhooks.services.sources import source_create

    source, _ = source_create(
        organization=organization, provider="stripe", name="later", options={}, allow_unset_secret=True
    )
    client.force_login(owner)

    response = _send(client, source, {"fixture": "invoice.paid"}, HTTP_HX_REQUEST="true")

    body = response.content.decode()
    assert "Not sent: this source has no signing secret yet" in body
    assert "errorlist" not in body and "aria-invalid" not in body


@pytest.mark.django_db(transaction=True)
def test_a_typing_mistake_in_the_payload_is_told_in_plain_words_with_its_line(
    client, live_server, settings, organization, owner
):
    # Was Python's "Expecting ',' delimiter: line 3 column 3 (char 22)".
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, secret="whsec_live_sender")
    client.force_login(owner)
    typed = '{\r\n  "id": "evt_typed",\r\n  "type": "invoice.paid"\r\n  "object": "event"\r\n}'

    response = _send(client, source, {"fixture": "invoice.paid", "payload": typed}, HTTP_HX_REQUEST="true")

    body = response.content.decode()
    assert "The payload is not valid JSON: on line 4, at character 3, a comma (,) is missing between two items." in body
    assert "Expecting" not in body and "(char " not in body
    assert not WebhookEvent.objects.filter(source=source).exists()


# After sending, the result follows the event to its destinations, and takes the focus.


def progress_of(client, event, seen=""):
    url = reverse("dashboard:event_progress", args=[event.organization.slug, event.pk])
    return client.get(url, {"seen": seen} if seen else {}, HTTP_HX_REQUEST="true")


def polls(html: str) -> bool:
    return 'id="event-progress"' in html and "hx-get=" in html and 'hx-trigger="every 2s"' in html


def seen_in(html: str) -> str:
    return re.search(r"\?seen=(\w+)", html).group(1)


@pytest.mark.django_db(transaction=True)
def test_the_result_links_the_event_follows_its_delivery_and_takes_the_focus(
    client, live_server, settings, organization, owner, httpserver, monkeypatch
):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    settings.PUBLIC_BASE_URL = live_server.url
    httpserver.expect_request("/receiver").respond_with_data("thanks", status=200)
    source = make_source(organization, secret="whsec_live_sender")
    make_destination(organization, httpserver.url_for("/receiver"), sources=[source])
    client.force_login(owner)

    sent = _send(client, source, {"fixture": "invoice.paid"}, HTTP_HX_REQUEST="true").content.decode()

    event = WebhookEvent.objects.get(source=source)
    assert reverse("dashboard:event_detail", args=["acme", event.pk]) in sent
    assert re.search(r'<section class="card test-result"[^>]*tabindex="-1" autofocus>', sent)
    assert "deliveries are created in a moment" in sent and polls(sent)

    # Fanned out: the poll shows the delivery queued, and keeps polling.
    processing.process_received_events()
    queued = progress_of(client, event, seen=seen_in(sent))
    assert queued.status_code == 200
    html = queued.content.decode()
    assert re.search(r"Delivery to <strong>[^<]+</strong>:\s*<span [^>]*>Queued</span>", html) and polls(html)
    assert "autofocus" not in html  # a poll never moves the focus
    # Nothing new since: nothing to swap (nor to announce again).
    assert progress_of(client, event, seen=seen_in(html)).status_code == 204

    deliver_now(Delivery.objects.get(event=event).pk)
    delivered = progress_of(client, event, seen=seen_in(html)).content.decode()
    assert re.search(r">Succeeded</span>\s*<span [^>]*>HTTP 200</span>", delivered)
    assert not polls(delivered) and "updates by itself" not in delivered  # settled: polling stops
    assert len(httpserver.log) == 1


def test_a_dead_or_paused_delivery_ends_the_polling_and_says_why(client, organization, owner, monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda: None)
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_progress"))
    client.force_login(owner)
    assert polls(progress_of(client, event).content.decode())  # received, not fanned out yet

    processing.process_received_events()
    delivery = Delivery.objects.get(event=event)
    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    paused = progress_of(client, event).content.decode()
    assert "waits: the destination is paused" in paused and not polls(paused)

    Destination.objects.filter(pk=destination.pk).update(paused_at=None)
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.DEAD, attempt_count=1, last_status_code=410, last_error="HTTP 410: gone"
    )
    dead = progress_of(client, event).content.decode()
    assert re.search(r">Dead</span>\s*<span [^>]*>HTTP 410</span>", dead) and "HTTP 410: gone" in dead
    assert not polls(dead)


def test_a_retry_due_later_is_left_to_the_event_page(client, organization, owner, monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda: None)
    source = make_source(organization, name="Stripe live")
    make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_retry_later"))
    processing.process_received_events()
    client.force_login(owner)
    Delivery.objects.filter(event=event).update(attempt_count=1, next_attempt_at=timezone.now() + timedelta(seconds=30))
    soon = progress_of(client, event).content.decode()
    assert ">Retrying</span>" in soon and "next try <time" in soon and polls(soon)
    Delivery.objects.filter(event=event).update(next_attempt_at=timezone.now() + timedelta(hours=2))
    later = progress_of(client, event).content.decode()
    assert ">Retrying</span>" in later and not polls(later)


def test_another_organizations_event_progress_is_not_found(client, organization, other_organization, owner):
    source = make_source(other_organization, name="Theirs")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_theirs"))
    client.force_login(owner)
    url = reverse("dashboard:event_progress", args=["acme", event.pk])
    assert client.get(url).status_code == 404


def test_a_destination_paused_while_the_result_polls_shows_it_and_ends_the_polling(
    client, organization, owner, monkeypatch
):
    # The poll sends what it last saw: a pause changes no delivery's state, yet it must be shown,
    # and the fragment must stop polling (a 204 would keep it polling for as long as the page is open).
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda: None)
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_paused_while_polling"))
    processing.process_received_events()
    client.force_login(owner)
    queued = progress_of(client, event).content.decode()
    assert polls(queued)

    Destination.objects.filter(pk=destination.pk).update(paused_at=timezone.now())
    paused = progress_of(client, event, seen=seen_in(queued))
    assert paused.status_code == 200
    assert "waits: the destination is paused" in paused.content.decode() and not polls(paused.content.decode())


def test_a_poll_reads_no_body_headers_or_attempts(client, organization, owner, monkeypatch):
    # The result polls every 2 s while a delivery moves: it must stay cheap however large the
    # event's body and its attempts' answers are.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda: None)
    source = make_source(organization)
    make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_light_poll"))
    processing.process_received_events()
    deliver_now(Delivery.objects.get(event=event).pk)  # refused: one attempt on record
    client.force_login(owner)

    with CaptureQueriesContext(connection) as queries:
        html = progress_of(client, event).content.decode()
    assert "Retrying" in html
    read = " ".join(query["sql"] for query in queries.captured_queries if "webhooks_" in query["sql"])
    assert "webhooks_deliveryattempt" not in read
    assert '"webhooks_webhookevent"."body"' not in read and '"webhooks_webhookevent"."headers"' not in read


def page_follow(client, shown):
    """The event page's poll, as its deliveries section (in the HTML ``shown``) asks for it."""
    url = html.unescape(re.search(r'hx-get="([^"]*follow=page)"', shown).group(1))
    return client.get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="event-deliveries")


@pytest.mark.django_db(transaction=True)
def test_the_event_page_gets_its_deliveries_in_place_and_is_told_which_changed(
    client, organization, owner, httpserver, monkeypatch
):
    """The event page's poll answered "reload the page" (HX-Refresh), which put the focus back at the
    top; it now answers with the deliveries section, the heading's badges and a sentence on what
    changed: each delivery whose state the page did not show, counted by state when there are many."""
    monkeypatch.setattr(processing, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    httpserver.expect_request("/receiver").respond_with_data("thanks", status=200)
    source = make_source(organization)
    for name in ("Billing", "Ledger", "Search", "Mail"):
        destination, _ = make_destination(organization, httpserver.url_for("/receiver"), sources=[source])
        Destination.objects.filter(pk=destination.pk).update(name=name)
    client.force_login(owner)
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_followed"))
    page = client.get(reverse("dashboard:event_detail", args=["acme", event.pk])).content.decode()
    assert 'id="event-deliveries-status"' in page and "follow=page" in page

    processing.process_received_events()
    fanned_out = page_follow(client, page)
    assert fanned_out.status_code == 200 and "HX-Refresh" not in fanned_out.headers
    section = fanned_out.content.decode()
    assert '<p id="event-deliveries-status" hx-swap-oob="innerHTML">4 deliveries changed: 4 queued.</p>' in section
    assert 'id="event-heading-badges" hx-swap-oob="true"' in section and "Processed" in section
    assert section.count('class="card delivery"') == 4 and "follow=page" in section  # still following
    assert page_follow(client, section).status_code == 204  # nothing new

    # The others due in a minute: still followed, and not sent along with it.
    Delivery.objects.filter(event=event).exclude(destination__name="Ledger").update(
        next_attempt_at=timezone.now() + timedelta(minutes=1)
    )
    deliver_now(Delivery.objects.get(event=event, destination__name="Ledger").pk)
    one_sent = page_follow(client, section).content.decode()
    assert '<p id="event-deliveries-status" hx-swap-oob="innerHTML">Delivery to Ledger: succeeded.</p>' in one_sent

    Delivery.objects.filter(event=event).update(next_attempt_at=timezone.now())
    assert len(deliver_all_due()) == 3
    settled = page_follow(client, one_sent).content.decode()
    said = "Delivery to Billing: succeeded. Delivery to Search: succeeded. Delivery to Mail: succeeded."
    assert f'<p id="event-deliveries-status" hx-swap-oob="innerHTML">{said}</p>' in settled  # three: named
    assert "follow=page" not in settled  # nothing is about to change any more: the polling stops
