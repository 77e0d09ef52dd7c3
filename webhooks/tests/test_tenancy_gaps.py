"""Tenancy where test_authorization_matrix and test_tenancy_every_url do not reach: API cursors made
for another organization's lists, invitation links under another organization's slug, the operator
commands' --org, and the API key services called by someone without the role."""

from __future__ import annotations

import json
from io import StringIO
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from accounts.models import Invitation
from conftest import UserFactory
from organizations import team
from organizations.api_keys import api_key_create, api_key_revoke
from organizations.models import ApiKey, AuditLog, Membership
from webhooks.models import BulkRetry

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def worlds(organization, other_organization):
    """Per organization, two of each row a list pages: sources, destinations, events with a dead
    delivery each, bulk retries."""
    built = {}
    for org in (organization, other_organization):
        source = make_source(org, name=f"{org.slug}-private-source")
        make_source(org, name=f"{org.slug}-second-source")
        destination, _ = make_destination(org, f"http://127.0.0.1:9/{org.slug}-private", sources=[source])
        make_destination(org, f"http://127.0.0.1:9/{org.slug}-second")
        events = [make_event(source, provider_event_id=f"evt_{org.slug}_{n}") for n in range(3)]
        deliveries = [make_delivery(event, destination) for event in events]
        for _ in range(2):
            BulkRetry.objects.create(organization=org, filters={"destination": destination.pk, "statuses": ["dead"]})
        built[org.slug] = {
            "source": source,
            "destination": destination,
            "events": events,
            "deliveries": deliveries,
            "key": make_key(org)[1],
        }
    return built


def _cursor(link: str) -> str:
    return parse_qs(urlsplit(link).query)["cursor"][0]


@pytest.mark.parametrize("endpoint", ["events", "deliveries", "bulk_retries", "sources", "destinations"])
def test_a_cursor_from_another_organizations_list_pages_only_ones_own(client, worlds, endpoint):
    """Globex's next and previous links, followed with Acme's key: Acme's rows, or none; never Globex's."""
    theirs, ours = worlds["globex"], worlds["acme"]
    first = api_get(client, theirs["key"], f"/api/v1/{endpoint}", limit=1).json()
    assert first["next"]
    second = api_get(client, theirs["key"], f"/api/v1/{endpoint}", limit=1, cursor=_cursor(first["next"])).json()
    assert second["previous"]
    for link in (first["next"], second["previous"]):
        response = api_get(client, ours["key"], f"/api/v1/{endpoint}", limit=200, cursor=_cursor(link))
        assert response.status_code == 200, response.content
        text = response.content.decode()
        assert "globex" not in text.lower(), (endpoint, link)
        for their_event in theirs["events"]:
            assert str(their_event.pk) not in text


def test_a_body_search_cursor_from_another_organization_searches_only_ones_own(client, worlds):
    theirs, ours = worlds["globex"], worlds["acme"]
    first = api_get(client, theirs["key"], "/api/v1/events", body_contains="evt", limit=1).json()
    assert first["next"]
    response = api_get(client, ours["key"], "/api/v1/events", body_contains="evt", cursor=_cursor(first["next"]))
    assert response.status_code == 200
    assert "globex" not in response.content.decode().lower()


def test_an_invitation_link_under_another_organizations_slug_is_unknown(owner, outsider, organization):
    """Globex's invitation token on Acme's join URL (and Acme's on Globex's): 404, nothing joined."""
    acme_invitation = team.invitation_create(
        organization=organization, actor=owner, email="someone@example.com", role=Membership.Role.ADMIN
    )
    token = _token_of(acme_invitation)
    browser = Client()
    browser.force_login(outsider)
    for method in ("get", "post"):
        response = getattr(browser, method)(reverse("team:invitation_accept", args=["globex", token]))
        assert response.status_code == 404, method
    assert not Invitation.objects.filter(accepted_at__isnull=False).exists()
    assert not Membership.objects.filter(user__email="someone@example.com").exists()


def _token_of(invitation: Invitation) -> str:
    from django.core import mail

    link = next(line for line in mail.outbox[-1].body.split() if "/join/" in line)
    return link.rstrip("/").rsplit("/", 1)[1]


def _command(*args) -> dict:
    out = StringIO()
    try:
        call_command(*args, "--json", stdout=out, stderr=StringIO())
    except CommandError:
        pass
    return json.loads(out.getvalue())


def test_operator_commands_with_org_find_nothing_of_another_organization(worlds):
    theirs = worlds["globex"]
    for text in (str(theirs["events"][0].pk), str(theirs["deliveries"][0].pk), "evt_globex_0"):
        assert "error" in _command("show_event", text, "--org", "acme"), text
        assert _command("list_events", "--org", "acme", "--search", text)["events"] == [], text
    assert "error" in _command("show_event", "evt_acme_0", "--org", "acme", "--source", str(theirs["source"].pk))
    created = _command(
        "create_destination", "--org", "acme", "--name", "x", "--url", "http://127.0.0.1:9/x",
        "--source", str(theirs["source"].pk),
    )  # fmt: skip
    assert "error" in created
    assert not theirs["source"].subscriptions.exclude(destination=theirs["destination"]).exists()


# --- API keys: the service is the rule, as team.py's services are ---


@pytest.fixture
def admin(organization):
    user = UserFactory(email="admin@acme.example")
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.ADMIN)
    return user


def test_only_admins_and_owners_of_the_organization_make_api_keys(organization, owner, admin, member, outsider):
    for actor in (member, outsider):
        with pytest.raises(PermissionDenied):
            api_key_create(organization=organization, name="mine", access=ApiKey.Access.READ_WRITE, actor=actor)
    assert not ApiKey.objects.filter(organization=organization).exists()
    assert not AuditLog.objects.filter(action="api_key.created").exists()
    for actor in (admin, owner, None):  # None: the platform (create_api_key)
        api_key_create(organization=organization, name="ok", actor=actor)
    assert ApiKey.objects.filter(organization=organization).count() == 3


def test_only_admins_and_owners_of_the_keys_organization_revoke_it(organization, owner, admin, member, outsider):
    key, _ = make_key(organization)
    for actor in (member, outsider):
        with pytest.raises(PermissionDenied):
            api_key_revoke(api_key=key, actor=actor)
        key.refresh_from_db()
        assert key.revoked_at is None
    api_key_revoke(api_key=key, actor=admin)
    assert key.revoked_at is not None
