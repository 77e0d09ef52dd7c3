"""Every dashboard and team URL × owner / admin / member of Acme, an owner of Globex only, and anonymous.

Each GET and POST is tried with Acme's objects and with Globex's ids (IDOR): another
organization's objects are 404 (never 403, never data), roles allow what they allow, anonymous
visitors are sent to sign in, and a POST without a CSRF token changes nothing. Refused requests
change nothing, so one world serves every refused request of a test, and one world, made once
for the module, serves every test (each runs in a savepoint of its transaction).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from accounts.models import Invitation
from conftest import UserFactory
from organizations import team
from organizations.api_keys import api_key_create
from organizations.models import ApiKey, AuditLog, Membership
from organizations.services import organization_create
from webhooks.models import Delivery, Destination, Source
from webhooks.services import delivery as delivery_service
from webhooks.services import operations

from .dashboard_helpers import build_world, ingest_stripe

pytestmark = pytest.mark.django_db

MEMBER, ADMIN, OWNER = "member", "admin", "owner"
RANK = {None: -1, MEMBER: 0, ADMIN: 1, OWNER: 2}

# (URL name, method, object kind, form data, least role allowed: None = any member).
ROUTES = [
    ("dashboard:overview", "get", "org", None, None),
    ("dashboard:events", "get", "org", None, None),
    ("dashboard:events_live", "get", "org", None, None),
    ("dashboard:find_event", "get", "org", None, None),
    ("dashboard:event_detail", "get", "event", None, None),
    ("dashboard:event_progress", "get", "event", None, None),
    ("dashboard:sources", "get", "org", None, None),
    ("dashboard:source_detail", "get", "source", None, None),
    ("dashboard:source_rejected", "get", "source", None, None),
    ("dashboard:destinations", "get", "org", None, None),
    ("dashboard:destination_detail", "get", "destination", None, None),
    ("dashboard:destination_bulk_retries", "get", "destination", None, None),
    ("dashboard:audit", "get", "org", None, None),
    ("team:members", "get", "org", None, None),
    ("dashboard:source_providers", "get", "org", None, ADMIN),
    ("dashboard:source_create", "get", "provider", None, ADMIN),
    ("dashboard:source_edit", "get", "source", None, ADMIN),
    ("dashboard:source_rotate", "get", "source", None, ADMIN),
    ("dashboard:source_set_active", "get", "source", None, ADMIN),
    ("dashboard:source_delete", "get", "source", None, ADMIN),
    ("dashboard:source_test", "get", "source", None, ADMIN),
    ("dashboard:destination_create", "get", "org", None, ADMIN),
    ("dashboard:destination_edit", "get", "destination", None, ADMIN),
    ("dashboard:destination_rotate", "get", "destination", None, ADMIN),
    ("dashboard:destination_delete", "get", "destination", None, ADMIN),
    ("dashboard:secret_once", "get", "secret", None, ADMIN),
    ("dashboard:api_keys", "get", "org", None, ADMIN),
    ("team:member_remove", "get", "membership", None, OWNER),
    ("dashboard:source_create", "post", "provider", {"name": "Stripe test", "secret": "whsec_new_value"}, ADMIN),
    ("dashboard:source_edit", "post", "source", {"name": "Renamed", "option_tolerance": "300"}, ADMIN),
    ("dashboard:source_rotate", "post", "source", {"new_secret": "whsec_rotated", "overlap_seconds": "3600"}, ADMIN),
    ("dashboard:source_set_active", "post", "source", {"active": "0"}, ADMIN),
    ("dashboard:source_test", "post", "source", {"fixture": "", "payload": "{}"}, ADMIN),
    ("dashboard:source_delete", "post", "source", {}, ADMIN),
    ("dashboard:destination_create", "post", "org", {"name": "N", "url": "http://127.0.0.1:9/n"}, ADMIN),
    (
        "dashboard:destination_edit",
        "post",
        "destination",
        {"name": "E", "url": "http://127.0.0.1:9/e", "timeout_seconds": "5"},
        ADMIN,
    ),
    ("dashboard:destination_rotate", "post", "destination", {"overlap_seconds": "3600"}, ADMIN),
    ("dashboard:destination_set_paused", "post", "destination", {"paused": "1"}, ADMIN),
    ("dashboard:destination_bulk_retry", "post", "destination", {}, ADMIN),
    ("dashboard:destination_send_waiting_now", "post", "destination", {}, ADMIN),
    ("dashboard:destination_delete", "post", "destination", {}, ADMIN),
    ("dashboard:delivery_retry", "post", "delivery", {}, ADMIN),
    ("dashboard:event_replay", "post", "event", {"destination": "DESTINATION"}, ADMIN),
    ("team:invite", "post", "org", {"email": "new@example.com", "role": MEMBER}, ADMIN),
    ("team:invitation_revoke", "post", "invitation", {}, ADMIN),
    ("dashboard:api_keys", "post", "org", {"name": "deploy", "access": "read_write"}, ADMIN),
    ("dashboard:api_key_revoke", "post", "api_key", {}, ADMIN),
    ("team:member_role", "post", "membership", {"role": ADMIN}, OWNER),
    ("team:member_remove", "post", "membership", {}, OWNER),
]


def test_every_tenant_url_is_in_the_matrix():
    from organizations.urls import urlpatterns as team_patterns
    from webhooks.urls_dashboard import urlpatterns as dashboard_patterns

    covered = {name for name, *_ in ROUTES}
    expected = {f"dashboard:{p.name}" for p in dashboard_patterns} | {f"team:{p.name}" for p in team_patterns}
    # The invitation link is reached by invitees, who are not members yet: its token is the permission.
    assert expected - {"team:invitation_accept"} == covered


def _no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)
    monkeypatch.setattr("webhooks.tasks.run_bulk_retry.delay", lambda job_id: None)


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    _no_dispatch(monkeypatch)


def _build_tenants():
    organization = organization_create(name="Acme", slug="acme", owner_email="owner@acme.example")
    other_organization = organization_create(name="Globex", slug="globex", owner_email="owner@globex.example")
    owner = organization.memberships.get(role=Membership.Role.OWNER).user
    outsider = other_organization.memberships.get(role=Membership.Role.OWNER).user
    member = UserFactory(email="member@acme.example")
    Membership.objects.create(user=member, organization=organization, role=MEMBER)
    admin = UserFactory(email="admin@acme.example")
    Membership.objects.create(user=admin, organization=organization, role=ADMIN)
    ours = build_world(Client(), organization)
    theirs = build_world(Client(), other_organization, url="http://127.0.0.1:9/globex")
    # The membership that member routes act on is a fourth person's: one's own would be leaving,
    # which every role may do.
    bystander = UserFactory(email="bystander@acme.example")
    Membership.objects.create(user=bystander, organization=organization, role=MEMBER)
    their_member = UserFactory(email="member@globex.example")
    Membership.objects.create(user=their_member, organization=other_organization, role=MEMBER)
    our_invitation = team.invitation_create(organization=organization, actor=owner, email="x@acme.example", role=MEMBER)
    their_invitation = team.invitation_create(
        organization=other_organization, actor=outsider, email="x@globex.example", role=MEMBER
    )
    return {
        "users": {OWNER: owner, ADMIN: admin, MEMBER: member},
        "outsider": outsider,
        "acme": {
            "world": ours,
            "membership": Membership.objects.get(user=bystander),
            "invitation": our_invitation,
            "api_key": api_key_create(organization=organization, name="ours")[0],
        },
        "globex": {
            "world": theirs,
            "membership": Membership.objects.get(user=their_member),
            "invitation": their_invitation,
            "api_key": api_key_create(organization=other_organization, name="theirs")[0],
        },
    }


@pytest.fixture(scope="module")
def _tenants_of_the_module(django_db_setup, django_db_blocker):
    """The two tenants, made once for the module in a transaction that is never committed: each
    test runs in a savepoint of it (pytest-django's own transaction, nested), so whatever a test
    changes is undone before the next, and the whole is rolled back after the last."""
    with django_db_blocker.unblock(), pytest.MonkeyPatch.context() as patch:
        _no_dispatch(patch)
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            made = _build_tenants()
        except BaseException:
            atomic.__exit__(None, None, None)
            raise
    yield made
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        atomic.__exit__(None, None, None)


@pytest.fixture
def tenants(_tenants_of_the_module, db):
    assert transaction.get_connection().in_atomic_block
    return _tenants_of_the_module


def _path(tenants, name, kind, slug, objects_of):
    objects = tenants[objects_of]
    world = objects["world"]
    extra = {
        "org": [],
        "event": [world.event.pk],
        "delivery": [world.delivery.pk],
        "source": [world.source.pk],
        "destination": [world.destination.pk],
        "provider": ["stripe"],
        "secret": ["no-such-token"],
        "membership": [objects["membership"].pk],
        "invitation": [objects["invitation"].pk],
        "api_key": [objects["api_key"].pk],
    }[kind]
    return reverse(name, args=[slug, *extra])


def _send(browser, method, path, data, tenants, objects_of):
    if method == "get":
        return browser.get(path)
    data = {k: (tenants[objects_of]["world"].destination.pk if v == "DESTINATION" else v) for k, v in data.items()}
    return browser.post(path, data)


def _state():
    """What any change would touch: the audit log, and each source, destination, delivery and membership."""
    return (
        AuditLog.objects.count(),
        sorted(Source.objects.values_list("pk", "name", "is_active", "secret_hint")),
        sorted(Destination.objects.values_list("pk", "name", "url", "paused_at", "secret_hint")),
        sorted(Delivery.objects.values_list("pk", "status", "attempt_count")),
        sorted(Membership.objects.values_list("pk", "role")),
        sorted(Invitation.objects.values_list("pk", "revoked_at")),
        sorted(ApiKey.objects.values_list("pk", "revoked_at")),
    )


def _browser(user):
    browser = Client()
    browser.force_login(user)
    return browser


def test_anonymous_is_sent_to_sign_in_everywhere(tenants):
    browser = Client()
    before = _state()
    for name, method, kind, data, _ in ROUTES:
        path = _path(tenants, name, kind, "acme", "acme")
        response = _send(browser, method, path, data or {}, tenants, "acme")
        assert response.status_code == 302, (name, method, response.status_code)
        location = urlsplit(response["Location"])
        assert location.path == reverse("accounts:sign_in"), (name, method)
    assert _state() == before


@pytest.mark.parametrize("objects_of", ["acme", "globex"])
def test_someone_only_in_another_organization_gets_404_for_everything(tenants, objects_of):
    """Globex's owner, on Acme's slug, with Acme's ids and with Globex's own ids."""
    browser = _browser(tenants["outsider"])
    before = _state()
    for name, method, kind, data, _ in ROUTES:
        response = _send(browser, method, _path(tenants, name, kind, "acme", objects_of), data or {}, tenants, "acme")
        assert response.status_code == 404, (name, method, response.status_code)
    assert _state() == before


def test_another_organizations_ids_under_ones_own_slug_are_404(tenants):
    """Globex's owner, on Globex's slug, with Acme's ids: every object route is 404 and nothing changes."""
    browser = _browser(tenants["outsider"])
    before = _state()
    for name, method, kind, data, _ in ROUTES:
        if kind in ("org", "provider", "secret"):
            continue
        response = _send(browser, method, _path(tenants, name, kind, "globex", "acme"), data or {}, tenants, "globex")
        assert response.status_code == 404, (name, method, response.status_code)
    assert _state() == before


def test_acme_owner_with_globex_ids_under_acme_gets_404(tenants):
    browser = _browser(tenants["users"][OWNER])
    before = _state()
    for name, method, kind, data, _ in ROUTES:
        if kind in ("org", "provider", "secret"):
            continue
        response = _send(browser, method, _path(tenants, name, kind, "acme", "globex"), data or {}, tenants, "acme")
        assert response.status_code == 404, (name, method, response.status_code)
    assert _state() == before


@pytest.mark.parametrize("role", [MEMBER, ADMIN])
def test_roles_below_what_a_route_needs_are_refused_and_change_nothing(tenants, role):
    browser = _browser(tenants["users"][role])
    before = _state()
    for name, method, kind, data, least in ROUTES:
        if RANK[role] >= RANK[least]:
            continue
        response = _send(browser, method, _path(tenants, name, kind, "acme", "acme"), data or {}, tenants, "acme")
        assert response.status_code == 403, (role, name, method, response.status_code)
    assert _state() == before


@pytest.mark.parametrize("role", [MEMBER, ADMIN, OWNER])
def test_every_page_a_role_may_open_opens(tenants, role):
    browser = _browser(tenants["users"][role])
    for name, method, kind, _, least in ROUTES:
        if method == "get" and RANK[role] >= RANK[least]:
            response = browser.get(_path(tenants, name, kind, "acme", "acme"), follow=True)
            assert response.status_code == 200, (role, name, response.status_code)


def test_pages_show_nothing_of_another_organization(tenants):
    """Lists, filters and search on Acme's pages never show Globex's rows, even when asked for by id."""
    theirs = tenants["globex"]["world"]
    their_event = ingest_stripe(Client(), theirs.source, "evt_globex_private")
    browser = _browser(tenants["users"][OWNER])
    queries = [
        reverse("dashboard:events", args=["acme"]),
        reverse("dashboard:events", args=["acme"]) + f"?source={theirs.source.pk}",
        reverse("dashboard:events", args=["acme"]) + f"?destination={theirs.destination.pk}&status=failed",
        reverse("dashboard:events", args=["acme"]) + f"?q={their_event}",
        reverse("dashboard:events", args=["acme"]) + f"?q={theirs.delivery.pk}",
        reverse("dashboard:events", args=["acme"]) + "?q=evt_globex_private",
        reverse("dashboard:events_live", args=["acme"]) + "?after=00000000-0000-7000-8000-000000000000",
        reverse("dashboard:audit", args=["acme"]),
        reverse("dashboard:sources", args=["acme"]),
        reverse("dashboard:destinations", args=["acme"]),
        reverse("dashboard:overview", args=["acme"]),
        reverse("team:members", args=["acme"]),
    ]
    for query in queries:
        html = browser.get(query).content.decode()
        # (a searched id is echoed in the search box: what must not appear is a row or link of theirs)
        for theirs_only in (
            "Globex",
            f"/events/{their_event}/",
            f"/events/{theirs.event.pk}/",
            theirs.source.ingest_token,
        ):
            assert theirs_only not in html, (query, theirs_only)


def test_forms_refuse_another_organizations_objects(tenants):
    """A replay to Globex's destination, or an Acme destination subscribed to Globex's source, is refused."""
    ours, theirs = tenants["acme"]["world"], tenants["globex"]["world"]
    browser = _browser(tenants["users"][OWNER])
    before = _state()
    browser.post(
        reverse("dashboard:event_replay", args=["acme", ours.event.pk]), {"destination": theirs.destination.pk}
    )
    response = browser.post(
        reverse("dashboard:destination_edit", args=["acme", ours.destination.pk]),
        {"name": "endpoint", "url": ours.destination.url, "timeout_seconds": "10", "sources": [theirs.source.pk]},
    )
    assert response.status_code == 200 and b"errorlist" in response.content
    response = browser.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {"name": "X", "url": "http://127.0.0.1:9/x", "timeout_seconds": "10", "sources": [theirs.source.pk]},
    )
    assert response.status_code == 200 and b"errorlist" in response.content
    assert _state() == before
    assert not Delivery.objects.filter(destination=theirs.destination, event=ours.event).exists()


def test_every_change_needs_a_csrf_token(tenants):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(tenants["users"][OWNER])
    before = _state()
    for name, method, kind, data, _ in ROUTES:
        if method == "post":
            response = _send(browser, method, _path(tenants, name, kind, "acme", "acme"), data, tenants, "acme")
            assert response.status_code == 403, (name, response.status_code)
    for path in (reverse("accounts:sign_out"), reverse("accounts:sign_out_everywhere")):
        assert browser.post(path).status_code == 403
    assert _state() == before
    assert browser.get(reverse("team:members", args=["acme"])).status_code == 200  # still signed in
