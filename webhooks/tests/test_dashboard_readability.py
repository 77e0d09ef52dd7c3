"""Findings of the product trial in the dashboard: delivery states in words, readable durations, error pages."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.destinations import destination_set_paused
from webhooks.templatetags.dashboard import duration_ms, format_timestamp
from webhooks.tests.delivering import deliver_now

from .dashboard_helpers import dead_delivery, ingest_stripe
from .factories import make_destination, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


def named_destination(organization, source, name: str) -> Destination:
    destination, _ = make_destination(organization, f"http://127.0.0.1:9/{name}", sources=[source])
    Destination.objects.filter(pk=destination.pk).update(name=name)
    destination.name = name
    return destination


def badges(html: str) -> list[str]:
    """The visible text of the delivery badges of the events list, in order."""
    return [
        re.sub(r"\s+", " ", text).strip()
        for text in re.findall(r'<span class="badge badge-\w+" title="[^"]*: [^"]*">([^<]*)</span>', html)
    ]


def test_events_list_says_each_delivery_state_in_words_not_only_in_colour(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    dead_to = named_destination(organization, source, "My app")
    retrying_to = named_destination(organization, source, "Billing")
    delivered_to = named_destination(organization, source, "Archive")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_states"))
    dead_delivery(event, dead_to)
    Delivery.objects.create(
        organization=organization,
        event=event,
        destination=retrying_to,
        status=Delivery.Status.PENDING,
        attempt_count=2,
        next_attempt_at=timezone.now(),
    )
    Delivery.objects.create(
        organization=organization,
        event=event,
        destination=delivered_to,
        status=Delivery.Status.SUCCEEDED,
        attempt_count=1,
        completed_at=timezone.now(),
    )
    client.force_login(owner)

    html = client.get(reverse("dashboard:events", args=["acme"])).content.decode()

    assert badges(html) == ["My app · dead", "Billing · retrying", "Archive"]
    assert 'title="My app: dead"' in html and 'title="Archive: Succeeded"' in html


def test_a_delivery_not_tried_yet_reads_queued(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination = named_destination(organization, source, "My app")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_queued"))
    Delivery.objects.create(
        organization=organization, event=event, destination=destination, status=Delivery.Status.PENDING
    )
    client.force_login(owner)
    html = client.get(reverse("dashboard:events", args=["acme"])).content.decode()
    assert badges(html) == ["My app · queued"]


def test_a_delivery_waiting_for_a_paused_destination_reads_paused_not_queued(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination = named_destination(organization, source, "My app")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_waits_for_resume"))
    for attempts in (0, 2):  # waiting for a first try, or for a retry
        Delivery.objects.create(
            organization=organization,
            event=event,
            destination=destination if attempts == 0 else named_destination(organization, source, "Billing"),
            status=Delivery.Status.PENDING,
            attempt_count=attempts,
        )
    for paused in Destination.objects.filter(organization=organization):
        destination_set_paused(destination=paused, paused=True, actor=owner)
    client.force_login(owner)
    html = client.get(reverse("dashboard:events", args=["acme"])).content.decode()
    assert badges(html) == ["My app · paused", "Billing · paused"]


@pytest.mark.parametrize(
    ("milliseconds", "shown"),
    [
        (None, "—"),
        (0, "0 ms"),
        (250, "250 ms"),
        (999.4, "999 ms"),
        (999.6, "1.0 s"),
        (1234, "1.2 s"),
        (59_940, "59.9 s"),
        (59_960, "1 min"),
        (79_420, "1 min 19 s"),
        (3_599_000, "59 min 59 s"),
        (3_600_000, "1 h"),
        (7_500_000, "2 h 5 min"),
    ],
)
def test_durations_read_in_the_unit_that_suits_them(milliseconds, shown):
    assert duration_ms(milliseconds) == shown


def test_overview_shows_latency_in_seconds_not_tens_of_thousands_of_ms(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination = named_destination(organization, source, "My app")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_slow"))
    Delivery.objects.create(
        organization=organization,
        event=event,
        destination=destination,
        status=Delivery.Status.SUCCEEDED,
        attempt_count=1,
        completed_at=event.received_at + timedelta(milliseconds=79_420),
    )
    client.force_login(owner)
    html = client.get(reverse("dashboard:overview", args=["acme"])).content.decode()
    assert '<div class="stat">1 min 19 s</div>' in html and "79420" not in html


# --- Dates and times: one format on every page -------------------------------------------------

SEEN_AT = datetime(2026, 12, 6, 14, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "moment,style,shown",
    [
        (SEEN_AT - timedelta(seconds=20), "", "just now"),
        (SEEN_AT - timedelta(minutes=3, seconds=10), "", "3 min ago"),
        (SEEN_AT - timedelta(minutes=80), "", "1 h 20 min ago"),
        (SEEN_AT - timedelta(hours=5, minutes=10), "", "5 h ago"),
        (SEEN_AT + timedelta(minutes=5, seconds=30), "", "in 5 min"),
        (SEEN_AT + timedelta(seconds=10), "", "in under a minute"),
        (SEEN_AT - timedelta(days=2), "", "4 Dec, 14:00:00 UTC"),
        (datetime(2025, 3, 1, 9, 5, tzinfo=UTC), "", "1 Mar 2025, 09:05:00 UTC"),
        (SEEN_AT - timedelta(minutes=3), "absolute", "6 Dec, 13:57:00 UTC"),
    ],
)
def test_timestamps_read_relative_near_now_and_as_a_date_otherwise(moment, style, shown):
    html = format_timestamp(moment, now=SEEN_AT, style=style)
    assert re.fullmatch(r'<time datetime="[^"]+" title="[^"]+">(.*)</time>', html).group(1) == shown
    assert f'datetime="{moment.isoformat()}"' in html


def test_the_tooltip_holds_the_exact_moment_with_milliseconds_and_time_zone():
    moment = datetime(2026, 12, 6, 13, 56, 50, 123456, tzinfo=UTC)
    assert 'title="6 Dec 2026, 13:56:50.123 UTC">3 min ago</time>' in format_timestamp(moment, now=SEEN_AT)
    assert format_timestamp(None, now=SEEN_AT) == ""


# What the timestamp filter shows, and nothing else that looks like a date or a time of day.
TIME_ELEMENT = re.compile(
    r'<time datetime="[^"]+" title="\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2}:\d{2}\.\d{3} UTC">'
    r"(just now|in under a minute|(in )?\d+ (min|h)( \d+ min)?( ago)?|\d{1,2} [A-Z][a-z]{2}( \d{4})?, \d{2}:\d{2}:\d{2} UTC)"
    r"</time>"
)
OTHER_DATE_FORMATS = re.compile(
    r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}|[A-Z][a-z]{2} \d{1,2}, \d{2}:\d{2}|\d{2}:\d{2}:\d{2}"
)


def test_every_dashboard_page_shows_dates_and_times_through_the_one_format(client, organization, owner):
    source = make_source(organization, name="Stripe live")
    destination = named_destination(organization, source, "endpoint")
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_dates"))
    delivery = dead_delivery(event, destination)
    unsigned = client.post(f"/in/{source.ingest_token}/", {"id": "evt_forged"}, content_type="application/json")
    assert unsigned.status_code == 401
    # One moment long ago (a date) and the rest just now (relative), on every kind of row.
    delivery.attempts.update(started_at=timezone.now() - timedelta(days=40))
    client.force_login(owner)
    pages = {
        "overview": reverse("dashboard:overview", args=["acme"]),
        "events": reverse("dashboard:events", args=["acme"]),
        "event": reverse("dashboard:event_detail", args=["acme", event.pk]),
        "source": reverse("dashboard:source_detail", args=["acme", source.pk]),
        "rejected": reverse("dashboard:source_rejected", args=["acme", source.pk]),
        "destinations": reverse("dashboard:destinations", args=["acme"]),
        "destination": reverse("dashboard:destination_detail", args=["acme", destination.pk]),
        "audit": reverse("dashboard:audit", args=["acme"]),
        "team": reverse("team:members", args=["acme"]),
    }
    for name, url in pages.items():
        html = client.get(url).content.decode()
        times = re.findall(r"<time\b[^>]*>.*?</time>", html)
        assert times, name
        for element in times:
            assert TIME_ELEMENT.fullmatch(element), (name, element)
        # Outside <time> (and the raw JSON of audit details), no date is formatted some other way.
        rest = re.sub(r"<time\b[^>]*>.*?</time>|<pre\b.*?</pre>|<script\b.*?</script>", "", html, flags=re.S)
        assert not OTHER_DATE_FORMATS.search(rest), (name, OTHER_DATE_FORMATS.search(rest).group(0))
    event_page = client.get(pages["event"]).content.decode()
    assert re.search(r">\d{1,2} [A-Z][a-z]{2}( \d{4})?, \d{2}:\d{2}:\d{2} UTC</time>", event_page)  # the old attempt


def test_a_rejected_request_in_the_events_list_shows_the_id_it_claims(client, organization, owner):
    # Searching for the provider's id finds a rejected request that claims it: the row says so,
    # instead of showing only Hookline's own id, which the engineer did not search for.
    source = make_source(organization, name="Stripe live")
    forged = '{"id": "evt_claimed_1", "object": "event", "type": "invoice.paid"}'
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        forged,
        content_type="application/json",
        **stripe_headers(forged, "whsec_x"),
    )
    assert response.status_code == 401
    client.force_login(owner)

    html = client.get(reverse("dashboard:events", args=["acme"]), {"q": "evt_claimed_1"}).content.decode()

    assert "no_matching_secret" in html
    assert "claims evt_claimed_1" in html


def test_the_headers_an_attempt_sent_say_that_a_signature_went_with_them(
    client, organization, owner, httpserver, monkeypatch
):
    # The signature is not stored (with the body it is a credential for the receiver); an engineer
    # whose receiver refuses signatures must not read its absence from the list as "none was sent".
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization, name="Stripe live")
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("bad signature", status=401)
    event_id = ingest_stripe(client, source, "evt_signed")
    processing.process_received_events()
    deliver_now(Delivery.objects.get(event_id=event_id).pk)
    client.force_login(owner)

    page = client.get(reverse("dashboard:event_detail", args=["acme", event_id])).content.decode()

    sent = page[page.index("Request headers sent") :]
    assert "webhook-id: " in sent and "Also sent: <code>webhook-signature</code>" in sent


def test_overview_counts_read_with_thousands_separators_like_the_monthly_usage(client, organization, owner):
    # With a few thousand events the cards read "4011" beside the usage's "4,011".
    source = make_source(organization, name="Stripe live")
    WebhookEvent.objects.bulk_create(
        WebhookEvent(
            organization=organization,
            source=source,
            provider_event_id=f"evt_many_{n}",
            event_type="invoice.paid",
            body=b"{}",
            status=WebhookEvent.Status.PROCESSED,
        )
        for n in range(1234)
    )
    client.force_login(owner)

    page = client.get(reverse("dashboard:overview", args=["acme"])).content.decode()

    assert '<div class="stat">1,234</div>' in page
    assert "peak 1,234/h" in page
    assert "1234" not in re.sub(r"<svg.*?</svg>", "", page, flags=re.S).replace("1,234", "")


def test_a_provider_s_texts_show_option_names_as_code_not_between_backticks(client, organization, owner):
    client.force_login(owner)

    page = client.get(reverse("dashboard:source_create", args=["acme", "stripe"])).content.decode()

    assert "at most <code>tolerance</code> seconds old" in page
    assert "printed by <code>stripe listen</code>" in page
    from webhooks.providers.registry import PROVIDERS

    for provider in PROVIDERS:
        page = client.get(reverse("dashboard:source_create", args=["acme", provider])).content.decode()
        assert "`" not in page, provider


def test_the_source_name_s_example_names_the_provider_being_connected(client, organization, owner):
    client.force_login(owner)

    page = client.get(reverse("dashboard:source_create", args=["acme", "github"])).content.decode()

    assert "e.g. “GitHub production”" in page and "Stripe live" not in page


def test_a_refused_form_says_at_its_top_which_fields_to_correct_with_links_to_them(client, organization, owner):
    # The destination form is long: a refused retry schedule or payload filter is far below the top of
    # the page the browser shows again, which looked like a form that did nothing.
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:destination_create", args=[organization.slug]),
        {
            "name": "Billing",
            "url": "http://127.0.0.1:9/billing",
            "timeout_seconds": "15",
            "payload_filters": "ref = 1",
            "retry_schedule": "1h30m",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    summary = re.search(r'<p class="notice notice-bad form-error-summary" role="alert">(.*?)</p>', html)
    assert summary, html
    assert summary.group(1) == (
        'To correct below: <a href="#field-payload_filters">Payload filters</a>, '
        '<a href="#field-retry_schedule">Retry schedule</a>.'
    )
    assert html.index("form-error-summary") < html.index('name="name"')  # above the first field
    assert 'class="field has-error" id="field-retry_schedule"' in html
    assert 'class="field has-error" id="field-payload_filters"' in html
    assert not Destination.objects.exists()

    # A form that was not refused has no such line.
    assert (
        "form-error-summary"
        not in client.get(reverse("dashboard:destination_create", args=[organization.slug])).content.decode()
    )
