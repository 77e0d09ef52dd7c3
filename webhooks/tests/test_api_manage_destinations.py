"""Destinations created, changed, rotated and deleted through the REST API, by the dashboard's services."""

import io
import json
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from organizations.models import ApiKey, AuditLog
from webhooks import fields
from webhooks.api import views_manage
from webhooks.models import Delivery, Destination, Source, Subscription
from webhooks.services import delivery as delivery_service
from webhooks.services import destinations as destinations_service
from webhooks.services import processing
from webhooks.tests.delivering import deliver_now

from .api_helpers import api_delete, api_get, api_patch, api_post, make_delivery, make_event, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe


@pytest.fixture
def writer(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")


@pytest.fixture
def key(writer):
    return writer[1]


@pytest.fixture
def dispatches(monkeypatch):
    """The delivery is driven by the test; dispatcher scheduling is counted instead of queued."""
    scheduled = []
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    return scheduled


def _by_key(action: str, api_key: ApiKey) -> AuditLog:
    entry = AuditLog.objects.get(action=action)
    assert entry.actor_type == AuditLog.ActorType.API_KEY and entry.actor_user is None
    assert api_key.prefix in entry.actor_label and entry.organization_id == api_key.organization_id
    return entry


def _raw_secret_columns(destination_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret, previous_secret FROM webhooks_destination WHERE id = %s", [destination_id])
        return " ".join(cursor.fetchone())


def test_a_created_destination_receives_a_delivery_signed_with_its_secret(
    client, organization, writer, httpserver, dispatches
):
    api_key, key = writer
    created = api_post(
        client, key, "/api/v1/sources", {"provider": "stripe", "name": "Stripe live", "secret": STRIPE_SECRET}
    ).json()
    response = api_post(
        client,
        key,
        "/api/v1/destinations",
        {
            "name": "Billing app",
            "url": httpserver.url_for("/hook"),
            "sources": [created["id"]],
            "event_types": ["invoice.*"],
            "timeout_seconds": 5,
            "retry_client_errors": True,
        },
    )
    assert response.status_code == 201, response.content
    shown = response.json()
    secret = shown["secret"]
    assert secret.startswith("whsec_") and shown["secret_hint"] == "…" + secret[-4:]
    assert shown["timeout_seconds"] == 5 and shown["retry_client_errors"] is True
    assert shown["subscriptions"] == [{"source": created["id"], "event_types": ["invoice.*"]}]
    assert response["Location"] == f"http://testserver/api/v1/destinations/{shown['id']}"
    entry = _by_key("destination.created", api_key)
    assert secret not in json.dumps(entry.changes)
    _by_key("subscription.created", api_key)
    assert secret not in _raw_secret_columns(shown["id"])

    later = api_get(client, key, f"/api/v1/destinations/{shown['id']}")
    assert later.json()["secret_hint"] == shown["secret_hint"] and "secret" not in later.json()
    assert (
        secret not in later.content.decode()
        and secret not in api_get(client, key, "/api/v1/destinations").content.decode()
    )

    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("thanks", status=200)
    source = Source.objects.get(pk=created["id"])
    body = json.dumps({"id": "evt_to_api_destination", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    assert processing.process_received_events() == 1
    delivery = Delivery.objects.get()
    deliver_now(delivery.pk)
    request, _ = httpserver.log[0]
    assert Webhook(secret).verify(request.get_data(), dict(request.headers))["id"] == "evt_to_api_destination"
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUCCEEDED


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "http://127.0.0.1:9/x"}, "name"),
        ({"name": "x"}, "url"),
        ({"name": "x", "url": "not a url"}, "url"),
        ({"name": "x", "url": "http://user:pw@127.0.0.1:9/x"}, "url"),
        ({"name": "x", "url": "http://testserver/in/loop/"}, "url"),
        ({"name": "bad\nname", "url": "http://127.0.0.1:9/x"}, "name"),
        ({"name": "x", "url": "http://127.0.0.1:9/x", "timeout_seconds": 0.5}, "timeout_seconds"),
        ({"name": "x", "url": "http://127.0.0.1:9/x", "timeout_seconds": 61}, "timeout_seconds"),
        ({"name": "x", "url": "http://127.0.0.1:9/x", "event_types": ["invoice.*"]}, "event_types"),
        ({"name": "x", "url": "http://127.0.0.1:9/x", "sources": ["one"]}, "sources"),
        ({"name": "x", "url": "http://127.0.0.1:9/x", "sources": [999999]}, "sources"),
        ({"name": "x", "url": "http://127.0.0.1:9/x", "sources": "SOURCE", "event_types": ["a b"]}, "sources"),
    ],
)
def test_create_refusals_name_their_field(client, organization, key, body, field):
    response = api_post(client, key, "/api/v1/destinations", body)
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"], response.json()
    assert not Destination.objects.exists() and not AuditLog.objects.filter(action="destination.created").exists()


def test_bad_event_type_patterns_are_refused(client, organization, key):
    source = make_source(organization)
    for patterns in (["has space"], ["invoice.[paid"], ["x" * 256]):
        body = {"name": "x", "url": "http://127.0.0.1:9/x", "sources": [source.pk], "event_types": patterns}
        response = api_post(client, key, "/api/v1/destinations", body)
        assert response.status_code == 400 and "event_types" in response.json()["fields"], patterns
    assert not Destination.objects.exists()


def test_private_addresses_are_refused_unless_allowed(client, organization, key, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    response = api_post(client, key, "/api/v1/destinations", {"name": "x", "url": "http://127.0.0.1:9/x"})
    assert response.status_code == 400 and "url" in response.json()["fields"]
    # The tenant is told it is the platform's rule, not asked to change a setting only its operator can.
    (reason,) = response.json()["fields"]["url"]
    assert "which this platform does not send to (its operator can allow" in reason, reason
    assert not Destination.objects.exists()


def test_another_organizations_source_is_refused_as_an_unknown_one(client, organization, other_organization, key):
    theirs = make_source(other_organization)
    mine = make_source(organization)
    answers = []
    for source_id in (theirs.pk, theirs.pk + 1000):
        body = {"name": "x", "url": "http://127.0.0.1:9/x", "sources": [mine.pk, source_id]}
        response = api_post(client, key, "/api/v1/destinations", body)
        assert response.status_code == 400, response.content
        answers.append(response.json()["fields"]["sources"][0].replace(str(source_id), "<id>"))
    assert answers[0] == answers[1]  # the same answer whether it exists elsewhere or not at all
    assert not Destination.objects.exists() and not Subscription.objects.exists()

    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", sources=[mine])
    response = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {"sources": [theirs.pk]})
    assert response.status_code == 400 and "sources" in response.json()["fields"]
    assert list(Subscription.objects.values_list("source_id", flat=True)) == [mine.pk]


def test_patch_changes_what_is_given_and_keeps_the_rest(client, organization, writer):
    api_key, key = writer
    first, second = make_source(organization, name="first"), make_source(organization, name="second")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", sources=[first], event_types=["invoice.*"])
    path = f"/api/v1/destinations/{destination.pk}"

    response = api_patch(client, key, path, {"name": "renamed", "timeout_seconds": 30})
    assert response.status_code == 200, response.content
    shown = response.json()
    assert shown["name"] == "renamed" and shown["timeout_seconds"] == 30
    assert shown["url"] == "http://127.0.0.1:9/x" and shown["retry_client_errors"] is False
    assert shown["subscriptions"] == [{"source": first.pk, "event_types": ["invoice.*"]}]
    entry = _by_key("destination.updated", api_key)
    assert entry.changes == {"name": ["endpoint", "renamed"], "timeout_seconds": [15.0, 30]}

    response = api_patch(client, key, path, {"sources": [first.pk, second.pk], "retry_client_errors": True})
    assert response.status_code == 200, response.content
    assert response.json()["subscriptions"] == [
        {"source": first.pk, "event_types": ["invoice.*"]},
        {"source": second.pk, "event_types": ["invoice.*"]},
    ]
    assert response.json()["retry_client_errors"] is True

    response = api_patch(client, key, path, {"event_types": ["charge.*", ""]})
    assert {tuple(s["event_types"]) for s in response.json()["subscriptions"]} == {("charge.*",)}

    # No source left: the filters go with the subscriptions that held them.
    response = api_patch(client, key, path, {"sources": []})
    assert response.status_code == 200 and response.json()["subscriptions"] == []
    response = api_patch(client, key, path, {"event_types": ["push"]})
    assert response.status_code == 400 and "event_types" in response.json()["fields"]


def test_the_same_patch_sent_twice_at_once_adds_each_source_once(client, organization, key, monkeypatch):
    """The second PATCH read the destination (and its sources) before the first committed; it waits
    for the first's row lock and then must see the link the first made, not add it again (500)."""
    from webhooks.api import views
    from webhooks.services.destinations import subscription_create

    first, second = make_source(organization, name="first"), make_source(organization, name="second")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", sources=[first])
    looked_up = views.DestinationLookup.destination
    raced = []

    def read_before_the_other_patch_committed(view, destination_id):
        found = looked_up(view, destination_id)
        if not raced:  # the PATCH's own lookup, not the answer's
            assert [link.source_id for link in found.subscriptions.all()] == [first.pk]  # prefetched
            raced.append(subscription_create(destination=found, source=second, event_types=[]))  # the other PATCH
        return found

    monkeypatch.setattr(views.DestinationLookup, "destination", read_before_the_other_patch_committed)
    response = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {"sources": [first.pk, second.pk]})
    assert response.status_code == 200, response.content
    assert sorted(Subscription.objects.filter(destination=destination).values_list("source_id", flat=True)) == [
        first.pk,
        second.pk,
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["post", "patch"])
def test_a_source_deleted_while_a_destination_is_saved_is_a_conflict(client, organization, key, monkeypatch, method):
    from webhooks.api import serializers_manage

    kept, doomed = make_source(organization, name="kept"), make_source(organization, name="doomed")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", sources=[kept])
    checked = serializers_manage.DestinationSerializerBase.validate_sources

    def deleted_once_checked(serializer, ids):
        sources = checked(serializer, ids)
        Source.objects.filter(pk=doomed.pk).delete()  # another request, committed
        return sources

    monkeypatch.setattr(serializers_manage.DestinationSerializerBase, "validate_sources", deleted_once_checked)
    body = {"sources": [kept.pk, doomed.pk]}
    if method == "post":
        response = api_post(client, key, "/api/v1/destinations", {"name": "new", "url": "http://127.0.0.1:9/y", **body})
    else:
        response = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", body)
    assert response.status_code == 409 and response.json()["error"] == "conflict", response.content
    assert Destination.objects.count() == 1 and Subscription.objects.get().source_id == kept.pk


@pytest.mark.django_db(transaction=True)
def test_a_destination_deleted_while_it_is_patched_is_not_found(client, organization, key, monkeypatch):
    from webhooks.api import serializers_manage

    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    checked = serializers_manage.DestinationUpdateSerializer.validate

    def deleted_once_checked(serializer, data):
        Destination.objects.filter(pk=destination.pk).delete()  # a DELETE, committed
        return checked(serializer, data)

    monkeypatch.setattr(serializers_manage.DestinationUpdateSerializer, "validate", deleted_once_checked)
    response = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {"name": "renamed"})
    assert response.status_code == 404 and response.json()["error"] == "not_found", response.content


def test_patch_refusals_change_nothing(client, organization, key, settings):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    path = f"/api/v1/destinations/{destination.pk}"
    for body, field in (
        ({"url": "http://user:pw@127.0.0.1:9/x"}, "url"),
        ({"url": "ftp:/nothing"}, "url"),
        ({"name": ""}, "name"),
        ({"timeout_seconds": "slow"}, "timeout_seconds"),
        ({"retry_client_errors": "sometimes"}, "retry_client_errors"),
    ):
        response = api_patch(client, key, path, body)
        assert response.status_code == 400 and field in response.json()["fields"], (body, response.content)
    destination.refresh_from_db()
    assert destination.name == "endpoint" and destination.url == "http://127.0.0.1:9/x"
    assert not AuditLog.objects.filter(action="destination.updated").exists()


def test_rotation_shows_the_new_secret_once_and_signs_with_both_for_the_window(client, organization, writer):
    api_key, key = writer
    destination, old_secret = make_destination(organization, "http://127.0.0.1:9/x")
    path = f"/api/v1/destinations/{destination.pk}/rotate_secret"
    response = api_post(client, key, path, {"keep_previous_for": 3600})
    assert response.status_code == 200, response.content
    secret = response.json()["secret"]
    assert secret.startswith("whsec_") and secret != old_secret
    assert response.json()["secret_hint"] == "…" + secret[-4:] and response.json()["previous_secret_valid_until"]
    destination.refresh_from_db()
    assert destination.secret == secret and destination.previous_secret == old_secret
    entry = _by_key("destination.secret_rotated", api_key)
    assert entry.changes["overlap_seconds"] == 3600 and secret not in json.dumps(entry.changes)
    assert secret not in _raw_secret_columns(destination.pk) and old_secret not in _raw_secret_columns(destination.pk)
    assert secret not in api_get(client, key, f"/api/v1/destinations/{destination.pk}").content.decode()

    again = api_post(client, key, path, {})
    assert again.status_code == 409 and "stop_previous" in again.json()["detail"]
    again = api_post(client, key, path, {"stop_previous": True, "keep_previous_for": 0})
    assert again.status_code == 200 and again.json()["previous_secret_valid_until"] is None
    bad = api_post(client, key, path, {"keep_previous_for": "a while"})
    assert bad.status_code == 400 and "keep_previous_for" in bad.json()["fields"]


def test_delete_removes_the_destination_and_its_deliveries_and_keeps_the_events(client, organization, writer):
    api_key, key = writer
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", sources=[source])
    event = make_event(source)
    make_delivery(event, destination, status=Delivery.Status.IN_FLIGHT, attempts=1)
    response = api_delete(client, key, f"/api/v1/destinations/{destination.pk}")
    assert response.status_code == 202 and response.json() == {"id": destination.pk, "state": "deleting"}
    assert _by_key("destination.deletion_requested", api_key).changes == {
        "name": "endpoint",
        "url": "http://127.0.0.1:9/x",
        "was_active": True,
    }
    assert api_delete(client, key, f"/api/v1/destinations/{destination.pk}").status_code == 404
    # Its rows go in the background; the events stay.
    from webhooks.services.destination_deletion import destination_deletion_run

    assert destination_deletion_run(destination_id=destination.pk).finished
    assert not Destination.objects.exists() and not Delivery.objects.exists()
    event.refresh_from_db()
    assert AuditLog.objects.get(action="destination.deleted").changes["deleted"] == {
        "deliveries": 1,
        "delivery attempts": 1,
        "source–destination links": 1,
    }


def test_another_organizations_destination_is_not_found(client, other_organization, key):
    theirs, secret = make_destination(other_organization, "http://127.0.0.1:9/theirs")
    for call, path, body in (
        (api_patch, f"/api/v1/destinations/{theirs.pk}", {"name": "mine now"}),
        (api_post, f"/api/v1/destinations/{theirs.pk}/rotate_secret", {}),
        (api_delete, f"/api/v1/destinations/{theirs.pk}", None),
    ):
        response = call(client, key, path, body) if body is not None else call(client, key, path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path
    theirs.refresh_from_db()
    assert theirs.name == "endpoint" and theirs.secret == secret


def test_a_read_only_key_changes_nothing(client, organization):
    destination, secret = make_destination(organization, "http://127.0.0.1:9/x")
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    for call, path, body in (
        (api_post, "/api/v1/destinations", {"name": "x", "url": "http://127.0.0.1:9/y"}),
        (api_patch, f"/api/v1/destinations/{destination.pk}", {"name": "renamed"}),
        (api_post, f"/api/v1/destinations/{destination.pk}/rotate_secret", {}),
        (api_delete, f"/api/v1/destinations/{destination.pk}", None),
    ):
        response = call(client, key, path, body) if body is not None else call(client, key, path)
        assert response.status_code == 403 and response.json()["error"] == "read_only_key", path
    assert api_get(client, key, f"/api/v1/destinations/{destination.pk}").status_code == 200
    assert list(Destination.objects.values_list("name", flat=True)) == ["endpoint"]
    destination.refresh_from_db()
    assert destination.secret == secret


def test_an_organization_cannot_add_destinations_past_its_bound(
    client, organization, other_organization, key, owner, settings
):
    # Fan-out matches each event against every destination of its source in the batch all tenants
    # share: the bound keeps one tenant from making that batch slow for everyone.
    settings.MAX_DESTINATIONS_PER_ORGANIZATION = 2
    make_destination(organization, "http://127.0.0.1:9/a")
    make_destination(other_organization, "http://127.0.0.1:9/other")  # counted for its own organization
    assert (
        api_post(client, key, "/api/v1/destinations", {"name": "b", "url": "http://127.0.0.1:9/b"}).status_code == 201
    )

    refused = api_post(client, key, "/api/v1/destinations", {"name": "c", "url": "http://127.0.0.1:9/c"})
    assert refused.status_code == 400, refused.content
    assert "has 2 destinations, the most it may have" in refused.content.decode()
    client.force_login(owner)
    page = client.post(
        reverse("dashboard:destination_create", args=[organization.slug]),
        {"name": "c", "url": "http://127.0.0.1:9/c", "timeout_seconds": "15", "max_concurrency": "10"},
    )
    assert page.status_code == 200 and "has 2 destinations, the most it may have" in page.content.decode()
    with pytest.raises(CommandError, match="has 2 destinations, the most it may have"):
        call_command(
            "create_destination",
            "--org",
            organization.slug,
            "--name",
            "c",
            "--url",
            "http://127.0.0.1:9/c",
            stdout=io.StringIO(),
        )
    assert Destination.objects.filter(organization=organization).count() == 2
    assert make_destination(other_organization, "http://127.0.0.1:9/other-2")  # still has room


@pytest.mark.django_db(transaction=True)
def test_creations_at_the_same_moment_do_not_pass_the_bound_together(organization, settings, monkeypatch):
    """The count is read under a lock of the organization's row: a creation whose transaction has not
    committed yet is waited for, not missed (a burst of API calls each saw room for one more)."""
    settings.MAX_DESTINATIONS_PER_ORGANIZATION = 2
    make_destination(organization, "http://127.0.0.1:9/a")
    first_inserted, release_first = threading.Event(), threading.Event()
    real_audit = destinations_service.audit_record
    errors = []

    def audit_then_wait(**kwargs):
        real_audit(**kwargs)
        if threading.current_thread().name == "first":
            first_inserted.set()
            release_first.wait(10)

    monkeypatch.setattr(destinations_service, "audit_record", audit_then_wait)

    def create(name):
        try:
            destinations_service.destination_create(organization=organization, name=name, url="http://127.0.0.1:9/b")
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    first = threading.Thread(target=create, args=("first",), name="first")
    first.start()
    assert first_inserted.wait(10)
    second = threading.Thread(target=create, args=("second",), name="second")
    second.start()
    second.join(0.5)  # time to reach the count while the first one's destination is not committed
    release_first.set()
    first.join(10)
    second.join(10)
    assert [str(error) for error in errors] == [
        "this organization has 2 destinations, the most it may have: delete one it no longer uses, "
        "or ask the platform's operators for more"
    ]
    assert sorted(Destination.objects.filter(organization=organization).values_list("name", flat=True)) == [
        "endpoint",
        "first",
    ]


def test_a_destination_created_without_a_source_says_it_receives_nothing(client, organization, key):
    # As create_destination warns: it is made, and nothing reaches it until a source is linked.
    lonely = api_post(client, key, "/api/v1/destinations", {"name": "Lonely", "url": "http://127.0.0.1:9/x"})
    assert lonely.status_code == 201, lonely.content
    destination_id = lonely.json()["id"]
    assert lonely.json()["subscriptions"] == []
    assert lonely.json()["warnings"] == [
        "It receives nothing until a source is linked to it. Link one with "
        f'PATCH /api/v1/destinations/{destination_id} and {{"sources": [<source id>]}}.'
    ]
    assert "warnings" not in api_get(client, key, f"/api/v1/destinations/{destination_id}").json()
    # The PATCH it names links one.
    source = make_source(organization)
    linked = api_patch(client, key, f"/api/v1/destinations/{destination_id}", {"sources": [source.pk]})
    assert linked.status_code == 200 and linked.json()["subscriptions"] == [{"source": source.pk, "event_types": []}]

    with_source = api_post(
        client, key, "/api/v1/destinations", {"name": "Fed", "url": "http://127.0.0.1:9/y", "sources": [source.pk]}
    )
    assert with_source.status_code == 201 and with_source.json()["warnings"] == []


def test_a_patch_that_leaves_no_source_says_it_receives_nothing(client, organization, key):
    # As its creation does: a PATCH that unlinks the last source answers the same warning.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x", sources=[source])
    path = f"/api/v1/destinations/{destination.pk}"
    receives_nothing = [
        "It receives nothing until a source is linked to it. Link one with "
        f'PATCH /api/v1/destinations/{destination.pk} and {{"sources": [<source id>]}}.'
    ]

    renamed = api_patch(client, key, path, {"name": "renamed"})
    assert renamed.status_code == 200 and renamed.json()["warnings"] == []
    unlinked = api_patch(client, key, path, {"sources": []})
    assert unlinked.status_code == 200 and unlinked.json()["subscriptions"] == []
    assert unlinked.json()["warnings"] == receives_nothing
    # Said again by a change that leaves it without a source, until one is linked.
    assert api_patch(client, key, path, {"timeout_seconds": 20}).json()["warnings"] == receives_nothing
    assert api_patch(client, key, path, {"sources": [source.pk]}).json()["warnings"] == []


def test_reads_say_until_when_the_previous_secret_still_signs(client, organization, key, monkeypatch):
    # So that a script knows before rotating that it would be a 409 (or needs stop_previous).
    rotated, _ = make_destination(organization, "http://127.0.0.1:9/rotated")
    plain, _ = make_destination(organization, "http://127.0.0.1:9/plain")
    response = api_post(client, key, f"/api/v1/destinations/{rotated.pk}/rotate_secret", {"keep_previous_for": 60})
    until = response.json()["previous_secret_valid_until"]
    assert response.status_code == 200 and until
    assert api_get(client, key, f"/api/v1/destinations/{rotated.pk}").json()["previous_secret_valid_until"] == until
    assert api_get(client, key, f"/api/v1/destinations/{plain.pk}").json()["previous_secret_valid_until"] is None

    # Read from its column: no row's previous secret is loaded (and decrypted) for it in the list. Only
    # each row's current secret is tried, keeping none, to say "unreadable" for one that no key decrypts.
    decrypted = []
    real_decrypt = fields.decrypt
    monkeypatch.setattr(fields, "decrypt", lambda token: decrypted.append(token) or real_decrypt(token))
    listed = api_get(client, key, "/api/v1/destinations").json()["results"]
    assert {row["id"]: row["previous_secret_valid_until"] for row in listed} == {rotated.pk: until, plain.pk: None}
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM webhooks_destination WHERE organization_id = %s", [organization.pk])
        assert sorted(decrypted) == sorted(token for (token,) in cursor.fetchall())
    monkeypatch.undo()
    assert api_get(client, key, f"/api/v1/destinations/{rotated.pk}").json()["previous_secret_valid_until"] == until

    # Once the window is over (before the sweeper forgets the secret), null, and a rotation is no 409.
    Destination.objects.filter(pk=rotated.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    assert api_get(client, key, f"/api/v1/destinations/{rotated.pk}").json()["previous_secret_valid_until"] is None
    assert api_post(client, key, f"/api/v1/destinations/{rotated.pk}/rotate_secret", {}).status_code == 200


def test_a_rotation_overtaken_by_another_is_the_409_of_a_rotation_window(client, organization, writer, monkeypatch):
    # Two scripts rotate at once: the one that waits for the row's lock finds the other's window,
    # though the copy its view read before had none; it is told to confirm, as if it came second.
    _, key = writer
    destination, _ = make_destination(organization, "http://127.0.0.1:9/x")
    rotate = views_manage.destination_rotate_secret

    def overtaken(*, destination, **kwargs):
        other, _ = rotate(destination=Destination.objects.get(pk=destination.pk), overlap_seconds=3600)
        overtaken.other_secret = other.secret
        return rotate(destination=destination, **kwargs)

    monkeypatch.setattr(views_manage, "destination_rotate_secret", overtaken)
    response = api_post(client, key, f"/api/v1/destinations/{destination.pk}/rotate_secret", {})
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "conflict" and "send stop_previous: true" in response.json()["detail"]
    assert Destination.objects.get(pk=destination.pk).secret == overtaken.other_secret
