"""Sources created, changed, rotated and deleted through the REST API, by the dashboard's services."""

import json
import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from webhooks import fields, tasks
from webhooks.api import views_manage
from webhooks.models import Source, WebhookEvent

from .api_helpers import api_delete, api_get, api_patch, api_post, make_event, make_key
from .factories import STRIPE_SECRET, make_source
from .signing import post_stripe

NEW_STRIPE_SECRET = "whsec_rotated_secret_from_stripe"


@pytest.fixture
def writer(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")


@pytest.fixture
def key(writer):
    return writer[1]


def _by_key(action: str, api_key: ApiKey) -> AuditLog:
    entry = AuditLog.objects.get(action=action)
    assert entry.actor_type == AuditLog.ActorType.API_KEY and entry.actor_user is None
    assert api_key.prefix in entry.actor_label and entry.organization_id == api_key.organization_id
    return entry


def _raw_secret_columns(source_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret, previous_secret FROM webhooks_source WHERE id = %s", [source_id])
        return " ".join(cursor.fetchone())


def _stripe_body(event_id: str) -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})


def test_a_source_created_with_the_providers_secret_accepts_a_webhook_stripe_signed(client, organization, writer):
    api_key, key = writer
    response = api_post(
        client, key, "/api/v1/sources", {"provider": "stripe", "name": "Stripe live", "secret": STRIPE_SECRET}
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert "secret" not in created  # the tenant gave it: nothing to show
    source = Source.objects.get(pk=created["id"], organization=organization)
    assert response["Location"] == f"http://testserver/api/v1/sources/{source.pk}"
    assert created["ingest_url"] == f"http://testserver/in/{source.ingest_token}/"
    assert created["secret_hint"] == source.secret_hint == "…cret" and created["provider"] == "stripe"
    assert source.options == {"tolerance": 300}

    accepted = post_stripe(client, source, _stripe_body("evt_api_1"), STRIPE_SECRET)
    assert accepted.status_code == 200, accepted.content
    assert WebhookEvent.objects.get(pk=accepted.json()["id"]).source == source
    assert post_stripe(client, source, _stripe_body("evt_api_2"), "whsec_someone_else").status_code == 401

    entry = _by_key("source.created", api_key)
    assert entry.changes["secret"] != STRIPE_SECRET and STRIPE_SECRET not in json.dumps(entry.changes)
    assert STRIPE_SECRET not in _raw_secret_columns(source.pk)


def test_a_generated_secret_is_shown_once(client, organization, key):
    response = api_post(client, key, "/api/v1/sources", {"provider": "github", "name": "GitHub org"})
    assert response.status_code == 201, response.content
    secret = response.json()["secret"]
    source = Source.objects.get(pk=response.json()["id"])
    assert source.secret == secret and response.json()["secret_hint"] == "…" + secret[-4:]
    assert secret not in _raw_secret_columns(source.pk)
    for later in (api_get(client, key, f"/api/v1/sources/{source.pk}"), api_get(client, key, "/api/v1/sources")):
        assert later.status_code == 200 and secret not in later.content.decode()
    assert "secret" not in api_get(client, key, f"/api/v1/sources/{source.pk}").json()
    assert secret not in json.dumps(list(AuditLog.objects.values_list("changes", flat=True)))


def test_stripe_without_a_secret_yet_refuses_requests_until_its_secret_is_set(client, key, settings):
    settings.INGEST_SOURCE_CACHE_SECONDS = 0
    response = api_post(client, key, "/api/v1/sources", {"provider": "stripe", "name": "Stripe, URL first"})
    assert response.status_code == 201, response.content
    assert response.json()["secret_hint"] == "" and "secret" not in response.json()
    source = Source.objects.get(pk=response.json()["id"])
    assert post_stripe(client, source, _stripe_body("evt_early"), STRIPE_SECRET).status_code != 200
    response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {"secret": STRIPE_SECRET})
    assert response.status_code == 200, response.content
    assert post_stripe(client, source, _stripe_body("evt_in_time"), STRIPE_SECRET).status_code == 200


def test_the_first_secret_set_by_rotate_secret_leaves_no_previous_one_said_to_work(client, organization, owner, writer):
    # Rotating without keep_previous_for takes the default window; with no secret before, there is
    # nothing it could keep, and the source's page must not say that "the previous secret" works.
    api_key, key = writer
    source = api_post(client, key, "/api/v1/sources", {"provider": "stripe", "name": "Stripe, URL first"}).json()
    response = api_post(client, key, f"/api/v1/sources/{source['id']}/rotate_secret", {"secret": STRIPE_SECRET})
    assert response.status_code == 200, response.content
    assert response.json()["previous_secret_valid_until"] is None
    stored = Source.objects.get(pk=source["id"])
    assert (stored.previous_secret, stored.previous_secret_expires_at) == ("", None)
    assert _by_key("source.secret_rotated", api_key).changes["overlap_seconds"] == 0

    client.force_login(owner)
    page = client.get(f"/o/{organization.slug}/sources/{source['id']}/").content.decode()
    assert stored.secret_hint in page and "previous secret" not in page


def test_secrets_are_never_logged(client, organization, key, caplog):
    caplog.set_level(logging.DEBUG)
    created = api_post(client, key, "/api/v1/sources", {"provider": "github", "name": "GitHub"}).json()
    rotated = api_post(client, key, f"/api/v1/sources/{created['id']}/rotate_secret", {"keep_previous_for": 0}).json()
    refused = api_post(client, key, f"/api/v1/sources/{created['id']}/rotate_secret", {"secret": rotated["secret"]})
    assert refused.status_code == 400 and rotated["secret"] not in refused.content.decode()
    assert caplog.records  # the refusal at least is logged
    for secret in (created["secret"], rotated["secret"]):
        assert secret not in caplog.text


def test_malformed_ids_and_other_methods(client, organization, key):
    source = make_source(organization)
    assert api_patch(client, key, "/api/v1/sources/abc", {"name": "x"}).status_code == 404
    assert api_delete(client, key, "/api/v1/sources/0").status_code == 404
    assert api_post(client, key, "/api/v1/sources/9" + "9" * 30 + "/rotate_secret", {}).status_code == 404
    response = client.put(
        f"/api/v1/sources/{source.pk}", {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert api_patch(client, key, f"/api/v1/sources/{source.pk}/", {"name": "slash"}).status_code == 200


@pytest.mark.parametrize(
    "body, field",
    [
        ({"provider": "nosuch", "name": "x", "secret": "s"}, "provider"),
        ({"name": "x"}, "provider"),
        ({"provider": "stripe", "name": "", "secret": STRIPE_SECRET}, "name"),
        ({"provider": "stripe", "name": "two\nlines", "secret": STRIPE_SECRET}, "name"),
        ({"provider": "stripe", "name": "x" * 201, "secret": STRIPE_SECRET}, "name"),
        ({"provider": "stripe", "name": "x", "secret": STRIPE_SECRET, "options": {"colour": "red"}}, "options"),
        ({"provider": "stripe", "name": "x", "secret": STRIPE_SECRET, "options": {"tolerance": -1}}, "options"),
        ({"provider": "stripe", "name": "x", "secret": STRIPE_SECRET, "options": ["tolerance"]}, "options"),
        (
            {
                "provider": "apple_app_store",
                "name": "x",
                "secret": "not used",
                "options": {"bundle_id": "com.example.app", "environment": "Sandbox"},
            },
            "secret",
        ),
    ],
)
def test_create_refusals_name_their_field(client, key, body, field):
    response = api_post(client, key, "/api/v1/sources", body)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid" and field in response.json()["fields"], response.json()
    assert not Source.objects.exists() and not AuditLog.objects.filter(action="source.created").exists()


def test_patch_renames_changes_options_and_stops(client, organization, writer):
    api_key, key = writer
    source = make_source(organization)
    response = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"name": "Stripe test", "options": {}})
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Stripe test"
    entry = _by_key("source.updated", api_key)
    assert entry.changes == {"name": ["stripe source", "Stripe test"]}  # options merged: unchanged

    response = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"options": {"tolerance": 60}})
    assert response.status_code == 200 and response.json()["name"] == "Stripe test"
    source.refresh_from_db()
    assert source.options == {"tolerance": 60} and source.name == "Stripe test"

    response = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"active": False})
    assert response.status_code == 200 and response.json()["is_active"] is False
    _by_key("source.paused", api_key)
    assert post_stripe(client, source, _stripe_body("evt_stopped"), STRIPE_SECRET).status_code == 404
    response = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"active": True})
    assert response.json()["is_active"] is True
    _by_key("source.resumed", api_key)


def test_a_sources_options_are_read_back_as_a_patch_left_them(client, organization, key):
    created = api_post(
        client, key, "/api/v1/sources", {"provider": "stripe", "name": "Stripe", "options": {"tolerance": 60}}
    )
    assert created.status_code == 201, created.content
    assert created.json()["options"] == {"tolerance": 60}
    path = f"/api/v1/sources/{created.json()['id']}"
    assert api_patch(client, key, path, {"options": {"tolerance": None}}).json()["options"] == {"tolerance": 300}
    assert api_get(client, key, path).json()["options"] == {"tolerance": 300}
    listed = api_get(client, key, "/api/v1/sources").json()["results"]
    assert [source["options"] for source in listed] == [{"tolerance": 300}]


def test_http_auth_credentials_in_a_url_option_are_never_stored_or_shown(client, organization, member, key):
    # Twilio's console shows the URL it calls with user:password@ when the receiver (a proxy) asks for
    # HTTP auth, and Twilio signs the URL without them: Hookline has no use for the password, and
    # options are shown whole to members on the source's page, in the audit log and to read-only keys.
    proxy = "https://hook-user:s3cr3t-pw@proxy.example.com/twilio/sms"
    created = api_post(
        client,
        key,
        "/api/v1/sources",
        {"provider": "twilio", "name": "SMS", "secret": "twilio-auth-token", "options": {"public_url": proxy}},
    )
    assert created.status_code == 201, created.content
    assert created.json()["options"] == {"public_url": "https://proxy.example.com/twilio/sms"}
    source = Source.objects.get(pk=created.json()["id"])
    assert source.options == {"public_url": "https://proxy.example.com/twilio/sms"}
    assert "s3cr3t-pw" not in json.dumps(AuditLog.objects.get(action="source.created").changes)

    # A row stored before they were dropped: shown without them.
    Source.objects.filter(pk=source.pk).update(options={"public_url": proxy})
    _, reader = make_key(organization, access=ApiKey.Access.READ_ONLY)
    for shown in (
        api_get(client, reader, f"/api/v1/sources/{source.pk}").content.decode(),
        api_get(client, reader, "/api/v1/sources").content.decode(),
    ):
        assert "proxy.example.com/twilio/sms" in shown and "s3cr3t-pw" not in shown and "hook-user" not in shown
    client.force_login(member)
    page = client.get(f"/o/{organization.slug}/sources/{source.pk}/").content.decode()
    assert "proxy.example.com/twilio/sms" in page and "s3cr3t-pw" not in page and "hook-user" not in page


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("body", [{"name": "renamed"}, {"active": False}])
def test_a_source_deleted_while_it_is_patched_is_not_found(client, organization, key, monkeypatch, body):
    from webhooks.api import serializers_manage

    source = make_source(organization)
    checked = serializers_manage.SourceUpdateSerializer.validate

    def deleted_once_checked(serializer, data):
        Source.objects.filter(pk=source.pk).delete()  # a DELETE, committed
        return checked(serializer, data)

    monkeypatch.setattr(serializers_manage.SourceUpdateSerializer, "validate", deleted_once_checked)
    response = api_patch(client, key, f"/api/v1/sources/{source.pk}", body)
    assert response.status_code == 404 and response.json()["error"] == "not_found", response.content


def test_patch_refusals_change_nothing(client, organization, key):
    source = make_source(organization)
    for body, field in (
        ({"options": {"colour": "red"}}, "options"),
        ({"name": "tab\there"}, "name"),
        ({"active": "perhaps"}, "active"),
        ({"name": "fine", "options": {"tolerance": "soon"}}, "options"),
    ):
        response = api_patch(client, key, f"/api/v1/sources/{source.pk}", body)
        assert response.status_code == 400 and field in response.json()["fields"], body
    source.refresh_from_db()
    assert source.name == "stripe source" and source.options == {"tolerance": 300}
    assert not AuditLog.objects.filter(action="source.updated").exists()


def test_rotation_keeps_the_previous_secret_for_the_window(client, organization, writer, settings):
    settings.INGEST_SOURCE_CACHE_SECONDS = 0
    api_key, key = writer
    source = make_source(organization)
    path = f"/api/v1/sources/{source.pk}/rotate_secret"
    response = api_post(client, key, path, {"secret": NEW_STRIPE_SECRET, "keep_previous_for": 3600})
    assert response.status_code == 200, response.content
    assert response.json()["secret_hint"] == "…ripe" and "secret" not in response.json()
    assert response.json()["previous_secret_valid_until"]
    entry = _by_key("source.secret_rotated", api_key)
    assert entry.changes["overlap_seconds"] == 3600 and NEW_STRIPE_SECRET not in json.dumps(entry.changes)
    assert NEW_STRIPE_SECRET not in _raw_secret_columns(source.pk)
    assert STRIPE_SECRET not in _raw_secret_columns(source.pk)

    assert post_stripe(client, source, _stripe_body("evt_new"), NEW_STRIPE_SECRET).status_code == 200
    assert post_stripe(client, source, _stripe_body("evt_old"), STRIPE_SECRET).status_code == 200

    # Rotating again during the window would stop the older secret: confirmed, or 409.
    again = api_post(client, key, path, {"secret": "whsec_third_secret_value"})
    assert again.status_code == 409 and "stop_previous" in again.json()["detail"]
    again = api_post(
        client, key, path, {"secret": "whsec_third_secret_value", "stop_previous": True, "keep_previous_for": 0}
    )
    assert again.status_code == 200, again.content
    assert again.json()["previous_secret_valid_until"] is None
    assert post_stripe(client, source, _stripe_body("evt_older"), STRIPE_SECRET).status_code == 401
    assert post_stripe(client, source, _stripe_body("evt_newer"), NEW_STRIPE_SECRET).status_code == 401


def test_rotation_refusals(client, organization, key):
    source = make_source(organization)
    path = f"/api/v1/sources/{source.pk}/rotate_secret"
    for body, field in (
        ({}, "secret"),  # Stripe issues the secret: it must be given
        ({"secret": STRIPE_SECRET}, "secret"),  # the current one
        ({"secret": NEW_STRIPE_SECRET, "keep_previous_for": -1}, "keep_previous_for"),
        ({"secret": NEW_STRIPE_SECRET, "keep_previous_for": 10**9}, "keep_previous_for"),
    ):
        response = api_post(client, key, path, body)
        assert response.status_code == 400 and field in response.json()["fields"], (body, response.content)
    assert not AuditLog.objects.filter(action="source.secret_rotated").exists()


def test_rotation_generates_a_secret_where_hookline_may(client, organization, key):
    source = make_source(organization, provider="github", secret="old-github-secret-value")
    response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {"keep_previous_for": 0})
    assert response.status_code == 200, response.content
    source.refresh_from_db()
    assert response.json()["secret"] == source.secret != "old-github-secret-value"
    assert source.previous_secret == ""


def test_delete_removes_the_source_with_its_events_in_the_background(client, organization, writer):
    api_key, key = writer
    source = make_source(organization)
    make_event(source)
    response = api_delete(client, key, f"/api/v1/sources/{source.pk}")
    assert response.status_code == 202 and response.json() == {"id": source.pk, "state": "deleting"}
    assert _by_key("source.deletion_requested", api_key).changes == {
        "provider": "stripe",
        "name": "stripe source",
        "was_active": True,
    }
    assert api_delete(client, key, f"/api/v1/sources/{source.pk}").status_code == 404  # hidden from now on
    assert WebhookEvent.objects.exists()  # until the task runs
    assert tasks.delete_source(source.pk) is True
    assert not Source.objects.exists() and not WebhookEvent.objects.exists()
    assert AuditLog.objects.get(action="source.deleted").changes["deleted"]["events (and rejected requests)"] == 1


def test_another_organizations_source_is_not_found(client, other_organization, key):
    theirs = make_source(other_organization)
    for call, path, body in (
        (api_patch, f"/api/v1/sources/{theirs.pk}", {"name": "mine now"}),
        (api_post, f"/api/v1/sources/{theirs.pk}/rotate_secret", {"secret": NEW_STRIPE_SECRET}),
        (api_delete, f"/api/v1/sources/{theirs.pk}", None),
    ):
        response = call(client, key, path, body) if body is not None else call(client, key, path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path
    theirs.refresh_from_db()
    assert theirs.name == "stripe source" and theirs.secret == STRIPE_SECRET
    assert not AuditLog.objects.filter(action__startswith="source.", actor_type=AuditLog.ActorType.API_KEY).exists()


def test_a_read_only_key_changes_nothing(client, organization):
    source = make_source(organization)
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    for call, path, body in (
        (api_post, "/api/v1/sources", {"provider": "stripe", "name": "x", "secret": STRIPE_SECRET}),
        (api_patch, f"/api/v1/sources/{source.pk}", {"name": "renamed"}),
        (api_post, f"/api/v1/sources/{source.pk}/rotate_secret", {"secret": NEW_STRIPE_SECRET}),
        (api_delete, f"/api/v1/sources/{source.pk}", None),
    ):
        response = call(client, key, path, body) if body is not None else call(client, key, path)
        assert response.status_code == 403 and response.json()["error"] == "read_only_key", path
    assert api_get(client, key, f"/api/v1/sources/{source.pk}").status_code == 200
    assert list(Source.objects.values_list("name", flat=True)) == ["stripe source"]
    source.refresh_from_db()
    assert source.secret == STRIPE_SECRET


@pytest.mark.parametrize("provider", ["github", "stripe", "apple_app_store"])
@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_a_blank_secret_is_refused_not_taken_for_generate_one(client, organization, key, provider, blank):
    # As create_source refuses --secret "": an unset variable in a script is a mistake to say, not a
    # request for a generated secret (github), a source without one (stripe) or none needed (apple_app_store).
    response = api_post(client, key, "/api/v1/sources", {"provider": provider, "name": "Scripted", "secret": blank})
    assert response.status_code == 400, response.content
    assert response.json()["fields"] == {
        "secret": ["is blank: send the secret, or leave secret out to have one generated where the provider allows it"]
    }
    assert not Source.objects.filter(organization=organization).exists()


def test_a_blank_secret_is_refused_by_rotate_secret_too(client, organization, key):
    source = make_source(organization, provider="github", secret="a-github-secret-of-ours")
    for blank in ("", "  "):
        response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {"secret": blank})
        assert response.status_code == 400 and list(response.json()["fields"]) == ["secret"], response.content
    source.refresh_from_db()
    assert source.secret == "a-github-secret-of-ours" and not AuditLog.objects.filter(action="source.secret_rotated")
    # Left out, a secret is still generated where the provider allows it.
    response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {})
    assert response.status_code == 200 and response.json()["secret"], response.content


def test_reads_say_until_when_the_previous_secret_is_accepted(client, organization, key, monkeypatch):
    # So that a script knows before rotating that it would be a 409 (or needs stop_previous).
    rotated, plain = make_source(organization, name="Rotated"), make_source(organization, name="Plain")
    response = api_post(
        client,
        key,
        f"/api/v1/sources/{rotated.pk}/rotate_secret",
        {"secret": NEW_STRIPE_SECRET, "keep_previous_for": 60},
    )
    until = response.json()["previous_secret_valid_until"]
    assert response.status_code == 200 and until
    assert api_get(client, key, f"/api/v1/sources/{rotated.pk}").json()["previous_secret_valid_until"] == until
    assert api_get(client, key, f"/api/v1/sources/{plain.pk}").json()["previous_secret_valid_until"] is None

    # Read from its column: no row's previous secret is loaded (and decrypted) for it in the list. Only
    # each row's current secret is tried, keeping none, to say "unreadable" for one that no key decrypts.
    decrypted = []
    real_decrypt = fields.decrypt
    monkeypatch.setattr(fields, "decrypt", lambda token: decrypted.append(token) or real_decrypt(token))
    listed = api_get(client, key, "/api/v1/sources").json()["results"]
    assert {row["id"]: row["previous_secret_valid_until"] for row in listed} == {rotated.pk: until, plain.pk: None}
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM webhooks_source WHERE organization_id = %s", [organization.pk])
        assert sorted(decrypted) == sorted(token for (token,) in cursor.fetchall())
    monkeypatch.undo()

    # Once the window is over (before the sweeper forgets the secret), null everywhere, and a rotation is no 409.
    Source.objects.filter(pk=rotated.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    assert api_get(client, key, f"/api/v1/sources/{rotated.pk}").json()["previous_secret_valid_until"] is None
    assert all(
        row["previous_secret_valid_until"] is None for row in api_get(client, key, "/api/v1/sources").json()["results"]
    )
    again = api_post(client, key, f"/api/v1/sources/{rotated.pk}/rotate_secret", {"secret": "whsec_third_secret_value"})
    assert again.status_code == 200, again.content


def test_a_wrong_secret_during_a_rotation_window_is_a_400_on_secret_not_a_409(client, key):
    # stop_previous would not help: the 409's advice was wrong, and following it was another refusal.
    created = api_post(client, key, "/api/v1/sources", {"provider": "github", "name": "GitHub"}).json()
    path = f"/api/v1/sources/{created['id']}/rotate_secret"
    rotated = api_post(client, key, path, {"keep_previous_for": 3600}).json()
    assert rotated["previous_secret_valid_until"]
    refused = api_post(client, key, path, {"secret": rotated["secret"]})
    assert refused.status_code == 400, refused.content
    assert refused.json()["fields"] == {"secret": ["that is the current secret; a rotation needs a new one"]}


def test_a_rotation_overtaken_by_another_is_the_409_of_a_rotation_window(client, organization, key, monkeypatch):
    # Two scripts rotate at once: the one that waits for the row's lock finds the other's window,
    # though the copy its view read before had none; it is told to confirm, as if it came second.
    source = make_source(organization, provider="github", secret="first-github-secret")
    rotate = views_manage.source_rotate_secret

    def overtaken(*, source, **kwargs):
        rotate(source=Source.objects.get(pk=source.pk), new_secret="the-other-scripts-secret", overlap_seconds=3600)
        return rotate(source=source, **kwargs)

    monkeypatch.setattr(views_manage, "source_rotate_secret", overtaken)
    response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {})
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "conflict" and "send stop_previous: true" in response.json()["detail"]
    assert Source.objects.get(pk=source.pk).secret == "the-other-scripts-secret"
