"""Hookline's own test sends: marked for destinations, left out of the monthly usage, and not forgeable."""

import json
import time

import pytest

from organizations.models import MonthlyUsage
from organizations.services import organization_create
from webhooks.models import Delivery, Source, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import secret_use
from webhooks.services.processing import process_event_batch
from webhooks.services.sender_marks import (
    MARK_VALID_SECONDS,
    TEST_MARK_HEADER,
    is_hookline_test_event,
    sender_mark_headers,
)
from webhooks.services.source_testing import source_send_test_event
from webhooks.services.sources import source_rotate_secret

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db(transaction=True)


def _usage(organization) -> int:
    usage = MonthlyUsage.objects.filter(organization=organization).first()
    return usage.events if usage else 0


def _stripe_body(event_id: str) -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})


def test_a_test_send_is_delivered_marked_but_not_counted_in_the_monthly_usage(
    client, organization, live_server, settings, httpserver
):
    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok")

    result = source_send_test_event(source=Source.objects.get(pk=source.pk))
    assert result.response.status == 200 and result.event is not None
    assert post_stripe(client, source, _stripe_body("evt_from_stripe"), STRIPE_SECRET).status_code == 200
    while process_event_batch():
        pass
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSED).count() == 2
    assert _usage(organization) == 1  # the provider's event only

    delivery_service.dispatch_due_deliveries(threads=2)
    assert Delivery.objects.filter(status=Delivery.Status.SUCCEEDED).count() == 2
    sent = {request.headers.get("webhook-id"): request.headers for request, _ in httpserver.log}
    test_headers = sent[str(result.event.id)]
    # Destinations can still tell the test apart; the mark itself stays with Hookline.
    assert test_headers.get("Hookline-Test-Event") == "true"
    assert test_headers.get(TEST_MARK_HEADER) is None
    assert TEST_MARK_HEADER in WebhookEvent.objects.get(pk=result.event.id).headers


def test_a_provider_request_claiming_to_be_a_test_is_counted(client, organization):
    # Anyone who can sign for a source can add headers: they do not take its events out of the usage.
    source = make_source(organization)
    forged = {
        "HTTP_HOOKLINE_TEST_EVENT": "true",
        "HTTP_HOOKLINE_TEST_MARK": sender_mark_headers(b"some other body", source_id=source.pk)[TEST_MARK_HEADER],
    }
    assert post_stripe(client, source, _stripe_body("evt_forged_1"), STRIPE_SECRET, **forged).status_code == 200
    assert (
        post_stripe(
            client, source, _stripe_body("evt_forged_2"), STRIPE_SECRET, HTTP_HOOKLINE_TEST_MARK="0" * 64
        ).status_code
        == 200
    )
    assert post_stripe(client, source, _stripe_body("evt_forged_3"), STRIPE_SECRET, **forged).status_code == 200
    assert process_event_batch() == 3
    assert _usage(organization) == 3


def test_a_forged_test_mark_does_not_hide_which_secret_the_provider_signs_with(client, organization):
    secret_use.forget_recorded_secret_matches()
    source = make_source(organization)
    source_rotate_secret(source=source, new_secret="whsec_rotated_for_test_events", overlap_seconds=3600)
    body = _stripe_body("evt_forged_mark_rotation")
    response = post_stripe(client, source, body, "whsec_rotated_for_test_events", HTTP_HOOKLINE_TEST_EVENT="true")
    assert response.status_code == 200
    assert Source.objects.get(pk=source.pk).secret_last_matched_at is not None


def test_a_mark_made_before_a_secret_key_change_is_still_recognised(settings):
    body = b'{"id": "evt_sent_before_the_key_changed"}'
    now = time.time()
    settings.SECRET_KEY = "the-old-secret-key-for-this-test"
    headers = sender_mark_headers(body, source_id=7, now=now)
    settings.SECRET_KEY_FALLBACKS = ["the-old-secret-key-for-this-test"]
    settings.SECRET_KEY = "the-new-secret-key-for-this-test"
    assert is_hookline_test_event(headers, body, source_id=7, received_at=now + 1)
    assert not is_hookline_test_event(headers, body + b" ", source_id=7, received_at=now + 1)
    settings.SECRET_KEY_FALLBACKS = []
    assert not is_hookline_test_event(headers, body, source_id=7, received_at=now + 1)


def test_a_copied_mark_does_not_carry_to_another_source_or_past_its_few_minutes():
    # A tenant who copies a test's body and mark must not keep its own traffic out of the usage with it.
    body = b'{"id": "evt_copied_mark"}'
    now = float(int(time.time()))  # marks are made to the second
    headers = sender_mark_headers(body, source_id=7, now=now)
    assert is_hookline_test_event(headers, body, source_id=7, received_at=now + MARK_VALID_SECONDS)
    assert not is_hookline_test_event(headers, body, source_id=8, received_at=now + 1)
    assert not is_hookline_test_event(headers, body, source_id=7, received_at=now + MARK_VALID_SECONDS + 1)
    assert not is_hookline_test_event(headers, body, source_id=7, received_at=now - MARK_VALID_SECONDS - 1)
    made_at, _, digest = headers[TEST_MARK_HEADER].partition(".")
    moved = {**headers, TEST_MARK_HEADER: f"{int(made_at) + 600}.{digest}"}  # a later time on the old digest
    assert not is_hookline_test_event(moved, body, source_id=7, received_at=now + 600)
    for broken in ("", ".", "abc.def", f"{made_at}.", f"{made_at}"):
        assert not is_hookline_test_event({TEST_MARK_HEADER: broken}, body, source_id=7, received_at=now)


def test_a_mark_older_than_its_minutes_counts_in_the_usage(client, organization):
    source = make_source(organization)
    body = _stripe_body("evt_with_an_old_mark")
    old = sender_mark_headers(body.encode(), source_id=source.pk, now=time.time() - MARK_VALID_SECONDS - 60)
    response = post_stripe(
        client,
        source,
        body,
        STRIPE_SECRET,
        HTTP_HOOKLINE_TEST_EVENT="true",
        HTTP_HOOKLINE_TEST_MARK=old[TEST_MARK_HEADER],
    )
    assert response.status_code == 200
    assert process_event_batch() == 1
    assert _usage(organization) == 1


def _as_meta(headers: dict[str, str]) -> dict[str, str]:
    return {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}


def test_the_overview_counts_the_providers_events_and_the_events_list_marks_the_tests(client, owner, organization):
    from django.urls import reverse

    from webhooks.services.dashboard_stats import organization_overview

    source = make_source(organization)
    for name, secret, marked, forged in (
        ("real", STRIPE_SECRET, False, False),
        ("test", STRIPE_SECRET, True, False),
        ("forged", STRIPE_SECRET, True, True),  # signed by the provider, with a mark copied from elsewhere
        ("rejected_test", "whsec_not_the_secret", True, False),
        ("rejected", "whsec_not_the_secret", False, False),
    ):
        body = _stripe_body(f"evt_{name}")
        mark_body = b"another body" if forged else body.encode()
        extra = _as_meta(sender_mark_headers(mark_body, source_id=source.pk)) if marked else {}
        response = post_stripe(client, source, body, secret, **extra)
        assert (response.status_code == 200) is (secret == STRIPE_SECRET)
    while process_event_batch():
        pass

    overview = organization_overview(organization=organization)
    assert overview.events_24h == 2  # the real one and the forged test: a copied mark proves nothing
    assert overview.rejected_24h == 1
    assert overview.chart_24h.total == 2 and overview.chart_7d.total == 2
    assert _usage(organization) == 2  # the same events as the monthly usage

    client.force_login(owner)
    # Rejected requests are listed when asked for (the default list holds accepted events only).
    page = client.get(reverse("dashboard:events", args=[organization.slug]), {"status": "all"})
    listed = page.context["page"].events
    assert len(listed) == 5
    marked = {event.provider_event_id or event.claimed_event_id for event in listed if event.is_hookline_test}
    assert marked == {"evt_test", "evt_rejected_test"}  # still listed, as tests
    assert page.content.decode().count(">test</span>") == 2


def test_a_test_event_of_days_ago_is_left_out_of_the_week_chart_only_there(organization):
    import uuid
    from datetime import timedelta

    from django.utils import timezone

    from webhooks.selectors import uuid7_floor
    from webhooks.services.dashboard_stats import organization_overview

    source = make_source(organization)
    now = timezone.now()
    for days, marked in ((3, True), (3, False), (0, False)):
        at = now - timedelta(days=days, minutes=1)
        body = _stripe_body(f"evt_{days}_{marked}").encode()
        headers = sender_mark_headers(body, source_id=source.pk, now=at.timestamp()) if marked else {}
        WebhookEvent.objects.create(
            id=uuid.UUID(int=uuid7_floor(at).int | uuid.uuid4().int >> 68),
            organization=organization,
            source=source,
            body=body,
            headers=headers,
            status=WebhookEvent.Status.PROCESSED,
            received_at=at,
        )
    overview = organization_overview(organization=organization, now=now)
    assert overview.chart_7d.total == 2 and overview.chart_24h.total == 1 and overview.events_24h == 1
    three_days_ago = (now - timedelta(days=3, minutes=1)).replace(minute=0, second=0, microsecond=0)
    assert [bar.count for bar in overview.chart_7d.bars if bar.start == three_days_ago] == [1]


@pytest.mark.parametrize(
    "made_at",
    [
        "\u00b2" + "1700000000",  # a superscript two: str.isdigit() says yes, int() refuses it
        "1" * 5000,  # past int()'s limit on the digits of a string
    ],
)
def test_a_mark_whose_time_is_no_number_is_no_mark_and_stops_nothing(client, owner, organization, made_at):
    # One tenant's verified request carrying such a mark made every processing batch fail (the usage
    # count read the mark): no event of any tenant was processed again. Unsigned, as a rejected request,
    # it made the tenant's overview and events list answer 500.
    from django.urls import reverse

    other = organization_create(name="Other", slug="other", owner_email="owner@other.example")
    theirs = make_source(other, provider="shared_token", secret="their-token-value-1")
    mine = make_source(organization)
    odd_mark = {"HTTP_HOOKLINE_TEST_MARK": f"{made_at}.{'0' * 64}"}
    refused = post_stripe(client, mine, _stripe_body("evt_refused"), "whsec_not_the_secret", **odd_mark)
    assert refused.status_code == 401
    body = json.dumps({"type": "INSERT", "table": "orders", "record": {"id": 1}})
    marked = client.post(
        f"/in/{theirs.ingest_token}/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION="their-token-value-1",
        **odd_mark,
    )
    assert marked.status_code == 200, marked.content
    assert post_stripe(client, mine, _stripe_body("evt_after"), STRIPE_SECRET).status_code == 200
    while process_event_batch():
        pass
    assert not WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED).exists()
    assert (_usage(organization), _usage(other)) == (1, 1)
    client.force_login(owner)
    for page in ("dashboard:overview", "dashboard:events"):
        assert client.get(reverse(page, args=[organization.slug])).status_code == 200


def test_after_seed_demo_s_demo_webhook_the_overview_says_the_test_send_it_does_not_count(
    client, live_server, settings, httpserver
):
    # make run: seed_demo, then one demo Stripe webhook sent by the test sender and delivered. The
    # overview's "Events, 24 h" counts the providers' events only: beside its 0 and the delivery it
    # must say what it left out, or the demo reads as lost.
    from django.core.management import call_command

    from organizations.models import Organization

    settings.PUBLIC_BASE_URL = live_server.url
    httpserver.expect_request("/hooks").respond_with_data("ok")
    call_command("seed_demo", "--receiver-url", httpserver.url_for("/hooks"))
    organization = Organization.objects.get(slug="demo")
    source = Source.objects.get(organization=organization)
    call_command("send_test_webhook", "--source", str(source.pk), "--fresh-id")
    while process_event_batch():
        pass
    delivery_service.dispatch_due_deliveries(threads=1)
    assert Delivery.objects.get().status == Delivery.Status.SUCCEEDED

    client.force_login(organization.memberships.get().user)
    page = client.get(f"/o/{organization.slug}/")
    overview = page.context["overview"]
    assert (overview.events_24h, overview.succeeded_24h, overview.tests_24h) == (0, 1, 1)
    html = page.content.decode()
    assert "1 test send</a>" in html and "not counted: only your providers' events are" in html
