"""A new tenant connecting Slack, Twilio, PayPal and Paystack from the dashboard: the setup steps the
pages give, followed literally, work; the reasons given when they are not followed say how to fix it;
and each provider's redeliveries are counted duplicates. Requests are signed with the providers' own
packages (slack_sdk, twilio) or, for PayPal, with a certificate chain made here (as in
test_providers_paypal)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from urllib.parse import quote, urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from django.urls import reverse
from slack_sdk.signature import SignatureVerifier
from twilio.request_validator import RequestValidator

from webhooks.models import Source, WebhookEvent
from webhooks.providers import registry
from webhooks.providers.paypal import PayPalProvider
from webhooks.services import sample_sender

from .delivering import deliver_now
from .factories import make_source

pytestmark = pytest.mark.django_db

SLACK_SECRET = "8f742231b10e8888abcd99eeeddd85a5"
TWILIO_TOKEN = "12345678901234567890123456789012"
PAYSTACK_KEY = "sk_test_5f2c8a1e9d7b3c4a6e8f0a1b2c3d4e5f6a7b8c9d"
PAYPAL_WEBHOOK_ID = "4JH86294D6297924G"


def page_text(response) -> str:
    return response.content.decode()


def post(client, source, body: bytes, headers: dict[str, str], content_type="application/json", path_suffix=""):
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return client.generic("POST", f"/in/{source.ingest_token}/{path_suffix}", body, content_type=content_type, **extra)


def slack_headers(body: bytes, secret: str = SLACK_SECRET, **extra: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature, **extra}


URL_VERIFICATION = json.dumps(
    {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7",
        "type": "url_verification",
    }
).encode()


# --- Slack: the secret has to be in Hookline before the Request URL is pasted into Slack -------------


def test_slack_form_says_to_set_the_secret_before_pasting_the_request_url(client, owner):
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_create", args=["acme", "slack"])))
    assert "How to connect Slack" in text
    steps = text[text.index("How to connect Slack") :]
    assert steps.index("Signing Secret") < steps.index("Request URL")
    assert "url_verification" in steps and "Event Subscriptions" in steps
    # The general advice to leave the secret empty until the URL is registered is not given for Slack.
    assert "leave it empty for now" not in text


def test_slack_source_page_without_a_secret_points_at_the_steps_not_register_first(client, owner, organization):
    client.force_login(owner)
    client.post(
        reverse("dashboard:source_create", args=["acme", "slack"]), {"name": "Slack", "option_tolerance": "300"}
    )
    source = Source.objects.get(organization=organization, name="Slack")
    text = page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    assert "No signing secret yet" in text and "Follow the steps under the ingest URL" in text
    assert "Register the ingest URL below at Slack, then copy" not in text
    assert "How to connect Slack" in text and "press Retry" in text


def test_slack_handshake_fails_without_the_secret_and_passes_once_it_is_set_as_the_steps_say(
    client, owner, organization
):
    client.force_login(owner)
    client.post(
        reverse("dashboard:source_create", args=["acme", "slack"]), {"name": "Slack", "option_tolerance": "300"}
    )
    source = Source.objects.get(organization=organization, name="Slack")

    # Pasting the URL into Slack first: Slack's url_verification is refused, with the reason.
    refused = post(client, source, URL_VERIFICATION, slack_headers(URL_VERIFICATION))
    assert refused.status_code == 401 and refused.json()["error"] == "secret_not_set"

    client.post(
        reverse("dashboard:source_rotate", args=["acme", source.pk]), {"new_secret": SLACK_SECRET, "overlap_seconds": 0}
    )
    answered = post(client, source, URL_VERIFICATION, slack_headers(URL_VERIFICATION))  # Slack's Retry
    assert answered.status_code == 200
    assert answered.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7"}
    assert not WebhookEvent.objects.filter(source=source, status=WebhookEvent.Status.RECEIVED).exists()


def test_slack_retries_with_x_slack_retry_num_are_counted_duplicates(client, organization):
    source = make_source(organization, provider="slack", secret=SLACK_SECRET)
    body = json.dumps(
        {
            "type": "event_callback",
            "event_id": "Ev0LAN670R",
            "event_time": 1515449522,
            "team_id": "T123ABC456",
            "event": {"type": "app_mention", "user": "U123ABC456", "text": "hi", "channel": "C123ABC456"},
        }
    ).encode()
    first = post(client, source, body, slack_headers(body))
    assert first.status_code == 200 and first.json()["duplicate"] is False
    for number, reason in ((1, "http_timeout"), (2, "http_error")):
        retry = post(
            client,
            source,
            body,
            slack_headers(body, **{"X-Slack-Retry-Num": str(number)}, **{"X-Slack-Retry-Reason": reason}),
        )
        assert retry.json() == {"id": first.json()["id"], "duplicate": True}
    event = WebhookEvent.objects.get(pk=first.json()["id"])
    assert (event.provider_event_id, event.duplicate_count) == ("Ev0LAN670R", 2)


# --- Twilio behind a proxy: the reason names the URL checked and the setting that fixes it -------------


def twilio_status(status: str) -> dict[str, str]:
    return {
        "AccountSid": "AC2b2f3e6a5c1b4d9e8f7a6b5c4d3e2f10",
        "ApiVersion": "2010-04-01",
        "From": "+15017122661",
        "MessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
        "MessageStatus": status,
        "SmsSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
        "SmsStatus": status,
        "To": "+15558675310",
    }


def test_twilio_behind_a_proxy_is_refused_with_the_url_checked_then_accepted_with_public_url(
    client, owner, organization, settings
):
    source = make_source(organization, provider="twilio", secret=TWILIO_TOKEN)
    proxy_url = "https://sms.acme.example/twilio/status-callback"
    params = twilio_status("undelivered")
    body = urlencode(params).encode()
    # Twilio called the proxy's URL; the proxy forwarded to the ingest path with its own Host.
    headers = {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(proxy_url, params)}
    form = "application/x-www-form-urlencoded"

    refused = post(client, source, body, headers, content_type=form)
    assert refused.status_code == 401
    detail = refused.json()["detail"]
    assert f"{settings.PUBLIC_BASE_URL}/in/{source.ingest_token}/" in detail  # the URL Hookline checked
    assert "Public URL" in detail and "proxy" in detail

    client.force_login(owner)
    edit = page_text(client.get(reverse("dashboard:source_edit", args=["acme", source.pk])))
    assert "Public URL" in edit
    client.post(
        reverse("dashboard:source_edit", args=["acme", source.pk]),
        {"name": source.name, "option_public_url": proxy_url},
    )
    source.refresh_from_db()
    assert source.options["public_url"] == proxy_url

    accepted = post(client, source, body, headers, content_type=form)
    assert accepted.status_code == 200, accepted.content
    again = post(client, source, body, headers, content_type=form)  # Twilio's retry of the callback
    assert again.json() == {"id": accepted.json()["id"], "duplicate": True}

    # A request that still misses now points at the Public URL, not at setting it.
    wrong = {"X-Twilio-Signature": RequestValidator("0" * 32).compute_signature(proxy_url, params)}
    detail = post(client, source, body, wrong, content_type=form).json()["detail"]
    assert proxy_url in detail and "Public URL is exactly the URL configured in Twilio" in detail


def test_twilio_page_says_where_status_callbacks_and_incoming_messages_go(client, owner, organization):
    source = make_source(organization, provider="twilio", secret=TWILIO_TOKEN)
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    assert "StatusCallback" in text and "A message comes in" in text and "HTTP POST" in text
    assert "json_parse=False" in text  # its form bodies are forwarded as they came


def test_a_forwarded_form_body_verifies_with_standardwebhooks_only_without_json_parsing(
    client, organization, httpserver, monkeypatch
):
    """What the Twilio and Slack steps tell receivers, shown with the package they name."""
    from standardwebhooks.webhooks import Webhook

    from webhooks.models import Delivery
    from webhooks.services import delivery as delivery_service
    from webhooks.services import processing

    from .factories import make_destination

    for module in (delivery_service, processing):  # delivered by hand below
        monkeypatch.setattr(module, "schedule_dispatch", lambda *args: None)
    httpserver.expect_request("/hook").respond_with_data("ok")
    source = make_source(organization, provider="twilio", secret=TWILIO_TOKEN)
    _, destination_secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    params = twilio_status("delivered")
    body = urlencode(params).encode()
    url = f"http://testserver/in/{source.ingest_token}/"
    headers = {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, params)}
    assert post(client, source, body, headers, content_type="application/x-www-form-urlencoded").status_code == 200
    processing.process_event_batch()
    deliver_now(Delivery.objects.get().pk)
    [(request, _)] = httpserver.log
    receiver = Webhook(destination_secret)
    assert request.get_data() == body
    assert receiver.verify(request.get_data(), dict(request.headers), json_parse=False) is None
    with pytest.raises(ValueError):  # the default parses the body as JSON once the signature passed
        receiver.verify(request.get_data(), dict(request.headers))


# --- PayPal: no test sender to offer; resends are duplicates ------------------------------------------


def test_paypal_page_offers_no_test_sender_and_says_what_to_use(client, owner, organization):
    source = make_source(organization, provider="paypal", secret=PAYPAL_WEBHOOK_ID)
    client.force_login(owner)
    detail = page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    test_url = reverse("dashboard:source_test", args=["acme", source.pk])
    assert test_url not in detail
    assert "Webhooks Simulator" in detail and "Add Webhook" in detail
    assert "Accept sandbox events" in detail and '<dd class="mono">Off</dd>' in detail  # not Python's False
    test_page = page_text(client.get(test_url))
    assert "cannot sign test requests" in test_page and "Webhooks Simulator" in test_page
    assert 'name="fixture"' not in test_page and 'name="payload"' not in test_page  # no form that can only fail


def test_a_sandbox_certificate_is_refused_naming_the_setting_as_the_form_labels_it():
    from webhooks.providers.paypal import allowed_cert_url

    reason = allowed_cert_url("https://api.sandbox.paypal.com/v1/notifications/certs/CERT-1", allow_sandbox=False)
    assert "Accept sandbox events" in reason


def _certificate(subject, issuer, key, signer, *, ca):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(not ca, False, not ca, False, False, ca, ca, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


def test_paypal_resends_of_one_event_are_duplicates_and_a_reused_transmission_with_another_body_is_refused(
    client, organization, monkeypatch
):
    root_key, leaf_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    root = _certificate("Test Root", "Test Root", root_key, root_key, ca=True)
    leaf = _certificate("messageverificationcerts.paypal.com", "Test Root", leaf_key, root_key, ca=False)
    cert_url = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-trial001"
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    monkeypatch.setitem(registry.PROVIDERS, "paypal", PayPalProvider(fetcher=lambda url: pem, trust_anchors=[root]))
    source = make_source(organization, provider="paypal", secret=PAYPAL_WEBHOOK_ID)
    body = json.dumps(
        {"id": "WH-58D329510W468432D-8HN650336L201105X", "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {}}
    ).encode()

    def transmission(transmission_id: str, payload: bytes) -> dict[str, str]:
        sent = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        crc = binascii.crc32(payload) & 0xFFFFFFFF
        message = f"{transmission_id}|{sent}|{PAYPAL_WEBHOOK_ID}|{crc}".encode()
        signature = leaf_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": sent,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
            "PAYPAL-CERT-URL": cert_url,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        }

    first_headers = transmission("b2384410-f8d2-11e8-8c6c-3b1d8a5a1f20", body)
    first = post(client, source, body, first_headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False, first.content
    # PayPal's resend: a new transmission of the same event.
    resend = post(client, source, body, transmission("c9a1e0f2-f8d2-11e8-8c6c-3b1d8a5a1f21", body))
    assert resend.json() == {"id": first.json()["id"], "duplicate": True}
    # The first transmission's signature on another body (its CRC-32 matched) is not a new event.
    forged = json.dumps({"id": "WH-FORGED", "event_type": "PAYMENT.CAPTURE.COMPLETED"}).encode()
    assert post(client, source, forged, first_headers).status_code == 401
    event = WebhookEvent.objects.get(pk=first.json()["id"])
    assert (event.provider_event_id, event.duplicate_count) == ("WH-58D329510W468432D-8HN650336L201105X", 1)


# --- Paystack: where the key and URL go; resends are duplicates -----------------------------------------


def test_paystack_steps_and_resends(client, owner, organization):
    source = make_source(organization, provider="paystack", secret=PAYSTACK_KEY)
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    assert "API Keys &amp; Webhooks" in text and "same mode" in text

    body, _ = sample_sender.build_test_request(source=source, fixture="charge.success")
    signature = hmac.new(PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()
    first = post(client, source, body, {"x-paystack-signature": signature})
    assert first.status_code == 200 and first.json()["duplicate"] is False
    resend = post(client, source, body, {"x-paystack-signature": signature})
    assert resend.json() == {"id": first.json()["id"], "duplicate": True}


# --- Slack reads the answer to a slash command or an interaction: it gets an empty 200 ------------------

SLASH_COMMAND = (
    b"token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&team_domain=example&channel_id=C2147483705"
    b"&user_id=U2147483697&user_name=Steve&command=%2Fdeploy&text=prod&trigger_id=13345224609.738474920.8088930838d88f008e0"
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1234%2F5678"
)


def test_slash_commands_and_interactions_get_an_empty_200_that_slack_shows_no_one(client, organization):
    # A non-empty answer is posted to the user who typed the command (and read as instructions
    # for a modal on a view_submission); the event id travels in headers instead.
    source = make_source(organization, provider="slack", secret=SLACK_SECRET)
    form = "application/x-www-form-urlencoded"
    interaction = b"payload=" + quote(json.dumps({"type": "view_submission", "trigger_id": "1.2.3"})).encode()
    for body in (SLASH_COMMAND, interaction):
        answer = post(client, source, body, slack_headers(body), content_type=form)
        assert (answer.status_code, answer.content) == (200, b"")
        event = WebhookEvent.objects.get(pk=answer["Hookline-Event-Id"])
        assert event.body == body and answer["Hookline-Duplicate"] == "false"
        again = post(client, source, body, slack_headers(body, **{"X-Slack-Retry-Num": "1"}), content_type=form)
        assert (again.content, again["Hookline-Event-Id"], again["Hookline-Duplicate"]) == (b"", str(event.pk), "true")

    # The Events API ignores the body: it keeps Hookline's JSON, without the headers.
    body = json.dumps({"type": "event_callback", "event_id": "Ev0ACK", "event": {"type": "app_mention"}}).encode()
    answer = post(client, source, body, slack_headers(body))
    assert answer.json()["duplicate"] is False and "Hookline-Event-Id" not in answer


@pytest.mark.django_db(transaction=True)
def test_the_test_sender_finds_the_event_of_an_empty_slack_answer(live_server, settings, organization):
    from webhooks.services.source_testing import source_send_test_event

    settings.PUBLIC_BASE_URL = live_server.url
    source = make_source(organization, provider="slack", secret=SLACK_SECRET)
    result = source_send_test_event(source=source, body=SLASH_COMMAND)
    assert (result.response.status, result.response.body) == (200, "")
    assert result.event == WebhookEvent.objects.get(source=source) and result.duplicate is False
    assert source_send_test_event(source=source, body=SLASH_COMMAND).duplicate is True


# --- "What happened to message SM…?": a Twilio SID finds its status callbacks ----------------------------


def test_a_twilio_message_sid_finds_each_of_its_status_callbacks(client, owner, organization, settings):
    source = make_source(organization, provider="twilio", secret=TWILIO_TOKEN)
    url = f"{settings.PUBLIC_BASE_URL}/in/{source.ingest_token}/"
    form = "application/x-www-form-urlencoded"
    stored = []
    for status in ("queued", "sent", "delivered"):
        params = twilio_status(status)
        headers = {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, params)}
        stored.append(post(client, source, urlencode(params).encode(), headers, content_type=form).json()["id"])
    other = {**twilio_status("delivered"), "MessageSid": "SM" + "0" * 32, "SmsSid": "SM" + "0" * 32}
    headers = {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, other)}
    post(client, source, urlencode(other).encode(), headers, content_type=form)

    client.force_login(owner)
    events = reverse("dashboard:events", args=["acme"])
    sid = "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    found = re.findall(r'href="/o/acme/events/([0-9a-f-]{36})/"', page_text(client.get(events, {"q": sid})))
    assert sorted(set(found)) == sorted(stored)
    # The start of an id only counts up to its colon: a few characters find nothing.
    assert 'id="id-search-none"' in client.get(events, {"q": sid[:20]}).content.decode()


def test_the_prefix_search_is_an_index_lookup():
    from django.db import connection

    from webhooks.selectors import events_with_id

    # The platform admin's search, across organizations: each part of it must be an index lookup.
    query = WebhookEvent.objects.filter(events_with_id("SM1f0e8ae6ade43cb3c0ce4525424e404f", organization=None))
    sql, params = query.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        # A near-empty table would be read whole, or walked by its primary key: left only bitmap
        # scans, which need an index condition, the planner shows which index serves each part.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "event_provider_id_prefix" in plan, plan


def test_a_paystack_event_and_object_id_find_its_notifications(client, owner, organization):
    source = make_source(organization, provider="paystack", secret=PAYSTACK_KEY)
    stored = []
    for status in ("success", "success-again"):
        body = json.dumps({"event": "charge.success", "data": {"id": 302961, "status": status}}).encode()
        signature = hmac.new(PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()
        stored.append(post(client, source, body, {"X-Paystack-Signature": signature}).json()["id"])
    client.force_login(owner)
    events = reverse("dashboard:events", args=["acme"])
    found = re.findall(
        r'href="/o/acme/events/([0-9a-f-]{36})/"', page_text(client.get(events, {"q": "charge.success:302961"}))
    )
    assert sorted(set(found)) == sorted(stored)
