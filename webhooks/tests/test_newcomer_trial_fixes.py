"""What a new tenant tripped on in a first session with `make run` (signed webhooks, a redelivery, a
GitHub body posted again under a fresh delivery id, then "what happened to webhook X?")."""

import re

import pytest
from django.urls import reverse

from webhooks.services import delivery as delivery_service
from webhooks.services import operations

from .dashboard_helpers import ingest_stripe
from .factories import make_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


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
