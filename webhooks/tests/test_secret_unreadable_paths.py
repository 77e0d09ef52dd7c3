"""Every path that meets a stored secret this process cannot decrypt: no 500, nothing acknowledged
lost, a reason an operator can act on."""

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from webhooks.models import Destination, Source
from webhooks.services.destination_deletion import destination_deletion_run, destination_request_deletion
from webhooks.services.organization_deletion import organization_deletion_run, organization_request_deletion
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion

from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

DAMAGED = "gAAAAAnot-a-token"


def foreign_token(plaintext: str = "a secret under a key nobody here has") -> str:
    """A well-formed Fernet token made with a key no process of the test has."""
    return Fernet(Fernet.generate_key()).encrypt(plaintext.encode()).decode()


def store_raw(model, pk, value: str, column: str = "secret") -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {model._meta.db_table} SET {column} = %s WHERE id = %s", [value, pk])


# --- Background deletions -----------------------------------------------------------------------


def test_a_source_whose_secret_cannot_be_read_is_still_deleted(organization):
    # It was a SecretNotReadable in every run of the deletion task, for ever: the tenant's source
    # stayed "being deleted" and its events with it.
    source = make_source(organization)
    source_request_deletion(source=source)
    store_raw(Source, source.pk, DAMAGED)
    assert source_deletion_run(source_id=source.pk).finished
    assert not Source.objects.filter(pk=source.pk).exists()


def test_a_destination_whose_secrets_cannot_be_read_is_still_deleted(organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    destination_request_deletion(destination=destination)
    store_raw(Destination, destination.pk, foreign_token())
    store_raw(Destination, destination.pk, foreign_token(), column="custom_headers")
    assert destination_deletion_run(destination_id=destination.pk).finished
    assert not Destination.objects.filter(pk=destination.pk).exists()


def test_an_organization_whose_secrets_cannot_be_read_is_still_deleted(organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", sources=[source])
    organization_request_deletion(organization=organization)
    store_raw(Source, source.pk, foreign_token())
    store_raw(Destination, destination.pk, DAMAGED)
    assert organization_deletion_run(organization_id=organization.pk).finished
    assert not Source.objects.filter(pk=source.pk).exists()
    assert not Destination.objects.filter(pk=destination.pk).exists()
