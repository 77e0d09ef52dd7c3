"""Error pages: 404 and 500 are pages of the product, and the ingest endpoint keeps its JSON answers."""

import uuid

import pytest
from django.template.loader import get_template
from django.test import Client, RequestFactory
from django.urls import reverse
from django.views.defaults import server_error

pytestmark = pytest.mark.django_db


def template_names(response) -> list[str]:
    return [template.name for template in response.templates]


def test_a_missing_dashboard_page_renders_the_404_template(client, organization, owner):
    client.force_login(owner)
    response = client.get(reverse("dashboard:event_detail", args=["acme", uuid.uuid4()]))
    assert response.status_code == 404
    assert "404.html" in template_names(response)
    html = response.content.decode()
    assert "<h1>Not found</h1>" in html and 'href="/"' in html and "owner@acme.example" in html


def test_a_non_member_gets_the_same_404_page_for_an_organization(client, organization, outsider):
    client.force_login(outsider)
    response = client.get(reverse("dashboard:overview", args=["acme"]))
    assert response.status_code == 404 and "404.html" in template_names(response)
    assert "Acme" not in response.content.decode()  # the organization's existence is not revealed


def test_an_unknown_url_renders_the_404_template(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404 and "404.html" in template_names(response)


def test_the_ingest_endpoint_still_answers_json_for_an_unknown_token():
    response = Client().post("/in/no-such-token/", b"{}", content_type="application/json")
    assert response.status_code == 404 and response["Content-Type"].startswith("application/json")


def test_the_500_page_needs_no_context_request_or_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        html = get_template("500.html").render()
    assert "Something went wrong" in html and "{%" not in html

    response = server_error(RequestFactory().get("/o/acme/"))
    assert response.status_code == 500 and b"Something went wrong" in response.content
