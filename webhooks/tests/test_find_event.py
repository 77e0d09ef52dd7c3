"""The top bar's "find an event by id", on every page of an organization.

A trial took: Events, paste the id, Enter, click the row; and there was no search anywhere but the
events list. Whatever id the tenant holds (the provider's, pasted as a header line; Hookline's; the
webhook-id a receiver logged; a delivery's id), one event of the organization goes straight to its
page; several, or none, to the events list searching for it, which says what was searched.
"""

import html
import re
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from organizations.models import Membership
from webhooks.forms import ID_SEARCH_MAX_LENGTH
from webhooks.models import Delivery, WebhookEvent
from webhooks.providers.registry import PROVIDERS, event_id_origin
from webhooks.selectors import event_named_by_id

from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

GITHUB_DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def find(client, text: str):
    return client.get(reverse("dashboard:find_event", args=["acme"]), {"q": text})


def event_page(event) -> str:
    return reverse("dashboard:event_detail", args=["acme", event.pk])


def make_event(organization, source, provider_event_id=None, **fields) -> WebhookEvent:
    return WebhookEvent.objects.create(
        organization=organization,
        source=source,
        provider_event_id=provider_event_id,
        event_type=fields.pop("event_type", "push"),
        body=b"{}",
        status=fields.pop("status", WebhookEvent.Status.PROCESSED),
        **fields,
    )


@pytest.fixture
def github_event(organization):
    source = make_source(organization, provider="github", secret="s" * 20, name="GitHub")
    return make_event(organization, source, GITHUB_DELIVERY)


@pytest.fixture
def replayed(organization, github_event):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[github_event.source])
    first = Delivery.objects.create(organization=organization, event=github_event, destination=destination)
    replay = Delivery.objects.create(
        organization=organization, event=github_event, destination=destination, is_replay=True
    )
    return first, replay


def test_every_id_a_tenant_holds_goes_straight_to_the_one_event_it_names(client, member, github_event, replayed):
    first, replay = replayed
    client.force_login(member)  # a member reads events: finding one needs no more
    for held in (
        GITHUB_DELIVERY,
        f"X-GitHub-Delivery: {GITHUB_DELIVERY}",  # the header line, as a receiver's log shows it
        f'"{GITHUB_DELIVERY}"',
        str(github_event.pk),  # Hookline's event id, also the first send's webhook-id
        f"webhook-id: {github_event.pk}",
        f"webhook-id: {replay.message_id}",  # a replay's own webhook-id
        str(first.pk),  # a delivery's id
        f"https://hookline.example/o/acme/events/{github_event.pk}/",
    ):
        response = find(client, held)
        assert response.status_code == 302, held
        assert response["Location"] == event_page(github_event), held


def test_several_events_with_the_id_are_listed_filtered_by_it(client, owner, organization, github_event):
    # A rejected request claiming the same delivery id (a wrong secret, or a forgery) is the likeliest
    # answer to "what happened": both are shown, not one chosen.
    claimed = make_event(
        organization,
        github_event.source,
        status=WebhookEvent.Status.REJECTED,
        claimed_event_id=GITHUB_DELIVERY,
        rejection_code="bad_signature",
    )
    client.force_login(owner)
    response = find(client, f"X-GitHub-Delivery: {GITHUB_DELIVERY}")
    assert response.status_code == 302
    assert response["Location"] == (
        "/o/acme/events/?q=X-GitHub-Delivery%3A+72d3162e-cc78-11e3-81ab-4c9367dc0958#event-results"
    )
    listed = client.get(response["Location"])
    assert {event.pk for event in listed.context["events"]} == {github_event.pk, claimed.pk}
    assert listed.context["form"]["q"].value() == f"X-GitHub-Delivery: {GITHUB_DELIVERY}"


def test_an_id_no_event_has_is_said_with_what_was_searched(client, member, github_event):
    client.force_login(member)
    response = find(client, "X-GitHub-Delivery: 00000000-1111-2222-3333-444444444444")
    listed = client.get(response["Location"])
    assert listed.status_code == 200 and listed.context["events"] == []
    text = re.sub(r" ([).])", r"\1", " ".join(html.unescape(re.sub(r"<[^>]+>", " ", listed.content.decode())).split()))
    assert (
        "No event of Acme has the id 00000000-1111-2222-3333-444444444444 "
        "(read from X-GitHub-Delivery: 00000000-1111-2222-3333-444444444444). Searched: the provider's event id"
    ) in text
    assert "Hookline's event id, and the webhook-id a destination received (or a delivery id)" in text
    # With another filter too, the usual "No events match": the id may be there, filtered out.
    filtered = client.get("/o/acme/events/", {"q": GITHUB_DELIVERY, "status": "rejected"})
    assert b"No events match" in filtered.content and b"No event of Acme has the id" not in filtered.content


def test_another_organizations_ids_look_exactly_like_ids_nobody_has(
    client, owner, organization, other_organization, github_event, replayed
):
    # The same provider id in both organizations (two tenants of one GitHub app) finds the own one only.
    theirs_source = make_source(other_organization, provider="github", secret="t" * 20, name="GitHub")
    theirs = make_event(other_organization, theirs_source, "only-theirs-1")
    make_event(other_organization, theirs_source, GITHUB_DELIVERY)
    theirs_destination, _ = make_destination(other_organization, "http://127.0.0.1:9/them", sources=[theirs_source])
    their_delivery = Delivery.objects.create(
        organization=other_organization, event=theirs, destination=theirs_destination
    )

    client.force_login(owner)
    assert find(client, GITHUB_DELIVERY)["Location"] == event_page(github_event)

    def answer(text: str) -> tuple[int, str, str]:
        """The find's answer and the page it leads to, with the id itself set aside (and the CSRF
        token, different on every page)."""
        response = find(client, text)
        listed = client.get(response["Location"]).content.decode().replace(text, "<id>")
        listed = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", listed)
        return response.status_code, response["Location"].replace(text, "<id>"), listed

    nobody = str(uuid.uuid4())
    for theirs_only in ("only-theirs-1", str(theirs.pk), str(their_delivery.pk)):
        status, location, _ = answer(theirs_only)
        assert status == 302 and location.startswith("/o/acme/events/?q="), theirs_only
        assert client.get(location).context["events"] == [], theirs_only
    # The page for another organization's event id is the page for an id nobody has, byte for byte
    # once the id itself is set aside: nothing tells that it exists elsewhere.
    assert answer(str(theirs.pk))[2] == answer(nobody)[2]


def test_every_query_of_the_lookup_takes_the_organization(organization, other_organization, github_event):
    with CaptureQueriesContext(connection) as queries:
        found = event_named_by_id(organization=other_organization, text=GITHUB_DELIVERY)
    assert found is None
    assert all(f'"organization_id" = {other_organization.pk}' in query["sql"] for query in queries.captured_queries)
    assert (
        event_named_by_id(organization=organization, text=f" X-GitHub-Delivery: {GITHUB_DELIVERY} ") == github_event.pk
    )


def test_non_members_get_404_and_anonymous_users_sign_in(client, outsider, github_event):
    anonymous = find(Client(), GITHUB_DELIVERY)
    assert anonymous.status_code == 302 and "/o/acme/" not in anonymous["Location"].split("?")[0]
    client.force_login(outsider)
    assert find(client, GITHUB_DELIVERY).status_code == 404


@pytest.mark.parametrize(
    "text, problem",
    [("", "empty"), ("   ", "blank"), ("x" * 300, "too long"), ("evt_\x00nul", "a NUL character")],
)
def test_a_search_that_cannot_name_an_event_goes_to_the_list_never_an_error(client, owner, github_event, text, problem):
    client.force_login(owner)
    response = find(client, text)
    assert response.status_code == 302, problem
    assert response["Location"].startswith("/o/acme/events/"), problem
    assert client.get(response["Location"]).status_code == 200, problem


def test_every_page_of_an_organization_has_the_search_in_its_top_bar(client, owner, member, github_event):
    for user, pages in (
        (owner, ["/o/acme/", "/o/acme/events/", event_page(github_event), "/o/acme/sources/", "/o/acme/destinations/"]),
        (member, ["/o/acme/team/", "/o/acme/audit/", f"/o/acme/sources/{github_event.source.pk}/"]),
    ):
        client.force_login(user)
        for address in pages:
            content = client.get(address).content.decode()
            top_bar = content.split('<header class="topbar">', 1)[1].split("</header>", 1)[0]
            assert 'action="/o/acme/find/"' in top_bar and 'id="topbar-find"' in top_bar, address
            assert 'aria-keyshortcuts="/"' in top_bar, address
            # What the find form takes: a long paste is cut there, not sent as a 4 KiB request line.
            assert f'name="q" maxlength="{ID_SEARCH_MAX_LENGTH}"' in top_bar, address


def test_the_event_page_says_where_the_provider_id_came_from(client, member, organization, github_event):
    stripe = make_source(organization, name="Stripe")
    stripe_event = make_event(organization, stripe, "evt_1Where")
    digest = make_event(organization, stripe, "sha256:" + "ab" * 32)
    client.force_login(member)
    for event, origin in (
        (github_event, "(X-GitHub-Delivery header)"),
        (stripe_event, "(id in the body)"),
        (digest, "(a digest: the request carried no id of its own)"),
    ):
        content = html.unescape(client.get(event_page(event)).content.decode())
        assert f'<span class="muted small provider-id-from">{origin}</span>' in content, origin


def test_every_provider_says_in_a_few_words_where_its_event_id_comes_from():
    for kind, provider in PROVIDERS.items():
        origin = provider.event_id_from
        assert origin.strip(), f"{kind} has no event_id_from"
        assert len(origin) <= 60 and len(origin.split()) <= 8, f"{kind}: keep event_id_from to a few words"
        assert event_id_origin(kind, "some-id") == origin
    assert event_id_origin("no-such-provider", "some-id") == ""


def test_a_members_role_is_unchanged_by_finding(client, member, github_event):
    client.force_login(member)
    page = client.get(find(client, GITHUB_DELIVERY)["Location"])
    assert page.status_code == 200
    # Still no admin's buttons on the event found.
    assert b"Replay to" not in page.content
    assert Membership.objects.get(user=member).role == Membership.Role.MEMBER
