"""The "send test event" simulator posts over real HTTP to a live server, and the event is there."""

import pytest
from django.urls import reverse

from organizations.models import AuditLog
from webhooks.models import WebhookEvent
from webhooks.services import processing
from webhooks.services.sample_sender import fixtures_for_provider

from .factories import make_source


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
    form = client.get(url).context["form"]
    fixture = form.fields["fixture"].choices[0][0]

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
