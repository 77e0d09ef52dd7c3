"""A tenant whose source's or destination's secret no key of the platform decrypts any more (a key
retired too early) opens its pages, is told what that stops, edits it, and mends it by setting a
new secret: each was a 503 (views.one_look), leaving them nothing to do but delete it. One stored
after this process started (most likely by a process with a key being deployed) is not replaced
from here: nothing of it may be lost."""

import json
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from webhooks.fields import _fernet_for
from webhooks.models import Delivery, Destination, Source
from webhooks.services import delivery as delivery_service
from webhooks.services import processing, secret_health
from webhooks.services.ingest import forget_cached_sources

from .api_helpers import api_get, api_patch, api_post, make_delivery, make_event, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe
from .test_secret_unreadable_paths import DAMAGED, foreign_token, store_raw

pytestmark = pytest.mark.django_db

NEW_STRIPE_SECRET = "whsec_" + "n" * 32


def retired_key_token(plaintext: str = "a secret under a key retired too early") -> str:
    """A well-formed Fernet token under a key no process has, made before this process started: a key
    retired too early (test_secret_unreadable_paths.foreign_token's are made now, as by a process
    that has a key being deployed)."""
    made_at = int(secret_health.PROCESS_STARTED_AT) - 3600
    return Fernet(Fernet.generate_key()).encrypt_at_time(plaintext.encode(), made_at).decode()


def raw(model, pk, column: str = "secret") -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def _no_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def unreadable(organization):
    """A Stripe source and a destination fed by it, each with every secret unreadable (a foreign key's
    tokens); their hints stay as they were saved."""
    source = make_source(organization)
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/hook", sources=[source], custom_headers={"X-Api-Key": "k" * 24}
    )
    for column in ("secret", "previous_secret", "custom_headers"):
        store_raw(Destination, destination.pk, retired_key_token(), column)
    for column in ("secret", "previous_secret"):
        store_raw(Source, source.pk, retired_key_token(), column)
    forget_cached_sources()
    return {"source": Source.objects.defer("secret", "previous_secret").get(pk=source.pk), "destination": destination}


@pytest.fixture
def tenant(client, owner):
    client.force_login(owner)
    client.raise_request_exception = True
    return client


def page(name, row):
    return reverse(f"dashboard:{name}", args=["acme", row.pk])


@pytest.mark.parametrize(
    ("name", "what", "mend"),
    [
        ("source_detail", "source", "Set a new signing secret"),
        ("source_edit", "source", "Set a new signing secret"),
        ("source_rotate", "source", None),
        ("source_test", "source", "Set a new signing secret"),
        ("destination_detail", "destination", "Generate a new signing secret"),
        ("destination_edit", "destination", "Generate a new signing secret"),
        ("destination_rotate", "destination", None),
    ],
)
def test_each_page_opens_and_says_the_secret_can_no_longer_be_read(tenant, unreadable, name, what, mend):
    response = tenant.get(page(name, unreadable[what]))

    assert response.status_code == 200, response.content[:400]
    text = response.content.decode()
    assert "none of its encryption keys opens the stored value" in text
    if what == "source":
        assert "Its signing secret can no longer be read" in text
        assert "every request to this source's ingest URL is answered 503 and nothing is stored" in text
    else:
        assert "Its signing secret and custom headers can no longer be read" in text
        assert "the platform holds this destination's deliveries unsent" in text
        assert "and the custom headers are set again" in text
    if mend:
        assert mend in text
    assert raw(type(unreadable[what]), unreadable[what].pk) not in text  # never the stored value


@pytest.mark.parametrize("what", ["source", "destination"])
def test_the_detail_page_shows_unreadable_where_the_hint_was(tenant, unreadable, what):
    row = unreadable[what]
    text = tenant.get(page(f"{what}_detail", row)).content.decode()
    assert '<dt>Signing secret</dt><dd class="mono">unreadable' in text
    assert row.secret_hint not in text


def test_the_sources_list_shows_unreadable_where_the_hint_was(tenant, organization, unreadable):
    readable = make_source(organization, name="Readable")
    text = tenant.get(reverse("dashboard:sources", args=["acme"])).content.decode()
    assert text.count('data-label="Secret">unreadable</td>') == 1
    assert f'data-label="Secret">{readable.secret_hint}</td>' in text


def test_a_damaged_secret_is_said_to_be_damaged(tenant, organization):
    source = make_source(organization)
    store_raw(Source, source.pk, DAMAGED)
    text = tenant.get(page("source_detail", source)).content.decode()
    assert "the stored value is damaged, and no key will ever read it" in text
    assert "may pass by itself" not in text


def test_a_source_with_an_unreadable_secret_is_renamed_and_stopped_without_touching_it(tenant, unreadable):
    source = unreadable["source"]
    stored = raw(Source, source.pk)

    edited = tenant.post(page("source_edit", source), {"name": "Billing", "allowed_networks": ""})
    assert edited.status_code == 302, edited.content[:400]
    stopped = tenant.post(page("source_set_active", source), {"active": "0"})
    assert stopped.status_code == 302, stopped.content[:400]
    assert tenant.get(page("source_set_active", source)).status_code == 302  # stopped: nothing to confirm

    assert Source.objects.defer("secret", "previous_secret").get(pk=source.pk).name == "Billing"
    assert raw(Source, source.pk) == stored


def test_the_stop_confirmation_opens(tenant, unreadable):
    response = tenant.get(page("source_set_active", unreadable["source"]))
    assert response.status_code == 200, response.content[:400]


def test_a_new_source_secret_replaces_the_unreadable_one_and_ingest_takes_it(client, tenant, unreadable):
    source = unreadable["source"]
    body = json.dumps({"id": "evt_after_the_new_secret", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 503

    form = tenant.get(page("source_rotate", source))
    assert "so it is replaced at once: no overlap is possible" in form.content.decode()
    # No overlap offered: the secret it would keep verifies nothing.
    assert 'type="hidden" name="overlap_seconds"' in form.content.decode()
    response = tenant.post(page("source_rotate", source), {"new_secret": NEW_STRIPE_SECRET, "overlap_seconds": "0"})
    assert response.status_code == 302, response.content[:400]

    source = Source.objects.get(pk=source.pk)  # every secret readable again
    assert source.secret == NEW_STRIPE_SECRET and source.previous_secret == ""
    assert source.previous_secret_expires_at is None
    forget_cached_sources()
    assert post_stripe(client, source, body, NEW_STRIPE_SECRET).status_code in (200, 202)
    detail = tenant.get(page("source_detail", source)).content.decode()
    assert "can no longer be read" not in detail and source.secret_hint in detail
    assert f"Signing secret set (ending in {source.secret_hint})" in detail  # replaced, not "rotated"


def test_an_overlap_asked_for_keeps_nothing_unreadable(tenant, unreadable):
    # A form posted with an overlap (the page offers none): the unreadable secret is not kept for it.
    source = unreadable["source"]
    response = tenant.post(page("source_rotate", source), {"new_secret": NEW_STRIPE_SECRET, "overlap_seconds": "3600"})
    assert response.status_code == 302, response.content[:400]
    source = Source.objects.get(pk=source.pk)
    assert source.previous_secret == "" and source.previous_secret_expires_at is None


def test_a_test_event_is_refused_with_the_reason(tenant, unreadable):
    response = tenant.post(page("source_test", unreadable["source"]), {"fixture": "", "payload": ""})
    assert response.status_code == 200, response.content[:400]
    assert "signing secret can no longer be read by the platform: set a new one first" in response.content.decode()


def test_a_destination_with_unreadable_secrets_is_edited_without_touching_them(tenant, unreadable):
    destination = unreadable["destination"]
    stored = {column: raw(Destination, destination.pk, column) for column in ("secret", "custom_headers")}

    response = tenant.post(
        page("destination_edit", destination),
        {
            "name": "Billing app",
            "url": "http://127.0.0.1:9/billing",
            "sources": [destination.subscriptions.get().source_id],
            "timeout_seconds": "15",
        },
    )

    assert response.status_code == 302, response.content[:400]
    changed = Destination.objects.defer("secret", "previous_secret", "custom_headers").get(pk=destination.pk)
    assert (changed.name, changed.url) == ("Billing app", "http://127.0.0.1:9/billing")
    assert {column: raw(Destination, destination.pk, column) for column in stored} == stored


def test_unreadable_custom_headers_are_set_again(tenant, unreadable):
    destination = unreadable["destination"]
    form = {
        "name": destination.name,
        "url": destination.url,
        "sources": [destination.subscriptions.get().source_id],
        "timeout_seconds": "15",
        "custom_headers_set": "X-Team: billing",
    }
    # Not merged with headers no key reads, nor dropping one unasked: each is to be named.
    refused = tenant.post(page("destination_edit", destination), form)
    assert refused.status_code == 200
    assert "name each of X-Api-Key to set it again or remove it" in refused.content.decode()

    response = tenant.post(page("destination_edit", destination), {**form, "custom_headers_remove": ["X-Api-Key"]})
    assert response.status_code == 302, response.content[:400]
    changed = Destination.objects.defer("secret", "previous_secret").get(pk=destination.pk)
    # The unreadable X-Api-Key is gone (nothing could send it); the one set again is readable.
    assert changed.custom_header_values() == {"X-Team": "billing"}
    assert [item["name"] for item in changed.custom_header_hints] == ["X-Team"]


def test_a_new_destination_secret_replaces_the_unreadable_one_and_held_deliveries_go_out(
    tenant, organization, unreadable, httpserver
):
    source = unreadable["source"]
    destination = unreadable["destination"]
    Destination.objects.filter(pk=destination.pk).update(url=httpserver.url_for("/hook"))
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING, attempts=0)
    httpserver.expect_request("/hook").respond_with_data("ok")

    form = tenant.get(page("destination_rotate", destination)).content.decode()
    assert 'type="hidden" name="overlap_seconds"' in form
    rotated = tenant.post(page("destination_rotate", destination), {"overlap_seconds": "0"})
    assert rotated.status_code == 302, rotated.content[:400]
    shown = tenant.get(rotated["Location"])
    assert shown.status_code == 200
    # The custom headers, unreadable too, are set again (or removed) on the edit page.
    edited = tenant.post(
        page("destination_edit", destination),
        {
            "name": destination.name,
            "url": httpserver.url_for("/hook"),
            "sources": [source.pk],
            "timeout_seconds": "15",
            "custom_headers_remove": ["X-Api-Key"],
        },
    )
    assert edited.status_code == 302, edited.content[:400]

    destination = Destination.objects.get(pk=destination.pk)  # every secret readable again
    assert destination.secret == shown.context["secret"] and destination.previous_secret == ""
    assert destination.custom_header_values() == {}
    assert "can no longer be read" not in tenant.get(page("destination_detail", destination)).content.decode()
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUCCEEDED


@pytest.mark.parametrize("name", ["destination_set_paused", "destination_bulk_retry", "destination_send_waiting_now"])
def test_the_destination_buttons_answer(tenant, unreadable, name, monkeypatch):
    from webhooks.services import operations

    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    data = {"paused": "1"} if name == "destination_set_paused" else {}
    response = tenant.post(page(name, unreadable["destination"]), data)
    assert response.status_code == 302, response.content[:400]


def test_a_destination_form_opens_while_a_source_offered_cannot_be_read(tenant, unreadable):
    # The form lists the organization's sources to tick: it loaded their secrets.
    response = tenant.get(reverse("dashboard:destination_create", args=["acme"]))
    assert response.status_code == 200, response.content[:400]


# --- The REST API: the same services --------------------------------------------------------------


@pytest.mark.parametrize("what", ["source", "destination"])
def test_the_api_reads_one_with_unreadable_where_the_hint_was(client, organization, unreadable, what):
    key = make_key(organization)[1]
    read = api_get(client, key, f"/api/v1/{what}s/{unreadable[what].pk}")
    assert read.status_code == 200, read.content[:400]
    assert read.json()["secret_hint"] == "unreadable" and read.json()["previous_secret_valid_until"] is None


def test_the_api_rotates_an_unreadable_source_secret(client, organization, unreadable):
    key = make_key(organization)[1]
    source = unreadable["source"]
    renamed = api_patch(client, key, f"/api/v1/sources/{source.pk}", {"name": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["secret_hint"] == "unreadable", renamed.content[:400]
    response = api_post(client, key, f"/api/v1/sources/{source.pk}/rotate_secret", {"secret": NEW_STRIPE_SECRET})
    assert response.status_code == 200, response.content[:400]
    assert response.json()["secret_hint"] == "…" + NEW_STRIPE_SECRET[-4:]
    assert Source.objects.get(pk=source.pk).secret == NEW_STRIPE_SECRET


def test_the_api_rotates_an_unreadable_destination_secret_and_changes_it(client, organization, unreadable):
    key = make_key(organization)[1]
    destination = unreadable["destination"]
    renamed = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {"name": "Renamed"})
    assert renamed.status_code == 200, renamed.content[:400]
    path = f"/api/v1/destinations/{destination.pk}"
    refused = api_patch(client, key, path, {"custom_headers": {"X-Team": "billing"}})
    assert refused.status_code == 400 and "name each of X-Api-Key" in refused.content.decode()
    headers = api_patch(client, key, path, {"custom_headers": {"X-Team": "billing", "x-api-key": None}})
    assert headers.status_code == 200, headers.content[:400]
    rotated = api_post(client, key, f"/api/v1/destinations/{destination.pk}/rotate_secret", {"keep_previous_for": 0})
    assert rotated.status_code == 200, rotated.content[:400]
    destination = Destination.objects.get(pk=destination.pk)
    assert destination.secret == rotated.json()["secret"] and destination.name == "Renamed"
    assert destination.custom_header_values() == {"X-Team": "billing"}
    assert api_get(client, key, f"/api/v1/destinations/{destination.pk}").status_code == 200


# --- A key being deployed: stored after this process started, read by the processes that have it ----


@pytest.fixture
def deploying(organization):
    """A Stripe source and a destination whose current secret was just rotated by a process that has a
    new key (its token made now, under a key this process lacks), the secret before kept for an
    overlap, which this process reads."""
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    until = timezone.now() + timedelta(hours=1)
    for model, row in ((Source, source), (Destination, destination)):
        model.objects.filter(pk=row.pk).update(previous_secret=STRIPE_SECRET, previous_secret_expires_at=until)
        store_raw(model, row.pk, foreign_token())
    forget_cached_sources()
    return {"source": source, "destination": destination}


def stored_secrets(model, pk) -> tuple:
    return (raw(model, pk), raw(model, pk, "previous_secret"), raw(model, pk, "previous_secret_expires_at"))


@pytest.mark.parametrize("what", ["source", "destination"])
def test_during_a_key_deploy_the_pages_say_it_passes_and_offer_no_replacement(tenant, deploying, what):
    text = tenant.get(page(f"{what}_detail", deploying[what])).content.decode()
    assert "This server cannot read its signing secret yet" in text
    assert "Nothing is lost, and nothing needs replacing" in text
    assert "can no longer be read" not in text and "retired too early" not in text
    assert "Set a new signing secret" not in text and "Generate a new signing secret" not in text
    # Its rotation form offers the overlap as usual: sent to a process with the key, it is kept.
    form = tenant.get(page(f"{what}_rotate", deploying[what])).content.decode()
    assert 'type="hidden" name="overlap_seconds"' not in form and "no overlap is possible" not in form


@pytest.mark.parametrize("what", ["source", "destination"])
def test_during_a_key_deploy_a_rotation_here_loses_nothing(tenant, deploying, what):
    # Replaced from here, the current secret (read by every process with the new key) would be gone,
    # and the overlap asked for with it: the provider's (receiver's) requests refused meanwhile.
    row = deploying[what]
    model = type(row)
    before = stored_secrets(model, row.pk)
    data = {"overlap_seconds": "3600", "stop_previous": "on"}
    if what == "source":
        data["new_secret"] = NEW_STRIPE_SECRET

    response = tenant.post(page(f"{what}_rotate", row), data)

    assert response.status_code == 503
    assert "Nothing was changed" in response.content.decode() and response["Retry-After"]
    assert stored_secrets(model, row.pk) == before


@pytest.mark.parametrize("what", ["source", "destination"])
def test_during_a_key_deploy_an_api_rotation_here_loses_nothing(client, organization, deploying, what):
    row = deploying[what]
    model = type(row)
    before = stored_secrets(model, row.pk)
    body = {"stop_previous": True, **({"secret": NEW_STRIPE_SECRET} if what == "source" else {})}

    response = api_post(client, make_key(organization)[1], f"/api/v1/{what}s/{row.pk}/rotate_secret", body)

    assert response.status_code == 503, response.content[:400]
    assert response.json()["error"] == "secret_unreadable" and response["Retry-After"]
    assert stored_secrets(model, row.pk) == before


# --- Only the previous secret (a rotation's overlap) unreadable -------------------------------------


def test_an_unreadable_previous_secret_is_named_as_the_previous_one(tenant, organization):
    source = make_source(organization)
    until = timezone.now() + timedelta(hours=1)
    Source.objects.filter(pk=source.pk).update(previous_secret_expires_at=until)
    store_raw(Source, source.pk, retired_key_token(), "previous_secret")

    text = tenant.get(page("source_detail", source)).content.decode()

    assert "Its previous signing secret can no longer be read" in text
    assert "The current signing secret reads" in text
    assert "Its signing secret can no longer be read" not in text
    assert "Until its overlap ends and it is forgotten, or a rotation stops it" in text
    # Its ingest takes what the current secret signs (it answered 503 to every request).
    assert "Requests signed with the current signing secret are accepted as usual" in text
    assert "every request to this source's ingest URL" not in text
    assert f'<dt>Signing secret</dt><dd class="mono">{source.secret_hint}' in text
    # A rotation of a current secret that reads: rotated, not "set" as if there had been none.
    response = tenant.post(
        page("source_rotate", source),
        {"new_secret": NEW_STRIPE_SECRET, "overlap_seconds": "3600", "stop_previous": "on"},
    )
    assert response.status_code == 302, response.content[:400]
    assert "Secret rotated" in tenant.get(response["Location"]).content.decode()
    assert Source.objects.get(pk=source.pk).previous_secret == STRIPE_SECRET


@pytest.mark.parametrize("what", ["source", "destination"])
def test_the_api_lists_say_unreadable_as_the_read_of_one_does(client, organization, unreadable, what):
    # The list showed the hint as saved, the read of that one row "unreadable".
    readable = make_source(organization, name="Readable") if what == "source" else None
    if what == "destination":
        readable, _ = make_destination(organization, "http://127.0.0.1:9/readable")
    key = make_key(organization)[1]

    listed = api_get(client, key, f"/api/v1/{what}s")

    assert listed.status_code == 200, listed.content[:400]
    hints = {row["id"]: row["secret_hint"] for row in listed.json()["results"]}
    assert hints == {unreadable[what].pk: "unreadable", readable.pk: readable.secret_hint}
    one = api_get(client, key, f"/api/v1/{what}s/{unreadable[what].pk}").json()
    assert next(row for row in listed.json()["results"] if row["id"] == one["id"]) == one


def test_during_a_key_deploy_a_rotation_sent_again_with_its_idempotency_key_runs(client, organization, settings):
    # The 503 is not kept as the key's answer: sent again to a process with the new key, it rotates.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook")
    key = make_key(organization)[1]
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    path = f"/api/v1/destinations/{destination.pk}/rotate_secret"
    current = api_post(client, key, path, {"keep_previous_for": 0}).json()["secret"]

    def rotate():
        return client.post(
            path,
            {"keep_previous_for": 3600},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
            HTTP_IDEMPOTENCY_KEY="rotate-once",
        )

    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    assert rotate().status_code == 503
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    rotated = rotate()
    assert rotated.status_code == 200, rotated.content[:400]
    destination = Destination.objects.get(pk=destination.pk)
    assert (destination.secret, destination.previous_secret) == (rotated.json()["secret"], current)
