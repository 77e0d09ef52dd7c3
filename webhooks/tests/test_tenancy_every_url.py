"""Every URL of the dashboard (``/o/<slug>/…``) and of the REST API (``/api/v1/…``), read from the
URLconf, × GET, POST, PUT, PATCH and DELETE × every role: no one reaches another organization's
objects, and roles hold.

The routes come from ``django.urls.get_resolver()``: a new view is covered as soon as it is routed,
and this module fails until PARAMETERS says how to fill each of its path parameters with an object
of Acme or of Globex, and (dashboard) ROLES says which role may read it and which may change
through it (or if a tenant's view is routed outside the two prefixes). For every route, method and
actor (Acme's member, admin, owner, a member who is an admin at Globex; Acme's read-only and
read-write keys; no one):

- anonymous visitors are sent to sign in (dashboard) or get the API's 401;
- Acme's people on Globex's slug get 404, with any ids;
- Acme's people and keys, on Acme's URLs with Globex's ids, get exactly what an id that never
  existed gets (404 where the role and method would otherwise act; otherwise a 403 for the role,
  a 405 for the method, or a change's GET going back to the overview or the Team page, whatever
  the id), and
  never Globex's data; odd ids (0, too large, not an id) get the same, never a 500;
- a role below what the route needs gets 403 (a read-only key 403 on any change), a role that may
  act is not refused, and a method a view lacks is 405;
- no refused request changes anything in the database, and no allowed one touches Globex.

Then Globex's ids in query strings (filters, searches, pre-filled forms), forms and API bodies,
and bodies that fit no field.

The two organizations are built once for the module (and rolled back after it). Refused requests
change nothing, so those of one test share a savepoint, rolled back and compared with the state
before; each allowed change runs in its own, rolled back after Globex's rows are compared.
"""

from __future__ import annotations

import functools
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import pytest
from django.apps import apps
from django.db import connection, transaction
from django.test import Client
from django.urls import URLResolver, get_resolver, resolve, reverse

from conftest import UserFactory
from organizations import team
from organizations.mixins import OrganizationMixin
from organizations.models import ApiKey, Membership
from organizations.services import organization_create
from organizations.views import TeamActionMixin
from webhooks.api.authentication import ApiView, json_not_found
from webhooks.models import BulkRetry, Delivery, Destination, Source, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations
from webhooks.views.dashboard.base import ChangeView

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

MEMBER, ADMIN, OWNER = "member", "admin", "owner"
RANK = {MEMBER: 0, ADMIN: 1, OWNER: 2}
READ_ONLY, READ_WRITE = ApiKey.Access.READ_ONLY.value, ApiKey.Access.READ_WRITE.value
METHODS = ("get", "post", "put", "patch", "delete")
DASHBOARD_PREFIX, API_PREFIX = "o/<slug:org_slug>/", "api/v1/"

# Routes under the two prefixes that are not a tenant's, with the reason.
NOT_TENANT_ROUTES = {
    # Reached by invitees, who are not members yet: the token in its URL is the permission
    # (organizations/tests/test_team.py).
    "team:invitation_accept",
    # The OpenAPI document: it describes the API, no tenant's data, and is read without a key
    # (webhooks/tests/test_api_schema.py).
    "api:schema",
}

# Dashboard: URL name → (least role that may GET it, least role that may change through it).
# None as the second: no change is made there, so every unsafe method is 405 to every member.
# From organizations/mixins.py (required_role for unsafe methods), the views' require_role calls
# (pages that configure are for admins), ChangeView (GET goes back to the overview) and
# organizations/team.py (the team is the owner's, invitations an admin's).
ROLES = {
    "dashboard:overview": (MEMBER, None),
    "dashboard:events": (MEMBER, None),
    "dashboard:events_live": (MEMBER, None),
    "dashboard:find_event": (MEMBER, None),
    "dashboard:event_detail": (MEMBER, None),
    "dashboard:event_progress": (MEMBER, None),
    "dashboard:event_replay": (MEMBER, ADMIN),
    "dashboard:delivery_retry": (MEMBER, ADMIN),
    "dashboard:secret_once": (ADMIN, ADMIN),
    "dashboard:sources": (MEMBER, None),
    "dashboard:source_providers": (ADMIN, ADMIN),
    "dashboard:source_create": (ADMIN, ADMIN),
    "dashboard:source_detail": (MEMBER, None),
    "dashboard:source_edit": (ADMIN, ADMIN),
    "dashboard:source_rotate": (ADMIN, ADMIN),
    "dashboard:source_set_active": (ADMIN, ADMIN),
    "dashboard:source_delete": (ADMIN, ADMIN),
    "dashboard:source_test": (ADMIN, ADMIN),
    "dashboard:source_rejected": (MEMBER, None),
    "dashboard:destinations": (MEMBER, None),
    "dashboard:destination_create": (ADMIN, ADMIN),
    "dashboard:destination_detail": (MEMBER, None),
    "dashboard:destination_edit": (ADMIN, ADMIN),
    "dashboard:destination_rotate": (ADMIN, ADMIN),
    "dashboard:destination_delete": (ADMIN, ADMIN),
    "dashboard:destination_set_paused": (MEMBER, ADMIN),
    "dashboard:destination_bulk_retry": (MEMBER, ADMIN),
    "dashboard:destination_bulk_retries": (MEMBER, None),
    "dashboard:destination_send_waiting_now": (MEMBER, ADMIN),
    "dashboard:audit": (MEMBER, None),
    "dashboard:api_keys": (ADMIN, ADMIN),
    "dashboard:api_key_revoke": (ADMIN, ADMIN),
    "team:members": (MEMBER, None),
    "team:invite": (MEMBER, ADMIN),
    "team:invitation_revoke": (MEMBER, ADMIN),
    "team:member_role": (MEMBER, OWNER),
    # Someone else's membership (a bystander's): removing it is the owner's; leaving is every
    # member's own (organizations/tests/test_team.py).
    "team:member_remove": (OWNER, OWNER),
}


@dataclass
class Tenant:
    organization: object
    users: dict = field(default_factory=dict)  # role → user
    browsers: dict = field(default_factory=dict)  # role → signed-in Client
    keys: dict = field(default_factory=dict)  # access → plaintext key
    objects: dict = field(default_factory=dict)  # path parameter → this tenant's object's id


# Path parameter → how to fill it: with the tenant's own object (objects[...]), or with a value that
# is not an object of anyone's (the same for both tenants).
OBJECT_PARAMETERS = {
    "event_id": WebhookEvent,
    "delivery_id": Delivery,
    "source_id": Source,
    "destination_id": Destination,
    "api_key_id": ApiKey,
    "membership_id": Membership,
    "invitation_id": "accounts.Invitation",
    "job_id": BulkRetry,
}
PLAIN_PARAMETERS = {
    "org_slug": None,  # the tenant's slug
    "provider": "stripe",
    "token": "no-such-token",  # the one-time secret page: no secret is waiting, whoever asks
}
PARAMETERS = {*OBJECT_PARAMETERS, *PLAIN_PARAMETERS}
MISSING_IDS = {
    "event_id": uuid.UUID("01900000-0000-7000-8000-000000000000"),
    "delivery_id": uuid.UUID("01900000-0000-7000-8000-000000000001"),
}
MISSING_INT = 2_000_000_000


@dataclass(frozen=True)
class Route:
    name: str
    pattern: str  # from the root, for messages
    view_class: type | None
    parameters: tuple[str, ...]

    @property
    def is_api(self) -> bool:
        return self.pattern.startswith(API_PREFIX)

    def implements(self, method: str) -> bool:
        view = self.view_class
        return method in getattr(view, "http_method_names", ()) and hasattr(view, method)

    def url(self, tenant: Tenant, *, slug_of: Tenant | None = None, ids: str = "own") -> str:
        """``ids``: "own" (the tenant's objects), or "missing" (ids no object has)."""
        kwargs = {}
        for name in self.parameters:
            if name == "org_slug":
                value = (slug_of or tenant).organization.slug
            elif name in PLAIN_PARAMETERS:
                value = PLAIN_PARAMETERS[name]
            elif ids == "missing":
                value = MISSING_IDS.get(name, MISSING_INT)
            else:
                value = tenant.objects[name]
            kwargs[name] = str(value)
        return reverse(self.name, kwargs=kwargs)

    @property
    def has_object(self) -> bool:
        return any(name in OBJECT_PARAMETERS for name in self.parameters)


def _walk(entries, prefix="", namespace="", parameters=()):
    for entry in entries:
        text = prefix + str(entry.pattern)
        names = parameters + tuple(entry.pattern.regex.groupindex)
        if isinstance(entry, URLResolver):
            inner = ":".join(filter(None, [namespace, entry.namespace]))
            yield from _walk(entry.url_patterns, text, inner, names)
        else:
            yield text, namespace, entry, names


def tenant_routes() -> list[Route]:
    routes = []
    for text, namespace, entry, names in _walk(get_resolver().url_patterns):
        if not text.startswith((DASHBOARD_PREFIX, API_PREFIX)):
            continue
        if entry.callback is json_not_found:
            continue  # the API's JSON 404 for any path it does not have: nothing to reach
        name = f"{namespace}:{entry.name}" if entry.name else text
        if name in NOT_TENANT_ROUTES:
            continue
        routes.append(Route(name, text, getattr(entry.callback, "view_class", None), names))
    return routes


ROUTES = tenant_routes()
DASHBOARD_ROUTES = [route for route in ROUTES if not route.is_api]
API_ROUTES = [route for route in ROUTES if route.is_api]


def test_every_tenant_route_has_rules():
    """A new route under /o/<slug>/ or /api/v1/ fails here until it is given its rules."""
    assert len(DASHBOARD_ROUTES) >= 30 and len(API_ROUTES) >= 15
    for route in ROUTES:
        unknown = set(route.parameters) - PARAMETERS
        assert not unknown, f"{route.pattern}: say in PARAMETERS how to fill {sorted(unknown)}"
        assert route.view_class is not None, f"{route.pattern}: a class-based view is expected"
    for route in DASHBOARD_ROUTES:
        assert route.name in ROLES, f"{route.name} ({route.pattern}): say in ROLES who may read and change"
        assert issubclass(route.view_class, OrganizationMixin), f"{route.name} must reach its tenant by membership"
        read_role, change_role = ROLES[route.name]
        if change_role is None:
            assert not any(map(route.implements, METHODS[1:])), f"{route.name} changes things: give it a role"
    for route in API_ROUTES:
        assert issubclass(route.view_class, ApiView), f"{route.name} must authenticate by the organization's key"
    assert set(ROLES) == {route.name for route in DASHBOARD_ROUTES}, "ROLES names a route that is gone"
    # A tenant's view routed anywhere else would escape all of this.
    covered = {route.pattern for route in ROUTES}
    for text, namespace, entry, names in _walk(get_resolver().url_patterns):
        view = getattr(entry.callback, "view_class", None)
        tenant_view = isinstance(view, type) and issubclass(view, (OrganizationMixin, ApiView))
        if (tenant_view or "org_slug" in names) and f"{namespace}:{entry.name}" not in NOT_TENANT_ROUTES:
            assert text in covered, f"{text}: a tenant's view outside /o/<slug>/ and /api/v1/"


# --- the two tenants, built once ---


def _tenant(name: str, slug: str) -> Tenant:
    organization = organization_create(name=name, slug=slug, owner_email=f"owner@{slug}.example")
    tenant = Tenant(organization)
    tenant.users[OWNER] = organization.memberships.get(role=OWNER).user
    for role in (ADMIN, MEMBER):
        tenant.users[role] = UserFactory(email=f"{role}@{slug}.example")
        Membership.objects.create(user=tenant.users[role], organization=organization, role=role)
    for role, user in tenant.users.items():
        tenant.browsers[role] = Client()
        tenant.browsers[role].force_login(user)
    for access in (READ_ONLY, READ_WRITE):
        tenant.keys[access] = make_key(organization, access=access, name=f"{slug}-{access}")[1]
    # The objects that routes name: a bystander's membership (not one's own, which one may leave),
    # an open invitation, a third key, a source and a destination with an event delivered dead, a job.
    bystander = UserFactory(email=f"bystander@{slug}.example")
    source = make_source(organization, name=f"{name} private source")
    destination, _ = make_destination(organization, f"http://127.0.0.1:9/{slug}-private", sources=[source])
    event = make_event(source, provider_event_id=f"evt_{slug}_private")
    delivery = make_delivery(event, destination)
    tenant.objects = {
        "membership_id": Membership.objects.create(user=bystander, organization=organization, role=MEMBER).pk,
        "invitation_id": team.invitation_create(
            organization=organization, actor=tenant.users[OWNER], email=f"invited@{slug}.example", role=MEMBER
        ).pk,
        "api_key_id": make_key(organization, name=f"{slug}-spare")[0].pk,
        "source_id": source.pk,
        "destination_id": destination.pk,
        "event_id": event.pk,
        "delivery_id": delivery.pk,
        "job_id": BulkRetry.objects.create(
            organization=organization, filters={"destination": destination.pk, "statuses": ["dead"]}
        ).pk,
    }
    return tenant


@pytest.fixture(scope="module")
def tenants(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        with transaction.atomic():
            acme, globex = _tenant("Acme", "acme"), _tenant("Globex", "globex")
            dual = UserFactory(email="dual@acme.example")
            Membership.objects.create(user=dual, organization=acme.organization, role=MEMBER)
            Membership.objects.create(user=dual, organization=globex.organization, role=ADMIN)
            acme.users[DUAL] = dual
            acme.browsers[DUAL] = Client()
            acme.browsers[DUAL].force_login(dual)
            yield acme, globex
            transaction.set_rollback(True)


@pytest.fixture(autouse=True)
def _quiet(settings, monkeypatch):
    # Thousands of requests with one key: the rate limit has its own tests.
    settings.API_RATE_LIMIT = "1000000/min"
    # Changes that are allowed run, and are rolled back: nothing is sent anywhere meanwhile.
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)
    monkeypatch.setattr("webhooks.tasks.run_bulk_retry.delay", lambda job_id: None)


# --- requests, and what they may change ---

# Columns that reading changes: when a user last signed in, when a key was last used.
VOLATILE = {"accounts.User": {"last_login"}, "organizations.ApiKey": {"last_used_at"}}
# Tables that reading fills: the overview stores the closed hours' event counts it computed
# (services.event_hours), derived from the events and scoped to the organization, whose own tests
# check that they stay the organization's (test_dashboard_rollup.py).
DERIVED = {"webhooks.EventHour"}


def _snapshot_query(organization_id: int | None) -> str:
    """One query: a digest of every row of each of the project's own tables (only the organization's
    rows where given), less VOLATILE columns and DERIVED tables."""
    parts = []
    for app_label in ("accounts", "organizations", "webhooks"):
        for model in apps.get_app_config(app_label).get_models():
            label = model._meta.label
            if label in DERIVED:
                continue
            fields = [f for f in model._meta.concrete_fields if f.attname not in VOLATILE.get(label, set())]
            columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
            table = connection.ops.quote_name(model._meta.db_table)
            where = ""
            if organization_id is not None:
                if label == "organizations.Organization":
                    where = f"WHERE id = {organization_id:d}"
                elif any(f.attname == "organization_id" for f in fields):
                    where = f"WHERE organization_id = {organization_id:d}"
                else:
                    continue
            parts.append(
                f"SELECT '{label}', md5(coalesce(string_agg(row::text, '|' ORDER BY row::text), '')) "
                f"FROM (SELECT {columns} FROM {table} {where}) AS row"
            )
    return " UNION ALL ".join(parts)


def snapshot(organization=None) -> dict:
    """Every row of the project's own tables (only ``organization``'s where given), as a digest per table."""
    with connection.cursor() as cursor:
        cursor.execute(_snapshot_query(organization.pk if organization is not None else None))
        return dict(cursor.fetchall())


def _changes(before: dict, after: dict) -> list[str]:
    """The tables whose rows changed."""
    return [label for label in before if before[label] != after[label]]


@contextmanager
def rolled_back():
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


@contextmanager
def nothing_changes(what):
    before = snapshot()
    with rolled_back():
        yield
        after = snapshot()
    assert not _changes(before, after), (what, _changes(before, after))


@functools.cache
def _no_one() -> Client:
    """The client of anonymous visitors and API scripts: never signed in. One for the module, as a
    Client loads the middleware again (and WhiteNoise lists every static file) when it is made."""
    return Client()


def send(method: str, path: str, *, browser: Client | None = None, key: str | None = None):
    """One request with an empty body (a form for the dashboard, ``{}`` for the API)."""
    browser = browser or _no_one()
    if path.startswith("/api/"):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
        if method == "get":
            return browser.get(path, **headers)
        return getattr(browser, method)(path, {}, content_type="application/json", **headers)
    if method == "post":
        return browser.post(path, {})
    if method == "get":
        return browser.get(path)
    return getattr(browser, method)(path, "")


def _answer(response) -> tuple:
    """What a response tells: its status, where it sends, and the API's body."""
    body = response.content if response["Content-Type"].startswith("application/json") else b""
    return response.status_code, response.get("Location"), body


# A member of Acme who is also an admin at Globex: a role elsewhere counts for nothing here.
DUAL = f"{MEMBER} (admin at Globex)"


def dashboard_actors(tenant: Tenant):
    return [(role, {"browser": tenant.browsers[role]}) for role in (MEMBER, ADMIN, OWNER, DUAL)]


def api_actors(tenant: Tenant):
    return [(access, {"key": tenant.keys[access]}) for access in (READ_ONLY, READ_WRITE)]


def refused_by_role(route: Route, actor: str, method: str) -> bool:
    if route.is_api:
        return method != "get" and actor == READ_ONLY
    read_role, change_role = ROLES[route.name]
    least = read_role if method == "get" else change_role
    return least is not None and RANK[actor.split()[0]] < RANK[least]


def goes_back(route: Route, method: str) -> str | None:
    """A GET of a dashboard change that has nothing to show: the page it goes back to without
    reading the object, whoever's id is in the URL (the overview for base.ChangeView, the Team page
    for a team action), else None."""
    if method != "get" or route.is_api:
        return None
    get = getattr(route.view_class, "get", None)
    return "dashboard:overview" if get is ChangeView.get else "team:members" if get is TeamActionMixin.get else None


# --- the checks ---


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_anonymous_visitors_are_sent_to_sign_in(tenants, route):
    acme, _ = tenants
    with nothing_changes(route.name):
        for method in METHODS:
            response = send(method, route.url(acme))
            if route.is_api:
                assert response.status_code == 401, (route.name, method, response.status_code)
                assert response.json()["error"] == "not_authenticated"
                assert response["WWW-Authenticate"] == 'Bearer realm="api"'
            else:
                assert response.status_code == 302, (route.name, method, response.status_code)
                assert urlsplit(response["Location"]).path == reverse("accounts:sign_in"), (route.name, method)


@pytest.mark.parametrize("route", DASHBOARD_ROUTES, ids=lambda route: route.name)
def test_another_organizations_slug_is_404_with_any_ids(tenants, route):
    """Acme's owner is no one at Globex (a role in Acme counts for nothing there)."""
    acme, globex = tenants
    with nothing_changes(route.name):
        for method in METHODS:
            for ids_of in (globex, acme) if method in ("get", "post") else (globex,):
                response = send(method, route.url(ids_of, slug_of=globex), browser=acme.browsers[OWNER])
                assert response.status_code == 404, (route.name, method, ids_of.organization.slug)


@pytest.mark.parametrize("route", [route for route in ROUTES if route.has_object], ids=lambda route: route.name)
def test_another_organizations_ids_are_as_unknown_as_ids_that_never_existed(tenants, route):
    acme, globex = tenants
    actors = api_actors(acme) if route.is_api else dashboard_actors(acme)
    with nothing_changes(route.name):
        for actor_name, actor in actors:
            for method in METHODS:
                theirs = send(method, route.url(globex, slug_of=acme), **actor)
                missing = send(method, route.url(acme, ids="missing"), **actor)
                where = (route.name, actor_name, method, theirs.status_code, missing.status_code)
                assert _answer(theirs) == _answer(missing), where
                if back_to := goes_back(route, method):
                    assert urlsplit(theirs["Location"]).path == reverse(back_to, args=["acme"]), where
                elif route.implements(method) and not refused_by_role(route, actor_name, method):
                    assert theirs.status_code == 404, where
                else:
                    assert theirs.status_code in (302, 403, 404, 405), where
                _shows_nothing_of_globex(theirs, where)


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_roles_on_ones_own_organization(tenants, route):
    """Refused below the route's role (403), 405 for a method the view does not have, neither
    changing anything; never refused from the role on; an allowed change touches nothing of Globex's."""
    acme, globex = tenants
    actors = api_actors(acme) if route.is_api else dashboard_actors(acme)
    allowed_changes = []
    with nothing_changes(route.name):
        for actor_name, actor in actors:
            for method in METHODS:
                where = (route.name, actor_name, method)
                if method != "get" and route.implements(method) and not refused_by_role(route, actor_name, method):
                    allowed_changes.append((where, method, actor))
                    continue
                response = send(method, route.url(acme), **actor)
                if not route.implements(method):
                    # (a route whose views check the role before the method answers 403)
                    expected = (403, 405) if refused_by_role(route, actor_name, method) else (405,)
                    assert response.status_code in expected, (*where, response.status_code)
                elif refused_by_role(route, actor_name, method):
                    assert response.status_code == 403, (*where, response.status_code)
                else:
                    assert response.status_code in (200, 204, 302), (*where, response.status_code)
                    _shows_nothing_of_globex(response, where)
    theirs = snapshot(globex.organization)
    for where, method, actor in allowed_changes:
        with rolled_back():  # each change on the world as built
            response = send(method, route.url(acme), **actor)
            assert snapshot(globex.organization) == theirs, where
        assert response.status_code not in (401, 403, 404, 405), (*where, response.status_code)
        assert response.status_code < 500, (*where, response.status_code)
        _shows_nothing_of_globex(response, where)


GLOBEX_PRIVATE = (b"Globex", b"globex-private", b"evt_globex_private", b"globex.example")


def _shows_nothing_of_globex(response, where) -> None:
    # (Globex's name is in the organization switcher of someone who is also at Globex.)
    for private in GLOBEX_PRIVATE[1:] if DUAL in where else GLOBEX_PRIVATE:
        assert private not in response.content, (*where, private)


# --- another organization's ids in query strings and bodies ---


def _markers(globex: Tenant, asked: str) -> list[str]:
    """What only a page or answer showing Globex's rows would contain (less what the request itself
    carried: a searched id is echoed in the search box)."""
    theirs = globex.objects
    markers = [
        "Globex",
        "globex-private",
        "evt_globex_private",
        "globex.example",
        f"/events/{theirs['event_id']}/",
        f'"{theirs["event_id"]}"',
        f'"{theirs["delivery_id"]}"',
        Source.objects.get(pk=theirs["source_id"]).ingest_token,
    ]
    return [marker for marker in markers if marker.strip('"/').removeprefix("events/") not in asked]


def test_another_organizations_ids_in_query_strings_show_nothing_of_theirs(tenants):
    """Filters, searches and pre-filled forms given Globex's ids: refused (400) or ignored, never
    Globex's rows."""
    acme, globex = tenants
    theirs = globex.objects
    ours_event = acme.objects["event_id"]
    dashboard = [
        f"events/?source={theirs['source_id']}",
        f"events/?destination={theirs['destination_id']}",
        f"events/?destination={theirs['destination_id']}&status=failed",
        f"events/?q={theirs['event_id']}",
        f"events/?q={theirs['delivery_id']}",
        "events/?q=evt_globex_private",
        f"events/?before={theirs['event_id']}",
        f"events/live/?after=00000000-0000-7000-8000-000000000000&source={theirs['source_id']}",
        f"events/live/?after=00000000-0000-7000-8000-000000000000&q={theirs['event_id']}",
        f"events/live/?after=00000000-0000-7000-8000-000000000000&destination={theirs['destination_id']}",
        f"events/{ours_event}/progress/?seen={theirs['event_id']}",
        f"destinations/new/?source={theirs['source_id']}",
        "audit/?actor=owner@globex.example",
        "audit/?actor=globex",
    ]
    api = [
        f"events?source={theirs['source_id']}",
        f"events?destination={theirs['destination_id']}",
        f"events?destination={theirs['destination_id']}&status=failed",
        "events?provider_event_id=evt_globex_private",
        f"deliveries?destination={theirs['destination_id']}",
        f"deliveries?event={theirs['event_id']}",
        f"deliveries?event={theirs['event_id']}&status=dead",
    ]
    with nothing_changes("query strings"):
        for query in dashboard:
            path = f"/o/acme/{query}"
            match = resolve(urlsplit(path).path)
            for role in (MEMBER, ADMIN, OWNER, DUAL):
                response = send("get", path, browser=acme.browsers[role])
                if RANK[role.split()[0]] < RANK[ROLES[f"{match.namespace}:{match.url_name}"][0]]:
                    assert response.status_code == 403, (path, role, response.status_code)
                    continue
                assert response.status_code in (200, 204), (path, role, response.status_code)
                page = response.content.decode()
                # (Globex's name is in the organization switcher of someone who is also at Globex.)
                for marker in _markers(globex, query + ("Globex" if role == DUAL else "")):
                    assert marker not in page, (path, role, marker)
        # The top bar's find: another organization's ids go to the list, as ids nobody has.
        for searched in (theirs["event_id"], theirs["delivery_id"], "evt_globex_private"):
            for role in (MEMBER, DUAL):
                response = send("get", f"/o/acme/find/?q={searched}", browser=acme.browsers[role])
                assert response.status_code == 302, (searched, role, response.status_code)
                assert urlsplit(response["Location"]).path == "/o/acme/events/", (searched, role)
        for query in api:
            path = f"/api/v1/{query}"
            for access in (READ_ONLY, READ_WRITE):
                response = send("get", path, key=acme.keys[access])
                assert response.status_code in (200, 400), (path, access, response.status_code)
                if response.status_code == 200:
                    assert response.json()["results"] == [], (path, access)
                for marker in _markers(globex, query):
                    assert marker not in response.content.decode(), (path, access, marker)


def test_another_organizations_ids_in_forms_and_bodies_are_refused(tenants):
    """A replay to Globex's destination, a destination subscribed to Globex's source, a bulk retry
    filtered on Globex's destination or source: refused, and nothing anywhere changes."""
    acme, globex = tenants
    ours, theirs = acme.objects, globex.objects
    owner = acme.browsers[OWNER]
    rw = acme.keys[READ_WRITE]
    destination_form = {"name": "X", "url": "http://127.0.0.1:9/x", "timeout_seconds": "10"}
    with nothing_changes("forms and bodies"):
        response = owner.post(
            reverse("dashboard:event_replay", args=["acme", ours["event_id"]]),
            {"destination": theirs["destination_id"]},
        )
        assert response.status_code == 302  # back to the event with "Choose a destination of this organization."
        for path in (
            reverse("dashboard:destination_create", args=["acme"]),
            reverse("dashboard:destination_edit", args=["acme", ours["destination_id"]]),
        ):
            response = owner.post(path, {**destination_form, "sources": [theirs["source_id"]]})
            assert response.status_code == 200 and b"errorlist" in response.content, path
            assert b"globex-private" not in response.content and b"Globex" not in response.content
        refused = [
            ("post", f"/api/v1/events/{ours['event_id']}/replay", {"destination": theirs["destination_id"]}),
            ("post", "/api/v1/deliveries/retry", {"destination": theirs["destination_id"]}),
            ("post", "/api/v1/deliveries/retry", {"source": theirs["source_id"]}),
            (
                "post",
                "/api/v1/destinations",
                {"name": "X", "url": "http://127.0.0.1:9/x", "sources": [theirs["source_id"]]},
            ),
            ("patch", f"/api/v1/destinations/{ours['destination_id']}", {"sources": [theirs["source_id"]]}),
            (
                "patch",
                f"/api/v1/destinations/{ours['destination_id']}",
                {"sources": [ours["source_id"], theirs["source_id"]]},
            ),
        ]
        client = _no_one()
        for method, path, body in refused:
            response = getattr(client, method)(
                path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {rw}"
            )
            assert response.status_code == 400, (method, path, body, response.status_code, response.content)
            assert b"globex" not in response.content.lower(), (method, path)


# Path values no object has, in every shape the routes let through: the dashboard's converters take
# digits only (<int:>) or a UUID; the API takes any text and checks it itself.
ODD_IDS = {
    "dashboard": {"int": ["0", "99999999999999999999"], "uuid": ["00000000-0000-0000-0000-000000000000"]},
    "api": ["0", "99999999999999999999", "1.5", "01900000-0000-7000-8000-00000000000z", "%20"],
}


@pytest.mark.parametrize("route", [route for route in ROUTES if route.has_object], ids=lambda route: route.name)
def test_odd_ids_are_as_unknown_as_missing_ones(tenants, route):
    """Never a 500: an id too large for its column, zero, or not an id at all is simply not found."""
    acme, _ = tenants
    actor = {"key": acme.keys[READ_WRITE]} if route.is_api else {"browser": acme.browsers[OWNER]}
    (parameter,) = [name for name in route.parameters if name in OBJECT_PARAMETERS]
    if route.is_api:
        odd = ODD_IDS["api"]
    else:
        odd = ODD_IDS["dashboard"]["uuid" if isinstance(MISSING_IDS.get(parameter), uuid.UUID) else "int"]
    with nothing_changes(route.name):
        for method in filter(route.implements, METHODS):  # (the others are 405 before any lookup)
            missing = _answer(send(method, route.url(acme, ids="missing"), **actor))
            for value in odd:
                path = route.url(acme, ids="missing").replace(str(MISSING_IDS.get(parameter, MISSING_INT)), value)
                response = send(method, path, **actor)
                assert _answer(response) == missing, (route.name, method, value, response.status_code)


def test_joining_by_another_organizations_invitation_id_joins_nothing(tenants):
    """/invitations/<id>/join/ (outside /o/): an invitation to someone else's address is no one's to take."""
    acme, globex = tenants
    with nothing_changes("invitation join"):
        for role in (MEMBER, OWNER):
            path = reverse("invitation_join", args=[globex.objects["invitation_id"]])
            response = send("post", path, browser=acme.browsers[role])
            assert response.status_code == 302 and response["Location"] == reverse("home"), role


def test_admins_do_not_do_the_owners_part_through_a_body(tenants):
    """The routes an admin may use, asked for what only an owner may give: an owner's invitation, the
    revocation of one, their own promotion."""
    acme, _ = tenants
    owners_invitation = team.invitation_create(
        organization=acme.organization, actor=acme.users[OWNER], email="future-owner@acme.example", role=OWNER
    )
    admin = acme.browsers[ADMIN]
    own_membership = Membership.objects.get(user=acme.users[ADMIN], organization=acme.organization)
    with nothing_changes("owner's part"):
        response = admin.post(reverse("team:invite", args=["acme"]), {"email": "x@acme.example", "role": OWNER})
        assert response.status_code == 400
        response = admin.post(reverse("team:invitation_revoke", args=["acme", owners_invitation.pk]))
        assert response.status_code == 403
        response = admin.post(reverse("team:member_role", args=["acme", own_membership.pk]), {"role": OWNER})
        assert response.status_code == 403


# Every field any form or body of these routes reads, at once, with values that fit no field: a
# change with such a body is refused as invalid (or not found), never answered 500.
_FIELDS = (
    "destination source sources status event_type event_types received_after received_before name url provider "
    "secret new_secret options active paused keep_previous_for overlap_seconds stop_previous timeout_seconds "
    "retry_client_errors access email role fixture payload option_tolerance"
).split()
ODD_FORMS = [
    {field: "99999999999999999999" for field in _FIELDS},
    {field: "a\x00b" for field in _FIELDS},
]
ODD_BODIES = [
    [],
    {field: 99999999999999999999 for field in _FIELDS},
    {field: "a\x00b" for field in _FIELDS},
    {field: ["a\x00b", 99999999999999999999] for field in _FIELDS},
    {field: {"a\x00b": "a\x00b", "tolerance": 10**30} for field in _FIELDS},
]


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_odd_bodies_are_refused_never_a_500(tenants, route):
    acme, globex = tenants
    theirs = snapshot(globex.organization)
    for method in METHODS[1:]:
        if not route.implements(method):
            continue
        for body in ODD_BODIES if route.is_api else ODD_FORMS:
            with rolled_back():
                if route.is_api:
                    response = getattr(_no_one(), method)(
                        route.url(acme),
                        body,
                        content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {acme.keys[READ_WRITE]}",
                    )
                else:
                    browser = acme.browsers[OWNER]
                    if method == "post":
                        response = browser.post(route.url(acme), body)
                    else:
                        response = getattr(browser, method)(
                            route.url(acme), urlencode(body), "application/x-www-form-urlencoded"
                        )
                assert snapshot(globex.organization) == theirs, (route.name, method, body)
            assert response.status_code < 500, (route.name, method, body, response.status_code)
