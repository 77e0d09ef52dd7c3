"""Finding events by what their body holds: the dashboard's "Body contains" and the API's
``body_contains``, a bounded window of events per request (selectors.body_search_page)."""

import html
import json
import urllib.parse
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey
from webhooks.models import WebhookEvent
from webhooks.selectors import EventFilters, event_page, uuid7_time

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

CUSTOMER = "cus_ABC123"


def listed_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [str(event.pk) for event in response.context["events"]]


def page_text(response) -> str:
    return " ".join(response.content.decode().split())


@pytest.fixture
def bodies(organization):
    """Events whose bodies hold CUSTOMER in several shapes, next to some that do not."""
    source = make_source(organization, name="Stripe live")
    now = timezone.now()

    def event(body: bytes, minutes_ago: int, **extra):
        return make_event(source, body=body, received_at=now - timedelta(minutes=minutes_ago), **extra)

    # Larger than PostgreSQL's TOAST threshold, and compressible: TOAST stores it compressed.
    filler = json.dumps([{"line": n, "description": "seat licence, monthly"} for n in range(2000)])
    return {
        "source": source,
        "json": event(json.dumps({"type": "invoice.paid", "customer": CUSTOMER}).encode(), 1),
        "form": event(f"AccountSid=AC1&Body=order+1234&Customer={CUSTOMER}".encode(), 2, event_type="sms.received"),
        "binary": event(b"\x00\xff\xfe" + CUSTOMER.encode() + b"\x80\x81", 3, event_type="blob"),
        "toasted": event(
            (filler[: len(filler) // 2] + CUSTOMER + filler[len(filler) // 2 :]).encode(), 4, event_type="big"
        ),
        "other_customer": event(json.dumps({"customer": "cus_XYZ999"}).encode(), 5),
        "other_case": event(json.dumps({"customer": CUSTOMER.lower()}).encode(), 6),
    }


def test_finds_the_text_in_json_form_encoded_binary_and_toasted_bodies(client, owner, bodies):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT octet_length(body), pg_column_size(body) FROM webhooks_webhookevent WHERE id = %s",
            [bodies["toasted"].pk],
        )
        size, stored = cursor.fetchone()
    assert size > 8000 and stored < size  # compressed by TOAST: the search decompresses it
    client.force_login(owner)
    response = client.get(reverse("dashboard:events", args=["acme"]), {"body": CUSTOMER})
    # Newest first; case-sensitive, so the lower-case one is not found.
    assert listed_ids(response) == [str(bodies[name].pk) for name in ("json", "form", "binary", "toasted")]
    assert "Searched events received back to" in page_text(response)
    assert "4 found" in page_text(response)
    # The bytes as sent: a form-encoded body is not decoded first.
    assert listed_ids(client.get(reverse("dashboard:events", args=["acme"]), {"body": "order+1234"})) == [
        str(bodies["form"].pk)
    ]


def test_a_search_inside_a_transaction_puts_the_statement_timeout_back(organization, bodies, settings):
    settings.BODY_SEARCH_TIMEOUT_SECONDS = 2.5
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        [before] = cursor.fetchone()
        page = event_page(organization=organization, filters=EventFilters(body_contains="cus_XYZ999"))
        cursor.execute("SHOW statement_timeout")
        [after] = cursor.fetchone()
    assert [event.pk for event in page.events] == [bodies["other_customer"].pk]
    assert after == before  # the test's transaction goes on without the search's 2.5 s limit


def test_never_finds_another_organization_s_event(client, owner, member, organization, other_organization, bodies):
    theirs = make_event(make_source(other_organization), body=json.dumps({"customer": CUSTOMER}).encode())
    mine = [str(bodies[name].pk) for name in ("json", "form", "binary", "toasted")]
    client.force_login(member)  # members read bodies: they may search them
    found = listed_ids(client.get(reverse("dashboard:events", args=["acme"]), {"body": CUSTOMER}))
    assert found == mine and str(theirs.pk) not in found
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    results = api_get(client, key, "/api/v1/events", body_contains=CUSTOMER).json()["results"]
    assert [item["id"] for item in results] == mine
    _, their_key = make_key(other_organization, access=ApiKey.Access.READ_ONLY)
    results = api_get(client, their_key, "/api/v1/events", body_contains=CUSTOMER).json()["results"]
    assert [item["id"] for item in results] == [str(theirs.pk)]


def test_combines_with_status_source_type_destination_and_time(client, owner, organization, bodies):
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    other_source = make_source(organization, name="Second", secret="whsec_second")
    elsewhere = make_event(other_source, body=json.dumps({"customer": CUSTOMER}).encode(), event_type="charge.failed")
    rejected = make_event(
        other_source, body=CUSTOMER.encode(), status=WebhookEvent.Status.REJECTED, event_type="charge.failed"
    )
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[other_source])
    make_delivery(elsewhere, destination)  # dead

    def found(**params):
        return listed_ids(client.get(url, {"body": CUSTOMER, **params}))

    assert found(source=other_source.pk) == [str(elsewhere.pk)]  # accepted events unless asked
    assert found(source=other_source.pk, status="all") == [str(rejected.pk), str(elsewhere.pk)]
    assert found(status="rejected") == [str(rejected.pk)]
    assert found(status="failed") == [str(elsewhere.pk)]
    assert found(destination=destination.pk) == [str(elsewhere.pk)]
    assert found(event_type="charge.*", status="processed") == [str(elsewhere.pk)]
    assert found(event_type="sms.received") == [str(bodies["form"].pk)]
    within = (timezone.now() - timedelta(minutes=2, seconds=30)).strftime("%Y-%m-%dT%H:%M:%S")
    assert found(until=within) == [str(bodies["binary"].pk), str(bodies["toasted"].pk)]
    assert found(since=within) == [str(elsewhere.pk), str(bodies["json"].pk), str(bodies["form"].pk)]


def test_each_page_reads_one_window_and_links_to_the_next(client, owner, organization, settings):
    settings.BODY_SEARCH_WINDOW = 3
    source = make_source(organization)
    now = timezone.now()
    events = [
        make_event(source, body=f'{{"n": {n}}}'.encode(), received_at=now - timedelta(minutes=10 - n)) for n in range(7)
    ]
    match = make_event(source, body=b'{"order": 1234}', received_at=now - timedelta(minutes=20))  # the oldest
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])

    first = client.get(url, {"body": '"order"'})
    assert listed_ids(first) == []
    text = page_text(first)
    # The window: the three newest events, back to events[4] (the sentence says its second, as ids do).
    assert "Searched events received back to" in text and "0 found" in text
    assert first.context["page"].searched_back_to == uuid7_time(events[4].pk)
    query = urllib.parse.urlencode({"body": '"order"'})
    older_link = f"?{query}&amp;before={events[4].pk}"
    assert f'<a href="{older_link}">Search older events</a>' in first.content.decode()

    second = client.get(f"{url}?{query}&before={events[4].pk}")
    assert listed_ids(second) == []  # events[3], [2], [1]
    third = client.get(f"{url}?{query}&before={events[1].pk}")
    assert listed_ids(third) == [str(match.pk)]  # events[0] and the match: fewer than a window are left
    assert "1 found" in page_text(third) and "No older event is left to search" in page_text(third)
    assert "Search older events" not in third.content.decode()


def test_a_page_full_of_matches_goes_on_from_its_last_event(organization, settings):
    settings.BODY_SEARCH_WINDOW = 100
    source = make_source(organization)
    now = timezone.now()
    events = [
        make_event(source, body=f'{{"order": {n}}}'.encode(), received_at=now - timedelta(minutes=5 - n))
        for n in range(5)
    ]
    page = event_page(organization=organization, filters=EventFilters(body_contains='"order"'), limit=2)
    assert [event.pk for event in page.events] == [events[4].pk, events[3].pk]
    assert page.next_before == events[3].pk
    rest = event_page(
        organization=organization, filters=EventFilters(body_contains='"order"'), before=page.next_before, limit=5
    )
    assert [event.pk for event in rest.events] == [events[2].pk, events[1].pk, events[0].pk]
    assert rest.next_before is None


@pytest.mark.parametrize(
    "text, error",
    [
        ("ab", "give at least 3 characters"),
        ("é", "give at least 3 characters"),  # one character, two bytes
        ("x" * 201, "give at most 200 bytes in UTF-8 (this is 201)"),
        ("é" * 101, "give at most 200 bytes in UTF-8 (this is 202)"),  # 101 characters
    ],
)
def test_too_short_or_too_long_a_text_is_refused_by_the_form_and_the_api(client, owner, organization, text, error):
    source = make_source(organization)
    event = make_event(source, body=b'{"a": 1}')
    client.force_login(owner)
    response = client.get(reverse("dashboard:events", args=["acme"]), {"body": text})
    # Said, and left out (the list shows what the other filters keep), as other invalid filters are.
    assert f"Not applied: Body contains: {error}" in html_text(response)
    assert listed_ids(response) == [str(event.pk)]
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    response = api_get(client, key, "/api/v1/events", body_contains=text)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid" and error in response.json()["fields"]["body_contains"][0]


def html_text(response) -> str:
    return html.unescape(page_text(response))


def test_the_api_pages_a_body_search_by_windows_with_next_and_searched_back_to(client, organization, settings):
    settings.BODY_SEARCH_WINDOW = 2
    source = make_source(organization)
    now = timezone.now()
    old_match = make_event(source, body=b"customer=cus_ABC123", received_at=now - timedelta(minutes=30))
    plain = [make_event(source, body=b"{}", received_at=now - timedelta(minutes=20 - n)) for n in range(2)]
    new_match = make_event(source, body=b'{"customer": "cus_ABC123"}', received_at=now - timedelta(minutes=1))
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)

    first = api_get(client, key, "/api/v1/events", body_contains=CUSTOMER)
    assert first.status_code == 200, first.content
    body = first.json()
    assert [item["id"] for item in body["results"]] == [str(new_match.pk)]
    assert body["previous"] is None
    # The window: new_match and plain[1]; it searched back to plain[1]'s arrival.
    assert body["searched_back_to"] == uuid7_time(plain[1].pk).isoformat().replace("+00:00", "Z")
    assert body["next"].startswith("http://testserver/api/v1/events?") and "body_contains=cus_ABC123" in body["next"]
    assert first["Link"] == f'<{body["next"]}>; rel="next"'

    second = client.get(body["next"], HTTP_AUTHORIZATION=f"Bearer {key}").json()
    # plain[0] and old_match: a full window, so there may be older events still.
    assert [item["id"] for item in second["results"]] == [str(old_match.pk)]
    assert second["searched_back_to"] == uuid7_time(old_match.pk).isoformat().replace("+00:00", "Z")
    third = client.get(second["next"], HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert third == {"next": None, "previous": None, "searched_back_to": None, "results": []}
    assert "body" not in body["results"][0] and body["results"][0]["deliveries"] == []


def test_the_api_refuses_a_backward_cursor_for_a_body_search(client, organization):
    source = make_source(organization)
    for _ in range(3):
        make_event(source)
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    second = client.get(
        api_get(client, key, "/api/v1/events", limit=1).json()["next"], HTTP_AUTHORIZATION=f"Bearer {key}"
    ).json()
    backward = urllib.parse.parse_qs(urllib.parse.urlsplit(second["previous"]).query)["cursor"][0]
    response = api_get(client, key, "/api/v1/events", body_contains="evt_1", cursor=backward)
    assert response.status_code == 400
    assert response.json()["fields"] == {"cursor": ["a body search only goes back in time: follow next"]}


@contextmanager
def events_table_locked():
    """Another session holds the events table in ACCESS EXCLUSIVE mode: any read of it waits, so a
    search reaches its statement timeout however fast the machine is."""
    settings_dict = connection.settings_dict
    with (
        psycopg.connect(
            dbname=settings_dict["NAME"],
            user=settings_dict["USER"],
            host=settings_dict["HOST"] or "localhost",
            port=settings_dict["PORT"] or 5432,
            password=settings_dict["PASSWORD"] or None,
        ) as other,
        connection.cursor() as cursor,
    ):
        other.execute(f"LOCK TABLE {WebhookEvent._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        # A read that has no statement timeout of its own fails after this (a 500) rather than wait
        # for ever.
        cursor.execute("SET lock_timeout = '5s'")
        try:
            yield
        finally:
            cursor.execute("RESET lock_timeout")
            other.rollback()


@pytest.mark.django_db(transaction=True)
def test_a_search_stopped_by_its_timeout_is_said_on_the_page_and_in_the_api(
    client, owner, organization, settings, caplog
):
    settings.BODY_SEARCH_TIMEOUT_SECONDS = 0.2
    source = make_source(organization)
    event = make_event(source, body=CUSTOMER.encode())
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(owner)
    url = reverse("dashboard:events", args=["acme"])
    assert listed_ids(client.get(url, {"body": CUSTOMER})) == [str(event.pk)]  # also caches the type suggestions
    with events_table_locked():
        response = client.get(url, {"body": CUSTOMER})
        api_response = api_get(client, key, "/api/v1/events", body_contains=CUSTOMER)
    assert response.status_code == 200
    assert "The body search took longer than 0.2 s and was stopped" in page_text(response)
    assert listed_ids(response) == []
    assert api_response.status_code == 503
    # Logged for the operator (a window too large for the bodies?), without the text searched for.
    assert "body search stopped after 0.2 s" in caplog.text and CUSTOMER not in caplog.text
    assert api_response.json() == {
        "error": "search_timed_out",
        "detail": "the body search took longer than 0.2 s and was stopped: narrow it with received_after and"
        " received_before, source or event_type",
    }
    # The connection is usable again, with no limit left over.
    assert listed_ids(client.get(url, {"body": CUSTOMER})) == [str(event.pk)]
