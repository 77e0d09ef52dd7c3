"""What the dashboard pages show and do, driven through Django's test client."""

import html
import json
import pickle
import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, strip_tags
from uuid6 import uuid7

from organizations.models import AuditLog, Membership
from organizations.services import organization_create
from webhooks import tasks
from webhooks.models import BulkRetry, Delivery, Destination, Source, Subscription, WebhookEvent
from webhooks.providers.registry import PROVIDERS
from webhooks.selectors import EventFilters, event_page, uuid7_floor
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.source_deletion import source_request_deletion
from webhooks.templatetags.dashboard import timestamp
from webhooks.tests.delivering import deliver_now

from .api_helpers import make_event
from .dashboard_helpers import build_world, dead_delivery, ingest_stripe
from .factories import STRIPE_SECRET, make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)
    monkeypatch.setattr("webhooks.tasks.run_bulk_retry.delay", lambda job_id: None)


def page_text(response) -> str:
    return response.content.decode()


# --- Home and switcher ---------------------------------------------------------------


def test_home_sends_a_single_organization_user_to_its_overview(client, owner):
    client.force_login(owner)
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview", args=["acme"])


def test_home_lists_several_organizations_and_the_frame_offers_a_switcher(client, owner, other_organization):
    Membership.objects.create(user=owner, organization=other_organization, role=Membership.Role.MEMBER)
    client.force_login(owner)
    listing = page_text(client.get("/"))
    assert "Choose an organization" in listing and "Acme" in listing and "Globex" in listing
    overview = page_text(client.get(reverse("dashboard:overview", args=["acme"])))
    assert 'class="org-switcher"' in overview and reverse("dashboard:overview", args=["globex"]) in overview


def test_home_without_organization_explains_how_to_get_one(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("lonely@example.com"))
    response = client.get("/")
    assert response.status_code == 200 and "not in an organization yet" in page_text(response)


# --- Overview ------------------------------------------------------------------------


def test_new_organization_overview_shows_how_to_connect_a_provider(client, owner):
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:overview", args=["acme"])))
    assert "Connect your first provider" in text
    assert reverse("dashboard:source_providers", args=["acme"]) in text


def test_overview_counts_events_success_rate_latency_and_failing_destinations(client, owner, organization):
    world = build_world(client, organization)
    second = WebhookEvent.objects.get(pk=ingest_stripe(client, world.source, "evt_ok"))
    delivered = Delivery.objects.create(
        organization=organization,
        event=second,
        destination=world.destination,
        status=Delivery.Status.SUCCEEDED,
        completed_at=second.received_at + timedelta(milliseconds=250),
    )
    client.force_login(owner)
    response = client.get(reverse("dashboard:overview", args=["acme"]))
    overview = response.context["overview"]
    assert overview.events_24h == 2
    assert overview.succeeded_24h == 1 and overview.dead_24h == 1 and overview.success_rate_24h == 50.0
    assert overview.latency_p50_ms == 250
    assert [row.destination for row in overview.failing_destinations] == [world.destination]
    assert overview.chart_24h.total == 2 and len(overview.chart_24h.bars) == 24
    assert len(overview.chart_7d.bars) == 168
    assert "<svg" in page_text(response)
    assert delivered.pk


# --- Events list ---------------------------------------------------------------------


@pytest.fixture
def many_events(client, organization):
    source = make_source(organization, name="Stripe live")
    other = make_source(organization, name="Stripe test", secret="whsec_other")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/a", sources=[source])
    ids = [
        ingest_stripe(client, source, f"evt_{n:03d}", "invoice.paid" if n % 2 else "charge.failed") for n in range(7)
    ]
    other_body = json.dumps({"id": "evt_other", "object": "event", "type": "customer.created"})
    from .signing import stripe_headers

    client.generic(
        "POST",
        f"/in/{other.ingest_token}/",
        other_body,
        content_type="application/json",
        **stripe_headers(other_body, "whsec_other"),
    )
    failed = dead_delivery(WebhookEvent.objects.get(pk=ids[3]), destination)
    return {"source": source, "other": other, "destination": destination, "ids": ids, "failed": failed}


def listed_ids(response) -> list[str]:
    return [str(event.pk) for event in response.context["events"]]


def test_events_filters_by_status_source_type_destination_and_time(client, owner, many_events):
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    assert len(listed_ids(client.get(url))) == 8
    assert len(listed_ids(client.get(url, {"source": many_events["other"].pk}))) == 1
    assert len(listed_ids(client.get(url, {"event_type": "invoice.paid"}))) == 3
    assert len(listed_ids(client.get(url, {"event_type": "invoice.*"}))) == 3  # wildcards as in destination filters
    assert len(listed_ids(client.get(url, {"event_type": "*.paid"}))) == 3
    assert len(listed_ids(client.get(url, {"event_type": "*"}))) == 8
    assert len(listed_ids(client.get(url, {"event_type": "invoice"}))) == 3  # a name takes the types under it
    assert listed_ids(client.get(url, {"event_type": "invoic"})) == []  # but no other prefix
    assert len(listed_ids(client.get(url, {"event_type": "invoice?pai[cd]"}))) == 3  # ? and sets as in filters too
    assert listed_ids(client.get(url, {"event_type": "invoice.pai[!d]"})) == []
    assert listed_ids(client.get(url, {"status": "failed"})) == [many_events["ids"][3]]
    assert listed_ids(client.get(url, {"destination": many_events["destination"].pk})) == [many_events["ids"][3]]
    assert len(listed_ids(client.get(url, {"range": "1h"}))) == 8
    in_an_hour = (timezone.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    an_hour_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert listed_ids(client.get(url, {"since": in_an_hour})) == []
    assert len(listed_ids(client.get(url, {"since": an_hour_ago, "until": in_an_hour}))) == 8
    assert listed_ids(client.get(url, {"until": an_hour_ago})) == []
    WebhookEvent.objects.filter(pk=many_events["ids"][0]).delete()
    assert listed_ids(client.get(url, {"status": "rejected"})) == []


def test_event_type_patterns_are_matched_against_the_organization_s_types(
    client, owner, organization, other_organization, many_events, monkeypatch
):
    from webhooks import selectors

    ingest_stripe(client, make_source(other_organization), "evt_elsewhere", "invoice.voided")
    assert selectors.organization_event_types_matching(organization=organization, patterns=["*"]) == [
        "charge.failed",
        "customer.created",
        "invoice.paid",
    ]
    assert selectors.organization_event_types_matching(organization=organization, patterns=["invoice.*"]) == [
        "invoice.paid"
    ]
    assert selectors.organization_event_types_matching(organization=organization, patterns=["nothing.*"]) == []
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    listed = {pattern: listed_ids(client.get(url, {"event_type": pattern})) for pattern in ("*.paid", "c*", "x*")}
    assert [len(ids) for ids in listed.values()] == [3, 5, 0]
    # An organization with more types than are worth listing is matched row by row instead.
    monkeypatch.setattr(selectors, "EVENT_TYPES_LISTED_FOR_PATTERNS", 2)
    assert selectors.organization_event_types_matching(organization=organization, patterns=["*"]) is None
    assert {pattern: listed_ids(client.get(url, {"event_type": pattern})) for pattern in listed} == listed


def test_a_name_without_wildcards_finds_the_types_under_it_as_destination_filters_do(
    client, owner, organization, many_events, monkeypatch
):
    from webhooks import selectors

    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    ingest_stripe(client, make_source(organization), "evt_invoicex", "invoicex.paid")  # not under "invoice"
    names = ("invoice", "invoice.paid", "inv", "invoice, c*", ",")  # several, as destination filters take them
    found = {name: len(listed_ids(client.get(url, {"event_type": name}))) for name in names}
    assert found == {"invoice": 3, "invoice.paid": 3, "inv": 0, "invoice, c*": 8, ",": 9}
    monkeypatch.setattr(selectors, "EVENT_TYPES_LISTED_FOR_PATTERNS", 2)  # matched row by row
    assert {name: len(listed_ids(client.get(url, {"event_type": name}))) for name in found} == found


def test_filters_that_cannot_apply_are_said_not_to_apply(client, owner, other_organization, many_events):
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    theirs = make_source(other_organization, name="theirs")
    response = client.get(url, {"status": "bogus", "since": "garbage", "source": theirs.pk})
    text = page_text(response)
    assert len(listed_ids(response)) == 8  # the rest of the list is still shown
    assert "Not applied:" in text and "Status:" in text and "Source:" in text
    assert "Enter a valid date/time." in box_error(response, "since")  # said on its box
    assert "Not applied" not in page_text(client.get(url, {"status": "failed"}))


def test_an_event_type_pattern_a_destination_would_refuse_is_said_not_to_apply(client, owner, many_events):
    """ "[bad" matched nothing, as if no such event had arrived; the destination form refuses it."""
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    response = client.get(url, {"event_type": "invoice.*, [bad"})
    text = page_text(response)
    assert "Not applied: Event type: “[bad” is not an event-type pattern: a “[” is never closed" in text
    assert len(listed_ids(response)) == 8
    assert 'aria-invalid="true"' in re.search(r'<input[^>]*name="event_type"[^>]*>', text).group(0)


def box_error(response, name: str) -> str:
    """The error said on a filter's box: the box is marked invalid and described by it (as the audit log's)."""
    text = page_text(response)
    box = re.search(rf'<input[^>]*name="{name}"[^>]*>', text).group(0)
    assert 'aria-invalid="true"' in box and f'aria-describedby="id_{name}_error"' in box, box
    return html.unescape(re.search(rf'<ul class="errorlist" id="id_{name}_error">(.*?)</ul>', text, re.S).group(1))


def test_a_range_that_ends_before_it_starts_says_so_on_the_to_box(client, owner, many_events):
    """ "From 14:00 until 12:00" listed nothing under "No events match", as if none had arrived; then it
    was said in the list's "Not applied" notice, where other pages say a refused value on its box."""
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    an_hour_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    two_hours_ago = (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    response = client.get(url, {"since": an_hour_ago, "until": two_hours_ago})
    text = page_text(response)
    assert "The dates are reversed: To is before From." in box_error(response, "until")
    assert "Not applied" not in text
    assert len(listed_ids(response)) == 8  # from the start to now, as the range line says
    assert " to now." in text and " until " not in text
    same = client.get(url, {"since": an_hour_ago, "until": an_hour_ago})
    assert "To is the same time as From" in box_error(same, "until")
    # The same for a preset that starts after the end typed.
    response = client.get(url, {"range": "1h", "until": two_hours_ago})
    assert "The range is reversed: To is before the last hour." in box_error(response, "until")
    assert "Not applied" not in page_text(response)
    assert len(listed_ids(response)) == 8
    # A range in order is not marked.
    in_order = client.get(url, {"since": two_hours_ago, "until": an_hour_ago})
    assert "errorlist" not in page_text(in_order)


def test_filters_changed_with_htmx_come_back_with_the_to_box_marked_and_unmarked(client, owner, many_events):
    # The list's filters apply by htmx, which swaps the results only: the filters come back out of
    # band, or the mark would show only on a full page load, and stay after the range was corrected.
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "event-results", "HTTP_HX_TRIGGER": "event-filters"}
    an_hour_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    two_hours_ago = (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")

    reversed_range = client.get(url, {"since": an_hour_ago, "until": two_hours_ago}, **htmx)
    corrected = client.get(url, {"since": two_hours_ago, "until": an_hour_ago}, **htmx)

    assert "<html" not in page_text(reversed_range)  # the results' fragment, not the page
    assert re.search(r'<form[^>]*id="event-filters"[^>]*hx-swap-oob="true"', page_text(reversed_range))
    assert "The dates are reversed: To is before From." in box_error(reversed_range, "until")
    assert re.search(r'<form[^>]*id="event-filters"[^>]*hx-swap-oob="true"', page_text(corrected))
    assert "errorlist" not in page_text(corrected)
    assert "hx-swap-oob" not in page_text(client.get(url, {"since": an_hour_ago}))  # a whole page has it in place
    # The empty list's poll asks with the filters the page shows: they are not swapped under the typing.
    polled = client.get(url, {"since": two_hours_ago}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="event-results")
    assert "<html" not in page_text(polled) and "event-filters" not in page_text(polled)


def selected_range(response) -> str:
    """The label the Received dropdown shows."""
    select = re.search(r'<select name="range"[^>]*>(.*?)</select>', page_text(response), re.S).group(1)
    return re.search(r"<option[^>]*selected>([^<]*)</option>", select).group(1)


def box_value(response, name: str) -> str:
    box = re.search(rf'<input[^>]*name="{name}"[^>]*>', page_text(response)).group(0)
    found = re.search(r'value="([^"]*)"', box)
    return html.unescape(found.group(1)) if found else ""


def test_the_received_preset_shows_any_time_when_a_start_is_applied_instead(client, owner, many_events):
    """With ?range=7d&since=… the start applied while the dropdown still said "Last 7 days"."""
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    an_hour_ago = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    response = client.get(url, {"range": "7d", "since": an_hour_ago.strftime("%Y-%m-%dT%H:%M:%S")})
    assert response.context["filters"].since == an_hour_ago
    assert selected_range(response) == "Any time"
    assert "Not applied: Received: From (UTC) is set and applies instead" in page_text(response)
    assert selected_range(client.get(url, {"range": "7d"})) == "Last 7 days"  # alone, the preset applies


def test_a_start_with_microseconds_is_applied_as_the_box_shows_it(client, owner, many_events):
    """The box showed nothing for a value with microseconds (datetime-local takes three digits at
    most) while the list was filtered by it."""
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    response = client.get(url, {"since": "2026-01-02T03:04:05.678901", "until": "2099-01-02 03:04:00.5"})
    filters = response.context["filters"]
    assert (filters.since.isoformat(), filters.until.isoformat()) == (
        "2026-01-02T03:04:05+00:00",
        "2099-01-02T03:04:00+00:00",
    )
    assert (box_value(response, "since"), box_value(response, "until")) == ("2026-01-02T03:04:05", "2099-01-02T03:04")
    assert len(listed_ids(response)) == 8
    assert box_value(client.get(url, {"since": "garbage"}), "since") == "garbage"  # shown back, said not applied


def test_a_range_that_ended_says_no_events_in_it_instead_of_waiting(client, owner, many_events):
    """ "Waiting for events" under a range that ended: nothing will ever arrive in it."""
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    ended = client.get(url, {"until": (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")})
    assert listed_ids(ended) == []
    assert "No events in this range" in page_text(ended) and "Waiting for events" not in page_text(ended)
    # A range still open follows new events, as does the list of an organization without events.
    still_open = client.get(url, {"status": "rejected", "until": "2099-01-01T00:00"})
    assert listed_ids(still_open) == [] and "New events that match these filters appear here" in page_text(still_open)
    assert "No events in this range" not in page_text(still_open)


def test_failed_at_a_destination_means_that_destination_s_delivery_is_dead(client, owner, organization, many_events):
    # Event 3 is dead at the first destination; at a second one it succeeded.
    second, _ = make_destination(organization, "http://127.0.0.1:9/b", sources=[many_events["source"]])
    event = WebhookEvent.objects.get(pk=many_events["ids"][3])
    Delivery.objects.create(
        organization=organization, event=event, destination=second, status=Delivery.Status.SUCCEEDED
    )
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    failed_at_first = {"status": "failed", "destination": many_events["destination"].pk}
    assert listed_ids(client.get(url, failed_at_first)) == [many_events["ids"][3]]
    assert listed_ids(client.get(url, {"destination": second.pk})) == [many_events["ids"][3]]
    assert listed_ids(client.get(url, {"status": "failed", "destination": second.pk})) == []


def test_events_search_by_provider_id_and_by_our_id(client, owner, many_events):
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    assert listed_ids(client.get(url, {"q": "evt_005"})) == [many_events["ids"][5]]
    assert listed_ids(client.get(url, {"q": many_events["ids"][2]})) == [many_events["ids"][2]]
    text = page_text(client.get(url, {"q": "evt_missing"}))
    assert 'No event of Acme has the id <span class="mono">evt_missing</span>' in text


def test_a_rejected_request_is_found_by_the_event_id_it_claims(client, owner, organization, many_events):
    # Chasing a wrong secret: the request for evt_badsig arrived, and failed verification.
    from .signing import stripe_headers

    source = many_events["source"]
    body = json.dumps({"id": "evt_badsig", "object": "event", "type": "invoice.paid"})
    refused = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, "whsec_not_the_right_one"),
    )
    assert refused.status_code == 401
    rejected = WebhookEvent.objects.get(status="rejected")
    assert (rejected.claimed_event_id, rejected.provider_event_id) == ("evt_badsig", None)
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    assert listed_ids(client.get(url, {"q": "evt_badsig"})) == [str(rejected.pk)]
    detail = page_text(client.get(reverse("dashboard:event_detail", args=["acme", rejected.pk])))
    assert "Event id it claims" in detail and "evt_badsig" in detail and "(not verified)" in detail
    # The real event with that id, sent later and signed, is not taken for a duplicate of it.
    accepted = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, STRIPE_SECRET),
    )
    assert accepted.status_code == 200 and accepted.json()["duplicate"] is False


def test_a_replay_is_found_by_the_webhook_id_its_receiver_got(client, owner, organization, many_events):
    event = WebhookEvent.objects.get(pk=many_events["ids"][3])  # processed, its delivery dead
    replay = operations.event_replay(event=event, destination=many_events["destination"], actor=owner)
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    assert listed_ids(client.get(url, {"q": str(replay.pk)})) == [str(event.pk)]
    detail = page_text(client.get(reverse("dashboard:event_detail", args=["acme", event.pk])))
    assert f'webhook-id <span class="mono">{replay.message_id}</span>' in detail
    assert replay.message_id == str(replay.pk)


def test_events_keyset_pages_cover_everything_once_in_order(client, organization, owner, many_events):
    pages, before = [], None
    while True:
        page = event_page(organization=organization, filters=EventFilters(), before=before, limit=3)
        pages.append([str(event.pk) for event in page.events])
        if page.next_before is None:
            break
        before = page.next_before
    flat = [event_id for chunk in pages for event_id in chunk]
    assert [len(chunk) for chunk in pages] == [3, 3, 2]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) == 8
    client.force_login(owner)
    response = client.get(reverse("dashboard:events", args=["acme"]), {"source": many_events["source"].pk})
    assert 'rel="next"' not in page_text(response)  # 7 events fit one page of 50


def test_events_list_uses_no_offset_and_no_count(client, owner, many_events, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(owner)
    with CaptureQueriesContext(connection) as queries:
        client.get(reverse("dashboard:events", args=["acme"]), {"before": many_events["ids"][5], "status": "failed"})
    event_queries = [q["sql"] for q in queries.captured_queries if "webhooks_webhookevent" in q["sql"]]
    assert event_queries
    assert not any("OFFSET" in sql or "COUNT(" in sql.upper() for sql in event_queries)


def test_live_partial_returns_the_rows_since_its_start_and_marks_only_new_ones_fresh(client, owner, many_events):
    client.force_login(owner)
    newest = WebhookEvent.objects.order_by("-id").first()
    url = reverse("dashboard:events_live", args=["acme"])
    after = uuid7_floor(timezone.now())
    empty = client.get(url, {"after": after, "seen": newest.pk}, HTTP_HX_REQUEST="true")
    assert empty.context["events"] == []
    arrived = ingest_stripe(client, many_events["source"], "evt_live")
    response = client.get(url, {"after": after, "seen": newest.pk}, HTTP_HX_REQUEST="true")
    assert [str(event.pk) for event in response.context["events"]] == [arrived]
    # The window keeps its start; what was shown moves, so the row is highlighted once.
    assert f"after={after}&amp;seen={arrived}" in page_text(response) and 'hx-swap-oob="true"' in page_text(response)
    assert 'class="fresh"' in page_text(response)
    again = client.get(url, {"after": after, "seen": arrived}, HTTP_HX_REQUEST="true")
    assert [str(event.pk) for event in again.context["events"]] == [arrived]
    assert 'class="fresh"' not in page_text(again)


def test_a_row_committed_after_a_newer_one_still_shows_up_live_in_its_place(client, owner, organization, many_events):
    # Ids are made when requests arrive, rows become visible at their commit: with several web
    # processes an older id can commit after a newer one was listed. A cursor at the newest row
    # shown skipped it for good; the live rows are read again from before any pending commit.
    client.force_login(owner)
    late_id = uuid7()  # its request arrived first…
    ingest_stripe(client, many_events["source"], "evt_committed_first")  # …this one committed first
    page = client.get(reverse("dashboard:events", args=["acme"]))
    listed = [str(event.pk) for event in page.context["events"]]
    poller = re.search(r'hx-get="([^"]+)"', page_text(page).split('id="event-poller"')[1]).group(1)
    late = WebhookEvent.objects.create(
        id=late_id,
        organization=organization,
        source=many_events["source"],
        provider_event_id="evt_late_commit",
        event_type="invoice.paid",
        body=b"{}",
        status=WebhookEvent.Status.PROCESSED,
    )
    assert late.pk < uuid.UUID(listed[0])  # older than the newest row the page shows
    response = client.get(html.unescape(poller), HTTP_HX_REQUEST="true")
    rows = [str(event.pk) for event in response.context["events"]]
    assert str(late.pk) in rows
    assert rows == sorted(rows, reverse=True) and len(rows) == len(set(rows))
    # The live rows replace the page's live part: nothing is shown twice.
    assert set(rows) >= {str(event.pk) for event in page.context["live_events"]}
    assert not set(rows) & {str(event.pk) for event in page.context["settled_events"]}


def test_uuid7_floor_orders_with_event_ids():
    moment = timezone.now()
    assert str(uuid7_floor(moment))[14] == "7"
    assert uuid7_floor(moment - timedelta(seconds=1)) < uuid7_floor(moment)


# --- Event detail, retry and replay --------------------------------------------------------


def test_event_detail_shows_body_headers_verification_and_attempts(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:event_detail", args=["acme", world.event.pk])))
    assert "evt_world_1" in text and "Signature verified" in text
    # Which secret matched is not recorded, so the page names none (after a rotation it would be wrong).
    assert "a secret this source held when the event arrived" in text and "ending" not in text
    assert "stripe-signature" in text.lower()
    assert "Formatted JSON" in text and "Raw, as received" in text
    assert "HTTP 503" in text and "42 ms" in text and "upstream unavailable" in text
    assert "Retry now" in text and "Replay" in text


def test_a_form_encoded_body_is_shown_field_by_field_with_its_json_indented(client, owner, organization):
    # GitHub's "application/x-www-form-urlencoded" content type: payload=<JSON, percent-encoded>.
    from webhooks.models import WebhookEvent

    source = make_source(organization, provider="github", secret="gh-secret")
    event = WebhookEvent.objects.create(
        organization=organization,
        source=source,
        body=b"payload=%7B%22action%22%3A%22opened%22%2C%22number%22%3A7%7D",
        event_type="pull_request.opened",
    )
    client.force_login(owner)
    text = html.unescape(page_text(client.get(reverse("dashboard:event_detail", args=["acme", event.pk]))))
    assert "Form fields, decoded" in text and 'payload = {\n  "action": "opened"' in text
    assert "payload=%7B%22action" in text  # and as received


def test_readable_body_shapes():
    from webhooks.services.text import readable_body

    assert readable_body(b'{"a":1}').formatted == '{\n  "a": 1\n}'
    assert readable_body(b"a=1&b=two+words").formatted == "a = 1\nb = two words"
    for unshaped in (b"plain text", b"42", b"", b"<xml a='1'/>", b"a=1&&=", b"\xff\xfe"):
        body = readable_body(unshaped)
        assert body.formatted is None and body.raw == unshaped.decode("utf-8", "replace")


def test_event_page_says_why_a_delivery_is_dead_or_retrying(client, owner, organization):
    world = build_world(client, organization)
    Delivery.objects.filter(pk=world.delivery.pk).update(
        last_status_code=301, last_error="HTTP 301: redirects are not followed; update the URL <b>"
    )
    retrying = Delivery.objects.create(
        organization=organization,
        event=world.event,
        destination=make_destination(organization, "http://127.0.0.1:9/other", sources=[world.source])[0],
        status=Delivery.Status.PENDING,
        attempt_count=2,
        last_status_code=401,
        last_error="HTTP 401",
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:event_detail", args=["acme", world.event.pk])))
    # Escaped, next to the delivery it belongs to.
    assert "Why it failed:</strong> HTTP 301: redirects are not followed; update the URL &lt;b&gt;" in text
    assert "Last attempt failed:</strong> HTTP 401" in text
    dead_at, retrying_at = text.index(f'id="delivery-{world.delivery.pk}"'), text.index(f'id="delivery-{retrying.pk}"')
    assert dead_at < text.index("Why it failed") < retrying_at < text.index("Last attempt failed")
    # The destination page's "Last failure" gives the dead delivery's reason, not just "HTTP 503".
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk])))
    assert "redirects are not followed; update the URL" in detail


def test_an_event_whose_deliveries_are_dead_shows_it_next_to_its_status(client, owner, organization):
    world = build_world(client, organization)
    WebhookEvent.objects.filter(pk=world.event.pk).update(status=WebhookEvent.Status.PROCESSED)
    client.force_login(owner)
    detail = page_text(client.get(reverse("dashboard:event_detail", args=["acme", world.event.pk])))
    heading = re.search(r"<h1>.*?</h1>", detail, re.S).group(0)
    assert "Processed" in heading and '<span class="badge badge-bad" title="1 of 1 deliveries' in heading
    assert "1 dead</span>" in heading
    listing = page_text(client.get(reverse("dashboard:events", args=["acme"])))
    assert '<span class="badge badge-bad">1 dead</span>' in listing
    # Delivered: no such badge.
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.SUCCEEDED)
    assert "1 dead" not in page_text(client.get(reverse("dashboard:event_detail", args=["acme", world.event.pk])))
    assert "1 dead" not in page_text(client.get(reverse("dashboard:events", args=["acme"])))


def test_a_failure_under_a_minute_ago_reads_just_now(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    detail_url = reverse("dashboard:destination_detail", args=["acme", world.destination.pk])
    for url in (detail_url, reverse("dashboard:destinations", args=["acme"])):
        text = page_text(client.get(url))
        assert ">just now</time>" in text and "0 min" not in text
    world.delivery.attempts.update(started_at=timezone.now() - timedelta(minutes=3, seconds=10))
    assert ">3 min ago</time>" in page_text(client.get(detail_url))


def test_member_sees_event_but_no_retry_or_replay(client, member, organization):
    world = build_world(client, organization)
    client.force_login(member)
    text = page_text(client.get(reverse("dashboard:event_detail", args=["acme", world.event.pk])))
    assert "evt_world_1" in text and "Retry now" not in text and "Replay to" not in text


def test_rejected_request_explains_why(client, owner, organization):
    source = make_source(organization)
    body = '{"id":"evt_bad","type":"x"}'
    from .signing import stripe_headers

    client.generic(
        "POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **stripe_headers(body, "wrong")
    )
    client.force_login(owner)
    rejected = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED)
    text = page_text(client.get(reverse("dashboard:source_rejected", args=["acme", source.pk])))
    assert rejected.rejection_code in text and escape(rejected.rejection_detail) in text
    detail = page_text(client.get(reverse("dashboard:event_detail", args=["acme", rejected.pk])))
    assert "Rejected: " + rejected.rejection_code in detail


class TableHeaders(HTMLParser):
    """For each <table> of a page: whether it names its columns (a header row of <th scope="col">)
    or each of its rows (a <th scope="row"> in every row), which is what a screen reader reads out."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._open.append(
                {"id": attrs.get("aria-labelledby") or attrs.get("class") or "", "col": 0, "rows": 0, "row_headed": 0}
            )
            self.tables.append(self._open[-1])
        elif self._open and tag == "tr":
            self._open[-1]["rows"] += 1
            self._row_headed = False
        elif self._open and tag == "th":
            if attrs.get("scope") == "col":
                self._open[-1]["col"] += 1
            elif attrs.get("scope") == "row" and not self._row_headed:
                self._row_headed = True
                self._open[-1]["row_headed"] += 1

    def handle_endtag(self, tag):
        if tag == "table" and self._open:
            self._open.pop()


def test_every_table_of_the_dashboard_names_its_columns_or_its_rows(client, owner, organization):
    """The recent events of a source's page were a table without a header row: a screen reader gave
    its cells without the names of their columns."""
    from organizations.api_keys import api_key_create

    from .signing import stripe_headers

    world = build_world(client, organization)
    body = '{"id":"evt_bad","type":"x"}'
    client.generic(
        "POST",
        f"/in/{world.source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, "wrong"),
    )
    api_key_create(organization=organization, name="deploy-script", actor=owner)
    client.force_login(owner)
    acme = lambda name, *args: reverse(name, args=["acme", *args])  # noqa: E731
    pages = [
        acme("dashboard:overview"),
        acme("dashboard:events"),
        acme("dashboard:event_detail", world.event.pk),
        acme("dashboard:sources"),
        acme("dashboard:source_detail", world.source.pk),
        acme("dashboard:source_rejected", world.source.pk),
        acme("dashboard:destinations"),
        acme("dashboard:destination_detail", world.destination.pk),
        acme("dashboard:audit"),
        acme("dashboard:api_keys"),
        acme("team:members"),
    ]
    seen = 0
    for url in pages:
        parser = TableHeaders()
        parser.feed(page_text(client.get(url)))
        for table in parser.tables:
            seen += 1
            assert table["col"] or table["row_headed"] == table["rows"], (url, table)
    assert seen >= 9
    # The source's recent events: Event, Received, Status, Deliveries.
    detail = page_text(client.get(acme("dashboard:source_detail", world.source.pk)))
    recent = re.search(r'<table class="stack-table recent-events"[^>]*>(.*?)</table>', detail, re.S).group(1)
    assert re.findall(r'<th scope="col">([^<]*)</th>', recent) == ["Event", "Received", "Status", "Deliveries"]


def test_the_rejected_page_does_not_call_every_refusal_a_bad_signature(client, owner, organization):
    # Correctly signed, but not a Stripe event: refused as malformed_payload, listed with the others.
    source = make_source(organization)
    body = '{"object": "not an event"}'
    from .signing import stripe_headers

    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, STRIPE_SECRET),
    )
    assert response.json()["error"] == "malformed_payload"
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_rejected", args=["acme", source.pk])))
    assert "malformed_payload" in text
    assert "signature could not be verified" not in text
    assert "refused" in text and "payload" in text


def test_retry_makes_a_dead_delivery_due_and_is_audited(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    response = client.post(reverse("dashboard:delivery_retry", args=["acme", world.delivery.pk]), follow=True)
    assert "queued" in page_text(response)
    assert Delivery.objects.get(pk=world.delivery.pk).status == Delivery.Status.PENDING
    assert AuditLog.objects.filter(action="delivery.retried", actor_user=owner).exists()
    again = client.post(reverse("dashboard:delivery_retry", args=["acme", world.delivery.pk]), follow=True)
    assert again.status_code == 200


def test_replay_creates_a_new_delivery_and_keeps_history(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    client.post(reverse("dashboard:event_replay", args=["acme", world.event.pk]), {"destination": world.destination.pk})
    deliveries = Delivery.objects.filter(event=world.event).order_by("id")
    assert [d.is_replay for d in deliveries] == [False, True]
    assert AuditLog.objects.filter(action="event.replayed", actor_user=owner).exists()


def test_replay_to_another_organizations_destination_is_refused(client, owner, organization, other_organization):
    world = build_world(client, organization)
    foreign, _ = make_destination(other_organization, "http://127.0.0.1:9/x")
    client.force_login(owner)
    client.post(reverse("dashboard:event_replay", args=["acme", world.event.pk]), {"destination": foreign.pk})
    assert Delivery.objects.filter(event=world.event).count() == 1


# --- Sources ---------------------------------------------------------------------------


def test_provider_picker_lists_every_registered_provider(client, owner):
    from webhooks.providers.registry import PROVIDERS

    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_providers", args=["acme"])))
    for kind, provider in PROVIDERS.items():
        assert reverse("dashboard:source_create", args=["acme", kind]) in text
        assert provider.label in text


def test_provider_picker_describes_each_provider_in_a_short_sentence_not_its_spec(client, owner):
    from webhooks.providers.registry import PROVIDERS

    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_providers", args=["acme"])))
    cards = {
        kind: html.unescape(re.sub(r"<[^>]+>|\s+", " ", card))
        for kind, card in re.findall(r'href="/o/acme/sources/new/([\w-]+)/">(.*?)</a>', text, flags=re.S)
    }
    assert set(cards) == set(PROVIDERS)
    for kind, provider in PROVIDERS.items():
        summary = re.search(rf"{re.escape(provider.label)} (.*?\.) ", cards[kind]).group(1)
        assert len(summary) <= 120, (kind, summary)
        assert provider.docs_verifies[:30] not in text, kind  # the spec is for the docs and the next page
    # What each kind of scheme asks of the tenant.
    assert "a secret you copy from the provider's settings" in cards["stripe"] and "Test events" in cards["stripe"]
    assert "a secret you choose (Hookline can generate one)" in cards["github"]
    assert "a token does not sign the body" in cards["shared_token"]
    assert "public certificates; there is no secret to copy" in cards["apple_app_store"]
    assert "Needs Bundle ID, Environment" in cards["apple_app_store"]
    assert "No test events: only the provider can sign" in cards["paypal"]
    assert "1 optional setting" in cards["stripe"]


def test_source_form_shows_the_providers_options_and_secret_needs(client, owner):
    from webhooks.providers.registry import PROVIDERS

    client.force_login(owner)
    for kind, provider in PROVIDERS.items():
        text = page_text(client.get(reverse("dashboard:source_create", args=["acme", kind])))
        for option in provider.options:
            assert f'name="option_{option.name}"' in text, (kind, option.name)
        assert ('name="secret"' in text) == provider.uses_secret, kind
    assert client.get(reverse("dashboard:source_create", args=["acme", "nope"])).status_code == 404


def test_create_source_with_given_secret_then_rotate_pause_resume_delete(client, owner, organization):
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:source_create", args=["acme", "stripe"]),
        {"name": "Stripe live", "secret": STRIPE_SECRET, "option_tolerance": "300"},
    )
    source = Source.objects.get(organization=organization, name="Stripe live")
    assert response.status_code == 302 and response["Location"].endswith(f"/sources/{source.pk}/")
    detail = page_text(client.get(response["Location"]))
    assert f"/in/{source.ingest_token}/" in detail and STRIPE_SECRET not in detail
    assert source.options["tolerance"] == 300

    client.post(
        reverse("dashboard:source_rotate", args=["acme", source.pk]),
        {"new_secret": "whsec_rotated_one", "overlap_seconds": "3600"},
    )
    source.refresh_from_db()
    assert source.secret == "whsec_rotated_one" and source.previous_secret == STRIPE_SECRET
    assert source.previous_secret_expires_at > timezone.now() + timedelta(minutes=59)

    # Stopping loses what providers send meanwhile: one click only opens a page that says so.
    stop_url = reverse("dashboard:source_set_active", args=["acme", source.pk])
    confirm = client.get(stop_url)
    assert confirm.status_code == 200 and "nothing sent to it is stored" in page_text(confirm)
    assert Source.objects.get(pk=source.pk).is_active
    client.post(stop_url, {"active": "0"})
    assert not Source.objects.get(pk=source.pk).is_active
    test_page = page_text(client.get(reverse("dashboard:source_test", args=["acme", source.pk])))
    assert "This source is stopped" in test_page
    body = '{"id":"evt_paused","object":"event","type":"x"}'
    from .signing import stripe_headers

    paused = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, "whsec_rotated_one"),
    )
    assert paused.status_code == 404
    client.post(reverse("dashboard:source_set_active", args=["acme", source.pk]), {"active": "1"})
    assert Source.objects.get(pk=source.pk).is_active

    client.post(reverse("dashboard:source_delete", args=["acme", source.pk]))
    assert Source.objects.get(pk=source.pk).being_deleted
    tasks.delete_source(source.pk)  # the deletion's background run
    assert not Source.objects.filter(pk=source.pk).exists()
    actions = list(
        AuditLog.objects.filter(organization=organization, actor_user=owner).values_list("action", flat=True)
    )
    for action in (
        "source.created",
        "source.secret_rotated",
        "source.paused",
        "source.resumed",
        "source.deletion_requested",
    ):
        assert action in actions
    deleted = AuditLog.objects.get(action="source.deleted")  # written after the rows went: still names them
    assert (deleted.target_id, deleted.target_label) == (str(source.pk), str(source))


def test_the_github_source_form_says_to_choose_content_type_application_json(client, owner, organization):
    # A form-encoded (payload=…) body is accepted but forwarded as it is: receivers parsing JSON fail.
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:source_create", args=["acme", "github"])))
    assert "Content type" in text and "application/json" in text
    assert "form-encoded" in text


def test_generated_source_secret_is_shown_once(client, owner, organization):
    client.force_login(owner)
    response = client.post(reverse("dashboard:source_create", args=["acme", "github"]), {"name": "Repo"})
    assert response.status_code == 302  # post/redirect/get: a reload cannot create it again
    secret_page = client.get(response["Location"])
    source = Source.objects.get(name="Repo")
    assert secret_page.status_code == 200 and source.secret in page_text(secret_page)
    assert "shown only this once" in page_text(secret_page) and "no-store" in secret_page["Cache-Control"]
    reloaded = client.get(response["Location"], follow=True)
    assert source.secret not in page_text(reloaded) and "shown only once" in page_text(reloaded)
    assert Source.objects.filter(name="Repo").count() == 1
    assert source.secret not in page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    encrypted_in_session = str(client.session.load())
    assert source.secret not in encrypted_in_session


def test_a_stripe_source_can_be_made_before_stripe_shows_its_secret(client, owner, organization):
    # Stripe shows the endpoint's secret only once its URL is registered, and the URL comes
    # from the source: the source is made first, refusing everything until the secret is set.
    client.force_login(owner)
    created = client.post(reverse("dashboard:source_create", args=["acme", "stripe"]), {"name": "Stripe live"})
    source = Source.objects.get(name="Stripe live")
    assert created.status_code == 302 and source.secret == ""
    detail = page_text(client.get(created["Location"]))
    assert "No signing secret yet" in detail and "Set the signing secret" in detail
    listing = page_text(client.get(reverse("dashboard:sources", args=["acme"])))
    for page in (detail, listing):  # not shown as a source that works
        assert "Waiting for its secret" in page and "not set yet" in page and ">Receiving<" not in page

    from .signing import stripe_headers

    def send(event_id):
        body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
        return client.generic(
            "POST",
            f"/in/{source.ingest_token}/",
            body,
            content_type="application/json",
            **stripe_headers(body, STRIPE_SECRET),
        )

    refused = send("evt_before")
    assert refused.status_code == 401 and refused.json()["error"] == "secret_not_set"
    assert "Stripe" in refused.json()["detail"]

    rotate_url = reverse("dashboard:source_rotate", args=["acme", source.pk])
    assert "Set the signing secret" in page_text(client.get(rotate_url))
    set_secret = client.post(rotate_url, {"new_secret": STRIPE_SECRET, "overlap_seconds": "0"}, follow=True)
    assert "Signing secret set" in page_text(set_secret)
    assert Source.objects.get(pk=source.pk).active_secrets() == [STRIPE_SECRET]
    assert send("evt_after").status_code == 200
    assert ">Receiving<" in page_text(client.get(reverse("dashboard:sources", args=["acme"])))


def test_source_pages_say_changes_apply_within_the_source_cache_time_not_at_once(client, owner, organization, settings):
    # Each ingest process keeps a source for INGEST_SOURCE_CACHE_SECONDS: nothing may promise "at once".
    settings.INGEST_SOURCE_CACHE_SECONDS = 5.0
    client.force_login(owner)
    client.post(reverse("dashboard:source_create", args=["acme", "stripe"]), {"name": "Stripe live"})
    source = Source.objects.get(name="Stripe live")
    rotate_url = reverse("dashboard:source_rotate", args=["acme", source.pk])
    first = page_text(client.get(rotate_url))
    assert "accepted within 5 seconds of saving it" in first and "from the moment" not in first
    set_secret = page_text(client.post(rotate_url, {"new_secret": STRIPE_SECRET, "overlap_seconds": "0"}, follow=True))
    assert "requests signed with it are accepted within 5 seconds" in set_secret and "from now on" not in set_secret
    rotate = page_text(client.get(rotate_url))
    assert "applies to every request within 5 seconds" in rotate
    assert "None: the old secret stops working within 5 seconds" in rotate and "stops working now" not in rotate
    rotated = page_text(client.post(rotate_url, {"new_secret": "whsec_two", "overlap_seconds": "3600"}, follow=True))
    assert "is used for every request within 5 seconds" in rotated

    stop_url = reverse("dashboard:source_set_active", args=["acme", source.pk])
    assert "Once stopped (the change applies within 5 seconds)" in page_text(client.get(stop_url))
    stopped = page_text(client.post(stop_url, {"active": "0"}, follow=True))
    assert "its URL answers 404 (within 5 seconds) until it receives again" in stopped
    resumed = page_text(client.post(stop_url, {"active": "1"}, follow=True))
    assert "Receiving again: its URL accepts requests within 5 seconds." in resumed
    delete = page_text(client.get(reverse("dashboard:source_delete", args=["acme", source.pk])))
    assert "stops working within 5 seconds" in delete and "at once" not in delete

    settings.INGEST_SOURCE_CACHE_SECONDS = 1
    assert "stops working within 1 second and" in page_text(
        client.get(reverse("dashboard:source_delete", args=["acme", source.pk]))
    )


def test_a_generated_rotation_says_only_the_secret_changes_at_the_provider_and_until_when_the_old_works(
    client, owner, organization
):
    # The page that shows a rotated secret once used to repeat the creation's "enter both ... the
    # URL it sends webhooks to", as if the URL had changed, and said nothing of the overlap.
    client.force_login(owner)
    created = page_text(
        client.post(reverse("dashboard:source_create", args=["acme", "github"]), {"name": "GitHub org"}, follow=True)
    )
    source = Source.objects.get(name="GitHub org")
    assert "the URL it sends webhooks to, and the secret it signs them with" in created
    rotate_url = reverse("dashboard:source_rotate", args=["acme", source.pk])
    shown = page_text(client.post(rotate_url, {"new_secret": "", "overlap_seconds": "86400"}, follow=True))
    expires = Source.objects.get(pk=source.pk).previous_secret_expires_at
    assert "Replace the old secret with it in the provider's webhook settings; the ingest URL stays the same." in shown
    assert f"Requests signed with the previous secret are accepted until {timestamp(expires, 'absolute')}." in shown
    assert "the URL it sends webhooks to" not in shown
    again = page_text(
        client.post(rotate_url, {"new_secret": "", "overlap_seconds": "0", "stop_previous": "on"}, follow=True)
    )
    assert "The previous secret stops being accepted within 5 seconds" in again


def test_source_form_errors_are_shown_not_raised(client, owner):
    client.force_login(owner)
    response = client.post(reverse("dashboard:source_create", args=["acme", "stripe"]), {"name": ""})
    assert response.status_code == 200 and "errorlist" in page_text(response)


def test_the_page_showing_a_new_secret_keeps_its_section_highlighted_in_the_sidebar(client, owner, organization):
    # Its one URL (/secret/<token>/) belongs to no section: the sidebar highlighted nothing there.
    client.force_login(owner)
    source = make_source(organization)
    for section, url, form in [
        ("Sources", reverse("dashboard:source_create", args=["acme", "github"]), {"name": "GitHub"}),
        (
            "Destinations",
            reverse("dashboard:destination_create", args=["acme"]),
            {"name": "App", "url": "http://127.0.0.1:9/hooks", "sources": [source.pk], "timeout_seconds": "10"},
        ),
        ("API keys", reverse("dashboard:api_keys", args=["acme"]), {"name": "deploy", "access": "read_only"}),
    ]:
        response = client.post(url, form)
        assert response.status_code == 302 and "/secret/" in response["Location"]
        shown = client.get(response["Location"])
        assert shown.status_code == 200
        assert re.findall(r'aria-current="page">([^<]+)</a>', page_text(shown)) == [section]


def test_the_pages_asking_before_a_delete_lead_back_as_the_other_pages_of_a_source_or_destination_do(
    client, owner, organization
):
    # Stop receiving had a breadcrumb; Delete, of a source or a destination, had none.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks", sources=[source])
    client.force_login(owner)
    for section, detail, asking in [
        ("sources", "dashboard:source_detail", reverse("dashboard:source_delete", args=["acme", source.pk])),
        (
            "destinations",
            "dashboard:destination_detail",
            reverse("dashboard:destination_delete", args=["acme", destination.pk]),
        ),
    ]:
        text = page_text(client.get(asking))
        breadcrumb = re.search(r'<nav class="breadcrumbs".*?</nav>', text, re.S).group(0)
        target = source if section == "sources" else destination
        assert reverse(f"dashboard:{section}", args=["acme"]) in breadcrumb
        assert f'<a href="{reverse(detail, args=["acme", target.pk])}">{target.name}</a>' in breadcrumb
        assert '<span aria-current="page">Delete</span>' in breadcrumb


# --- Destinations -----------------------------------------------------------------------


def test_destination_create_shows_secret_once_with_filters(client, owner, organization):
    source = make_source(organization)
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {
            "name": "App",
            "url": "http://127.0.0.1:9/hooks",
            "sources": [source.pk],
            "event_types": "invoice.*, charge.failed",
            "timeout_seconds": "10",
        },
        follow=True,
    )
    destination = Destination.objects.get(name="App")
    assert response.status_code == 200 and destination.secret in page_text(response)
    # The way README gives first for a body that is not JSON (Slack commands, GitHub's form type).
    assert "<code>verify()</code> with <code>json_parse=False</code>" in page_text(response)
    assert destination.subscriptions.get().event_types == ["invoice.*", "charge.failed"]
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])))
    assert destination.secret not in detail and destination.secret_hint in detail

    # One click only opens the rotation page: nothing changes until its form is sent.
    rotate_url = reverse("dashboard:destination_rotate", args=["acme", destination.pk])
    form = client.get(rotate_url)
    assert form.status_code == 200 and "Keep signing with the old secret too for" in page_text(form)
    old_secret = destination.secret
    destination.refresh_from_db()
    assert destination.secret == old_secret

    rotated = client.post(rotate_url, {"overlap_seconds": "3600"}, follow=True)
    destination.refresh_from_db()
    assert destination.secret != old_secret and destination.secret in page_text(rotated)
    assert destination.signing_secrets() == [destination.secret, old_secret]
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])))
    assert "also signed with the previous secret until" in detail and old_secret not in detail
    entry = AuditLog.objects.get(action="destination.secret_rotated")
    assert entry.changes["overlap_seconds"] == 3600

    # Rotating again during the overlap would stop the older secret at once: said, and only on purpose.
    again = client.get(rotate_url)
    assert "Stop the older secret now" in page_text(again) and "still works until" in page_text(again)
    refused = client.post(rotate_url, {"overlap_seconds": "0"})
    assert refused.status_code == 200 and "confirm that it may stop now" in page_text(refused)
    destination.refresh_from_db()
    assert destination.signing_secrets()[1] == old_secret
    client.post(rotate_url, {"overlap_seconds": "0", "stop_previous": "on"})
    destination.refresh_from_db()
    assert destination.signing_secrets() == [destination.secret]


def test_destination_edit_changes_sources_and_filters(client, owner, organization):
    first = make_source(organization, name="one")
    second = make_source(organization, name="two")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/a", sources=[first])
    client.force_login(owner)
    client.post(
        reverse("dashboard:destination_edit", args=["acme", destination.pk]),
        {
            "name": "Renamed",
            "url": "http://127.0.0.1:9/b",
            "sources": [second.pk],
            "event_types": "push",
            "timeout_seconds": "5",
        },
    )
    destination.refresh_from_db()
    assert destination.name == "Renamed" and destination.url.endswith("/b") and destination.timeout_seconds == 5
    assert [(s.source_id, s.event_types) for s in destination.subscriptions.all()] == [(second.pk, ["push"])]


def test_destination_edit_page_leads_back_to_the_destination_and_shows_values_as_typed(client, owner, organization):
    # Its breadcrumb ended in the destination's name as the current page, with no way back to it, and
    # the timeout read 15.0 where the create form says 15.
    destination, _ = make_destination(organization, "http://127.0.0.1:9/a", sources=[make_source(organization)])
    client.force_login(owner)
    text = page_text(client.get(reverse("dashboard:destination_edit", args=["acme", destination.pk])))
    breadcrumb = re.search(r'<nav class="breadcrumbs".*?</nav>', text, re.S).group(0)
    detail_url = reverse("dashboard:destination_detail", args=["acme", destination.pk])
    assert f'<a href="{detail_url}">{destination.name}</a>' in breadcrumb
    assert '<span aria-current="page">Edit</span>' in breadcrumb
    assert re.search(r'name="timeout_seconds" value="15"', text)


@pytest.mark.parametrize(
    ("sources", "event_types", "message"),
    [
        (False, "invoice.*", "choose a source too"),
        (True, "[invalid, a b", "never closed"),
    ],
)
def test_destination_form_refuses_filters_it_could_not_keep(client, owner, organization, sources, event_types, message):
    source = make_source(organization)
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {
            "name": "D4",
            "url": "http://127.0.0.1:9/d4",
            "sources": [source.pk] if sources else [],
            "event_types": event_types,
            "timeout_seconds": "10",
        },
    )
    assert response.status_code == 200 and message in page_text(response)
    assert not Destination.objects.filter(name="D4").exists()


def test_deleting_a_destination_asks_first_and_keeps_the_events(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    url = reverse("dashboard:destination_delete", args=["acme", world.destination.pk])
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk])))
    assert "Delete" in detail
    question = page_text(client.get(url))
    assert "its deliveries and their attempts are deleted" in question
    assert Destination.objects.filter(pk=world.destination.pk).exists()  # asking deletes nothing

    done = client.post(url, follow=True)
    assert done.redirect_chain[-1][0] == reverse("dashboard:destinations", args=["acme"])
    assert "is being deleted" in page_text(done) and "Being deleted" in page_text(done)
    entry = AuditLog.objects.get(action="destination.deletion_requested")
    assert entry.actor_user == owner and entry.changes["name"] == world.destination.name
    # Its rows go in the background (destination_deletion), the events stay.
    from webhooks.services.destination_deletion import destination_deletion_run

    assert destination_deletion_run(destination_id=world.destination.pk).finished
    assert not Destination.objects.filter(pk=world.destination.pk).exists()
    assert not Delivery.objects.filter(destination_id=world.destination.pk).exists()
    assert WebhookEvent.objects.filter(pk=world.event.pk).exists()
    assert AuditLog.objects.get(action="destination.deleted").changes["requested_by"] == str(owner)


def test_a_destination_delete_that_fails_leaves_no_audit_entry(organization, owner, monkeypatch):
    from django.db import DatabaseError

    from webhooks.services import batched_deletion
    from webhooks.services.destination_deletion import destination_deletion_run
    from webhooks.services.destinations import destination_delete

    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook")

    def failing_check():
        raise DatabaseError("canceling statement due to lock timeout")

    destination_delete(destination=destination, actor=owner)
    monkeypatch.setattr(batched_deletion, "check_foreign_keys", failing_check)
    Subscription.objects.create(
        organization=organization, source=make_source(organization), destination=destination
    )  # a batch to fail
    with pytest.raises(DatabaseError):
        destination_deletion_run(destination_id=destination.pk)
    # Still there, so the log must not say it was deleted.
    assert Destination.objects.filter(pk=destination.pk).exists()
    assert not AuditLog.objects.filter(action="destination.deleted").exists()


def test_destination_health_pause_resume_and_bulk_retry(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    listing = client.get(reverse("dashboard:destinations", args=["acme"]))
    health = listing.context["destinations"][0].health
    assert health.dead == 1 and health.success_rate == 0.0 and health.last_failure_error == "HTTP 503"

    client.post(reverse("dashboard:destination_set_paused", args=["acme", world.destination.pk]), {"paused": "1"})
    assert Destination.objects.get(pk=world.destination.pk).paused_at is not None
    client.post(reverse("dashboard:destination_set_paused", args=["acme", world.destination.pk]), {"paused": "0"})
    assert Destination.objects.get(pk=world.destination.pk).paused_at is None
    Destination.objects.filter(pk=world.destination.pk).update(consecutive_failures=2)
    again = client.post(
        reverse("dashboard:destination_set_paused", args=["acme", world.destination.pk]), {"paused": "0"}, follow=True
    )  # a second click: it is not paused, so its failure count stays
    assert "Nothing to do: the destination is not paused." in page_text(again)
    assert Destination.objects.get(pk=world.destination.pk).consecutive_failures == 2
    assert AuditLog.objects.filter(action="destination.resumed").count() == 1

    client.post(reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk]))
    job = BulkRetry.objects.get()
    assert job.total == 1 and job.filters == {"destination": world.destination.pk}
    operations.bulk_retry_run(job.pk)
    assert Delivery.objects.get(pk=world.delivery.pk).status == Delivery.Status.PENDING
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk])))
    assert "1 of 1 sent again" in detail


def test_destination_form_sets_whether_4xx_answers_are_retried_and_audits_it(client, owner, organization):
    client.force_login(owner)
    form = page_text(client.get(reverse("dashboard:destination_create", args=["acme"])))
    assert "Retry 4xx answers" in form and "fails the delivery at once" in form
    client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {"name": "Flaky", "url": "http://127.0.0.1:9/flaky", "timeout_seconds": "5", "retry_client_errors": "on"},
    )
    destination = Destination.objects.get(name="Flaky")
    assert destination.retry_client_errors is True
    created = AuditLog.objects.get(action="destination.created", target_id=str(destination.pk))
    assert created.changes["retry_client_errors"] is True
    edit_url = reverse("dashboard:destination_edit", args=["acme", destination.pk])
    assert client.get(edit_url).context["form"]["retry_client_errors"].value() is True
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])))
    assert "retried on the usual schedule" in detail
    # Unticked on the edit form: 4xx answers are final again, and the log says who changed it.
    client.post(edit_url, {"name": "Flaky", "url": "http://127.0.0.1:9/flaky", "timeout_seconds": "5"})
    assert Destination.objects.get(pk=destination.pk).retry_client_errors is False
    updated = AuditLog.objects.get(action="destination.updated", target_id=str(destination.pk))
    assert updated.changes == {"retry_client_errors": [True, False]} and updated.actor_user == owner


def test_a_second_bulk_retry_is_refused_while_one_is_unfinished(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    url = reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk])
    detail_url = reverse("dashboard:destination_detail", args=["acme", world.destination.pk])
    first = page_text(client.post(url, follow=True))
    assert "Retrying 1 failed delivery in the background." in first
    job = BulkRetry.objects.get()
    assert (
        "Asked <time" in first and "starting shortly" in first and "Retry all failed deliveries</button>" not in first
    )
    again = page_text(client.post(url, follow=True))
    assert "Not retried: a bulk retry of this destination is already queued (asked for " in again
    BulkRetry.objects.filter(pk=job.pk).update(status=BulkRetry.Status.RUNNING, heartbeat_at=timezone.now())
    assert "is already running" in page_text(client.post(url, follow=True))
    assert BulkRetry.objects.count() == 1
    BulkRetry.objects.filter(pk=job.pk).update(status=BulkRetry.Status.QUEUED, heartbeat_at=None)
    operations.bulk_retry_run(job.pk)
    BulkRetry.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(days=2))
    job.refresh_from_db()
    finished = page_text(client.get(detail_url))
    assert f"Finished {timestamp(job.finished_at)}: 1 of 1 sent again" in finished
    assert "Retry all failed deliveries</button>" in finished
    # Done: another may be asked for (here there is nothing left to retry, and it says so).
    nothing = page_text(client.post(url, follow=True))
    assert "Nothing to retry: no delivery to this destination is out of retries." in nothing
    assert "Not retried" not in nothing and "no delivery matches" not in nothing


def test_a_bulk_retry_says_how_many_it_leaves_out_their_source_being_deleted(client, owner, organization, monkeypatch):
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)
    world = build_world(client, organization)
    doomed = make_source(organization, name="Old Stripe")
    doomed_delivery = dead_delivery(make_event(doomed), world.destination)
    source_request_deletion(source=doomed)
    client.force_login(owner)
    url = reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk])
    detail_url = reverse("dashboard:destination_detail", args=["acme", world.destination.pk])

    asked = page_text(client.post(url, follow=True))
    assert "Retrying 1 failed delivery in the background. 1 left out: their source is being deleted." in asked
    assert "1 to retry, starting shortly; 1 left out: their source or destination is being deleted" in strip_tags(asked)
    operations.bulk_retry_run(BulkRetry.objects.get().pk)
    finished = strip_tags(page_text(client.get(detail_url)))
    assert "1 of 2 sent again" in finished and "; 1 left out: their source or destination is being deleted" in finished
    assert Delivery.objects.get(pk=doomed_delivery.pk).status == Delivery.Status.DEAD
    # Only deliveries of the source being deleted are left dead: nothing to retry, and why.
    Delivery.objects.filter(pk=world.delivery.pk).update(status=Delivery.Status.SUCCEEDED)
    nothing = page_text(client.post(url, follow=True))
    assert (
        "Nothing to retry: the 1 failed delivery to this destination is left out, their source is being deleted."
        in nothing
    )


def test_a_retry_or_replay_to_a_paused_destination_says_it_waits_for_the_resume(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    event_url = reverse("dashboard:event_detail", args=["acme", world.event.pk])
    retry_url = reverse("dashboard:delivery_retry", args=["acme", world.delivery.pk])
    replay_url = reverse("dashboard:event_replay", args=["acme", world.event.pk])
    # Active: queued, and no word of a pause.
    retried = page_text(client.post(retry_url, follow=True))
    assert "Retry to endpoint queued." in retried and "paused" not in retried
    client.post(reverse("dashboard:destination_set_paused", args=["acme", world.destination.pk]), {"paused": "1"})
    retried = page_text(client.post(retry_url, follow=True))
    assert "Retry to endpoint queued. The destination is paused: it is sent when you resume it." in retried
    replayed = page_text(client.post(replay_url, {"destination": world.destination.pk}, follow=True))
    assert "Replay to endpoint queued. The destination is paused: it is sent when you resume it." in replayed
    # And nothing was sent meanwhile: both wait on the event's page for the resume.
    assert Delivery.objects.filter(event=world.event, status=Delivery.Status.PENDING).count() == 2
    assert page_text(client.get(event_url)).count("next try when the destination is resumed") == 2


def test_a_bulk_retry_of_a_paused_destination_says_queued_not_retried(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    client.post(reverse("dashboard:destination_set_paused", args=["acme", world.destination.pk]), {"paused": "1"})
    response = page_text(
        client.post(reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk]), follow=True)
    )
    assert "Queued 1 failed delivery for another try. The destination is paused: it is sent when you resume it." in (
        response
    )
    assert "Retrying" not in response and "retried deliveries wait and are sent when you resume it" in response
    operations.bulk_retry_run(BulkRetry.objects.get().pk)
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk])))
    assert "1 of 1 queued, to be sent when the destination is resumed" in detail and "1 of 1 sent again" not in detail


def test_a_bulk_retry_that_ran_before_a_pause_still_says_sent_again(client, owner, organization):
    # Only a job that ran while the destination was paused left its deliveries waiting for the resume.
    world = build_world(client, organization)
    client.force_login(owner)
    client.post(reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk]))
    operations.bulk_retry_run(BulkRetry.objects.get().pk)
    client.post(reverse("dashboard:destination_set_paused", args=["acme", world.destination.pk]), {"paused": "1"})
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk])))
    assert "Paused since" in detail
    assert "1 of 1 sent again" in detail and "queued, to be sent when the destination is resumed" not in detail


def test_a_finished_bulk_retry_whose_sends_failed_again_does_not_read_as_success(
    client, owner, organization, httpserver
):
    """Its line says "sent again" and what became of it (here: still pending, retrying on its
    schedule), never a bare "retried" beside a failure that came straight back."""
    world = build_world(client, organization, url=httpserver.url_for("/hook"))
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("still down", status=500)
    client.force_login(owner)
    client.post(reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk]))
    operations.bulk_retry_run(BulkRetry.objects.get().pk)
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1
    httpserver.check_assertions()
    failed_again = Delivery.objects.get(pk=world.delivery.pk)
    assert (failed_again.status, failed_again.attempt_count) == (Delivery.Status.PENDING, 2)  # retrying

    detail = client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk]))
    status = page_text(detail).split('id="bulk-retry-status"')[1]
    said = " ".join(strip_tags(status).split())
    assert "1 of 1 sent again, one more attempt each: 0 delivered, 0 failed again, 1 still pending" in said
    assert "retried" not in status.split("Recent bulk retries")[1]
    assert "1 event retrying after a failed attempt" in page_text(detail)


def test_a_bulk_retry_counts_what_failed_after_it_was_asked_for_in_its_total(client, owner, organization):
    world = build_world(client, organization)
    retrying = Delivery.objects.create(
        organization=organization,
        event=world.event,
        destination=world.destination,
        is_replay=True,
        status=Delivery.Status.PENDING,
        attempt_count=1,
    )
    client.force_login(owner)
    client.post(reverse("dashboard:destination_bulk_retry", args=["acme", world.destination.pk]))
    job = BulkRetry.objects.get()
    assert job.total == 1
    # It runs out of retries before the job starts: it existed when the job was asked for, so it is retried too.
    Delivery.objects.filter(pk=retrying.pk).update(status=Delivery.Status.DEAD, completed_at=timezone.now())
    job = operations.bulk_retry_run(job.pk)
    assert (job.retried, job.total) == (2, 2)
    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", world.destination.pk])))
    assert "2 of 2 sent again" in detail


def test_destination_refuses_a_private_address_when_not_allowed(client, owner, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {"name": "Sneaky", "url": "http://127.0.0.1/internal", "timeout_seconds": "5"},
    )
    assert response.status_code == 200 and "errorlist" in page_text(response)
    assert not Destination.objects.filter(name="Sneaky").exists()


# --- Audit log -------------------------------------------------------------------------------


def test_audit_log_filters_by_actor_action_and_date(client, owner, organization):
    build_world(client, organization)
    organization_create(name="Elsewhere", slug="elsewhere", owner_email="x@elsewhere.example")
    client.force_login(owner)
    url = reverse("dashboard:audit", args=["acme"])
    everything = client.get(url).context["entries"]
    assert {entry.action for entry in everything} >= {"organization.created", "source.created", "destination.created"}
    assert all(entry.organization_id == organization.pk for entry in everything)
    only_sources = client.get(url, {"action": "source.created"}).context["entries"]
    assert [entry.action for entry in only_sources] == ["source.created"]
    assert client.get(url, {"actor": "nobody@example"}).context["entries"] == []
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert client.get(url, {"since": tomorrow}).context["entries"] == []
    assert re.search(r"source\.created", page_text(client.get(url)))


def action_options(response) -> dict[str, str]:
    """The Action filter's options: code → the words shown."""
    select = re.search(r'<select name="action"[^>]*>(.*?)</select>', page_text(response), re.S).group(1)
    return {
        code: html.unescape(words)
        for code, words in re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select)
    }


def test_the_audit_filter_offers_actions_in_the_words_the_rows_use(client, owner, organization):
    """The Action list said "api_key.created" while the rows said "created the API key"."""
    from organizations.api_keys import api_key_create
    from organizations.services import audit_record

    world = build_world(client, organization)
    api_key_create(organization=organization, name="deploy-script", actor=owner)
    audit_record(organization=organization, action="admin.webhooks.source.changed")
    audit_record(organization=organization, action="admin.webhooks.destination.changed")
    client.force_login(owner)
    url = reverse("dashboard:audit", args=["acme"])
    response = client.get(url)
    options = action_options(response)
    assert options["api_key.created"] == "created the API key"
    assert options["source.created"] == "created the source"
    assert options[""] == "Any action"
    # The platform operator's changes share their words: the code tells them apart.
    assert (
        options["admin.webhooks.source.changed"] == "changed by the platform operator (admin.webhooks.source.changed)"
    )
    assert not any(words == code for code, words in options.items() if code)
    # The same words as the rows (one mapping), in the order of the words.
    text = html.unescape(page_text(response))
    for code in ("api_key.created", "source.created", "destination.created", "organization.created"):
        assert f'<td data-label="Action">{options[code]} <code class="muted small">{code}</code></td>' in text
    shown = [words for code, words in options.items() if code]
    assert shown == sorted(shown, key=str.casefold)
    # Choosing the words still filters by the code.
    chosen = client.get(url, {"action": "destination.created"}).context["entries"]
    assert [entry.target_label for entry in chosen] == [world.destination.name]


def test_a_source_and_a_destination_secret_rotation_read_apart_in_the_audit_log():
    from organizations.audit_actions import audit_action_label

    assert audit_action_label("source.secret_rotated") != audit_action_label("destination.secret_rotated")


def test_an_audit_range_from_after_to_says_the_dates_are_reversed_on_the_field(client, owner, organization):
    """From after To listed nothing under "Nothing matches these filters", as if nothing had changed."""
    build_world(client, organization)
    client.force_login(owner)
    url = reverse("dashboard:audit", args=["acme"])
    today = timezone.now().date()
    response = client.get(url, {"since": today.isoformat(), "until": (today - timedelta(days=3)).isoformat()})
    text = page_text(response)
    assert "Nothing matches" not in text
    # The end is left out: the changes from the start on are listed.
    assert {entry.action for entry in response.context["entries"]} >= {"source.created", "destination.created"}
    to_box = re.search(r'<input[^>]*name="until"[^>]*>', text).group(0)
    assert 'aria-invalid="true"' in to_box and 'aria-describedby="id_until_error"' in to_box
    error = re.search(r'<ul class="errorlist" id="id_until_error">(.*?)</ul>', text, re.S).group(1)
    assert "The dates are reversed: To is before From." in html.unescape(error)
    # A single day (From = To) is a range, not a reversed one.
    single_day = client.get(url, {"since": today.isoformat(), "until": today.isoformat()})
    assert "errorlist" not in page_text(single_day) and single_day.context["entries"]


def test_audit_log_says_what_happened_in_words_and_from_where(client, owner, member, organization):
    from organizations import team

    team.member_remove(
        organization=organization, actor=member, membership=member.memberships.get(), ip_address="203.0.113.9"
    )
    client.force_login(owner)
    text = html.unescape(page_text(client.get(reverse("dashboard:audit", args=["acme"]))))
    assert "left the team" in text and "member.removed" in text  # the code stays, for the filter
    assert "created the organization" in text and "203.0.113.9" in text


def test_audit_log_says_in_words_that_an_api_key_was_created_and_revoked(client, owner, organization):
    from organizations.api_keys import api_key_create, api_key_revoke

    api_key, _ = api_key_create(organization=organization, name="deploy-script", actor=owner)
    api_key_revoke(api_key=api_key, actor=owner)
    client.force_login(owner)
    text = html.unescape(page_text(client.get(reverse("dashboard:audit", args=["acme"]))))
    assert '<td data-label="Action">created the API key <code class="muted small">api_key.created</code></td>' in text
    assert '<td data-label="Action">revoked the API key <code class="muted small">api_key.revoked</code></td>' in text
    assert "api key: " not in text  # the fallback for an action without words


def test_audit_log_names_the_destination_of_a_retry_a_replay_and_a_bulk_retry(client, owner, organization):
    # A tenant knows a destination by its name, not its id, and "bulk retry 1 (0/1)" said neither
    # which one nor anything true once the job had run.
    world = build_world(client, organization)
    Destination.objects.filter(pk=world.destination.pk).update(name="Billing app")
    client.force_login(owner)
    acme = ["acme", world.destination.pk]
    assert client.post(reverse("dashboard:destination_bulk_retry", args=acme)).status_code == 302
    assert client.post(reverse("dashboard:delivery_retry", args=["acme", world.delivery.pk])).status_code == 302
    replay = reverse("dashboard:event_replay", args=["acme", world.event.pk])
    assert client.post(replay, {"destination": world.destination.pk}).status_code == 302
    text = html.unescape(page_text(client.get(reverse("dashboard:audit", args=["acme"]))))
    assert "retried the failed deliveries of <code" in text
    assert '<td data-label="Target">Billing app</td>' in text
    assert (
        text.count('<td data-label="Target">invoice.paid evt_world_1 → Billing app</td>') == 2
    )  # the retry and the replay
    assert "bulk retry" not in text and f"to destination {world.destination.pk}" not in text


def test_only_admins_and_owners_see_where_colleagues_acted_from(client, owner, member, organization):
    # An address and a browser say where a person is; the readers of every organization that person
    # belongs to need not know it.
    from organizations import team

    team.invitation_create(
        organization=organization, actor=owner, email="new@acme.example", role="member", ip_address="203.0.113.7"
    )
    audit = reverse("dashboard:audit", args=["acme"])
    client.force_login(member)
    as_member = html.unescape(page_text(client.get(audit)))
    assert "invited" in as_member and "203.0.113.7" not in as_member and 'scope="col">From<' not in as_member
    client.force_login(owner)
    assert "203.0.113.7" in html.unescape(page_text(client.get(audit)))


def test_audit_log_says_in_words_that_a_source_stopped_and_started_receiving(client, owner, organization):
    world = build_world(client, organization)
    client.force_login(owner)
    url = reverse("dashboard:source_set_active", args=["acme", world.source.pk])
    assert client.post(url, {"active": "0"}).status_code == 302
    assert client.post(url, {"active": "1"}).status_code == 302
    text = html.unescape(page_text(client.get(reverse("dashboard:audit", args=["acme"]))))
    assert '<td data-label="Action">stopped receiving on <code class="muted small">source.paused</code></td>' in text
    assert (
        '<td data-label="Action">started receiving again on <code class="muted small">source.resumed</code></td>'
        in text
    )
    assert "source: paused" not in text  # the fallback for an action without words


def test_saving_a_destination_filter_that_takes_no_received_type_warns(client, owner, organization):
    """Shopify's topics are "orders/create": "orders" takes them, as a name takes the types under it
    after a slash too; "invoice.payed" is a typo, saved with a warning."""
    shop = make_source(organization, provider="shopify", secret="test_secret_key", name="Shop")
    # The published vector of Shopify's library (providers.md §3).
    response = client.generic(
        "POST",
        f"/in/{shop.ingest_token}/",
        '{"foo": "bar"}',
        content_type="application/json",
        HTTP_X_SHOPIFY_HMAC_SHA256="B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=",
        HTTP_X_SHOPIFY_TOPIC="orders/create",
        HTTP_X_SHOPIFY_EVENT_ID="98880550-7158-44d4-b7cd-2c97c8a091b5",
    )
    assert response.status_code == 200, response.content
    client.force_login(owner)
    form = {"name": "Orders", "url": "http://127.0.0.1:19150/hook", "sources": [shop.pk], "timeout_seconds": "15"}

    created = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {**form, "event_types": "orders, invoice.payed, orders/*"},
        follow=True,
    )
    warnings = [str(message) for message in created.context["messages"] if message.level_tag == "warning"]
    assert warnings == [
        "The event-type pattern “invoice.payed” takes none of the types received so far: compare it with the "
        "event types on the Events page, as the provider spells them.",
    ]
    destination = Destination.objects.get(name="Orders")
    assert destination.subscriptions.get().event_types == ["orders", "invoice.payed", "orders/*"]

    edited = client.post(
        reverse("dashboard:destination_edit", args=["acme", destination.pk]),
        {**form, "event_types": "orders/*"},
        follow=True,
    )
    assert [str(message) for message in edited.context["messages"]] == ["Destination saved."]


def test_a_destination_filter_saved_before_anything_arrived_gets_no_warning(client, owner, organization):
    source = make_source(organization, name="Stripe live")
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {
            "name": "Invoices",
            "url": "http://127.0.0.1:19150/hook",
            "sources": [source.pk],
            "timeout_seconds": "15",
            "event_types": "invoice.*",
        },
        follow=True,
    )
    assert Destination.objects.filter(name="Invoices").exists()
    assert [message for message in response.context["messages"] if message.level_tag == "warning"] == []


def test_events_list_query_count_does_not_grow_with_rows(client, owner, organization):
    """No query per row: a page of many events costs the same number of queries as a page of one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    world = build_world(client, organization)
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    client.get(url)  # warms the cached event-type suggestions
    with CaptureQueriesContext(connection) as one_event:
        client.get(url)
    for n in range(20):
        event = WebhookEvent.objects.get(pk=ingest_stripe(client, world.source, f"evt_many_{n}"))
        dead_delivery(event, world.destination)
    with CaptureQueriesContext(connection) as many_events:
        response = client.get(url)
    assert len(response.context["events"]) == 21
    assert len(many_events.captured_queries) == len(one_event.captured_queries)


def test_odd_input_never_fails_a_page(client, owner, organization):
    world = build_world(client, organization)
    WebhookEvent.objects.filter(pk=world.event.pk).update(body=b"[" * 5000)
    client.force_login(owner)
    assert client.get(f"/o/acme/events/{world.event.pk}/").status_code == 200
    for params in ({"since": "1969-12-31T00:00"}, {"until": "1969-12-31T00:00"}, {"since": "9999-12-31T23:59"}):
        assert client.get("/o/acme/events/", params).status_code == 200, params
    assert client.get("/o/acme/audit/", {"before": "²"}).status_code == 200


def test_secret_pages_are_never_cached_and_the_cached_overview_holds_no_secret(client, owner, organization):
    from django.core.cache import cache

    world = build_world(client, organization)
    client.force_login(owner)
    old_secret = Destination.objects.get(pk=world.destination.pk).secret
    response = client.post(
        f"/o/acme/destinations/{world.destination.pk}/secret/", {"overlap_seconds": "3600"}, follow=True
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = Destination.objects.get(pk=world.destination.pk).secret
    assert secret in response.content.decode()

    Destination.objects.filter(pk=world.destination.pk).update(paused_at=timezone.now())
    assert client.get("/o/acme/").status_code == 200
    cached = cache.get(f"dashboard:overview:{organization.pk}")
    assert cached is not None and cached.paused_destinations
    assert secret.encode() not in pickle.dumps(cached)
    assert old_secret.encode() not in pickle.dumps(cached)  # the previous one, still signing, neither


def test_an_overview_without_events_is_not_cached_so_the_first_event_shows_at_once(client, owner, organization):
    from django.core.cache import cache

    client.force_login(owner)
    assert client.get("/o/acme/").status_code == 200
    assert cache.get(f"dashboard:overview:{organization.pk}") is None
    build_world(client, organization)  # the first events arrive
    client.get("/o/acme/")
    assert cache.get(f"dashboard:overview:{organization.pk}").events_24h > 0


def test_a_payload_the_provider_cannot_sign_is_a_form_error(client, owner, organization):
    source = make_source(organization, provider="mailgun", secret="key-mailgun-signing-key", name="Mail")
    client.force_login(owner)
    response = client.post(f"/o/acme/sources/{source.pk}/test/", {"payload": "[]"})
    assert response.status_code == 200
    assert "cannot be signed" in page_text(response)


def test_a_destination_failing_but_not_yet_out_of_retries_shows_as_failing(client, owner, organization, httpserver):
    # A receiver answering 500: its delivery waits for a retry, hours before it is dead.
    httpserver.expect_request("/hook").respond_with_data("down", status=500)
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    healthy, _ = make_destination(organization, "http://127.0.0.1:9/other")
    event_id = ingest_stripe(client, source, "evt_retrying")
    processing.process_event_batch()
    delivery = deliver_now(Delivery.objects.get().pk)
    assert (delivery.status, delivery.attempt_count) == (Delivery.Status.PENDING, 1)

    client.force_login(owner)
    overview = client.get(reverse("dashboard:overview", args=["acme"]))
    [row] = overview.context["overview"].failing_destinations
    assert (row.destination, row.retrying, row.dead) == (destination, 1, 0)
    assert f"?status=retrying&destination={destination.pk}" in page_text(overview)

    url = reverse("dashboard:events", args=["acme"])
    assert listed_ids(client.get(url, {"status": "retrying"})) == [event_id]
    assert listed_ids(client.get(url, {"status": "retrying", "destination": destination.pk})) == [event_id]
    assert listed_ids(client.get(url, {"status": "retrying", "destination": healthy.pk})) == []
    assert listed_ids(client.get(url, {"status": "failed"})) == []  # not dead: not "failed"

    detail = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])))
    assert "1 event retrying after a failed attempt" in detail
    listing = page_text(client.get(reverse("dashboard:destinations", args=["acme"])))
    assert "1 retrying" in listing

    # The receiver is fixed: the next try succeeds and the destination is no longer listed as failing.
    httpserver.clear()
    httpserver.expect_request("/hook").respond_with_data("ok")
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert deliver_now(delivery.pk).status == Delivery.Status.SUCCEEDED
    cache.clear()  # the overview is cached for a minute
    assert client.get(reverse("dashboard:overview", args=["acme"])).context["overview"].failing_destinations == []


def test_an_option_below_its_providers_minimum_is_refused_at_its_box(client, owner, organization):
    # Not "option 'tolerance' must be 0 or more" above the form, in the provider's internal name.
    source = make_source(organization, tolerance=600)
    client.force_login(owner)
    url = reverse("dashboard:source_edit", args=["acme", source.pk])
    (box,) = re.findall(r'<input [^>]*name="option_tolerance"[^>]*>', client.get(url).content.decode())
    assert 'min="0"' in box
    response = client.post(url, {"name": source.name, "option_tolerance": "-1"})
    assert response.status_code == 200
    assert response.context["form"].errors == {"option_tolerance": ["Ensure this value is greater than or equal to 0."]}
    assert "option &#x27;tolerance&#x27;" not in response.content.decode()
    source.refresh_from_db()
    assert source.options["tolerance"] == 600


def test_pages_show_labels_json_and_an_icon_not_internal_names(client, owner, organization):
    source = make_source(organization, tolerance=600)
    client.force_login(owner)
    detail = page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    assert "<dt>Timestamp tolerance (seconds)</dt>" in detail and "<dt>tolerance</dt>" not in detail
    audit = page_text(client.get(reverse("dashboard:audit", args=["acme"])))
    # The log's details as JSON ("provider": "stripe"), not a Python dict ('provider': 'stripe').
    assert escape('"provider": "stripe"') in audit and escape("'provider': 'stripe'") not in audit
    icon = re.search(r'<link rel="icon" href="([^"]+)"', detail)
    # Served, by its own name or, after collectstatic wrote the manifest, by its hashed one.
    assert icon and client.get(icon.group(1)).status_code == 200


@pytest.mark.parametrize(
    "kind",
    sorted(
        kind for kind, provider in PROVIDERS.items() if provider.uses_secret and not provider.secret_generated_by_us
    ),
)
def test_a_source_without_its_secret_yet_offers_no_test_sender_and_never_500s(client, owner, organization, kind):
    from webhooks.services.sample_sender import SampleSenderError, build_test_request
    from webhooks.services.sources import source_create

    from .test_providers import REQUIRED_OPTIONS

    source, _ = source_create(
        organization=organization,
        provider=kind,
        name="later",
        options=REQUIRED_OPTIONS.get(kind, {}),
        allow_unset_secret=True,
    )
    client.force_login(owner)
    detail = page_text(client.get(reverse("dashboard:source_detail", args=["acme", source.pk])))
    assert "No signing secret yet" in detail
    assert reverse("dashboard:source_test", args=["acme", source.pk]) not in detail  # neither button nor link
    with pytest.raises(SampleSenderError, match="no signing secret yet"):
        build_test_request(source=source)
    from webhooks.services.source_testing import source_send_test_event

    with pytest.raises(SampleSenderError):
        source_send_test_event(source=source, actor=owner)
    assert not AuditLog.objects.filter(action="source.test_sent").exists()  # not sent, so not audited
    assert client.get(reverse("dashboard:source_test", args=["acme", source.pk])).status_code < 500


def test_members_who_may_only_read_do_not_see_signatures(client, owner, member, many_events):
    # A body and its signature are enough to send a request again (for GitHub, as a new event):
    # members read everything else, admins and owners see signatures too.
    event_url = reverse("dashboard:event_detail", args=["acme", many_events["ids"][0]])
    event = WebhookEvent.objects.get(pk=many_events["ids"][0])
    signature = event.headers["Stripe-Signature"]
    client.force_login(member)
    as_member = page_text(client.get(event_url))
    assert signature not in as_member and "shown to admins and owners" in as_member
    assert "Content-Type" in as_member
    client.force_login(owner)
    assert signature in page_text(client.get(event_url))


def test_members_who_may_only_read_see_where_a_destination_is_but_not_its_secret_path(
    client, owner, member, organization
):
    # A Slack or Discord incoming-webhook URL is its own credential: whoever reads it can post there.
    url = "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
    destination = Destination.objects.create(organization=organization, name="Slack alerts", url=url)
    pages = [
        reverse("dashboard:destinations", args=["acme"]),
        reverse("dashboard:destination_detail", args=["acme", destination.pk]),
    ]
    client.force_login(member)
    for page in pages:
        as_member = page_text(client.get(page))
        assert "XXXXXXXX" not in as_member and "T0000" not in as_member, page
        assert "https://hooks.slack.com/…" in as_member, page
    assert "the rest is shown to admins and owners" in as_member
    client.force_login(owner)
    assert url in page_text(client.get(pages[1]))


@pytest.mark.parametrize(
    "url,shown",
    [
        ("https://hooks.example.com/", "https://hooks.example.com/"),
        ("https://hooks.example.com", "https://hooks.example.com"),
        ("https://hooks.example.com:8443/in?key=abc", "https://hooks.example.com:8443/…"),
        ("https://user:pass@hooks.example.com/x", "https://hooks.example.com/…"),
        ("https://user:pass@hooks.example.com/", "https://hooks.example.com/…"),
        ("https://hooks.example.com/?token=abc", "https://hooks.example.com/…"),
    ],
)
def test_url_for_viewer_keeps_only_the_scheme_and_host_for_members(url, shown):
    from webhooks.selectors import url_for_viewer

    assert url_for_viewer(url, sees_full=False) == shown
    assert url_for_viewer(url, sees_full=True) == url


def test_a_token_masked_when_stored_is_not_promised_to_admins_on_a_members_event_page(
    client, organization, owner, member
):
    # A shared token's Authorization is stored as [masked]: the member's page said
    # "(a signature: shown to admins and owners)", where the admin's page shows [masked] too.
    from webhooks.selectors import SIGNATURE_HIDDEN
    from webhooks.services.ingest import MASKED

    token = "shared-token-for-the-member-test"
    source = make_source(organization, provider="shared_token", secret=token, scheme_prefix="Bearer")
    answer = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        b'{"type": "INSERT"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert answer.status_code == 200, answer.content
    event_url = reverse("dashboard:event_detail", args=["acme", answer.json()["id"]])
    for user in (owner, member):
        client.force_login(user)
        page = client.get(event_url).content.decode()
        assert token not in page
        assert re.search(r"Authorization</[^>]+>\s*<[^>]+>\s*" + re.escape(MASKED), page), user.email
        assert html.escape(SIGNATURE_HIDDEN) not in page and SIGNATURE_HIDDEN not in page, user.email


def test_headers_for_viewer_hides_every_known_signature_header_and_a_configured_one():
    from webhooks.selectors import SIGNATURE_HIDDEN, headers_for_viewer

    names = [
        "Stripe-Signature",
        "X-Hub-Signature-256",
        "X-Shopify-Hmac-Sha256",
        "Paypal-Transmission-Sig",
        "Webhook-Signature",
        "X-Signature-Ed25519",
        "X-Custom-Auth",
    ]
    shown = dict(
        headers_for_viewer(
            {name: "value" for name in [*names, "Content-Type"]},
            sees_signatures=False,
            signature_headers=frozenset({"x-custom-auth"}),
        )
    )
    assert {name for name, value in shown.items() if value == SIGNATURE_HIDDEN} == set(names)
    assert shown["Content-Type"] == "value"


def test_add_a_destination_from_a_source_page_starts_with_that_source_ticked(client, owner, organization):
    source = make_source(organization, name="Billing")
    other = make_source(organization, name="Shop", secret="whsec_other")
    client.force_login(owner)
    detail = client.get(reverse("dashboard:source_detail", args=["acme", source.pk])).content.decode()
    link = f"{reverse('dashboard:destination_create', args=['acme'])}?source={source.pk}"
    assert f'href="{link}"' in detail
    form = client.get(link).context["form"]
    assert [str(pk) for pk in form.initial["sources"]] == [str(source.pk)] and other.pk != source.pk
    html = client.get(link).content.decode()
    assert re.search(rf'value="{source.pk}"[^>]*checked', html) and not re.search(
        rf'value="{other.pk}"[^>]*checked', html
    )


def test_members_do_not_read_a_destination_s_secret_path_in_the_audit_log_either(client, owner, member, organization):
    # Creating, changing and deleting a destination record its URL: the audit log, which members
    # read, must cut it as the destination pages do.
    from webhooks.services.destinations import destination_delete, destination_update

    first = "http://127.0.0.1:9/services/T0000/B0000/FIRSTSECRETPATH"
    second = "http://127.0.0.1:9/services/T0000/B0000/SECONDSECRETPATH"
    destination, _ = make_destination(organization, first, actor=owner)
    destination_update(
        destination=destination,
        name="endpoint",
        url=second,
        sources=[],
        event_types=[],
        timeout_seconds=destination.timeout_seconds,
        actor=owner,
    )
    destination_delete(destination=destination, actor=owner)
    from webhooks.services.destination_deletion import destination_deletion_run

    assert destination_deletion_run(destination_id=destination.pk).finished
    audit = reverse("dashboard:audit", args=["acme"])
    client.force_login(member)
    as_member = html.unescape(page_text(client.get(audit)))
    assert "destination.created" in as_member and "destination.deleted" in as_member
    assert "SECRETPATH" not in as_member and "T0000" not in as_member
    assert "http://127.0.0.1:9/…" in as_member
    client.force_login(owner)
    as_owner = html.unescape(page_text(client.get(audit)))
    assert first in as_owner and second in as_owner


def test_audit_changes_for_viewer_cuts_urls_at_any_depth_and_leaves_the_rest():
    from webhooks.selectors import audit_changes_for_viewer

    changes = {
        "fields": {"url": ["https://a.example/x?k=1", "https://b.example/y"], "name": ["a", "b"]},
        "summary": [{"changed": {"fields": ["URL"]}}],
        "url": "https://c.example/z",
        "timeout_seconds": 15,
    }
    assert audit_changes_for_viewer(changes, sees_full_urls=False) == {
        "fields": {"url": ["https://a.example/…", "https://b.example/…"], "name": ["a", "b"]},
        "summary": [{"changed": {"fields": ["URL"]}}],
        "url": "https://c.example/…",
        "timeout_seconds": 15,
    }
    assert audit_changes_for_viewer(changes, sees_full_urls=True) is changes


def test_a_destination_s_failed_count_and_its_link_mean_the_same_7_days(client, owner, organization):
    """Both by the time the event was received: the count, and the list its link opens."""
    from .api_helpers import make_delivery, make_event

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    now = timezone.now()
    recent = make_event(source, provider_event_id="evt_recent", received_at=now - timedelta(days=1))
    make_delivery(recent, destination)
    # Received 8 days ago; its (replayed) delivery failed just now.
    old = make_event(source, provider_event_id="evt_old", received_at=now - timedelta(days=8))
    make_delivery(old, destination)
    client.force_login(owner)

    for page_name in ("dashboard:destination_detail", "dashboard:destinations"):
        args = ["acme", destination.pk] if page_name == "dashboard:destination_detail" else ["acme"]
        page = page_text(client.get(reverse(page_name, args=args)))
        link = re.search(r'href="([^"]*status=failed[^"]*)">(\d+) failed', page)
        assert link, page_name
        assert link.group(2) == "1"
        listed = client.get(html.unescape(link.group(1)))
        assert [event.pk for event in listed.context["events"]] == [recent.pk], page_name


def failed_and_retrying_links(page: str) -> list[tuple[str, int, str]]:
    """Every link of the page to the events list's failed or retrying events: (status, the number it
    shows, its address)."""
    return [
        (status, int(count), html.unescape(href))
        for href, status, count in re.findall(r'href="([^"]*status=(failed|retrying)[^"]*)"[^>]*>(\d+)', page)
    ]


def test_an_event_whose_replay_failed_too_counts_once_as_the_list_shows_it(client, owner, organization):
    """Failed and retrying counts link to the events list: they count events, not deliveries."""
    from .api_helpers import make_delivery, make_event

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    now = timezone.now()
    dead_twice = make_event(source, provider_event_id="evt_dead_twice", received_at=now - timedelta(hours=2))
    retrying_twice = make_event(source, provider_event_id="evt_retrying_twice", received_at=now - timedelta(hours=1))
    for event, status in ((dead_twice, Delivery.Status.DEAD), (retrying_twice, Delivery.Status.PENDING)):
        # The first delivery, then its replay (to the same destination), which failed as well.
        replay = make_delivery(event, destination, status=status)
        Delivery.objects.filter(pk=replay.pk).update(is_replay=True)
        make_delivery(event, destination, status=status)
    client.force_login(owner)

    detail = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk]))
    listing = page_text(client.get(reverse("dashboard:destinations", args=["acme"])))
    for page in (page_text(detail), listing):
        links = failed_and_retrying_links(page)
        assert {status for status, _, _ in links} == {"failed", "retrying"}
        for status, count, href in links:
            assert count == 1, status
            expected = dead_twice if status == "failed" else retrying_twice
            assert listed_ids(client.get(href)) == [str(expected.pk)]
    # Four deliveries, two of them dead: the success rate is still over deliveries, and says so.
    health = detail.context["health"]
    assert (health.dead, health.retrying, health.success_rate) == (2, 2, 0.0)
    assert "0 of 2 finished deliveries delivered" in page_text(detail)


def test_the_waiting_retries_count_is_what_the_button_sends_however_old_the_event(
    client, owner, organization, monkeypatch
):
    """The 7-day cards leave out an event received 8 days ago; the count beside the button does not,
    as the button does not, and it is capped where one click is."""
    from .api_helpers import make_delivery, make_event

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    now = timezone.now()
    for days in (8, 1, 0):
        delivery = make_delivery(
            make_event(source, received_at=now - timedelta(days=days, minutes=5)),
            destination,
            status=Delivery.Status.PENDING,
            attempts=2,
        )
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=now + timedelta(hours=3))
    page_url = reverse("dashboard:destination_detail", args=["acme", destination.pk])
    client.force_login(owner)

    page = client.get(page_url)
    text = page_text(page)
    assert "Waiting, 7 days" in text and "2 events retrying after a failed attempt" in text
    assert "3 deliveries are retrying after a failed attempt" in text and "not only the last 7 days" in text
    # One sentence ends before the next begins (it read "All wait for a later retry; Once your endpoint…").
    assert re.search(r"All wait for a later retry\.\s+Once your endpoint works again", text)
    assert "Send 3 waiting now</button>" in text

    # One click brings forward at most the service's cap: the button says that many, and does that many.
    monkeypatch.setattr(operations, "SEND_WAITING_NOW_LIMIT", 2)
    monkeypatch.setattr("webhooks.views.dashboard.destinations.SEND_WAITING_NOW_LIMIT", 2)
    text = page_text(client.get(page_url))
    assert "At least 2 deliveries are retrying" in text and "Send 2 waiting now</button>" in text
    done = page_text(
        client.post(reverse("dashboard:destination_send_waiting_now", args=["acme", destination.pk]), follow=True)
    )
    assert "Sending 2 waiting deliveries now." in done
    assert "1 of them waits for a later retry" in done and "Send 1 waiting now</button>" in done
    assert re.search(
        r"waits for a later retry; the others are due and are sent as soon as a worker takes them\.\s+Once", done
    )


def test_the_retrying_section_and_the_health_card_count_a_due_retry_alike(client, owner, organization, httpserver):
    """A first attempt that failed, then its retry due but not yet taken by a worker: the health
    card and the section beside it both call it retrying at each step, never "none" on one side."""
    from .api_helpers import make_event

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("down", status=500)
    delivery = Delivery.objects.create(
        organization=organization, event=make_event(source), destination=destination, next_attempt_at=timezone.now()
    )
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1
    httpserver.check_assertions()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count) == (Delivery.Status.PENDING, 1)
    page_url = reverse("dashboard:destination_detail", args=["acme", destination.pk])
    client.force_login(owner)

    # Just after the first failure, the retry scheduled for later.
    text = page_text(client.get(page_url))
    assert "1 event retrying after a failed attempt" in text and "none failing" not in text
    assert "1 delivery is retrying after a failed attempt" in text and "It waits for a later retry" in text
    assert "No delivery is retrying" not in text

    # Its time has come, and no worker has taken it yet.
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    text = page_text(client.get(page_url))
    assert "1 event retrying after a failed attempt" in text
    assert (
        "1 delivery is retrying after a failed attempt" in text and "Their retry is due: it is sent as soon as" in text
    )
    assert "No delivery is retrying" not in text and "waiting now</button>" not in text


def test_the_overview_s_failing_counts_and_the_rows_their_links_open_agree(client, owner, organization):
    """The failing destinations table counts 7 days; its links open the events list over the same
    7 days, which says so, and list as many events as the table counts."""
    from .api_helpers import make_delivery, make_event

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    now = timezone.now()
    for status in (Delivery.Status.DEAD, Delivery.Status.PENDING):
        # Received 10 days ago, failed then: outside the 7 days.
        make_delivery(make_event(source, received_at=now - timedelta(days=10)), destination, status=status)
        # Received 8 days ago and replayed just now: the replay failed, the event is not of the 7 days.
        replay = make_delivery(make_event(source, received_at=now - timedelta(days=8)), destination, status=status)
        Delivery.objects.filter(pk=replay.pk).update(is_replay=True)
        # Received yesterday: failed, then its replay failed too (one event, one row of the list).
        twice = make_event(source, received_at=now - timedelta(days=1))
        replay = make_delivery(twice, destination, status=status)
        Delivery.objects.filter(pk=replay.pk).update(is_replay=True)
        make_delivery(twice, destination, status=status)
        make_delivery(make_event(source, received_at=now - timedelta(hours=1)), destination, status=status)
    client.force_login(owner)

    overview = client.get(reverse("dashboard:overview", args=["acme"]))
    [row] = overview.context["overview"].failing_destinations
    assert (row.dead, row.retrying) == (2, 2)
    links = failed_and_retrying_links(page_text(overview))
    # The success card's events retrying over 24 hours link to the list too, with as many rows.
    [(card_count, card_href)] = [(count, href) for status, count, href in links if "destination=" not in href]
    assert card_count == overview.context["overview"].retrying_24h
    assert len(client.get(card_href).context["events"]) == card_count
    links = [link for link in links if "destination=" in link[2]]
    assert sorted((status, count) for status, count, _ in links) == [("failed", 2), ("retrying", 2)]
    since = overview.context["overview"].failing_since
    for status, count, href in links:
        listed = client.get(href)
        assert len(listed.context["events"]) == count, status
        assert f"Events received from {timestamp(since, 'absolute')} to now." in page_text(listed)


# --- Found walking the dashboard as a new tenant -------------------------------------


def test_an_active_api_key_says_it_is_active_beside_its_revoke_button(client, owner, organization):
    # Its Status column held the Revoke button alone: a status only for revoked keys.
    from organizations.api_keys import api_key_create, api_key_revoke

    api_key_create(organization=organization, name="deploy-script", actor=owner)
    revoked, _ = api_key_create(organization=organization, name="old-script", actor=owner)
    api_key_revoke(api_key=revoked, actor=owner)
    client.force_login(owner)

    text = page_text(client.get(reverse("dashboard:api_keys", args=["acme"])))

    rows = dict(re.findall(r'<tr data-api-key="[^"]+">\s*<td>([^<]+)</td>(.*?)</tr>', text, re.S))
    assert '<span class="badge badge-ok">Active</span>' in rows["deploy-script"]
    assert "Active" not in rows["old-script"] and "Revoked" in rows["old-script"]


@pytest.mark.parametrize("timeout,shown", [(15, "15 s"), (2.5, "2.5 s"), (2.25, "2.25 s")])
def test_a_destination_s_timeout_is_shown_as_typed(client, owner, organization, timeout, shown):
    # A whole number of seconds was shown as "15.0 s".
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", timeout_seconds=timeout)
    client.force_login(owner)

    text = page_text(client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk])))

    assert f"<dt>Timeout</dt><dd>{shown}</dd>" in text
