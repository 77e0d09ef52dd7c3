"""What senders and receivers control reaches an operator's terminal through show_event and
list_events: it must arrive as text, never as a terminal control sequence (a title or clipboard
write, a cleared screen, a carriage return that overwrites the line before it)."""

import io
import json

import pytest
from django.core.management import call_command

from webhooks.models import DeliveryAttempt, WebhookEvent

from .dashboard_helpers import dead_delivery, ingest_stripe
from .factories import make_destination, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db

ESC = "\x1b"
# OSC 52 asks the terminal to set the clipboard; CSI 2J clears the screen; \r rewrites the line.
CLIPBOARD = f"{ESC}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA=={chr(7)}"
CLEAR = f"{ESC}[2J{ESC}[H"
OVERWRITE = "\rprocessed  all good"
HOSTILE = CLIPBOARD + CLEAR + OVERWRITE + "\x9b31m"


def text_of(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def assert_no_control_sequence(text: str) -> None:
    controls = {char for char in text if (ord(char) < 0x20 and char not in "\n") or 0x7F <= ord(char) <= 0x9F}
    assert not controls, sorted(controls)


@pytest.fixture
def hostile_event(client, organization):
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event_id = ingest_stripe(client, source, f"evt_{HOSTILE}", event_type=f"invoice.{HOSTILE}", note=HOSTILE)
    delivery = dead_delivery(WebhookEvent.objects.get(pk=event_id), destination)
    DeliveryAttempt.objects.filter(delivery=delivery).update(response_body=f"receiver says {HOSTILE}")
    delivery.last_error = f"refused: {HOSTILE}"
    delivery.save(update_fields=["last_error"])
    return source, event_id


def test_show_event_prints_a_senders_and_a_receivers_control_characters_escaped(organization, hostile_event):
    _, event_id = hostile_event
    text = text_of("show_event", event_id, "--body")
    assert_no_control_sequence(text)
    # Escaped, not dropped: the operator still sees that they were sent.
    assert "\\x1b]52;c;" in text and "invoice.\\x1b" in text


def test_list_events_prints_a_senders_control_characters_escaped(organization, hostile_event):
    text = text_of("list_events", "--org", organization.slug)
    assert_no_control_sequence(text)
    assert "invoice.\\x1b" in text


def test_an_unsigned_requests_claimed_id_reaches_no_terminal_as_a_control_sequence(client, organization):
    # Anyone who knows an ingest URL can send this: no secret is needed for a rejected request's record.
    source = make_source(organization, name="Stripe live")
    body = json.dumps({"id": f"evt_{HOSTILE}", "object": "event", "type": HOSTILE})
    response = client.post(
        f"/in/{source.ingest_token}/", body, content_type="application/json", **stripe_headers(body, "whsec_wrong")
    )
    assert response.status_code == 401
    text = text_of("list_events", "--org", organization.slug)
    assert_no_control_sequence(text)
    assert "evt_\\x1b]52;c;" in text
    assert_no_control_sequence(text_of("show_event", f"evt_{HOSTILE}", "--body"))


def test_json_output_keeps_the_values_exact(organization, hostile_event):
    # --json is for programs: json.dumps escapes control characters already, and values stay as sent.
    out = io.StringIO()
    call_command("list_events", "--org", organization.slug, "--json", stdout=out)
    assert_no_control_sequence(out.getvalue())
    assert json.loads(out.getvalue())["events"][0]["event_type"] == f"invoice.{HOSTILE}"


def test_a_line_break_in_a_senders_text_cannot_print_a_line_of_its_own(client, organization):
    source = make_source(organization, name="Stripe live")
    make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    forged = "\n  → endpoint (127.0.0.1): succeeded, 1 attempt"
    event_id = ingest_stripe(client, source, f"evt_lines{forged}", event_type=f"invoice.paid{forged}")
    for text in (text_of("show_event", event_id), text_of("list_events", "--org", organization.slug)):
        assert not [line for line in text.splitlines() if line.lstrip().startswith("→ endpoint")], text
        assert "invoice.paid\\n  → endpoint" in text


def test_send_test_webhook_prints_the_receivers_answer_escaped(organization, httpserver):
    # The answer comes from whatever server the URL names: every command's text goes through one filter.
    source = make_source(organization)
    httpserver.expect_request("/hook").respond_with_data(f"ok {HOSTILE}", status=200)
    text = text_of("send_test_webhook", "--source", source.pk, "--url", httpserver.url_for("/hook"))
    assert_no_control_sequence(text)
    assert "ok \\x1b]52;c;" in text
