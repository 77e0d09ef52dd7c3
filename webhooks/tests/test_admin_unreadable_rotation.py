"""The platform admin's "Rotate secret" action on sources and destinations whose stored secrets no key
of this process decrypts: as on the dashboard, it says so instead of answering 503, replaces a
current secret that no key will ever read, and loses nothing (a secret it generated is shown; one
stored by a process with a key being deployed is left alone)."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from webhooks.models import Destination, Source
from webhooks.tests.factories import make_destination, make_source
from webhooks.tests.test_secret_unreadable_paths import foreign_token, store_raw
from webhooks.tests.test_unreadable_secret_tenant_pages import raw, retired_key_token

pytestmark = pytest.mark.django_db

CHANGELISTS = {Source: "admin:webhooks_source_changelist", Destination: "admin:webhooks_destination_changelist"}


@pytest.fixture
def admin(client, db):
    user = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(user)
    return client


def two_rows(organization, model):
    """A row whose secrets read, named to come first in the admin's order, and one to be made unreadable."""
    if model is Source:
        first = make_source(organization, provider="github", secret="aardvark-github-secret-5678", name="Aardvark")
        second = make_source(organization, provider="github", secret="zebra-github-secret-1234", name="Zebra")
    else:
        first, _ = make_destination(organization, "http://127.0.0.1:9/a")
        second, _ = make_destination(organization, "http://127.0.0.1:9/z")
        Destination.objects.filter(pk=first.pk).update(name="Aardvark")
        Destination.objects.filter(pk=second.pk).update(name="Zebra")
    return first, second


def stored_secret(model, pk) -> str:
    return raw(model, pk)


@pytest.mark.parametrize("model", [Source, Destination])
def test_a_secret_stored_by_a_process_with_a_key_being_deployed_is_left_and_the_others_are_shown(
    admin, organization, model
):
    readable, passing = two_rows(organization, model)
    token = foreign_token()  # made now: after this process started, as by one with a new key
    store_raw(model, passing.pk, token)
    before = stored_secret(model, readable.pk)

    response = admin.post(
        reverse(CHANGELISTS[model]), {"action": "rotate_secret", "_selected_action": [readable.pk, passing.pk]}
    )

    # Not a 503 saying "nothing was changed" after the first row was rotated: that row's new secret,
    # shown nowhere, would have been lost.
    assert response.status_code == 302
    shown = admin.get(response["Location"], follow=True)
    text = shown.content.decode()
    assert stored_secret(model, readable.pk) != before
    assert model.objects.get(pk=readable.pk).secret in text
    assert "Zebra" in text and "cannot be read by this server yet" in text
    assert stored_secret(model, passing.pk) == token  # left for a process that has the key


@pytest.mark.parametrize("model", [Source, Destination])
def test_a_previous_secret_no_key_reads_is_named_on_the_confirmation_and_stopped_once_confirmed(
    admin, organization, model
):
    _, row = two_rows(organization, model)
    store_raw(model, row.pk, retired_key_token(), "previous_secret")
    model.objects.filter(pk=row.pk).update(previous_secret_expires_at=timezone.now() + timedelta(hours=1))
    selection = {"action": "rotate_secret", "_selected_action": [row.pk]}

    asked = admin.post(reverse(CHANGELISTS[model]), selection)

    assert asked.status_code == 200, asked.content[:300]
    assert "Rotate, and stop the older secrets now" in asked.content.decode()
    assert "can no longer be read" in asked.content.decode()
    rotated = admin.post(reverse(CHANGELISTS[model]), {**selection, "confirm": "yes"})
    assert rotated.status_code == 302
    current = model.objects.get(pk=row.pk)
    assert current.secret in admin.get(rotated["Location"]).content.decode()
    # The readable one kept for the overlap, the unreadable one stopped.
    assert current.previous_secret == row.secret and current.previous_secret_expires_at > timezone.now()


@pytest.mark.parametrize("model", [Source, Destination])
def test_a_current_secret_no_key_will_read_is_replaced_without_overlap_and_shown(admin, organization, model):
    _, row = two_rows(organization, model)
    store_raw(model, row.pk, retired_key_token())

    response = admin.post(reverse(CHANGELISTS[model]), {"action": "rotate_secret", "_selected_action": [row.pk]})

    assert response.status_code == 302
    current = model.objects.get(pk=row.pk)
    assert current.secret in admin.get(response["Location"]).content.decode()
    assert current.previous_secret == "" and current.previous_secret_expires_at is None
