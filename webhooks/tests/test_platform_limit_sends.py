"""A send refused by a bound of the platform's own (DNS lookups in progress) is not the receiver's failure.

The organization's other destinations are on names of a zone whose DNS never answers (getaddrinfo
hangs for them, as in test_ssrf); the destination under test is on a name that resolves to a real
local HTTP server. Its delivery must not be charged while the organization's lookups are full, and
must be sent once they end; a destination whose own DNS does not answer is still charged.
"""

import socket
import threading
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from webhooks.models import Delivery, DeliveryAttempt, Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import outbound, platform_health
from webhooks.services.delivery_waits import delivery_waits
from webhooks.services.outbound import DestinationNotAllowed, resolve_destination

from .api_helpers import make_delivery, make_event
from .factories import make_destination, make_source
from .processes import wait_until

STUCK_ZONE = "stuck-zone.example"


@pytest.fixture
def dns(monkeypatch, settings):
    """Names under STUCK_ZONE hang until ``release`` is called (a DNS server that never answers);
    other .example names resolve to 127.0.0.1 (where the test's receiver listens)."""
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    outbound.forget_resolved_hosts()
    put_back_keys = [delivery_service.PUT_BACK_COUNT_KEY.format(cause=c) for c in delivery_service.PUT_BACK_CAUSES]
    cache.delete_many(put_back_keys)
    released = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host == STUCK_ZONE or host.endswith(f".{STUCK_ZONE}"):
            released.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host.endswith(".example"):
            host = "127.0.0.1"
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", fake)

    class Dns:
        @staticmethod
        def release():
            released.set()
            # The lookups end with the (fake) resolver's answer: until then they still count.
            assert wait_until(lambda: not outbound._lookups_by_host, timeout=30)

    try:
        yield Dns
    finally:
        Dns.release()
        outbound.forget_resolved_hosts()


def _fill_lookups(count: int, organization_id: int | None, prefix: str = "h") -> None:
    """``count`` lookups of names in the stuck zone, given up on at once but still waiting on their DNS."""
    for number in range(count):
        with pytest.raises(DestinationNotAllowed, match="could not be resolved within"):
            resolve_destination(
                f"https://{prefix}{number}.{STUCK_ZONE}/hook", timeout=0.05, organization_id=organization_id
            )


def _destination_at(organization, source, url: str, **extra) -> Destination:
    # Saved on a checked address, then moved to its name (saving checks the URL, which is not the subject).
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source], **extra)
    Destination.objects.filter(pk=destination.pk).update(url=url)
    destination.refresh_from_db()
    return destination


def _send_due() -> dict:
    """Claim every due delivery, send and record them as the dispatcher does; the deliveries by id."""
    claimed = delivery_service.claim_due_deliveries(50)
    delivery_service.record_results([(delivery, delivery_service.send(delivery)) for delivery in claimed])
    return {delivery.pk: delivery for delivery in Delivery.objects.filter(pk__in=[d.pk for d in claimed])}


def _make_due(delivery: Delivery) -> None:
    # Instead of waiting the few seconds it was put back for.
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def test_a_send_refused_by_the_organization_s_lookup_bound_is_put_back_and_sent_once_it_frees(
    organization, httpserver, monkeypatch, dns, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(outbound, "MAX_LOOKUPS_PER_ORGANIZATION", 2)
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    source = make_source(organization)
    # One attempt only, and a breaker that trips at the first failure: charged, it would be dead at once.
    innocent = _destination_at(organization, source, f"http://fine.example:{httpserver.port}/hook", max_attempts=1)
    # Its own name is one of the zone's that does not answer: the receiver's trouble, charged as ever.
    stuck = _destination_at(organization, source, f"https://h0.{STUCK_ZONE}/hook", timeout_seconds=1)
    event = make_event(source)
    innocent_delivery = make_delivery(event, innocent, status=Delivery.Status.PENDING, attempts=0)
    stuck_delivery = make_delivery(event, stuck, status=Delivery.Status.PENDING, attempts=0)

    _fill_lookups(outbound.MAX_LOOKUPS_PER_ORGANIZATION, organization.pk)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        deliveries = _send_due()
    after = timezone.now()

    refused = deliveries[innocent_delivery.pk]
    assert refused.status == Delivery.Status.PENDING
    assert refused.attempt_count == 0  # its claim's attempt is not counted
    assert before + timedelta(seconds=5) <= refused.next_attempt_at <= after + timedelta(seconds=5)
    assert refused.last_error.startswith("not sent: the host fine.example could not be looked up now")
    assert "not the receiver's: the attempt is not counted and the delivery is tried again in 5 s" in refused.last_error
    assert not DeliveryAttempt.objects.filter(delivery=innocent_delivery).exists()
    # Held by the platform, and said so: not "next_attempt_time", a backoff after its receiver failed.
    assert (refused.put_back_cause, refused.put_back_times) == ("dns_lookups_busy", 1)
    assert before <= refused.put_back_since <= after
    waiting = Delivery.objects.select_related("destination").get(pk=innocent_delivery.pk)
    assert delivery_waits([waiting]) == {innocent_delivery.pk: "platform_dns_lookups_busy"}
    innocent.refresh_from_db()
    assert (innocent.consecutive_failures, innocent.paused_at) == (0, None)
    assert httpserver.log == []
    # Counted where operators look: a rate that holds means deliveries are kept waiting.
    assert delivery_service.put_back_counts() == {"secret_unreadable": 0, "dns_lookups_busy": 1}
    metrics = platform_health.prometheus_text(platform_health.processing_health())
    assert 'hookline_deliveries_put_back_total{cause="dns_lookups_busy"} 1' in metrics.splitlines()

    charged = deliveries[stuck_delivery.pk]  # waited on its own host's lookup, which did not answer
    assert charged.attempt_count == 1
    attempt = DeliveryAttempt.objects.get(delivery=stuck_delivery)
    assert attempt.error == f"the host h0.{STUCK_ZONE} could not be resolved within 1 s"
    stuck.refresh_from_db()
    assert stuck.consecutive_failures == 1

    # Refused again in a row: it waits longer, and says so.
    _make_due(innocent_delivery)
    Delivery.objects.filter(pk=stuck_delivery.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    again = _send_due()[innocent_delivery.pk]
    assert (again.status, again.attempt_count) == (Delivery.Status.PENDING, 0)
    assert again.last_error.startswith("not sent (2 times in a row):")
    assert again.last_error.endswith("tried again in 10 s")
    assert (again.put_back_since, again.put_back_times) == (refused.put_back_since, 2)
    assert not DeliveryAttempt.objects.filter(delivery=innocent_delivery).exists()

    # The lookups end (the resolver gives up on them): the delivery goes out, its first attempt.
    dns.release()
    _make_due(innocent_delivery)
    sent = _send_due()[innocent_delivery.pk]
    assert (sent.status, sent.attempt_count) == (Delivery.Status.SUCCEEDED, 1)
    assert len(httpserver.log) == 1
    assert DeliveryAttempt.objects.get(delivery=innocent_delivery).response_status == 200
    assert (sent.put_back_cause, sent.put_back_since, sent.put_back_times) == (None, None, None)


def test_the_run_of_refusals_is_the_delivery_s_whichever_process_refused_it_before(
    organization, httpserver, monkeypatch, dns
):
    # Kept in each process's memory, the run started again at 5 s in a worker that had not refused
    # the delivery before: with several workers, a lasting refusal was tried every few seconds by
    # each in turn instead of once a minute, and its last_error counted one process's share.
    monkeypatch.setattr(outbound, "MAX_LOOKUPS_PER_ORGANIZATION", 1)
    source = make_source(organization)
    destination = _destination_at(organization, source, f"http://fine.example:{httpserver.port}/hook", max_attempts=1)
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)
    # Refused three times in a row by other processes, since ten minutes.
    since = timezone.now() - timedelta(minutes=10)
    Delivery.objects.filter(pk=delivery.pk).update(
        put_back_cause="dns_lookups_busy", put_back_since=since, put_back_times=3
    )
    _fill_lookups(1, organization.pk)

    before = timezone.now()
    refused = _send_due()[delivery.pk]
    assert refused.last_error.startswith("not sent (4 times in a row):")
    assert refused.last_error.endswith("tried again in 40 s")
    assert refused.next_attempt_at >= before + timedelta(seconds=40)
    assert (refused.put_back_cause, refused.put_back_since, refused.put_back_times) == ("dns_lookups_busy", since, 4)

    # Put back before for another cause (a key missing): the run of DNS refusals starts at its first.
    Delivery.objects.filter(pk=delivery.pk).update(
        put_back_cause="secret_unreadable", put_back_times=7, next_attempt_at=timezone.now()
    )
    before = timezone.now()
    first = _send_due()[delivery.pk]
    assert first.last_error.startswith("not sent: ") and first.last_error.endswith("tried again in 5 s")
    assert (first.put_back_cause, first.put_back_times) == ("dns_lookups_busy", 1)
    assert first.put_back_since >= before


def test_a_send_refused_by_the_process_s_lookup_bound_is_put_back(organization, httpserver, monkeypatch, dns):
    # Another organization's lookups fill the process's: nothing against this destination either.
    monkeypatch.setattr(outbound, "MAX_LOOKUPS", 3)
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    source = make_source(organization)
    destination = _destination_at(organization, source, f"http://fine.example:{httpserver.port}/hook", max_attempts=1)
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)

    _fill_lookups(outbound.MAX_LOOKUPS, organization.pk + 1000)
    refused = _send_due()[delivery.pk]
    assert (refused.status, refused.attempt_count) == (Delivery.Status.PENDING, 0)
    assert "this process has as many DNS lookups waiting as it allows" in refused.last_error
    assert not DeliveryAttempt.objects.filter(delivery=delivery).exists()

    dns.release()
    _make_due(delivery)
    assert _send_due()[delivery.pk].status == Delivery.Status.SUCCEEDED
    assert len(httpserver.log) == 1


def test_a_host_s_own_unanswering_dns_is_still_the_receiver_s_failure(monkeypatch, dns):
    # Past its host's few lookups in progress (other ports of the same name), a send fails at once:
    # that DNS is the receiver's, and the attempt counts, as it always did.
    for port in range(8001, 8001 + outbound.MAX_LOOKUPS_PER_HOST):
        with pytest.raises(DestinationNotAllowed, match="could not be resolved within"):
            resolve_destination(f"https://own.{STUCK_ZONE}:{port}/hook", timeout=0.05, organization_id=1)
    own = outbound.post(f"https://own.{STUCK_ZONE}:9443/hook", body=b"{}", headers={}, timeout=5, organization_id=2)
    assert own.error == f"the DNS of own.{STUCK_ZONE} is not answering (earlier lookups are still waiting)"
    assert own.platform_limit is False
    # The same process, another host of organization 1, whose lookups are full: the platform's bound.
    monkeypatch.setattr(outbound, "MAX_LOOKUPS_PER_ORGANIZATION", outbound.MAX_LOOKUPS_PER_HOST)
    theirs = outbound.post("http://fine.example:9/hook", body=b"{}", headers={}, timeout=5, organization_id=1)
    assert theirs.platform_limit is True
    assert "earlier lookups for this organization's destinations are still waiting" in theirs.error


def test_an_unsent_result_whose_recording_fails_stays_unsent(organization, httpserver, monkeypatch, dns):
    # When a batch's recording fails twice (a bug one result trips on), the result is recorded
    # without the receiver's answer; it was rebuilt without its unsent_reason, so a delivery that was
    # never sent became a failed attempt ("the receiver's answer could not be stored"), charged.
    monkeypatch.setattr(outbound, "MAX_LOOKUPS_PER_ORGANIZATION", 1)
    source = make_source(organization)
    destination = _destination_at(organization, source, f"http://fine.example:{httpserver.port}/hook", max_attempts=1)
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)
    _fill_lookups(1, organization.pk)

    real_put_back = delivery_service._put_back_unsent
    failures = iter([True, True])

    def failing_twice(unsent, now):
        if next(failures, False):
            raise ValueError("a bug the recording trips on")
        return real_put_back(unsent, now)

    monkeypatch.setattr(delivery_service, "_put_back_unsent", failing_twice)
    refused = _send_due()[delivery.pk]
    assert (refused.status, refused.attempt_count) == (Delivery.Status.PENDING, 0)
    assert refused.last_error.startswith("not sent: the host fine.example could not be looked up now")
    assert not DeliveryAttempt.objects.filter(delivery=delivery).exists()
    destination.refresh_from_db()
    assert destination.consecutive_failures == 0
