"""Rejected requests come in floods: the events lists (dashboard and API) show accepted events
unless rejected ones are asked for, say how many they leave out, and a body search's window is
counted in the kind of request it searches."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey
from webhooks.models import WebhookEvent
from webhooks.selectors import EventFilters, rejected_count_beside_list

from .api_helpers import api_get, make_event, make_key
from .factories import make_source

pytestmark = pytest.mark.django_db

CUSTOMER = "cus_FLOOD42"


@pytest.fixture
def flood(organization):
    """An accepted event, then 6 rejected requests after it (a provider with the wrong secret)."""
    source = make_source(organization)
    now = timezone.now()
    accepted = make_event(source, body=f'{{"customer": "{CUSTOMER}"}}'.encode(), received_at=now - timedelta(hours=3))
    rejected = [
        make_event(
            source,
            body=f'{{"customer": "{CUSTOMER}"}}'.encode(),
            event_type="",
            status=WebhookEvent.Status.REJECTED,
            received_at=now - timedelta(minutes=minutes),
        )
        for minutes in (90, 60, 50, 40, 30, 20)
    ]
    return source, accepted, rejected


def listed(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [str(event.pk) for event in response.context["events"]]


def ids(events) -> list[str]:
    return [str(event.pk) for event in events]


def test_the_events_list_shows_accepted_events_and_says_how_many_rejected_it_leaves_out(client, member, flood):
    source, accepted, rejected = flood
    client.force_login(member)
    url = reverse("dashboard:events", args=["acme"])

    response = client.get(url)
    assert listed(response) == [str(accepted.pk)]
    text = response.content.decode()
    assert "6 rejected requests are not listed here" in text
    assert 'href="?status=rejected">Show the rejected requests' in text
    assert "Accepted (any status)" in text  # what the default is called

    assert listed(client.get(url, {"status": "rejected"})) == ids(reversed(rejected))
    assert listed(client.get(url, {"status": "all"})) == [*ids(reversed(rejected)), str(accepted.pk)]
    for status in ("rejected", "all"):
        assert "not listed here" not in client.get(url, {"status": status}).content.decode()

    # In the period and of the source chosen, and the link keeps them.
    response = client.get(url, {"range": "1h", "source": source.pk})
    assert listed(response) == []
    text = response.content.decode()
    assert "4 rejected requests in this period of this source are not listed here" in text
    assert f"range=1h&amp;source={source.pk}&amp;status=rejected" in text


def test_the_live_rows_leave_rejected_requests_out_too(client, member, organization):
    source = make_source(organization)
    accepted = make_event(source)
    make_event(source, event_type="", status=WebhookEvent.Status.REJECTED)
    client.force_login(member)
    response = client.get(reverse("dashboard:events_live", args=["acme"]))
    assert ids(response.context["events"]) == [str(accepted.pk)]
    response = client.get(reverse("dashboard:events_live", args=["acme"]), {"status": "rejected"})
    assert [event.status for event in response.context["events"]] == ["rejected"]


def test_an_id_search_finds_rejected_requests_claiming_it_whatever_the_default(client, member, organization):
    source = make_source(organization)
    claimed = make_event(source, event_type="", status=WebhookEvent.Status.REJECTED)
    WebhookEvent.objects.filter(pk=claimed.pk).update(claimed_event_id="evt_lost")
    client.force_login(member)
    assert listed(client.get(reverse("dashboard:events", args=["acme"]), {"q": "evt_lost"})) == [str(claimed.pk)]
    _, key = make_key(source.organization, access=ApiKey.Access.READ_ONLY)
    for params in ({"search": "evt_lost"}, {"provider_event_id": "evt_lost"}):
        results = api_get(client, key, "/api/v1/events", **params).json()["results"]
        assert [item["id"] for item in results] == [str(claimed.pk)]


def test_a_flood_of_rejected_requests_does_not_fill_a_body_search_window(client, member, organization, settings, flood):
    settings.BODY_SEARCH_WINDOW = 3  # the 6 rejected requests would fill two windows
    _, accepted, rejected = flood
    client.force_login(member)
    url = reverse("dashboard:events", args=["acme"])
    assert listed(client.get(url, {"body": CUSTOMER})) == [str(accepted.pk)]
    # Rejected ones are searched when asked for, in windows of rejected requests.
    assert listed(client.get(url, {"body": CUSTOMER, "status": "rejected"})) == ids(reversed(rejected))[:3]

    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    results = api_get(client, key, "/api/v1/events", body_contains=CUSTOMER).json()["results"]
    assert [item["id"] for item in results] == [str(accepted.pk)]


def test_the_api_lists_accepted_events_unless_asked(client, organization, flood):
    _, accepted, rejected = flood
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)

    def listed_by_api(**params):
        response = api_get(client, key, "/api/v1/events", **params)
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    assert listed_by_api() == [str(accepted.pk)]
    assert listed_by_api(status="rejected") == ids(reversed(rejected))
    assert listed_by_api(status="all") == [*ids(reversed(rejected)), str(accepted.pk)]
    assert api_get(client, key, "/api/v1/events", status="every").status_code == 400


def test_the_source_page_lists_its_accepted_events_apart_from_its_rejected_ones(client, member, flood):
    source, accepted, rejected = flood
    client.force_login(member)
    response = client.get(reverse("dashboard:source_detail", args=["acme", source.pk]))
    assert ids(response.context["recent_events"]) == [str(accepted.pk)]
    assert ids(response.context["rejected"]) == ids(reversed(rejected))[:5]


def test_the_count_beside_the_list_is_bounded(organization, flood, monkeypatch):
    monkeypatch.setattr("webhooks.selectors.REJECTED_COUNT_LIMIT", 4)
    assert rejected_count_beside_list(organization=organization, filters=EventFilters()) == 5  # "more than 4"
    # Nothing is left out that the list would show: a status, an id search, a type, a destination.
    for filters in (
        EventFilters(status="processed"),
        EventFilters(status="rejected"),
        EventFilters(search="evt_1"),
        EventFilters(event_type="invoice.*"),
        EventFilters(destination_id=1),
    ):
        assert rejected_count_beside_list(organization=organization, filters=filters) is None
