"""/docs/api/: the REST API's reference for people, made from the OpenAPI document /api/v1/schema serves."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.urls import reverse
from rest_framework.permissions import IsAuthenticated

from webhooks.api.schema_view import ApiSchemaView

from .dashboard_helpers import build_world, work_driven_by_the_test
from .test_content_security_policy_browser import assert_clean, flush, watch
from .test_dashboard_browser import sign_in

URL = "/docs/api/"


@pytest.fixture
def document(client, db):
    return client.get("/api/v1/schema").json()


def listed_endpoints(html: str) -> set[tuple[str, str]]:
    return {tuple(found.split(" ", 1)) for found in re.findall(r'data-endpoint="([^"]+)"', unescape(html))}


def endpoint_section(html: str, method: str, path: str) -> str:
    start = html.index(f'data-endpoint="{method} {path}"')
    end = html.find('data-endpoint="', start + 1)
    return unescape(html[start : end if end != -1 else len(html)])


def test_the_page_lists_every_operation_of_the_document(client, member, document):
    client.force_login(member)
    response = client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert len(documented) >= 20
    assert listed_endpoints(html) == documented
    for method, path in documented:
        operation = document["paths"][path][method.lower()]
        section = endpoint_section(html, method, path)
        assert operation["summary"] in section, (method, path)
        # Every answer the document lists, and every parameter, under its endpoint.
        for status in operation["responses"]:
            assert f'data-status="{status}"' in section, (method, path, status)
        for parameter in operation.get("parameters", ()):
            assert f">{parameter['name']}" in section, (method, path, parameter["name"])


def test_parameters_and_body_fields_carry_their_types_and_bounds(client, member, document):
    client.force_login(member)
    html = client.get(URL).content.decode()
    events = endpoint_section(html, "GET", "/api/v1/events")
    [limit] = [p for p in document["paths"]["/api/v1/events"]["get"]["parameters"] if p["name"] == "limit"]
    assert f"≤ {limit['schema']['maximum']}" in events and f"default {limit['schema']['default']}" in events
    assert "at most 200 characters" in events  # body_contains
    assert "request_line_too_long" in events  # its 414
    create = endpoint_section(html, "POST", "/api/v1/destinations")
    body = document["components"]["schemas"]["DestinationCreateRequest"]
    for name in body["properties"]:
        assert f">{name}" in create, name
    assert "payload_filters[].path" in create  # the conditions' own fields, from their component
    assert f"≤ {body['properties']['max_concurrency']['maximum']}" in create
    assert "Idempotency-Key" in create
    assert "Authorization: Bearer hl_" in html and "read-and-write" in html


def test_it_is_read_without_signing_in_as_the_document_is(client, db):
    assert client.get("/api/v1/schema").status_code == 200
    response = client.get(URL)
    assert response.status_code == 200 and b'data-endpoint="GET /api/v1/events"' in response.content


def test_it_asks_to_sign_in_should_the_document_need_a_key(client, member, monkeypatch):
    from webhooks.api.authentication import ApiKeyAuthentication

    monkeypatch.setattr(ApiSchemaView, "authentication_classes", (ApiKeyAuthentication,))
    monkeypatch.setattr(ApiSchemaView, "permission_classes", (IsAuthenticated,))
    assert client.get("/api/v1/schema").status_code == 401
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:sign_in"))
    client.force_login(member)
    assert client.get(URL).status_code == 200


def test_the_dashboard_links_to_it(client, organization, owner, member):
    client.force_login(member)
    overview = client.get(reverse("dashboard:overview", args=[organization.slug])).content.decode()
    assert f'href="{URL}">API reference</a>' in overview
    client.force_login(owner)
    keys = client.get(reverse("dashboard:api_keys", args=[organization.slug])).content.decode()
    assert f'href="{URL}">API reference</a>' in keys


@pytest.mark.django_db(transaction=True)
def test_the_page_in_a_browser_breaks_no_policy_and_fits_the_window(
    browser, live_server, client, organization, member, monkeypatch
):
    work_driven_by_the_test(monkeypatch)
    build_world(client, organization)
    # One visit, the window then narrowed to a phone's (the layout is the style sheet's alone: no
    # script measures the window).
    page = sign_in(browser, live_server, member, width=390, height=900, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/{organization.slug}/")
    link = page.get_by_role("link", name="API reference")
    link.click(trial=True)  # on a phone too, the link is there to press (visible, not covered)
    page.set_viewport_size({"width": 1280, "height": 900})
    link.click()
    page.wait_for_selector("#authentication")
    assert page.locator("[data-endpoint]").count() >= 20
    nav = page.get_by_role("navigation", name="Endpoints")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        assert page.evaluate("window.innerWidth") == width
        if width > 760:  # the list of endpoints beside the page; on a phone, the page alone
            nav.get_by_role("link", name="List events").click()
            assert page.evaluate("location.hash") == "#get-api-v1-events"
        else:
            assert not nav.is_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, width
    flush(page)
    assert_clean(seen, pages_at_least=2)
    page.context.close()
