"""What a new tenant tripped on in a first session with `make run` (signed webhooks, a redelivery, a
GitHub body posted again under a fresh delivery id, then "what happened to webhook X?")."""

import hashlib
import hmac
import json
import re

import pytest
from django.urls import reverse

from webhooks.models import Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import operations

from .dashboard_helpers import ingest_stripe
from .factories import make_source

pytestmark = pytest.mark.django_db

GITHUB_SECRET = "a github secret the tenant chose"


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


def post_github(client, source, body: bytes, delivery_id: str):
    signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        HTTP_X_GITHUB_EVENT="push",
        HTTP_X_GITHUB_DELIVERY=delivery_id,
        HTTP_X_HUB_SIGNATURE_256=signature,
    )


def test_a_source_s_recent_events_show_how_often_the_provider_sent_an_event(client, owner, organization):
    # The events list marks an event the provider sent again "×2"; the source's page, which says it
    # lists its recent events as the events list does, showed a plain "Processed".
    source = make_source(organization)
    ingest_stripe(client, source, "evt_sent_twice")
    ingest_stripe(client, source, "evt_sent_twice")
    ingest_stripe(client, source, "evt_sent_once")
    client.force_login(owner)

    listed = client.get(reverse("dashboard:events", args=["acme"])).content.decode()
    page = client.get(reverse("dashboard:source_detail", args=["acme", source.pk])).content.decode()
    recent = re.search(r'<table class="stack-table recent-events"[^>]*>(.*?)</table>', page, re.S).group(1)
    rows = dict(
        (re.search(r"evt_sent_\w+", row).group(0), row) for row in re.findall(r"<tr>(.*?)</tr>", recent, re.S)[1:]
    )

    assert "×2" in listed
    assert "×2" in rows["evt_sent_twice"]
    assert "Redelivered by the provider" in rows["evt_sent_twice"]
    assert "×" not in rows["evt_sent_once"]


def test_searching_a_github_delivery_counted_as_a_duplicate_by_its_body_says_where_it_went(client, owner, organization):
    # GitHub's Recent Deliveries shows 200 for a delivery whose body equals an event's already stored
    # (taken for its duplicate, under a fresh X-GitHub-Delivery). Its own id is not kept, so the search
    # finds nothing: the answer must say why, and how to find the event it was counted on.
    source = make_source(organization, provider="github", secret=GITHUB_SECRET)
    body = json.dumps({"ref": "refs/heads/main", "after": "abc123"}).encode()
    first = post_github(client, source, body, "11111111-aaaa-11f0-8000-000000000001")
    again = post_github(client, source, body, "33333333-cccc-11f0-8000-000000000003")
    assert again.json() == {"id": first.json()["id"], "duplicate": True}
    client.force_login(owner)

    # The top bar's search, with the header line as GitHub shows it.
    found = client.get(
        reverse("dashboard:find_event", args=["acme"]),
        {"q": "X-GitHub-Delivery: 33333333-cccc-11f0-8000-000000000003"},
        follow=True,
    ).content.decode()

    assert 'id="id-search-none"' in found
    hint = re.search(r'<p id="id-search-replays">(.*?)</p>', found, re.S)
    assert hint, "no word on requests counted as duplicates by their body"
    assert "GitHub source" in hint.group(1)
    assert "Body contains" in hint.group(1)


def test_no_such_word_where_no_source_counts_duplicates_by_body(client, owner, organization):
    source = make_source(organization)  # Stripe: duplicates by its signed event id only
    ingest_stripe(client, source, "evt_known")
    client.force_login(owner)

    found = client.get(
        reverse("dashboard:find_event", args=["acme"]), {"q": "evt_nobody_has"}, follow=True
    ).content.decode()

    assert 'id="id-search-none"' in found
    assert 'id="id-search-replays"' not in found


def test_a_destination_url_typed_without_its_scheme_is_refused_not_turned_into_https(client, owner, organization):
    # A local receiver typed as host:port/path was saved as https://…, and its attempts failed on TLS.
    source = make_source(organization)
    client.force_login(owner)
    url = reverse("dashboard:destination_create", args=["acme"])

    refused = client.post(
        url, {"name": "Local", "url": "127.0.0.1:8001/hooks", "sources": [source.pk], "timeout_seconds": 15}
    )

    assert refused.status_code == 200
    assert "it has no scheme" in refused.content.decode()
    assert not Destination.objects.filter(organization=organization).exists()

    created = client.post(
        url, {"name": "Local", "url": "http://127.0.0.1:8001/hooks", "sources": [source.pk], "timeout_seconds": 15}
    )
    assert created.status_code == 302
    assert Destination.objects.get(organization=organization).url == "http://127.0.0.1:8001/hooks"
