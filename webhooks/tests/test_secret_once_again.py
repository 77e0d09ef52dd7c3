"""The page that shows a new secret once, opened again (Back, a reload, the address kept): it says what
gives a new one for that kind of secret, on the page of what it belongs to, where it said to "rotate"
an API key (which cannot be rotated) on the overview."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from organizations.models import ApiKey
from webhooks.models import Destination

from .factories import make_source

pytestmark = pytest.mark.django_db


def open_again(client, response):
    """The secret page's address the create redirected to, opened a second time."""
    assert response.status_code == 200 and "shown only this once" in response.content.decode()
    return client.get(response.redirect_chain[-1][0])


def said(response) -> list[str]:
    return [message.message for message in get_messages(response.wsgi_request)]


def test_an_api_key_shown_once_sends_back_to_the_keys_saying_to_make_a_new_one(client, owner, organization):
    client.force_login(owner)
    created = client.post(
        reverse("dashboard:api_keys", args=[organization.slug]), {"name": "deploy", "access": "read_write"}, follow=True
    )
    assert created.status_code == 200 and ApiKey.objects.filter(name="deploy").exists()

    again = open_again(client, created)

    assert again.status_code == 302 and again.url == reverse("dashboard:api_keys", args=[organization.slug])
    assert said(again) == ["An API key is shown only once: if it was not copied, create a new key and revoke this one."]


def test_a_destination_secret_shown_once_sends_back_to_the_destination_saying_to_rotate(client, owner, organization):
    source = make_source(organization)
    client.force_login(owner)
    created = client.post(
        reverse("dashboard:destination_create", args=[organization.slug]),
        {"name": "App", "url": "http://127.0.0.1:9/hooks", "sources": [source.pk], "timeout_seconds": "10"},
        follow=True,
    )
    destination = Destination.objects.get(name="App")

    again = open_again(client, created)

    assert again.status_code == 302
    assert again.url == reverse("dashboard:destination_detail", args=[organization.slug, destination.pk])
    assert said(again) == ["A secret is shown only once; rotate it to get a new one."]


def test_an_address_never_shown_still_goes_to_the_overview(client, owner, organization):
    client.force_login(owner)
    response = client.get(reverse("dashboard:secret_once", args=[organization.slug, "never-issued"]))
    assert response.status_code == 302 and response.url == reverse("dashboard:overview", args=[organization.slug])
    assert said(response) == ["A secret is shown only once; rotate it to get a new one."]
