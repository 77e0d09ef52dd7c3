"""Secrets are encrypted at rest, never echoed, and re-encrypted under a new key by a command."""

import io
import json
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from webhooks.fields import _fernet_for
from webhooks.models import Destination, Source, WebhookEvent
from webhooks.services.ingest import forget_cached_sources

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db

SECRET = "whsec_plaintext_must_not_be_stored_1234"


def raw_column(table: str, column: str, pk) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_secrets_are_not_in_the_database_in_plaintext(organization):
    source = make_source(organization, secret=SECRET)
    destination, destination_secret = make_destination(organization, "http://127.0.0.1:9/")

    stored = raw_column("webhooks_source", "secret", source.pk)
    assert SECRET not in stored and "plaintext" not in stored
    assert stored.startswith("gAAAA")  # a Fernet token
    stored_destination = raw_column("webhooks_destination", "secret", destination.pk)
    assert destination_secret not in stored_destination
    # Python code sees the plaintext again.
    assert Source.objects.get(pk=source.pk).secret == SECRET
    assert Destination.objects.get(pk=destination.pk).secret == destination_secret
    assert source.secret_hint == "…1234"


def test_rotate_encryption_keys_reencrypts_under_the_newest_key(organization, settings):
    source = make_source(organization, secret=SECRET)
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()

    out = io.StringIO()
    call_command("rotate_encryption_keys", "--json", stdout=out)
    assert json.loads(out.getvalue())["reencrypted"]["webhooks.Source"] == 1

    stored = raw_column("webhooks_source", "secret", source.pk)
    assert Fernet(new_key.encode()).decrypt(stored.encode()).decode() == SECRET
    # The old key alone can no longer read it, so the old key can be retired.
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert Source.objects.get(pk=source.pk).secret == SECRET


def test_secret_is_never_in_logs_or_command_output(organization, caplog):
    out = io.StringIO()
    call_command(
        "create_source",
        "--org",
        organization.slug,
        "--provider",
        "stripe",
        "--name",
        "live",
        "--secret",
        SECRET,
        "--json",
        stdout=out,
    )
    result = json.loads(out.getvalue())
    assert "secret" not in result
    assert SECRET not in out.getvalue() and SECRET not in caplog.text


def test_rotate_encryption_keys_is_audited_and_reminds_of_the_next_step(organization, settings):
    from organizations.models import AuditLog
    from organizations.services import audit_verify_chain

    make_source(organization, secret=SECRET)
    make_destination(organization, "http://127.0.0.1:9/")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), settings.FIELD_ENCRYPTION_KEYS[0]]
    _fernet_for.cache_clear()

    text = io.StringIO()
    call_command("rotate_encryption_keys", stdout=text)
    lines = text.getvalue().strip().splitlines()
    assert "webhooks.Source: 1 row re-encrypted, 1 of them from an older key" in lines
    assert lines[-1].startswith("Next step: deploy FIELD_ENCRYPTION_KEYS with the new key alone")

    as_json = io.StringIO()
    call_command("rotate_encryption_keys", "--json", stdout=as_json)
    result = json.loads(as_json.getvalue())  # still one object
    assert result["reencrypted"]["webhooks.Destination"] == 1
    assert result["next_step"].startswith("Deploy FIELD_ENCRYPTION_KEYS with the new key alone")

    entries = list(AuditLog.objects.filter(action="secrets.reencrypted").order_by("id"))
    assert len(entries) == 2  # one per run
    entry = entries[0]
    assert entry.organization is None and entry.actor_type == AuditLog.ActorType.SYSTEM
    assert entry.changes["reencrypted"]["webhooks.Source"] == 1
    assert entry.changes["reencrypted"]["webhooks.Destination"] == 1
    assert SECRET not in json.dumps(entry.changes)
    assert audit_verify_chain().ok


def test_rotating_with_the_new_key_alone_is_refused_naming_the_row_and_what_to_do(organization, settings):
    # The likeliest slip: FIELD_ENCRYPTION_KEYS=NEW without the old key. It was a traceback (and no
    # JSON object with --json) saying only that "a stored secret" could not be decrypted.
    source = make_source(organization, secret=SECRET)
    stored = raw_column("webhooks_source", "secret", source.pk)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    _fernet_for.cache_clear()
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("rotate_encryption_keys", "--json", stdout=out)
    message = str(refused.value)
    assert message.startswith(f"webhooks.Source {source.pk}: a stored secret cannot be decrypted with any key")
    assert "after the new one (NEW,OLD)" in message
    assert json.loads(out.getvalue()) == {"error": message}
    assert raw_column("webhooks_source", "secret", source.pk) == stored


def test_rotating_says_when_no_secret_was_under_an_older_key(organization, settings):
    make_source(organization, secret=SECRET)
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()

    # One key: nothing to retire, so the usual "deploy the new key alone" would be wrong.
    alone = run_rotation()
    assert alone["from_older_key"]["webhooks.Source"] == 0
    assert alone["next_step"].startswith("FIELD_ENCRYPTION_KEYS holds one key, so there is no older key to retire")

    # The new key second: everything is written under the old one again, which the output must say.
    settings.FIELD_ENCRYPTION_KEYS = [old_key, new_key]
    _fernet_for.cache_clear()
    swapped = run_rotation()
    assert swapped["reencrypted"]["webhooks.Source"] == 1 and swapped["from_older_key"]["webhooks.Source"] == 0
    assert swapped["warning"].startswith("No secret was under an older key")
    assert "the new key is not first in FIELD_ENCRYPTION_KEYS" in swapped["warning"]

    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    rotated = run_rotation()
    assert rotated["from_older_key"]["webhooks.Source"] == 1 and "warning" not in rotated


def run_rotation() -> dict:
    out = io.StringIO()
    call_command("rotate_encryption_keys", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_ingest_for_a_secret_no_key_can_decrypt_is_a_json_503_that_stores_nothing(
    client, organization, settings, caplog
):
    # A key retired before the rotation command ran: the request cannot be judged, so it is neither
    # stored nor refused for its signature (it was Django's HTML 500); the provider retries a 503.
    source = make_source(organization, secret=SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    _fernet_for.cache_clear()
    forget_cached_sources()
    body = json.dumps({"id": "evt_unreadable_secret", "type": "invoice.paid"})

    response = post_stripe(client, source, body, SECRET)

    assert response.status_code == 503 and response["Retry-After"] == "30"
    assert response.json() == {
        "error": "unavailable",
        "detail": "the signature cannot be checked at the moment; retry later",
    }
    assert not WebhookEvent.objects.filter(source=source).exists()
    logged = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert any("cannot be decrypted" in message for message in logged)
    assert not any(source.ingest_token in message for message in logged)


def test_a_secret_shown_once_survives_a_web_process_that_does_not_know_the_new_key_yet(
    client, owner, organization, settings, caplog
):
    # A rolling deploy of NEW,OLD: the POST that makes a destination is served by a process with the
    # new list, the redirect to the page showing its secret by one still on OLD alone. That page
    # cannot decrypt what the session keeps: it must say so and keep it, not answer 500 and drop it.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    client.force_login(owner)
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    created = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {"name": "App", "url": "http://127.0.0.1:9/hooks", "timeout_seconds": "10"},
    )
    secret = Destination.objects.get(name="App").secret

    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    on_old_process = client.get(created["Location"])
    assert on_old_process.status_code == 503
    assert secret not in on_old_process.content.decode()
    assert "reload" in on_old_process.content.decode().lower()
    # Told to the operator too, as every other page's 503 is: a process whose keys stay wrong (not a
    # deploy under way) answers this page 503 for ever, which only its log says.
    told = [
        record
        for record in caplog.records
        if record.levelname == "ERROR" and "FIELD_ENCRYPTION_KEYS" in record.getMessage()
    ]
    assert told and all(secret not in record.getMessage() for record in caplog.records)

    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    on_new_process = client.get(created["Location"])
    assert on_new_process.status_code == 200 and secret in on_new_process.content.decode()
    assert client.get(created["Location"]).status_code == 302  # and then it is gone, as always


def test_new_secrets_shown_once_in_the_admin_survive_a_process_without_the_new_key(client, organization, settings):
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    source = make_source(organization, provider="github", secret="an-old-github-secret-1234")
    client.force_login(superuser)
    admin_client = client
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    rotated = admin_client.post(
        reverse("admin:webhooks_source_changelist"),
        {"action": "rotate_secret", "_selected_action": [source.pk]},
    )
    assert rotated.status_code == 302, rotated.content[:500]
    new_secret = Source.objects.get(pk=source.pk).secret

    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    on_old_process = admin_client.get(rotated["Location"])
    assert on_old_process.status_code == 503 and new_secret not in on_old_process.content.decode()

    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    on_new_process = admin_client.get(rotated["Location"])
    assert on_new_process.status_code == 200 and new_secret in on_new_process.content.decode()


@pytest.mark.parametrize("page", ["dashboard:destination_detail", "dashboard:destination_edit"])
def test_a_page_whose_secret_this_process_cannot_read_yet_opens_and_says_it_may_pass(
    client, owner, organization, settings, page
):
    # Custom headers saved by a process with NEW,OLD, the page served by one still on OLD alone: it was a
    # 503; it opens, and says that this passes if a new key is being deployed.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    client.force_login(owner)
    client.raise_request_exception = False

    response = client.get(reverse(page, args=["acme", destination.pk]))

    assert response.status_code == 200, response.content[:400]
    text = response.content.decode()
    assert "This server cannot read its signing secret and custom headers yet" in text
    assert "this passes once this server is replaced, within minutes" in text
    assert "can no longer be read" not in text  # nothing to replace: the processes with the new key read them


def test_a_change_of_custom_headers_this_process_cannot_read_yet_keeps_them_and_says_why(
    client, organization, settings
):
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    client.raise_request_exception = False

    # A change of the custom headers merges them with the stored ones: it cannot, and drops none unasked
    # (it was a 503 secret_unreadable; one that names every header replaces them).
    response = client.patch(
        f"/api/v1/destinations/{destination.pk}",
        {"custom_headers": {"X-Team": "billing"}},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {make_key(organization)[1]}",
    )

    assert response.status_code == 400
    said = response.json()["fields"]["custom_headers"][0]
    assert "name each of X-Api-Key" in said and "send the change again in a few minutes" in said
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    assert Destination.objects.get(pk=destination.pk).custom_header_values() == {"X-Api-Key": "k" * 24}


def test_reading_destinations_needs_no_secret_so_a_process_without_the_new_key_still_answers(
    client, organization, settings
):
    # Seen with a script against a process still on the old key alone: GET /api/v1/destinations was a
    # 503 for every destination, one with custom headers saved under the new key being on the page.
    # A read answers the headers' names and hints (plain columns), never their values.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    key = make_key(organization)[1]

    listed = client.get("/api/v1/destinations", HTTP_AUTHORIZATION=f"Bearer {key}")
    one = client.get(f"/api/v1/destinations/{destination.pk}", HTTP_AUTHORIZATION=f"Bearer {key}")
    renamed = client.patch(
        f"/api/v1/destinations/{destination.pk}",
        {"name": "Renamed"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    paused = client.post(f"/api/v1/destinations/{destination.pk}/pause", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert listed.status_code == 200, listed.content
    assert [header["name"] for header in listed.json()["results"][0]["custom_headers"]] == ["X-Api-Key"]
    assert one.status_code == 200 and one.json()["custom_headers"] == listed.json()["results"][0]["custom_headers"]
    assert renamed.status_code == 200 and paused.status_code == 200
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    assert Destination.objects.get(pk=destination.pk).custom_header_values() == {"X-Api-Key": "k" * 24}


def test_reading_a_source_and_deleting_a_source_or_a_destination_need_no_secret(client, organization, settings):
    # A source's answer shows its secret's hint (a plain column), and a deletion reads no secret: a
    # process without the key they were saved under answered both 503 secret_unreadable.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    source = make_source(organization, provider="github", secret="a-github-secret-under-the-new-key")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    key = make_key(organization)[1]

    shown = client.get(f"/api/v1/sources/{source.pk}", HTTP_AUTHORIZATION=f"Bearer {key}")
    deleted = client.delete(f"/api/v1/destinations/{destination.pk}", HTTP_AUTHORIZATION=f"Bearer {key}")
    source_deleted = client.delete(f"/api/v1/sources/{source.pk}", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert shown.status_code == 200, shown.content
    # This process cannot decrypt it, and says so (a process with the new key shows its hint).
    assert shown.json()["secret_hint"] == "unreadable" and shown.json()["previous_secret_valid_until"] is None
    assert deleted.status_code == 202, deleted.content
    assert Destination.objects.filter(pk=destination.pk, deletion_requested_at__isnull=False).exists()
    assert source_deleted.status_code == 202, source_deleted.content
    assert Source.objects.filter(pk=source.pk, deletion_requested_at__isnull=False).exists()


def test_changing_a_source_whose_previous_secret_this_process_cannot_read_answers_the_change(
    client, organization, settings
):
    # A PATCH reads the source with its secrets unread (views.source_found), and its answer then asked
    # the previous secret for previous_secret_valid_until: decrypting it failed after the change was
    # committed, a 503 secret_unreadable ("nothing was changed") over a renamed source.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    source = make_source(organization, provider="github", secret="a-github-secret-under-the-new-key")
    source.previous_secret = "the-secret-it-replaced"
    source.previous_secret_expires_at = timezone.now() + timedelta(hours=1)
    source.save(update_fields=["previous_secret", "previous_secret_expires_at"])
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    client.raise_request_exception = False

    renamed = client.patch(
        f"/api/v1/sources/{source.pk}",
        {"name": "Renamed"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {make_key(organization)[1]}",
    )

    assert renamed.status_code == 200, renamed.content
    assert renamed.json()["name"] == "Renamed"
    assert renamed.json()["previous_secret_valid_until"] == source.previous_secret_expires_at.isoformat().replace(
        "+00:00", "Z"
    )


def test_events_and_their_deliveries_are_listed_without_reading_a_destinations_custom_headers(
    client, organization, owner, settings
):
    # A listed delivery comes with its destination (its name in the badge), whose custom headers were
    # loaded and decrypted with it: a process without the key they were saved under answered the
    # events list, the source page (its recent events list deliveries since; its destinations were
    # read whole), an event's page and the API's events with a 503, for every event delivered there.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    source = make_source(organization)  # its own secret readable here: the source page reads it
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/", sources=[source], custom_headers={"X-Api-Key": "k" * 24}
    )
    event = make_event(source)
    make_delivery(event, destination)
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    client.raise_request_exception = False
    client.force_login(owner)
    key = make_key(organization)[1]

    pages = {
        "events list": client.get(reverse("dashboard:events", args=[organization.slug])),
        "source page": client.get(reverse("dashboard:source_detail", args=[organization.slug, source.pk])),
        "event page": client.get(reverse("dashboard:event_detail", args=[organization.slug, event.pk])),
        "API list": client.get("/api/v1/events", HTTP_AUTHORIZATION=f"Bearer {key}"),
        "API event": client.get(f"/api/v1/events/{event.pk}", HTTP_AUTHORIZATION=f"Bearer {key}"),
    }

    assert {name: page.status_code for name, page in pages.items()} == dict.fromkeys(pages, 200)
    assert "endpoint" in pages["source page"].content.decode()
