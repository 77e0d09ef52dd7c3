"""API keys: made once, stored only as a hash, revoked for good, every change audited."""

import io
import json
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from organizations.api_keys import ApiKeyError, api_key_authenticate, api_key_create, api_key_revoke
from organizations.models import ApiKey, AuditLog
from webhooks.services.permissions import NotAllowed, require_configure_role


def test_a_key_is_shown_once_and_only_its_hash_is_stored(organization, owner):
    api_key, key = api_key_create(organization=organization, name="deploy", actor=owner)
    assert key.startswith(f"hl_{api_key.prefix}_")
    secret = key.split("_", 2)[2]
    assert len(secret) >= 43  # 32 random bytes, base64
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiKey._meta.db_table} WHERE id = %s", [api_key.pk])
        row = " ".join(str(value) for value in cursor.fetchone())
    assert key not in row and secret not in row
    assert api_key.secret_hash in row and len(api_key.secret_hash) == 64
    assert api_key.created_by == owner
    entry = AuditLog.objects.get(action="api_key.created")
    assert entry.actor_user == owner and entry.organization == organization
    assert entry.changes == {"name": "deploy", "prefix": api_key.prefix, "access": "read_only"}
    assert secret not in json.dumps(entry.changes)


def test_two_keys_never_share_anything(organization):
    (first, first_key), (second, second_key) = (api_key_create(organization=organization, name=n) for n in "ab")
    assert first.prefix != second.prefix and first_key != second_key and first.secret_hash != second.secret_hash


def test_authenticate_finds_the_key_and_its_organization(organization):
    api_key, key = api_key_create(organization=organization, name="ci", access=ApiKey.Access.READ_WRITE)
    found = api_key_authenticate(key=key)
    assert found == api_key and found.organization == organization and found.can_write


@pytest.mark.parametrize(
    "presented",
    ["", "Bearer", "hl_", "hl_zz_abc", "sk_live_123", "hl_0123456789_" + "x" * 42, "hl_0123456789_" + "x" * 43],
)
def test_malformed_or_unknown_keys_are_refused(organization, presented):
    api_key_create(organization=organization, name="ci")
    with pytest.raises(ApiKeyError):
        api_key_authenticate(key=presented)


def test_a_wrong_secret_with_a_real_prefix_is_unknown(organization):
    api_key, key = api_key_create(organization=organization, name="ci")
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(ApiKeyError, match="unknown"):
        api_key_authenticate(key=forged)


def test_a_revoked_key_no_longer_authenticates_and_the_revocation_is_audited_once(organization, owner):
    api_key, key = api_key_create(organization=organization, name="old")
    api_key_revoke(api_key=api_key, actor=owner)
    api_key_revoke(api_key=api_key, actor=owner)
    assert api_key.revoked_at is not None
    with pytest.raises(ApiKeyError, match="revoked"):
        api_key_authenticate(key=key)
    entries = AuditLog.objects.filter(action="api_key.revoked")
    assert entries.count() == 1 and entries.get().actor_user == owner


def test_last_used_is_written_at_most_once_a_minute(organization, django_assert_num_queries):
    api_key, key = api_key_create(organization=organization, name="ci")
    api_key_authenticate(key=key)
    first_use = ApiKey.objects.get(pk=api_key.pk).last_used_at
    assert first_use is not None
    with django_assert_num_queries(1):  # the lookup only: no write within the minute
        api_key_authenticate(key=key)
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == first_use
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    api_key_authenticate(key=key)
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at > first_use


def test_names_are_checked(organization):
    for bad in ("", "   ", "two\nlines", "x" * 101):
        with pytest.raises(ValidationError):
            api_key_create(organization=organization, name=bad)
    with pytest.raises(ValidationError):
        api_key_create(organization=organization, name="ok", access="admin")
    assert not ApiKey.objects.exists()


def test_services_allow_changes_only_to_read_write_keys_of_their_own_organization(organization, other_organization):
    writer, _ = api_key_create(organization=organization, name="w", access=ApiKey.Access.READ_WRITE)
    reader, _ = api_key_create(organization=organization, name="r")
    require_configure_role(organization=organization, actor=writer)
    with pytest.raises(NotAllowed):
        require_configure_role(organization=organization, actor=reader)
    with pytest.raises(NotAllowed):
        require_configure_role(organization=other_organization, actor=writer)
    api_key_revoke(api_key=writer)
    with pytest.raises(NotAllowed):
        require_configure_role(organization=organization, actor=writer)


def test_create_api_key_command_prints_the_key_once_as_json(organization):
    out = io.StringIO()
    call_command("create_api_key", "--org", "acme", "--name", "deploy", "--json", stdout=out)
    result = json.loads(out.getvalue())
    api_key = ApiKey.objects.get(pk=result["id"])
    assert api_key_authenticate(key=result["key"]) == api_key and api_key.can_write
    out = io.StringIO()
    call_command("create_api_key", "--org", "acme", "--name", "reader", "--read-only", "--json", stdout=out)
    assert not ApiKey.objects.get(pk=json.loads(out.getvalue())["id"]).can_write
    entry = AuditLog.objects.filter(action="api_key.created").first()
    assert entry.actor_type == AuditLog.ActorType.SYSTEM


def test_create_api_key_command_fails_in_json_for_an_unknown_organization(db):
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("create_api_key", "--org", "nope", "--name", "x", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"error": 'no such organization "nope"'}
