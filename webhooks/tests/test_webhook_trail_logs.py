"""An operator with only the logs follows a webhook by one id: its event id, the provider's event id
or a delivery's id finds the line it was received on, the one its deliveries were made on, and one
line per attempt with what came of it, each naming the organization, source or destination, at INFO
whatever a tenant's receiver answered, and holding no secret, URL or body."""

import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone
from werkzeug import Response

from webhooks.models import Delivery
from webhooks.services import delivery as delivery_service
from webhooks.services import processing
from webhooks.services.text import loggable_text
from webhooks.tests.delivering import deliver_now

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db

PROVIDER_EVENT_ID = "evt_trail_1"
BODY = (
    f'{{"id":"{PROVIDER_EVENT_ID}","object":"event","type":"invoice.paid",'
    '"data":{"object":{"customer_email":"alice@customer.example"}}}'
)
RECEIVER_TOKEN = "receiverQueryToken9"


@pytest.fixture(autouse=True)
def dispatches(monkeypatch):
    """Tests drive the services directly; dispatcher scheduling is left out."""
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


def post(client, source, body=BODY, secret=STRIPE_SECRET):
    return client.generic(
        "POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **stripe_headers(body, secret)
    )


def lines_with(caplog, needle):
    return [record for record in caplog.records if needle in record.getMessage()]


def process(on_commit):
    # The lines are written once their transaction commits: the test's own never does.
    with on_commit(execute=True):
        processing.process_received_events()


def deliver_due(delivery_id, on_commit):
    Delivery.objects.filter(pk=delivery_id).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    with on_commit(execute=True):
        deliver_now(delivery_id)


def test_one_webhook_is_followed_by_its_ids_from_receipt_to_each_attempt(
    client, organization, httpserver, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.INFO)
    source = make_source(organization)
    failing_first, _ = make_destination(
        organization, httpserver.url_for(f"/flaky?token={RECEIVER_TOKEN}"), sources=[source], max_attempts=2
    )
    answers = iter([Response("busy", status=500), Response("ok", status=200)])
    httpserver.expect_request("/flaky").respond_with_handler(lambda request: next(answers))

    event_id = post(client, source).json()["id"]
    assert post(client, source).json()["duplicate"] is True
    process(django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    deliver_due(delivery.pk, django_capture_on_commit_callbacks)
    deliver_due(delivery.pk, django_capture_on_commit_callbacks)

    received, duplicate = lines_with(caplog, f"event {event_id} received")
    for line in (received, duplicate):
        assert f"organization {organization.pk} source {source.pk}" in line.getMessage()
        assert f"provider event '{PROVIDER_EVENT_ID}'" in line.getMessage()
    assert "duplicate" in duplicate.getMessage() and "duplicate" not in received.getMessage()

    (processed,) = lines_with(caplog, f"event {event_id} processed")
    assert f"delivery {delivery.pk} to destination {failing_first.pk}" in processed.getMessage()

    first, second = lines_with(caplog, f"delivery {delivery.pk} of event {event_id}")
    for line in (first, second):
        assert f"organization {organization.pk} destination {failing_first.pk}" in line.getMessage()
        assert f"provider event '{PROVIDER_EVENT_ID}'" in line.getMessage()
    assert "attempt 1" in first.getMessage() and "HTTP 500" in first.getMessage()
    assert "retry in" in first.getMessage()
    assert "attempt 2" in second.getMessage() and "HTTP 200" in second.getMessage()
    assert second.getMessage().endswith(", succeeded")

    # The provider's id alone finds the receipt and every attempt.
    assert len(lines_with(caplog, PROVIDER_EVENT_ID)) == 4
    # A tenant's receiver failing is no error of the deployment's; nothing of it is a secret or a body.
    trail = [record for record in caplog.records if record.name.startswith("webhooks.")]
    assert {record.levelno for record in trail} == {logging.INFO}
    assert not [record for record in trail if record.exc_info]
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name != "werkzeug")  # the receiver's
    for text in (RECEIVER_TOKEN, "/flaky", source.ingest_token, STRIPE_SECRET, "alice@customer.example", "busy"):
        assert text not in ours


def test_a_delivery_out_of_retries_says_dead_at_info(
    client, organization, httpserver, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.INFO)
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/down"), sources=[source], max_attempts=1)
    httpserver.expect_request("/down").respond_with_data("down", status=503)

    post(client, source)
    process(django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    deliver_due(delivery.pk, django_capture_on_commit_callbacks)

    (line,) = lines_with(caplog, f"delivery {delivery.pk} of event")
    assert line.levelno == logging.INFO
    assert f"destination {destination.pk}" in line.getMessage()
    assert "HTTP 503" in line.getMessage() and "dead: HTTP 503: no retries left" in line.getMessage()


def test_refused_requests_say_why_and_whose_at_info(client, organization, caplog):
    caplog.set_level(logging.INFO)
    source = make_source(organization)

    forged = BODY.replace(PROVIDER_EVENT_ID, "evt_forged")
    assert post(client, source, forged, secret="whsec_" + "x" * 32).status_code == 401
    malformed = '{"id": "evt_cut", "type": '
    assert post(client, source, malformed).status_code == 400

    refusals = [record for record in caplog.records if record.name == "webhooks.services.ingest"]
    assert [record.getMessage() for record in refusals] == [
        f"request refused (401 no_matching_secret): organization {organization.pk} source {source.pk} "
        "claimed provider event 'evt_forged'",
        f"request refused (400 malformed_payload): organization {organization.pk} source {source.pk} "
        "claimed provider event -",
    ]
    assert {record.levelno for record in refusals} == {logging.INFO}


def test_an_event_id_with_a_line_break_cannot_write_a_line_of_its_own(client, organization, caplog):
    caplog.set_level(logging.INFO)
    source = make_source(organization)
    forged_line = "\n2026-01-01 00:00:00,000 ERROR fake line"
    body = BODY.replace(PROVIDER_EVENT_ID, "evt_x\\n2026-01-01 00:00:00,000 ERROR fake line")
    assert post(client, source, body, secret="whsec_" + "y" * 32).status_code == 401

    assert forged_line not in caplog.text
    assert loggable_text("evt_x" + forged_line) in caplog.text


def test_loggable_text_is_quoted_escaped_and_cut():
    assert loggable_text("evt_1") == "'evt_1'"
    assert loggable_text("a\r\nb\x1b[31m") == "'a\\r\\nb\\x1b[31m'"
    assert loggable_text(None) == "-"
    assert len(loggable_text("e" * 1000)) < 110


def _django_request_record(path: str, status_code: int) -> logging.LogRecord:
    """A record as django.utils.log.log_response makes it for a 4xx answer."""
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "%s: %s", ("Unauthorized", path), None)
    record.status_code = status_code
    record.request = SimpleNamespace(path=path)
    return record


def test_djangos_4xx_warnings_on_ingest_urls_are_info_and_others_stay_warnings():
    """A forged or oversized request is the sender's or tenant's trouble: Django's "Unauthorized:
    /in/…" must not raise a WARNING the operator has nothing to do about. Run through the filters
    of the console handler that Django's LOGGING set up, as a web process logs."""
    (console,) = [handler for handler in logging.getLogger().handlers if handler.get_name() == "console"]
    ingest = _django_request_record("/in/AbCdEfGh1234_-xyzTOKENtail/", 401)
    too_large = _django_request_record("/in/AbCdEfGh1234_-xyzTOKENtail/", 413)
    elsewhere = _django_request_record("/api/v1/events/", 401)
    failed = _django_request_record("/in/AbCdEfGh1234_-xyzTOKENtail/", 503)
    for record in (ingest, too_large, elsewhere, failed):
        assert console.filter(record)
    assert (ingest.levelno, ingest.levelname) == (logging.INFO, "INFO")
    assert too_large.levelno == logging.INFO
    assert elsewhere.levelno == logging.WARNING and failed.levelno == logging.WARNING


def test_ingest_4xx_warnings_turned_info_are_dropped_where_info_is_not_logged():
    """With LOG_LEVEL=WARNING Django's logger still lets the WARNING through; once it is an INFO, the
    handler must not write it, or every forged request would still be printed."""
    (console,) = [handler for handler in logging.getLogger().handlers if handler.get_name() == "console"]
    django_request = logging.getLogger("django.request")
    level = django_request.level
    django_request.setLevel(logging.WARNING)
    try:
        assert not console.filter(_django_request_record("/in/AbCdEfGh1234_-xyzTOKENtail/", 401))
        assert console.filter(_django_request_record("/in/AbCdEfGh1234_-xyzTOKENtail/", 503))
        assert console.filter(_django_request_record("/api/v1/events/", 401))
    finally:
        django_request.setLevel(level)
