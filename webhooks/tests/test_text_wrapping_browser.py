"""How the dashboard wraps long text in a real browser (Playwright + Debian's Chromium)."""

import json

import pytest
from django.conf import settings as django_settings
from django.test import Client

from .factories import STRIPE_SECRET, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db(transaction=True)

SENTENCE = (
    "the customer asked for the invoice to be sent again because the first one never arrived "
    "in their mailbox and the accounting team needs it before the end of the month"
)

# Every word of the text shown in a <pre>, and how many lines each one is drawn on.
WORD_LINES = """() => {
  const counts = [];
  for (const pre of document.querySelectorAll('pre')) {
    const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.data.matchAll(/[a-z]+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const tops = new Set(Array.from(range.getClientRects(), rect => Math.round(rect.top)));
        counts.push([match[0], tops.size]);
      }
    }
  }
  return counts;
}"""


def test_a_body_on_a_phone_wraps_between_words_not_inside_them(
    browser, live_server, client, organization, owner, monkeypatch
):
    # No Celery here: the event is only stored and shown.
    monkeypatch.setattr("webhooks.services.ingest.schedule_event_processing", lambda **_: None)
    source = make_source(organization, name="Stripe live")
    body = json.dumps(
        {"id": "evt_wrap", "object": "event", "type": "invoice.sent", "data": {"object": {"note": SENTENCE}}}
    )
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, STRIPE_SECRET),
    )
    event_id = response.json()["id"]
    signed_in = Client()
    signed_in.force_login(owner)
    context = browser.new_context(viewport={"width": 375, "height": 740})
    context.add_cookies(
        [
            {
                "name": django_settings.SESSION_COOKIE_NAME,
                "value": signed_in.cookies[django_settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto(f"{live_server.url}/o/acme/events/{event_id}/")
        words = page.evaluate(WORD_LINES)
        # The sentence is longer than a phone's line, so it is wrapped ...
        assert {"customer", "accounting", "month"} <= {word for word, _ in words}
        # ... and (word-break: break-all did it anywhere: "is n / ot a Stripe event") no word is cut in two.
        assert [word for word, lines in words if lines > 1] == []
    finally:
        context.close()
