"""show_event: "what happened to webhook X?" from a shell, by any id it may be known by."""

import copy
import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Delivery, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import event_story, processing
from webhooks.services.destinations import destination_create
from webhooks.services.payload_filters import parse_payload_filter_lines
from webhooks.tests.delivering import deliver_now

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db

# A marker only the body holds: the story must not show it unless asked.
BODY = '{"id":"evt_story_1","object":"event","type":"invoice.paid","data":{"object":{"id":"in_body_marker"}}}'


@pytest.fixture(autouse=True)
def _no_dispatch_scheduling(monkeypatch):
    # The tests deliver by calling the service; nothing is queued for a worker.
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


def show(*args) -> dict:
    out = io.StringIO()
    call_command("show_event", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def show_text(*args) -> str:
    out = io.StringIO()
    call_command("show_event", *args, stdout=out)
    return out.getvalue()


def delivered_after_500_then_200(client, organization, httpserver):
    """An event received, sent again by Stripe, and delivered on the second attempt."""
    source = make_source(organization, name="Stripe live")
    destination, destination_secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_ordered_request("/hook").respond_with_data("boom: upstream down", status=500)
    httpserver.expect_ordered_request("/hook").respond_with_data("ok", status=200)

    assert post_stripe(client, source, BODY, STRIPE_SECRET).json()["duplicate"] is False
    assert post_stripe(client, source, BODY, STRIPE_SECRET).json()["duplicate"] is True
    processing.process_received_events()
    delivery = Delivery.objects.get()
    assert deliver_now(delivery.pk).status == Delivery.Status.PENDING
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert deliver_now(delivery.pk).status == Delivery.Status.SUCCEEDED
    return source, destination, destination_secret, WebhookEvent.objects.get(), delivery


def test_any_id_of_the_event_tells_its_whole_story(client, organization, httpserver):
    source, destination, _, event, delivery = delivered_after_500_then_200(client, organization, httpserver)
    by_event_id = show(str(event.pk))
    assert by_event_id["truncated"] is False
    [story] = copy.deepcopy(by_event_id["events"])
    [sent] = story.pop("deliveries")
    attempts = sent.pop("attempts")
    assert story == {
        "id": str(event.pk),
        "organization": {"slug": "acme", "name": "Acme"},
        "source": {"id": source.pk, "name": "Stripe live", "provider": "stripe"},
        "provider_event_id": "evt_story_1",
        "event_type": "invoice.paid",
        "status": "processed",
        "received_at": event.received_at.isoformat(),
        "processed_at": event.processed_at.isoformat(),
        "duplicate_count": 1,
        "last_duplicate_at": event.last_duplicate_at.isoformat(),
        "rejection": None,
        "processing_failure": None,
        "body_size": len(BODY.encode()),
        "left_out_by_payload_filters": [],
        "left_out_by_event_types": [],
    }
    assert sent == {
        "id": str(delivery.pk),
        "webhook_id": str(event.pk),
        "is_replay": False,
        "destination": {
            "id": destination.pk,
            "name": "endpoint",
            "host": f"{httpserver.host}:{httpserver.port}",
            "paused": False,
            "active": True,
            "being_deleted": False,
        },
        "status": "succeeded",
        "attempt_count": 2,
        "next_attempt_at": None,
        "waiting_for": None,
        "completed_at": Delivery.objects.get().completed_at.isoformat(),
        "last_status_code": 200,
        "last_error": "",
    }
    assert [
        (a["attempt_number"], a["response_status"], a["response_excerpt"], a["response_truncated"]) for a in attempts
    ] == [
        (1, 500, "boom: upstream down", False),
        (2, 200, "ok", False),
    ]
    assert all(isinstance(a["duration_ms"], int) and a["started_at"] for a in attempts)

    # The same story whichever id the operator holds.
    assert show(str(delivery.pk))["events"] == by_event_id["events"]
    assert show("evt_story_1", "--org", "acme")["events"] == by_event_id["events"]
    assert show("evt_story_1", "--org", "acme", "--source", str(source.pk))["events"] == by_event_id["events"]
    assert show("evt_story_1")["events"] == by_event_id["events"]

    text = show_text("evt_story_1", "--org", "acme")
    assert f"Event {event.pk}  acme / Stripe live (stripe, source {source.pk})" in text
    assert "processed  type invoice.paid  provider id evt_story_1" in text
    assert "received again 1 time (duplicates, not delivered)" in text
    assert f"→ endpoint ({httpserver.host}:{httpserver.port}): succeeded, 2 attempts" in text
    assert "#1 500 in " in text and "boom: upstream down" in text and "#2 200 in " in text


def test_no_secret_and_no_body_unless_asked(client, organization, httpserver):
    source, _, destination_secret, event, _ = delivered_after_500_then_200(client, organization, httpserver)
    received_signatures = [value for name, value in event.headers.items() if "signature" in name.lower()]
    assert received_signatures
    sent_signatures = [request.headers["webhook-signature"] for request, _ in httpserver.log]
    assert len(sent_signatures) == 2
    printed = json.dumps(show(str(event.pk))) + show_text(str(event.pk))
    secrets = (STRIPE_SECRET, destination_secret, destination_secret.removeprefix("whsec_"))
    for secret in (*secrets, *received_signatures, *sent_signatures):
        assert secret not in printed
    assert "in_body_marker" not in printed
    assert "headers" not in printed

    [story] = show(str(event.pk), "--body")["events"]
    assert story["body"] == BODY
    assert "in_body_marker" in show_text(str(event.pk), "--body")


def test_a_rejected_request_is_found_by_the_id_it_claims(client, organization):
    source = make_source(organization)
    forged = '{"id":"evt_forged_story","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, forged, "whsec_not_the_secret").status_code >= 400
    [story] = show("evt_forged_story", "--org", "acme")["events"]
    assert story["status"] == "rejected" and story["provider_event_id"] is None and story["deliveries"] == []
    assert story["rejection"]["code"] == "no_matching_secret"
    assert story["rejection"]["claimed_event_id"] == "evt_forged_story"
    assert "rejected: no_matching_secret (claims evt_forged_story)" in show_text("evt_forged_story", "--org", "acme")


def test_a_provider_id_in_several_organizations_names_each_one_newest_first(
    client, organization, other_organization, monkeypatch
):
    acme_source = make_source(organization)
    globex_source = make_source(other_organization)
    shared = '{"id":"evt_shared","object":"event","type":"invoice.paid"}'
    post_stripe(client, acme_source, shared, STRIPE_SECRET)
    post_stripe(client, globex_source, shared, STRIPE_SECRET)

    found = show("evt_shared")
    assert [story["organization"]["slug"] for story in found["events"]] == ["globex", "acme"]
    assert found["truncated"] is False
    text = show_text("evt_shared")
    assert text.startswith("2 events have this id.")
    assert "globex / stripe source" in text and "acme / stripe source" in text
    assert "not processed yet: no delivery made" in text
    assert [story["organization"]["slug"] for story in show("evt_shared", "--org", "acme")["events"]] == ["acme"]
    # The source narrows within the organization; another organization's source is not found there.
    assert show("evt_shared", "--org", "globex", "--source", str(globex_source.pk))["events"][0]["source"]["id"] == (
        globex_source.pk
    )
    with pytest.raises(CommandError, match=rf'^no such source "{globex_source.pk}"$'):
        show("evt_shared", "--org", "acme", "--source", str(globex_source.pk))

    # Capped: the newest are told, and the output says more matched.
    monkeypatch.setattr(event_story, "STORIES_SHOWN", 1)
    capped = show("evt_shared")
    assert [story["organization"]["slug"] for story in capped["events"]] == ["globex"] and capped["truncated"]
    assert "more matched, narrow with --org or --source" in show_text("evt_shared")


@pytest.mark.parametrize(
    "args, message",
    [
        # Quoted as the other commands quote what names nothing (no such source "42").
        (["evt_nowhere"], r'^no event has the id "evt_nowhere"$'),
        (["evt_nowhere", "--org", "acme"], r'^no event in organization acme has the id "evt_nowhere"$'),
        (["0190a8b2-0000-7000-8000-000000000000"], r'^no event has the id "0190a8b2-0000-7000-8000-000000000000"$'),
        (["evt_nowhere", "--org", "missing"], r'^no such organization "missing"$'),
        (["evt_nowhere", "--source", "1"], r"^--source needs --org$"),
        ([" "], r"^give an event id, a delivery id or a provider event id$"),
    ],
)
def test_an_unknown_id_is_a_clear_error_with_exit_status_1(organization, args, message):
    out = io.StringIO()
    with pytest.raises(CommandError, match=message) as refused:
        call_command("show_event", *args, "--json", stdout=out)
    assert refused.value.returncode == 1
    assert json.loads(out.getvalue()) == {"error": str(refused.value)}
    with pytest.raises(CommandError, match=message):
        call_command("show_event", *args, stdout=io.StringIO())


def test_an_event_of_another_organization_is_not_found_under_this_one(client, organization, other_organization):
    source = make_source(other_organization)
    event_id = post_stripe(client, source, BODY, STRIPE_SECRET).json()["id"]
    with pytest.raises(CommandError, match="no event in organization acme"):
        show(event_id, "--org", "acme")
    assert show(event_id, "--org", "globex")["events"][0]["id"] == event_id


def test_a_destination_whose_payload_filters_left_the_event_out_is_named_with_the_reason(client, organization):
    # The dashboard's event page says it; show_event and the admin's event page said only "0 deliveries"
    # and "no destination matched", which sends an operator looking at the wrong thing.
    source = make_source(organization, name="Stripe live")
    filtered, _ = destination_create(
        organization=organization,
        name="Live only",
        url="http://127.0.0.1:9/live",
        sources=[source],
        payload_filters=parse_payload_filter_lines("data.object.livemode == true"),
    )
    body = '{"id":"evt_test_mode","object":"event","type":"invoice.paid","data":{"object":{"livemode":false}}}'
    event_id = post_stripe(client, source, body, STRIPE_SECRET).json()["id"]
    processing.process_received_events()
    assert not Delivery.objects.exists()

    [story] = show(event_id)["events"]
    assert story["deliveries"] == []
    assert story["left_out_by_payload_filters"] == [
        {
            "destination": {"id": filtered.pk, "name": "Live only"},
            "reason": "“data.object.livemode == true” does not hold",
        }
    ]
    assert (
        "not sent to Live only: its payload filters (as they are now) leave it out: "
        "“data.object.livemode == true” does not hold"
    ) in show_text(event_id)

    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    page = client.get(reverse("admin:webhooks_webhookevent_change", args=[event_id])).content.decode()
    assert "no destination matched" not in page
    assert "Live only</a>, whose payload filters (as they are now) leave it out: “data.object.livemode == true”" in (
        page.replace("&quot;", '"')
    )


def test_a_pending_delivery_s_last_error_is_printed_as_in_json(client, organization, httpserver):
    # --json had it; the text printed the 429 attempt and "next attempt" an hour on, but not why.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source], retry_schedule=[5, 5])
    httpserver.expect_request("/hook").respond_with_data("slow down", status=429, headers={"Retry-After": "3600"})
    assert post_stripe(client, source, BODY, STRIPE_SECRET).status_code == 200
    processing.process_received_events()
    delivery = deliver_now(Delivery.objects.get().pk)
    error = "HTTP 429: next try in 1 h, as the receiver's Retry-After asks"
    assert delivery.status == Delivery.Status.PENDING and delivery.last_error == error
    assert show("evt_story_1")["events"][0]["deliveries"][0]["last_error"] == error

    lines = show_text("evt_story_1").splitlines()
    attempt = next(index for index, line in enumerate(lines) if "#1 429 in " in line)
    # Under the delivery's attempts, as a dead one's "why it failed".
    assert lines[attempt + 1] == f"      last error: {error}"

    # A delivery that succeeded keeps no last error to print.
    httpserver.clear()
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert deliver_now(delivery.pk).status == Delivery.Status.SUCCEEDED
    assert "last error" not in show_text("evt_story_1")


def test_an_attempt_whose_answer_was_cut_says_so_in_text_and_json(client, organization, httpserver, settings):
    # The JSON had no response_truncated (the API's attempts have), and the text printed a cut
    # answer's start as if it were the whole answer.
    settings.DELIVERY_RESPONSE_BODY_MAX_BYTES = 64
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source], retry_schedule=[5, 5])
    httpserver.expect_ordered_request("/hook").respond_with_data("x" * 65, status=500)
    httpserver.expect_ordered_request("/hook").respond_with_data("y" * 64, status=200)
    assert post_stripe(client, source, BODY, STRIPE_SECRET).status_code == 200
    processing.process_received_events()
    delivery = deliver_now(Delivery.objects.get().pk)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert deliver_now(delivery.pk).status == Delivery.Status.SUCCEEDED

    attempts = show("evt_story_1")["events"][0]["deliveries"][0]["attempts"]
    assert [(a["response_excerpt"], a["response_truncated"]) for a in attempts] == [("x" * 64, True), ("y" * 64, False)]
    lines = show_text("evt_story_1").splitlines()
    [cut] = [line for line in lines if "#1 500 in " in line]
    [whole] = [line for line in lines if "#2 200 in " in line]
    assert cut.endswith(f"  {'x' * 64}  (response: its start only, the answer was longer)"), cut
    assert whole.endswith(f"  {'y' * 64}"), whole
