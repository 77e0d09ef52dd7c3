"""Fan-out and delivery against a real local HTTP server; receivers verify with `standardwebhooks`."""

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug import Response

from conftest import REDIS_DOWN_CACHES
from webhooks.models import Delivery, DeliveryAttempt, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import processing
from webhooks.services.claim_owners import MARK_KEY_PREFIX, ClaimOwner
from webhooks.services.destinations import DestinationError, destination_create, destination_rotate_secret
from webhooks.services.operations import OperationError, event_replay
from webhooks.services.scheduling import clear_flag, set_flag
from webhooks.tests.delivering import claim_now, deliver_now

from .factories import STANDARD_SECRET, STRIPE_SECRET, make_destination, make_source
from .processes import PATIENCE_SECONDS, wait_until
from .signing import standard_webhooks_headers, stripe_headers

pytestmark = pytest.mark.django_db

BODY = '{"id":"evt_deliver_1","object":"event","type":"invoice.paid","data":{"object":{"id":"in_9"}}}'


@pytest.fixture(autouse=True)
def dispatches(monkeypatch):
    """Tests drive the services directly; dispatcher scheduling is counted instead of queued."""
    scheduled = []
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    return scheduled


def ingest(client, source, body=BODY):
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, STRIPE_SECRET),
    )
    assert response.status_code == 200, response.content
    return response.json()


def make_due(delivery):
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def test_delivered_request_carries_original_body_and_verifiable_signature(client, organization, httpserver):
    source = make_source(organization)
    destination, secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("thanks", status=200)

    event_id = ingest(client, source)["id"]
    assert processing.process_received_events() == 1
    delivery = Delivery.objects.get()
    deliver_now(delivery.pk)

    request, _ = httpserver.log[0]
    assert request.get_data() == BODY.encode()
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == event_id
    assert "Stripe-Signature" in request.headers  # the provider's headers travel along
    # The receiver's view: verify with the official Standard Webhooks package.
    payload = Webhook(secret).verify(request.get_data(), dict(request.headers))
    assert payload["id"] == "evt_deliver_1"

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUCCEEDED and delivery.attempt_count == 1
    attempt = DeliveryAttempt.objects.get()
    assert attempt.response_status == 200 and attempt.response_body == "thanks"
    assert "webhook-signature" not in {name.lower() for name in attempt.request_headers}
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.PROCESSED


def svix_library_verify(secret: str, body: bytes, headers) -> dict:
    """What a receiver using the official `svix` library does: svix-id/-timestamp/-signature when all three
    are present, else webhook-*, then the Standard Webhooks check (svix's verify is standardwebhooks')."""
    lowered = {name.lower(): value for name, value in headers.items()}
    family = "svix" if all(lowered.get(f"svix-{part}") for part in ("id", "timestamp", "signature")) else "webhook"
    chosen = {f"webhook-{part}": lowered.get(f"{family}-{part}", "") for part in ("id", "timestamp", "signature")}
    return Webhook(secret).verify(body, chosen)


def test_a_svix_senders_signature_headers_are_not_forwarded(client, organization, httpserver):
    # Clerk, Resend and other Svix senders sign with svix-*; a receiver's svix library reads those first,
    # so forwarding them would make it check the sender's signature against the destination's secret.
    source = make_source(organization, provider="standard_webhooks", secret=STANDARD_SECRET)
    destination, secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok", status=200)
    body = '{"type": "user.created", "data": {"id": "user_1"}}'
    sent = standard_webhooks_headers(body, STANDARD_SECRET, "msg_from_clerk", prefix="svix")
    response = client.generic("POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **sent)
    assert response.status_code == 200, response.content
    assert processing.process_received_events() == 1
    deliver_now(Delivery.objects.get().pk)

    request, _ = httpserver.log[0]
    assert svix_library_verify(secret, request.get_data(), dict(request.headers))["type"] == "user.created"
    assert Webhook(secret).verify(request.get_data(), dict(request.headers))["type"] == "user.created"
    assert not [name for name in request.headers.keys() if name.lower().startswith("svix-")]
    # Stored as received: the event's own record still shows what the sender sent.
    assert "svix-signature" in {name.lower() for name in WebhookEvent.objects.get().headers}


@pytest.mark.parametrize(
    "name", ["svix-id", "SVIX-TIMESTAMP", "Svix-Signature", "webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE"]
)
def test_standard_webhooks_header_names_from_the_sender_are_dropped_in_any_case(organization, name):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:19501/hook", sources=[source])
    event = WebhookEvent.objects.create(
        organization=organization, source=source, body=b"{}", headers={name: "sender's", "X-Other": "kept"}
    )
    delivery = Delivery.objects.create(organization=organization, event=event, destination=destination)
    headers = delivery_service.build_request_headers(delivery, 1700000000)
    assert "sender's" not in headers.values()
    assert headers["X-Other"] == "kept"


def test_headers_of_the_sender_s_hop_are_not_forwarded(organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:19501/hook", sources=[source])
    sent = {
        "Connection": "close, X-Hop-Only",
        "X-Hop-Only": "1",
        "Expect": "100-continue",
        "Proxy-Connection": "keep-alive",
        "X-GitHub-Event": "push",
    }
    event = WebhookEvent.objects.create(organization=organization, source=source, body=b"{}", headers=sent)
    delivery = Delivery.objects.create(organization=organization, event=event, destination=destination)
    headers = {name.lower() for name in delivery_service.build_request_headers(delivery, 1700000000)}
    assert not headers & {"connection", "x-hop-only", "expect", "proxy-connection"}
    assert "x-github-event" in headers


@pytest.mark.parametrize("overlap_seconds", [3600, 0])
def test_a_rotated_destination_signs_with_both_secrets_while_the_overlap_lasts(
    client, organization, httpserver, overlap_seconds
):
    source = make_source(organization)
    destination, old_secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    destination, new_secret = destination_rotate_secret(destination=destination, overlap_seconds=overlap_seconds)
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    ingest(client, source)
    processing.process_received_events()
    deliver_now(Delivery.objects.get().pk)

    request, _ = httpserver.log[0]
    # A receiver holding either secret verifies with the official package while the overlap lasts.
    assert Webhook(new_secret).verify(request.get_data(), dict(request.headers))["id"] == "evt_deliver_1"
    signatures = request.headers["webhook-signature"].split(" ")
    if overlap_seconds:
        assert len(signatures) == 2
        assert Webhook(old_secret).verify(request.get_data(), dict(request.headers))["id"] == "evt_deliver_1"
    else:
        assert len(signatures) == 1
        with pytest.raises(WebhookVerificationError):
            Webhook(old_secret).verify(request.get_data(), dict(request.headers))

    # Once the overlap has ended, only the new secret signs.
    Destination.objects.filter(pk=destination.pk).update(previous_secret_expires_at=timezone.now())
    assert Destination.objects.get(pk=destination.pk).signing_secrets() == [new_secret]


def test_500_then_200_is_retried_on_the_schedule(client, organization, httpserver, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300]
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_ordered_request("/hook").respond_with_data("boom", status=500)
    httpserver.expect_ordered_request("/hook").respond_with_data("ok", status=200)

    ingest(client, source)
    processing.process_received_events()
    delivery = deliver_now(Delivery.objects.get().pk)
    assert delivery.status == Delivery.Status.PENDING
    delay = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 50 < delay < 70  # 60 s with jitter

    # Not due yet: a second worker (or a duplicate message) gets nothing.
    assert deliver_now(delivery.pk) is None
    make_due(delivery)
    delivery = deliver_now(delivery.pk)
    assert delivery.status == Delivery.Status.SUCCEEDED
    assert list(DeliveryAttempt.objects.values_list("response_status", flat=True)) == [500, 200]


def test_dead_after_the_last_retry_and_manual_retry(client, organization, httpserver, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [1, 1]
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("nope", status=503)

    ingest(client, source)
    processing.process_received_events()
    delivery = Delivery.objects.get()
    for _ in range(3):
        make_due(delivery)
        delivery = deliver_now(delivery.pk)
    assert delivery.status == Delivery.Status.DEAD
    assert delivery.attempt_count == 3 and delivery.last_status_code == 503
    assert DeliveryAttempt.objects.count() == 3

    httpserver.clear()
    httpserver.expect_request("/hook").respond_with_data("ok", status=200)
    call_command("retry_delivery", "--id", str(delivery.pk))
    assert deliver_now(delivery.pk).status == Delivery.Status.SUCCEEDED


def test_network_error_and_timeout_are_recorded_and_retried(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, "http://127.0.0.1:9/unreachable", sources=[source], timeout_seconds=1)
    ingest(client, source)
    processing.process_received_events()
    delivery = deliver_now(Delivery.objects.get().pk)
    assert delivery.status == Delivery.Status.PENDING
    attempt = DeliveryAttempt.objects.get()
    assert attempt.response_status is None and "connection failed" in attempt.error
    # Names the receiver and the reason, not the HTTP client's internals.
    assert attempt.error.startswith("connection failed: 127.0.0.1:9: ") and "Connection" not in attempt.error[:30]
    assert "_Watched" not in attempt.error


def test_duplicate_ingest_delivers_once(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok")
    ingest(client, source)
    assert ingest(client, source)["duplicate"] is True
    processing.process_received_events()
    assert processing.process_received_events() == 0
    for delivery in Delivery.objects.all():
        deliver_now(delivery.pk)
    assert len(httpserver.log) == 1


def test_event_type_filters_and_sources_route_events(client, organization, httpserver):
    stripe_source = make_source(organization, name="stripe")
    other_source = make_source(organization, name="other")
    invoices, _ = make_destination(
        organization, httpserver.url_for("/invoices"), sources=[stripe_source], event_types=["invoice.*"]
    )
    charges, _ = make_destination(
        organization, httpserver.url_for("/charges"), sources=[stripe_source], event_types=["charge.*"]
    )
    ingest(client, stripe_source)
    ingest(client, other_source, BODY.replace("evt_deliver_1", "evt_other"))
    processing.process_received_events()
    assert list(Delivery.objects.values_list("destination", flat=True)) == [invoices.pk]
    assert WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSED).count() == 2


def test_an_event_goes_to_the_destinations_there_when_it_is_processed_and_a_replay_sends_it_later(
    client, organization, httpserver
):
    """As the README says: fan-out reads the subscriptions when the event is processed, not when it
    arrived; a destination created after that gets the event only by a replay."""
    source = make_source(organization)
    event_id = ingest(client, source)["id"]
    assert WebhookEvent.objects.get(pk=event_id).status == WebhookEvent.Status.RECEIVED  # no worker ran yet
    created_while_waiting, _ = make_destination(organization, httpserver.url_for("/a"), sources=[source])
    processing.process_received_events()
    assert list(Delivery.objects.values_list("destination", flat=True)) == [created_while_waiting.pk]

    created_after, _ = make_destination(organization, httpserver.url_for("/b"), sources=[source])
    processing.process_received_events()
    assert not Delivery.objects.filter(destination=created_after).exists()
    event_replay(event=WebhookEvent.objects.get(pk=event_id), destination=created_after)
    assert Delivery.objects.get(destination=created_after).is_replay


def test_an_event_not_yet_processed_is_not_replayed_since_its_processing_would_send_it_again(
    client, organization, httpserver
):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/a"), sources=[source])
    event = WebhookEvent.objects.get(pk=ingest(client, source)["id"])
    with pytest.raises(OperationError, match="has not been processed yet"):
        event_replay(event=event, destination=destination)
    processing.process_received_events()
    # Once processed: its one ordinary delivery, and a replay as a second, deliberate one.
    event_replay(event=event, destination=destination)  # the caller's copy still says received
    assert sorted(Delivery.objects.filter(event=event).values_list("is_replay", flat=True)) == [False, True]


def test_a_name_filter_routes_the_types_under_it(client, organization, httpserver):
    # GitHub's "issues" events are stored as "issues.opened"…: a tenant's "issues" must take them.
    source = make_source(organization)
    family, _ = make_destination(organization, httpserver.url_for("/a"), sources=[source], event_types=["invoice"])
    make_destination(organization, httpserver.url_for("/b"), sources=[source], event_types=["invoic"])
    ingest(client, source)
    processing.process_received_events()
    assert list(Delivery.objects.values_list("destination", flat=True)) == [family.pk]


def test_two_workers_never_claim_the_same_attempt(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest(client, source)
    processing.process_received_events()
    delivery = Delivery.objects.get()
    assert [claimed.pk for claimed in delivery_service.claim_due_deliveries(10)] == [delivery.pk]
    assert delivery_service.claim_due_deliveries(10) == []


def test_private_destinations_are_refused_unless_allowed(organization, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    for url in (
        "http://127.0.0.1/hook",
        "http://10.1.2.3/",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://localhost:8000/",
    ):
        with pytest.raises(DestinationError):
            destination_create(organization=organization, name="bad", url=url)


def test_private_destination_is_refused_again_at_send_time(client, organization, httpserver, settings):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest(client, source)
    processing.process_received_events()
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    delivery = deliver_now(Delivery.objects.get().pk)
    assert "private or reserved" in delivery.last_error
    assert len(httpserver.log) == 0


def test_sweeper_releases_deliveries_of_dead_workers_and_schedules_due_ones(
    client, organization, httpserver, dispatches, settings
):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest(client, source)
    processing.process_received_events()
    delivery = Delivery.objects.get()
    assert claim_now(delivery.pk) is not None
    # The worker dies here. Before the stuck limit the sweeper leaves it alone:
    assert processing.sweep()["released"] == 0
    later = timezone.now() + timedelta(seconds=settings.STUCK_DELIVERY_SECONDS + 1)
    dispatches.clear()
    result = processing.sweep(now=later)
    assert result["released"] == 1 and result["due"] == 1 and dispatches == [1]
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.attempt_count == 1


def test_a_claim_is_judged_by_the_longest_limit_once_its_destination_was_edited(
    client, organization, httpserver, dispatches, settings
):
    # Sent with a 60 s timeout, then lowered to 5 s: the send may still be live after 5 + margin.
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    Destination.objects.filter(pk=destination.pk).update(timeout_seconds=60)
    ingest(client, source)
    processing.process_received_events()
    assert claim_now(Delivery.objects.get().pk) is not None
    claimed_at = Delivery.objects.get().claimed_at
    edited = Destination.objects.get(pk=destination.pk)
    edited.timeout_seconds = 5
    edited.save()
    assert processing.sweep(now=claimed_at + timedelta(seconds=40))["released"] == 0
    later = claimed_at + timedelta(seconds=settings.STUCK_DELIVERY_SECONDS + 1)
    assert processing.sweep(now=later)["released"] == 1


def test_a_dead_worker_s_claim_is_released_soon_after_its_attempt_s_timeout(
    client, organization, httpserver, dispatches, settings
):
    # Until released it holds one of the destination's concurrent sends: not for STUCK_DELIVERY_SECONDS.
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    an_hour_ago = timezone.now() - timedelta(hours=1)  # not edited since: judged by its own timeout
    Destination.objects.filter(pk=destination.pk).update(timeout_seconds=5, updated_at=an_hour_ago)
    ingest(client, source)
    processing.process_received_events()
    delivery = Delivery.objects.get()
    assert claim_now(delivery.pk) is not None
    claimed_at = Delivery.objects.get().claimed_at
    margin = settings.STUCK_DELIVERY_MARGIN_SECONDS
    assert processing.sweep(now=claimed_at + timedelta(seconds=5 + margin - 1))["released"] == 0  # may be live
    assert processing.sweep(now=claimed_at + timedelta(seconds=5 + margin + 1))["released"] == 1
    assert Delivery.objects.get().status == Delivery.Status.PENDING


def test_a_sweeper_whose_clock_runs_ahead_does_not_take_a_live_send_for_a_lost_one(
    client, organization, httpserver, dispatches, settings, monkeypatch
):
    # Claims are dated and judged by the database's clock, not by each host's own.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest(client, source)
    processing.process_received_events()
    assert claim_now(Delivery.objects.get().pk) is not None
    ahead = timezone.now() + timedelta(seconds=settings.STUCK_DELIVERY_SECONDS + 60)
    monkeypatch.setattr(processing.timezone, "now", lambda: ahead)
    assert processing.sweep()["released"] == 0
    assert Delivery.objects.get().status == Delivery.Status.IN_FLIGHT


def _claimed_long_ago_by(owner_id, organization, httpserver, client):
    """One delivery claimed by ``owner_id``, its destination's timeout 5 s; returns when it was claimed."""
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    an_hour_ago = timezone.now() - timedelta(hours=1)  # not edited since: judged by its own timeout
    Destination.objects.filter(pk=destination.pk).update(timeout_seconds=5, updated_at=an_hour_ago)
    ingest(client, source)
    processing.process_received_events()
    (claimed,) = delivery_service.claim_due_deliveries(10, owner=owner_id)
    assert claimed.claimed_by == owner_id
    return claimed.claimed_at


def test_a_live_dispatcher_keeps_its_claims_past_their_timeout_and_a_gone_one_does_not(
    client, organization, httpserver, dispatches, settings
):
    # A dispatcher that cannot reach the database (frozen, cut off, failing over) holds what it sent
    # and records it once it can: releasing its claims meanwhile would send them twice.
    with ClaimOwner() as owner:
        assert wait_until(lambda: cache.get(MARK_KEY_PREFIX + owner.id) is not None, timeout=PATIENCE_SECONDS)
        claimed_at = _claimed_long_ago_by(owner.id, organization, httpserver, client)
        long_past = claimed_at + timedelta(seconds=5 + settings.STUCK_DELIVERY_SECONDS + 1)
        assert processing.sweep(now=long_past)["released"] == 0
        assert Delivery.objects.get().status == Delivery.Status.IN_FLIGHT
    # The run ended (or died: its mark expires) without recording it: sent again.
    assert cache.get(MARK_KEY_PREFIX + owner.id) is None
    assert processing.sweep(now=long_past)["released"] == 1
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.claimed_at, delivery.claimed_by) == (Delivery.Status.PENDING, None, None)


def test_a_live_dispatcher_s_claim_is_released_once_it_is_older_than_live_claim_max_seconds(
    client, organization, httpserver, dispatches, settings
):
    # Alive but wedged: its deliveries must not wait on it for ever.
    settings.LIVE_CLAIM_MAX_SECONDS = 400
    with ClaimOwner() as owner:
        assert wait_until(lambda: cache.get(MARK_KEY_PREFIX + owner.id) is not None, timeout=PATIENCE_SECONDS)
        claimed_at = _claimed_long_ago_by(owner.id, organization, httpserver, client)
        assert processing.sweep(now=claimed_at + timedelta(seconds=399))["released"] == 0
        assert processing.sweep(now=claimed_at + timedelta(seconds=401))["released"] == 1


def test_with_the_cache_down_claims_are_judged_by_their_age_alone(
    client, organization, httpserver, dispatches, settings
):
    cache.set(MARK_KEY_PREFIX + "worker-1:42:abc", 1, timeout=60)  # alive, but no one can tell
    claimed_at = _claimed_long_ago_by("worker-1:42:abc", organization, httpserver, client)
    settings.CACHES = REDIS_DOWN_CACHES
    margin = settings.STUCK_DELIVERY_MARGIN_SECONDS
    assert processing.sweep(now=claimed_at + timedelta(seconds=5 + margin - 1))["released"] == 0
    assert processing.sweep(now=claimed_at + timedelta(seconds=5 + margin + 1))["released"] == 1


def test_a_claim_that_names_no_dispatcher_is_judged_by_its_age_alone(
    client, organization, httpserver, dispatches, settings
):
    # Claims taken by the code before claimed_by existed, and those that name no dispatcher (a test's).
    claimed_at = _claimed_long_ago_by(None, organization, httpserver, client)
    margin = settings.STUCK_DELIVERY_MARGIN_SECONDS
    assert processing.sweep(now=claimed_at + timedelta(seconds=5 + margin + 1))["released"] == 1


def test_the_dispatcher_names_itself_in_its_claims_and_keeps_its_mark_while_it_sends(
    organization, httpserver, dispatches, monkeypatch
):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    WebhookEvent.objects.create(organization=organization, source=source, provider_event_id="evt_owner", body=b"{}")
    processing.process_event_batch()
    claims, marks = [], []
    claim = delivery_service.claim_due_deliveries

    def claiming(limit, now=None, *, owner=None):
        claimed = claim(limit, now, owner=owner)
        claims.extend((owner, delivery.claimed_by) for delivery in claimed)
        return claimed

    def receiving(request):  # while the attempt is under way, as the sweeper would see it
        marks.append(cache.get(MARK_KEY_PREFIX + claims[0][0]))
        return Response("ok")

    monkeypatch.setattr(delivery_service, "claim_due_deliveries", claiming)
    httpserver.expect_request("/hook").respond_with_handler(receiving)
    assert delivery_service.dispatch_due_deliveries(max_seconds=5) == 1
    ((owner_id, claimed_by),) = claims
    assert owner_id and claimed_by == owner_id
    assert marks == [1]
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.claimed_by) == (Delivery.Status.SUCCEEDED, None)
    assert cache.get(MARK_KEY_PREFIX + owner_id) is None  # gone with the run


def test_sweeper_schedules_events_left_unprocessed(client, organization, monkeypatch):
    from webhooks import tasks

    published = []
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda *a, **k: published.append(1))
    source = make_source(organization)
    ingest(client, source)
    assert processing.sweep()["events"] == 0  # just arrived: the normal path has it
    later = timezone.now() + timedelta(minutes=5)
    published.clear()
    set_flag(processing.PROCESSING_SCHEDULED_KEY, 5)  # a task is queued or running
    assert processing.sweep(now=later)["events"] == 1
    assert published == []  # it finds them: no second one
    clear_flag(processing.PROCESSING_SCHEDULED_KEY)  # expired: that message was lost
    assert processing.sweep(now=later)["events"] == 1 and published == [1]


def test_a_rotation_that_cannot_be_audited_changes_no_secret(organization, monkeypatch):
    # The new secret would never be shown (the request fails), so it must not be the one signing.
    from webhooks.services import destinations

    destination, old_secret = make_destination(organization, "http://127.0.0.1:9/hook")

    def failing_audit(**kwargs):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(destinations, "audit_record", failing_audit)
    with pytest.raises(RuntimeError):
        destination_rotate_secret(destination=destination, overlap_seconds=3600)
    assert Destination.objects.get(pk=destination.pk).signing_secrets() == [old_secret]


@pytest.mark.parametrize("error", ["OperationalError", "InterfaceError"])
def test_results_sent_while_the_database_is_down_are_recorded_once_it_is_back(
    client, organization, httpserver, dispatches, monkeypatch, error
):
    # A send that reached its receiver is not sent again because the database blinked while
    # its result was being recorded: the dispatcher keeps the result and records it later.
    # InterfaceError (a connection closed under us) is no DatabaseError in PEP 249: taken for a
    # bug, the result was dropped and its delivery sent again after a retry delay.
    from django import db

    httpserver.expect_request("/hook").respond_with_data("ok")
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest(client, source)
    processing.process_received_events()

    real_record = delivery_service._record_results
    outage = {"turns": 5}  # longer than every fallback of one recording

    def database_down_for_a_while(results, **kwargs):
        if outage["turns"]:
            outage["turns"] -= 1
            raise getattr(db, error)("the database is restarting")
        return real_record(results, **kwargs)

    monkeypatch.setattr(delivery_service, "_record_results", database_down_for_a_while)
    monkeypatch.setattr(delivery_service, "_database_unreachable", lambda: outage["turns"] > 0)
    monkeypatch.setattr(delivery_service, "DATABASE_RETRY_SECONDS", 0.01)

    attempted = delivery_service.dispatch_due_deliveries(max_seconds=5, threads=2, slot=1, linger_seconds=0)

    delivery = Delivery.objects.get()
    assert attempted == 1 and len(httpserver.log) == 1  # sent once
    assert delivery.status == Delivery.Status.SUCCEEDED and delivery.attempts.count() == 1


class _FakeClock:
    """The dispatcher's monotonic clock, moved on by its own sleeps: minutes of an outage in a moment."""

    def __init__(self):
        self.now = time.monotonic()

    def namespace(self):
        return SimpleNamespace(time=time.time, monotonic=lambda: self.now, sleep=self.sleep)

    def sleep(self, seconds):
        self.now += seconds
        time.sleep(0.001)  # let the other threads run


def _database_down_until(clock, ends_at, monkeypatch, *, meanwhile=lambda: None):
    """The dispatcher's recordings fail until ``clock`` reaches ``ends_at``; the time of each failure."""
    from django.db import OperationalError

    real_record = delivery_service._record_results
    failures = []

    def recording(results, **kwargs):
        if clock.now < ends_at:
            failures.append(clock.now)
            meanwhile()
            raise OperationalError("the database is down")
        return real_record(results, **kwargs)

    monkeypatch.setattr(delivery_service, "_record_results", recording)
    monkeypatch.setattr(delivery_service, "_database_unreachable", lambda: clock.now < ends_at)
    # The run's mark is written by a thread on the real clock, while the dispatcher's clock runs
    # minutes ahead in a moment: had that first write not been tried yet when the grace ran out (a
    # slow thread start), the mark counted as never kept. Really, it is tried within milliseconds.
    entered = ClaimOwner.__enter__

    def enter_once_marked(owner):
        entered(owner)
        wait_until(lambda: owner._marked_at is not None or owner._lapsed, timeout=PATIENCE_SECONDS, interval=0.01)
        return owner

    monkeypatch.setattr(ClaimOwner, "__enter__", enter_once_marked)
    monkeypatch.setattr(delivery_service, "time", clock.namespace())
    monkeypatch.setattr(delivery_service, "DATABASE_RETRY_SECONDS", 10.0)
    return failures


def _one_delivery_due(client, organization, httpserver):
    httpserver.expect_request("/hook").respond_with_data("ok")
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest(client, source)
    processing.process_received_events()


def test_a_dispatcher_whose_mark_is_kept_holds_its_results_past_the_grace_while_the_database_is_down(
    client, organization, httpserver, dispatches, monkeypatch, settings
):
    # 200 s down: past the grace of the claims' age (5 s run + UNRECORDED_GRACE_SECONDS), well
    # within LIVE_CLAIM_MAX_SECONDS, for which the sweeper leaves a live dispatcher's claims alone.
    settings.LIVE_CLAIM_MAX_SECONDS = 600
    _one_delivery_due(client, organization, httpserver)
    clock = _FakeClock()
    started = clock.now
    sweeps = []

    def sweep_meanwhile():  # as the sweeper would, had it the database, 100 s after the claim
        if clock.now >= started + 100 and not sweeps:
            claimed_at = Delivery.objects.get().claimed_at
            sweeps.append(processing.sweep(now=claimed_at + timedelta(seconds=100))["released"])

    failures = _database_down_until(clock, started + 200, monkeypatch, meanwhile=sweep_meanwhile)

    attempted = delivery_service.dispatch_due_deliveries(max_seconds=5, threads=2, slot=1, linger_seconds=0)

    assert failures[-1] - started > 5 + delivery_service.UNRECORDED_GRACE_SECONDS
    assert sweeps == [0]  # its mark kept the claim
    delivery = Delivery.objects.get()
    assert attempted == 1 and len(httpserver.log) == 1  # sent once
    assert delivery.status == Delivery.Status.SUCCEEDED and delivery.attempts.count() == 1
    assert processing.sweep(now=timezone.now() + timedelta(hours=1))["released"] == 0
    assert len(httpserver.log) == 1


def test_a_dispatcher_holds_its_results_short_of_live_claim_max_seconds(
    client, organization, httpserver, dispatches, monkeypatch, settings
):
    # Given up before the sweeper would release the claim: then the delivery is sent again.
    settings.LIVE_CLAIM_MAX_SECONDS = 300
    _one_delivery_due(client, organization, httpserver)
    clock = _FakeClock()
    started = clock.now
    failures = _database_down_until(clock, started + 1000, monkeypatch)

    delivery_service.dispatch_due_deliveries(max_seconds=5, threads=2, slot=1, linger_seconds=0)

    assert 300 - 30 <= clock.now - started < 300  # (a tenth of 300 short of it, at least 30 s)
    assert failures and Delivery.objects.get().status == Delivery.Status.IN_FLIGHT  # given up on


@pytest.mark.parametrize("why", ["the cache is down", "the worker is shutting down"])
def test_a_dispatcher_gives_its_results_up_after_the_grace_when_its_claims_are_judged_by_age_or_it_must_end(
    client, organization, httpserver, dispatches, monkeypatch, settings, why
):
    # The cache down, the sweeper cannot see the mark and releases the claims by their age; a
    # worker shutting down must not wait minutes on its tasks.
    settings.LIVE_CLAIM_MAX_SECONDS = 600
    _one_delivery_due(client, organization, httpserver)
    clock = _FakeClock()
    started = clock.now
    stopping = []
    failures = _database_down_until(clock, started + 200, monkeypatch, meanwhile=lambda: stopping.append(1))
    if why == "the cache is down":
        settings.CACHES = REDIS_DOWN_CACHES
    else:
        monkeypatch.setattr(delivery_service, "worker_is_stopping", lambda: bool(stopping))

    delivery_service.dispatch_due_deliveries(max_seconds=5, threads=2, slot=1, linger_seconds=0)

    grace = delivery_service.UNRECORDED_GRACE_SECONDS
    assert failures and clock.now - started <= 5 + grace + 2 * delivery_service.DATABASE_RETRY_SECONDS
    assert Delivery.objects.get().status == Delivery.Status.IN_FLIGHT  # given up on: sent again once released


def test_a_form_encoded_body_is_delivered_as_sent_and_verifies_as_the_readme_says(client, organization, httpserver):
    # Not every provider sends JSON: the standardwebhooks libraries' verify() parses the body after
    # checking the signature, so the README tells receivers to check such bodies with sign().
    import hmac as hmac_module
    import json as json_module
    from datetime import UTC, datetime

    token = "form-sender-token-0123456789abcdef"
    source = make_source(organization, provider="shared_token", secret=token)
    destination, secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    body = "payload=%7B%22action%22%3A%22opened%22%7D&extra=1"
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=token,
    )
    assert response.status_code == 200, response.content
    assert processing.process_received_events() == 1
    deliver_now(Delivery.objects.get().pk)

    request, _ = httpserver.log[0]
    assert request.get_data() == body.encode()
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    with pytest.raises(json_module.JSONDecodeError):
        Webhook(secret).verify(request.get_data(), dict(request.headers))  # a good signature, then JSON
    expected = Webhook(secret).sign(
        request.headers["webhook-id"],
        datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), tz=UTC),
        request.get_data().decode(),
    )
    assert any(hmac_module.compare_digest(expected, sent) for sent in request.headers["webhook-signature"].split(" "))
    with pytest.raises(WebhookVerificationError):  # and a changed body still fails the signature first
        Webhook(secret).verify(request.get_data() + b"&x=2", dict(request.headers))


def test_a_binary_body_is_delivered_as_sent_and_verifies_with_standardwebhooks(client, organization, httpserver):
    # The signature covers the body's bytes as received, whatever they are: standardwebhooks (1.3 on)
    # verifies bytes as given, so a receiver can check a binary body with verify() itself.
    token = "binary-sender-token-0123456789abcdef"
    source = make_source(organization, provider="shared_token", secret=token)
    destination, secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    body = b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xc3(not utf-8)"
    response = client.generic(
        "POST", f"/in/{source.ingest_token}/", body, content_type="application/octet-stream", HTTP_AUTHORIZATION=token
    )
    assert response.status_code == 200, response.content
    assert processing.process_received_events() == 1
    deliver_now(Delivery.objects.get().pk)

    request, _ = httpserver.log[0]
    assert request.get_data() == body
    assert Webhook(secret).verify(request.get_data(), dict(request.headers), json_parse=False) is None
    with pytest.raises(WebhookVerificationError):  # one byte changed
        Webhook(secret).verify(body[:-1] + b"!", dict(request.headers), json_parse=False)


def test_the_dispatch_task_s_time_limits_leave_room_for_holding_results(settings):
    # The soft limit's exception would end a run holding results, and they would be sent again.
    from webhooks import tasks
    from webhooks.services.claim_owners import unrecorded_hold_seconds

    run_at_most = settings.DISPATCHER_MAX_SECONDS + unrecorded_hold_seconds()
    assert tasks.dispatch_deliveries.soft_time_limit > run_at_most
    assert tasks.dispatch_deliveries.time_limit > tasks.dispatch_deliveries.soft_time_limit
    assert tasks.process_events.soft_time_limit == settings.CELERY_TASK_SOFT_TIME_LIMIT  # the others: the usual


def test_a_dispatcher_s_mark_counts_as_kept_only_while_every_write_came_in_time(settings):
    # A refresh held up past the mark's life (the thread starved) or a failed write: the sweeper
    # may have judged the claims by their age meanwhile, whatever the cache does next.
    from webhooks.services.claim_owners import MARK_TTL_SECONDS

    in_time, late, failed = ClaimOwner(), ClaimOwner(), ClaimOwner()
    assert not in_time.mark_kept()  # nothing written yet
    for owner in (in_time, late, failed):
        owner._stopped.set()  # one write, then the thread's loop ends
    in_time._keep_alive()
    late._marked_at = time.monotonic() - MARK_TTL_SECONDS - 1
    late._keep_alive()
    settings.CACHES = REDIS_DOWN_CACHES
    failed._keep_alive()
    assert (in_time.mark_kept(), late.mark_kept(), failed.mark_kept()) == (True, False, False)
