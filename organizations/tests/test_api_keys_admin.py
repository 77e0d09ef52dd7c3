"""The platform admin's view of API keys: read-only, never the key, revoked through the service."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages

from organizations.api_keys import api_key_authenticate, api_key_create
from organizations.models import ApiKey, AuditLog

CHANGELIST = "/admin/organizations/apikey/"


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


def test_the_list_shows_keys_by_organization_never_the_key(admin, organization, other_organization):
    ours, our_key = api_key_create(organization=organization, name="deploy")
    theirs, their_key = api_key_create(organization=other_organization, name="reporting")
    page = admin.get(CHANGELIST).content.decode()
    assert "deploy" in page and "reporting" in page and f"hl_{ours.prefix}_…" in page
    assert our_key not in page and their_key not in page
    filtered = admin.get(CHANGELIST, {"organization": organization.pk}).content.decode()
    assert "deploy" in filtered and "reporting" not in filtered
    detail = admin.get(f"{CHANGELIST}{ours.pk}/change/").content.decode()
    assert our_key not in detail and ours.secret_hash not in detail


def test_keys_cannot_be_added_changed_or_deleted(admin, organization):
    api_key, _ = api_key_create(organization=organization, name="deploy")
    assert admin.get(f"{CHANGELIST}add/").status_code == 403
    admin.post(f"{CHANGELIST}{api_key.pk}/change/", {"name": "renamed"})
    assert admin.get(f"{CHANGELIST}{api_key.pk}/delete/").status_code == 403
    assert ApiKey.objects.get().name == "deploy"


def test_the_revoke_action_goes_through_the_service_and_is_audited(admin, superuser, organization):
    active, key = api_key_create(organization=organization, name="deploy")
    already, _ = api_key_create(organization=organization, name="old")
    already.revoked_at = already.created_at
    already.save()
    response = admin.post(CHANGELIST, {"action": "revoke", "_selected_action": [active.pk, already.pk]})
    assert response.status_code == 302
    shown = [str(message) for message in get_messages(response.wsgi_request)]
    assert shown[0] == "1 API key revoked; it no longer works."
    active.refresh_from_db()
    assert active.revoked_at is not None
    with pytest.raises(ValueError):
        api_key_authenticate(key=key)
    [entry] = AuditLog.objects.filter(action="api_key.revoked")
    assert entry.actor_user == superuser and entry.target_id == str(active.pk)
    summary = AuditLog.objects.get(action__endswith=".action.revoke")
    assert summary.changes["outcome"] == "done" and summary.changes["nothing_to_do_count"] == 1


def test_revoking_only_keys_revoked_already_says_there_was_nothing_to_do(admin, organization):
    already, _ = api_key_create(organization=organization, name="old")
    already.revoked_at = already.created_at
    already.save()
    response = admin.post(CHANGELIST, {"action": "revoke", "_selected_action": [already.pk]})
    shown = [(message.level_tag, str(message)) for message in get_messages(response.wsgi_request)]
    assert shown == [("info", f"Nothing to do for API key hl_{already.prefix}_…: already revoked.")]
