"""What deleting a source and deleting a destination share (batched_deletion's OwnerDeletions): one
short request, then the owner's rows in batches in the background. Each test runs once per kind of
owner; what only one kind does is in test_source_deletion and test_destination_deletion."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, AuditLog
from organizations.services import audit_verify_chain
from webhooks import tasks
from webhooks.forms import DestinationForm, ReplayForm
from webhooks.models import (
    Delivery,
    DeliveryAttempt,
    Destination,
    PurgedEventKey,
    SignatureNonce,
    Source,
    Subscription,
    WebhookEvent,
)
from webhooks.services import batched_deletion, destination_deletion, operations, processing, source_deletion
from webhooks.services import delivery as delivery_service
from webhooks.services.destinations import (
    DestinationBeingDeleted,
    destination_rotate_secret,
    destination_set_custom_headers,
    destination_update,
)
from webhooks.services.organization_deletion import organization_deletion_run, organization_request_deletion
from webhooks.services.scheduling import clear_flag
from webhooks.services.sources import SourceBeingDeleted, source_rotate_secret, source_set_active, source_update

from .api_helpers import api_delete, api_get, api_patch, api_post, make_key
from .factories import make_destination, make_source
from .test_organization_deletion import add_events

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
EVENTS = batched_deletion.EVENTS
LINKS = batched_deletion.LINKS


# --- Each kind's rows ------------------------------------------------------------------------


def fill(source, destination, count: int, *, prefix: str) -> None:
    """``count`` events of ``source``, each with a delivery to ``destination`` and an attempt, and a
    replay-protection record and a purged event's key."""
    add_events(source, destination, count, prefix=prefix)
    SignatureNonce.objects.create(source=source, nonce_digest=f"{prefix}-n", body_digest="b")
    PurgedEventKey.objects.create(
        source=source,
        event_id_digest=f"{prefix}-k",
        original_id=uuid.uuid4(),
        received_at=timezone.now(),
        forget_after=timezone.now(),
    )


def source_rows(source_id: int) -> dict[str, int]:
    return {
        "events": WebhookEvent.objects.filter(source_id=source_id).count(),
        "deliveries": Delivery.objects.filter(event__source_id=source_id).count(),
        "attempts": DeliveryAttempt.objects.filter(delivery__event__source_id=source_id).count(),
        "nonces": SignatureNonce.objects.filter(source_id=source_id).count(),
        "purged keys": PurgedEventKey.objects.filter(source_id=source_id).count(),
        "links": Subscription.objects.filter(source_id=source_id).count(),
        "source": Source.objects.filter(pk=source_id).count(),
    }


def destination_rows(destination_id: int) -> dict[str, int]:
    return {
        "deliveries": Delivery.objects.filter(destination_id=destination_id).count(),
        "attempts": DeliveryAttempt.objects.filter(delivery__destination_id=destination_id).count(),
        "links": Subscription.objects.filter(destination_id=destination_id).count(),
        "destination": Destination.objects.filter(pk=destination_id).count(),
    }


def three_sources(organization, other_organization):
    """Acme's source to delete (23 events) and one to keep (7), both sending to one destination;
    Globex's source (5) with its own destination."""
    doomed = make_source(organization, name="doomed")
    kept = make_source(organization, name="kept")
    destination, _ = make_destination(organization, RECEIVER, sources=[doomed, kept])
    fill(doomed, destination, 23, prefix="doomed")
    fill(kept, destination, 7, prefix="kept")
    theirs = make_source(other_organization, name="theirs")
    their_destination, _ = make_destination(other_organization, RECEIVER, sources=[theirs])
    fill(theirs, their_destination, 5, prefix="theirs")
    return doomed, kept, theirs


def three_destinations(organization, other_organization):
    """Acme's destination to delete (23 deliveries, each with an attempt) and one to keep (7), both of
    one source; Globex's destination (5) of its own source."""
    source = make_source(organization, name="shared")
    doomed, _ = make_destination(organization, RECEIVER + "/doomed", sources=[source])
    kept, _ = make_destination(organization, RECEIVER + "/kept", sources=[source])
    add_events(source, doomed, 23, prefix="doomed")
    add_events(source, kept, 7, prefix="kept")
    theirs_source = make_source(other_organization, name="theirs")
    theirs, _ = make_destination(other_organization, RECEIVER, sources=[theirs_source])
    add_events(theirs_source, theirs, 5, prefix="theirs")
    return doomed, kept, theirs


def sized_sources(organization):
    """Three sources: one without events, one with 5 and one with 500 (all to one destination)."""
    destination, _ = make_destination(organization, RECEIVER)
    first, small, big = (make_source(organization, name=name) for name in ("first", "small", "big"))
    add_events(small, destination, 5, prefix="small")
    add_events(big, destination, 500, prefix="big")
    return first, small, big


def sized_destinations(organization):
    """Three destinations: one without deliveries, one with 5 and one with 500 (all of one source)."""
    source = make_source(organization)
    first, _ = make_destination(organization, RECEIVER + "/first")
    small, _ = make_destination(organization, RECEIVER + "/small", sources=[source])
    big, _ = make_destination(organization, RECEIVER + "/big", sources=[source])
    add_events(source, small, 5, prefix="small")
    add_events(source, big, 500, prefix="big")
    return first, small, big


def source_changes(source, organization):
    return [
        lambda: source_set_active(source=source, active=True),
        lambda: source_update(source=source, name="renamed", options={}),
        lambda: source_rotate_secret(source=source, new_secret="whsec_other_secret_value"),
    ]


def destination_changes(destination, organization):
    source = make_source(organization)
    return [
        lambda: destination_update(
            destination=destination,
            name="renamed",
            url=RECEIVER,
            sources=[source],
            event_types=[],
            timeout_seconds=10,
        ),
        lambda: destination_rotate_secret(destination=destination),
        lambda: destination_set_custom_headers(destination=destination, changes={"X-Key": "value"}),
    ]


def late_link_to_source(organization, doomed):
    """A link saved meanwhile by a stale form; returns the destination, which stays."""
    late, _ = make_destination(organization, "http://127.0.0.1:9/late")
    Subscription.objects.create(organization=organization, source=doomed, destination=late)
    return late


def late_rows_of_destination(organization, doomed):
    """A delivery made by a replay, and a link saved by a form, both read before the request;
    returns their source, which stays."""
    source = make_source(organization, name="late")
    add_events(source, doomed, 1, prefix="late")
    Subscription.objects.create(organization=organization, source=source, destination=doomed)
    return source


def source_api_refusals(client, key, doomed) -> None:
    """A destination is not created linking it."""
    created = api_post(
        client, key, "/api/v1/destinations", {"name": "late", "url": RECEIVER + "/late", "sources": [doomed.pk]}
    )
    assert created.status_code == 400, created.content


def destination_admin_pages(client, doomed) -> None:
    """Its admin list's state filter and its change page say it is being deleted."""
    filtered = client.get(reverse("admin:webhooks_destination_changelist") + "?state=being_deleted")
    assert list(filtered.context["cl"].result_list) == [doomed]
    change = reverse("admin:webhooks_destination_change", args=[doomed.pk])
    assert "Being deleted" in client.get(change).content.decode()


@dataclass(frozen=True)
class Kind:
    name: str  # "source", "destination": its URL names, API path and flags
    model: type
    service: ModuleType  # source_deletion, destination_deletion
    rows_of: Callable[[int], dict[str, int]]
    bulk: str  # the kind of row that is nearly all of it, a key of rows_of
    three: Callable  # (organization, other_organization) -> doomed (23 of bulk), kept (7), theirs (5)
    sized: Callable  # (organization) -> three of 0, 5 and 500 of bulk
    requested_changes: Callable  # (big) -> the audit entry's changes when it is asked to be deleted
    progress_of_two_batches: dict  # the doomed one's deletion_progress after two batches of 5
    deleted_all: dict  # what deleting the doomed one of ``three`` deletes, by kind
    deleted_with_late: dict  # and with the rows ``come_back`` adds
    others: Callable[[], int]  # rows of another kind that its deletion leaves
    default_name: str  # of one made by the factory
    changes: Callable  # (loaded before the request, organization) -> the changes it refuses
    refusal: type
    linked_by: Callable  # (organization) -> the pks a form offers to link or send to
    come_back: Callable  # (organization, doomed) -> an object of another kind, which stays
    dashboard_message: str
    dashboard_pages: tuple[str, ...]  # each answers 404 for it
    dashboard_posts: tuple[tuple[str, dict], ...]  # each answers 404 for it
    api_refused: tuple[tuple[str, str, dict], ...]  # (verb, path after its own, body): each 404
    api_refusals: Callable = lambda client, key, doomed: None  # what else the API refuses about it
    admin_pages: Callable = lambda client, doomed: None  # what else the admin says of it

    def make_one(self, organization):
        """One made by the factory, without rows."""
        return make_source(organization) if self.name == "source" else make_destination(organization, RECEIVER)[0]

    def request(self, owner) -> bool:
        return getattr(self.service, f"{self.name}_request_deletion")(**{self.name: owner})

    def run(self, owner_id: int, **kwargs):
        return getattr(self.service, f"{self.name}_deletion_run")(**{f"{self.name}_id": owner_id}, **kwargs)

    @property
    def task(self):
        return getattr(tasks, f"delete_{self.name}")


KINDS = {
    "source": Kind(
        name="source",
        model=Source,
        service=source_deletion,
        rows_of=source_rows,
        bulk="events",
        three=three_sources,
        sized=sized_sources,
        requested_changes=lambda big: {"provider": "stripe", "name": "big", "was_active": True},
        progress_of_two_batches={EVENTS: 10, "deliveries": 10, "delivery attempts": 10},
        deleted_all={
            EVENTS: 23,
            "deliveries": 23,
            "delivery attempts": 23,
            "replay-protection records": 1,
            "purged events' keys": 1,
            LINKS: 1,
        },
        deleted_with_late={
            EVENTS: 23,
            "deliveries": 23,
            "delivery attempts": 23,
            "replay-protection records": 1,
            "purged events' keys": 1,
            LINKS: 2,
        },
        others=lambda: Destination.objects.count(),  # destinations stay; only the links go
        default_name="stripe source",
        changes=source_changes,
        refusal=SourceBeingDeleted,
        linked_by=lambda organization: {
            choice.pk for choice in DestinationForm(organization=organization).fields["sources"].queryset
        },
        come_back=late_link_to_source,
        dashboard_message="Source “doomed” is being deleted: its URL answers 404 within 5 seconds",
        dashboard_pages=("source_detail", "source_edit", "source_delete", "source_set_active"),
        dashboard_posts=(("source_delete", {}), ("source_set_active", {"active": "1"})),
        api_refused=(
            ("patch", "", {"active": True}),
            ("post", "/rotate_secret", {"secret": "whsec_new_one_here"}),
        ),
        api_refusals=source_api_refusals,
    ),
    "destination": Kind(
        name="destination",
        model=Destination,
        service=destination_deletion,
        rows_of=destination_rows,
        bulk="deliveries",
        three=three_destinations,
        sized=sized_destinations,
        requested_changes=lambda big: {"name": "endpoint", "url": RECEIVER + "/big", "was_active": True},
        progress_of_two_batches={"deliveries": 10, "delivery attempts": 10},
        deleted_all={"deliveries": 23, "delivery attempts": 23, LINKS: 1},
        deleted_with_late={"deliveries": 24, "delivery attempts": 24, LINKS: 2},
        others=lambda: WebhookEvent.objects.count(),  # the events stay
        default_name="endpoint",
        changes=destination_changes,
        refusal=DestinationBeingDeleted,
        linked_by=lambda organization: {
            choice.pk for choice in ReplayForm(organization=organization).fields["destination"].queryset
        },
        come_back=late_rows_of_destination,
        dashboard_message="Destination “doomed” is being deleted: nothing more is sent to it",
        dashboard_pages=("destination_detail", "destination_edit", "destination_delete"),
        dashboard_posts=(("destination_delete", {}),),
        api_refused=(
            ("patch", "", {"name": "back"}),
            ("post", "/rotate_secret", {}),
            ("post", "/pause", {}),
            ("post", "/send_waiting_now", {}),
        ),
        admin_pages=destination_admin_pages,
    ),
}


@pytest.fixture(params=list(KINDS))
def kind(request) -> Kind:
    return KINDS[request.param]


@pytest.fixture
def published(kind, monkeypatch):
    """Runs published for a worker, noted instead of sent."""
    sent = []
    monkeypatch.setattr(kind.task, "apply_async", lambda *a, **k: sent.append(a))
    return sent


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def owners(kind, organization, other_organization):
    """Acme's one to delete (23 of its bulk rows) and one to keep (7); Globex's (5)."""
    return kind.three(organization, other_organization)


def deleted_entry(kind) -> AuditLog:
    return AuditLog.objects.get(action=kind.service.DELETED_ACTION)


# --- The request -----------------------------------------------------------------------------


def test_the_request_only_marks_it_in_queries_that_do_not_grow_with_its_rows(
    kind, client, organization, published, django_capture_on_commit_callbacks
):
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    first, small, big = kind.sized(organization)

    def delete_by_api(owner):
        with CaptureQueriesContext(connection) as queries:
            response = api_delete(client, key, f"/api/v1/{kind.name}s/{owner.pk}")
        assert response.status_code == 202, response.content
        return len(queries), response

    delete_by_api(first)  # the key's first use writes its last use too
    with django_capture_on_commit_callbacks(execute=True):
        with_five, _ = delete_by_api(small)
    with django_capture_on_commit_callbacks(execute=True):
        with_five_hundred, response = delete_by_api(big)
    assert with_five == with_five_hundred
    assert response.json() == {"id": big.pk, "state": "deleting"}
    assert len(published) == 2  # one run for each (the first's commit callbacks were not run)
    big.refresh_from_db()
    assert big.being_deleted and not big.is_active and "script" in big.deletion_requested_by
    assert kind.rows_of(big.pk)[kind.bulk] == 500  # nothing deleted yet: that is the task's
    entry = AuditLog.objects.get(action=kind.service.DELETION_REQUESTED_ACTION, target_id=str(big.pk))
    assert entry.changes == kind.requested_changes(big)
    assert entry.actor_type == AuditLog.ActorType.API_KEY


def test_asking_twice_writes_once_and_publishes_again(
    kind, organization, published, django_capture_on_commit_callbacks
):
    owner = kind.make_one(organization)
    with django_capture_on_commit_callbacks(execute=True):
        assert kind.request(owner) is True
    stale = kind.model.objects.get(pk=owner.pk)
    clear_flag(f"{kind.name}-deletion:{owner.pk}:published")  # as if that run's message was lost
    with django_capture_on_commit_callbacks(execute=True):
        assert kind.request(stale) is False
    assert AuditLog.objects.filter(action=kind.service.DELETION_REQUESTED_ACTION).count() == 1
    assert len(published) == 2


def test_one_being_deleted_cannot_be_changed_nor_linked(kind, organization, published):
    owner = kind.make_one(organization)
    loaded_before = kind.model.objects.get(pk=owner.pk)  # as a form or PATCH read before the request
    kind.request(owner)
    for change in kind.changes(loaded_before, organization):
        with pytest.raises(kind.refusal):
            change()
    owner.refresh_from_db()
    assert owner.name == kind.default_name and not owner.is_active
    assert not Subscription.objects.filter(**{kind.name: owner}).exists()
    assert owner.pk not in kind.linked_by(organization)


# --- The run ---------------------------------------------------------------------------------


def test_the_run_deletes_everything_of_it_and_nothing_else(kind, owners, organization, published):
    doomed, kept, theirs = owners
    kept_before, theirs_before = kind.rows_of(kept.pk), kind.rows_of(theirs.pk)
    others_before = kind.others()
    kind.request(doomed)

    run = kind.run(doomed.pk, batch_size=5)
    assert run.finished
    assert set(kind.rows_of(doomed.pk).values()) == {0}
    assert kind.rows_of(kept.pk) == kept_before and kind.rows_of(theirs.pk) == theirs_before
    assert kind.others() == others_before
    done = deleted_entry(kind)
    assert done.organization_id == organization.pk and done.target_id == str(doomed.pk)
    assert done.changes["deleted"] == kind.deleted_all
    assert done.changes["name"] == doomed.name and done.changes["requested_by"] == "system"
    assert audit_verify_chain().ok
    # Again (a duplicate message): nothing more to do, nothing written.
    assert kind.run(doomed.pk).finished
    assert AuditLog.objects.filter(action=kind.service.DELETED_ACTION).count() == 1


def test_a_run_that_died_in_a_batch_is_resumed_by_the_sweeper_and_counts_once(
    kind, owners, published, monkeypatch, django_capture_on_commit_callbacks
):
    doomed, kept, _ = owners
    with django_capture_on_commit_callbacks(execute=True):
        kind.request(doomed)
    real_check = batched_deletion.check_foreign_keys
    batches = []

    def killed_in_the_third_batch():
        batches.append(1)
        if len(batches) == 3:
            raise RuntimeError("worker killed")
        real_check()

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", killed_in_the_third_batch)
    with pytest.raises(RuntimeError):
        kind.run(doomed.pk, batch_size=5)
    assert kind.rows_of(doomed.pk)[kind.bulk] == 13  # two whole batches done, the third rolled back
    assert kind.model.objects.get(pk=doomed.pk).deletion_progress == kind.progress_of_two_batches
    monkeypatch.setattr(batched_deletion, "check_foreign_keys", real_check)

    step = f"{kind.name}_deletions"
    assert processing.sweep()[step] == 0  # its message may still be on its way
    clear_flag(f"{kind.name}-deletion:{doomed.pk}:published")  # PUBLISHED_TTL_SECONDS later
    assert processing.sweep()[step] == 1 and len(published) == 2
    assert kind.task(doomed.pk) is True
    assert kind.rows_of(doomed.pk)[kind.name] == 0 and kind.rows_of(kept.pk)[kind.bulk] == 7
    assert deleted_entry(kind).changes["deleted"] == kind.deleted_all
    assert processing.sweep()[step] == 0  # nothing left to resume


def test_a_run_stops_at_its_time_limit_and_publishes_the_next(kind, owners, published, monkeypatch):
    doomed, _, _ = owners
    kind.request(doomed)
    published.clear()
    monkeypatch.setattr(batched_deletion, "RUN_SECONDS", 0)  # one batch, then the limit
    monkeypatch.setattr(kind.service, "BATCH_SIZE", 5)
    assert kind.task(doomed.pk) is False
    assert kind.rows_of(doomed.pk)[kind.bulk] == 18 and len(published) == 1


def test_one_run_at_a_time_for_each(kind, owners, published):
    import psycopg

    doomed, _, _ = owners
    kind.request(doomed)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params) as other_worker:  # a run in another worker process, holding the lock
        other_worker.execute("SELECT pg_advisory_lock(%s)", [kind.service._DELETIONS.lock_prefix + doomed.pk])
        assert kind.run(doomed.pk).busy
        assert kind.rows_of(doomed.pk)[kind.bulk] == 23


def test_rows_that_came_back_meanwhile_are_deleted_by_the_next_run(kind, owners, organization, published):
    doomed, _, _ = owners
    kind.request(doomed)
    assert not kind.run(doomed.pk, batch_size=5, max_seconds=0).finished
    stays = kind.come_back(organization, doomed)
    assert kind.run(doomed.pk, batch_size=5).finished
    assert kind.rows_of(doomed.pk)[kind.name] == 0 and type(stays).objects.filter(pk=stays.pk).exists()
    assert deleted_entry(kind).changes["deleted"] == kind.deleted_with_late


def test_an_organization_with_one_being_deleted_is_still_deleted(kind, owners, organization, published):
    doomed, _, _ = owners
    kind.request(doomed)
    kind.run(doomed.pk, batch_size=5, max_seconds=0)  # one batch, then stopped
    organization_request_deletion(organization=organization)
    assert organization_deletion_run(organization_id=organization.pk, batch_size=5).finished
    assert not kind.model.objects.filter(organization=organization).exists()
    assert kind.task(doomed.pk) is True  # its next run finds it gone
    assert not AuditLog.objects.filter(action=kind.service.DELETED_ACTION).exists()  # the organization's says it


# --- Dashboard, API and admin ----------------------------------------------------------------


def test_the_dashboard_answers_at_once_and_lists_it_as_being_deleted(kind, client, owner, owners, published):
    doomed, kept, _ = owners
    kind.model.objects.filter(pk=doomed.pk).update(name="doomed")
    client.force_login(owner)
    response = client.post(reverse(f"dashboard:{kind.name}_delete", args=["acme", doomed.pk]), follow=True)
    assert response.redirect_chain[-1] == (reverse(f"dashboard:{kind.name}s", args=["acme"]), 302)
    page = response.content.decode()
    assert kind.dashboard_message in page
    assert "Being deleted" in page
    assert reverse(f"dashboard:{kind.name}_detail", args=["acme", doomed.pk]) not in page
    assert reverse(f"dashboard:{kind.name}_detail", args=["acme", kept.pk]) in page
    for name in kind.dashboard_pages:
        assert client.get(reverse(f"dashboard:{name}", args=["acme", doomed.pk])).status_code == 404, name
    for name, data in kind.dashboard_posts:
        assert client.post(reverse(f"dashboard:{name}", args=["acme", doomed.pk]), data).status_code == 404, name
    assert kind.rows_of(doomed.pk)[kind.bulk] == 23

    kind.task(doomed.pk)
    assert "doomed" not in client.get(reverse(f"dashboard:{kind.name}s", args=["acme"])).content.decode()


def test_the_api_hides_one_being_deleted(kind, client, organization, owners, published):
    doomed, kept, _ = owners
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    path = f"/api/v1/{kind.name}s/{doomed.pk}"
    assert api_delete(client, key, path).status_code == 202
    listed = api_get(client, key, f"/api/v1/{kind.name}s").json()
    assert [item["id"] for item in listed["results"]] == [kept.pk]
    assert api_get(client, key, path).status_code == 404
    for verb, suffix, body in kind.api_refused:
        call = api_patch if verb == "patch" else api_post
        assert call(client, key, path + suffix, body).status_code == 404, suffix
    assert api_delete(client, key, path).status_code == 404  # asked already: as good as gone
    kind.api_refusals(client, key, doomed)
    assert AuditLog.objects.filter(action=kind.service.DELETION_REQUESTED_ACTION).count() == 1


def test_the_admin_deletes_it_in_the_background_too(kind, client, owners, published):
    doomed, _, _ = owners
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    url = reverse(f"admin:webhooks_{kind.name}_delete", args=[doomed.pk])
    with CaptureQueriesContext(connection) as queries:
        confirmation = client.get(url)
    assert confirmation.status_code == 200 and "deleted in the background" in confirmation.content.decode()
    assert len(queries) < 30 and "doomed_1" not in confirmation.content.decode()  # no event is listed
    response = client.post(url, {"post": "yes"}, follow=True)
    assert "is under way" in response.content.decode()
    doomed.refresh_from_db()
    assert doomed.being_deleted and kind.rows_of(doomed.pk)[kind.bulk] == 23
    assert AuditLog.objects.filter(action=kind.service.DELETION_REQUESTED_ACTION).count() == 1
    listing = client.get(reverse(f"admin:webhooks_{kind.name}_changelist")).content.decode()
    assert "being deleted" in listing
    kind.admin_pages(client, doomed)
    change = reverse(f"admin:webhooks_{kind.name}_change", args=[doomed.pk])
    assert client.post(change, {"name": "back", "is_active": "on"}).status_code == 403
    assert not kind.model.objects.get(pk=doomed.pk).is_active


def test_the_events_filter_offers_it_no_more_and_its_events_stay_listed(kind, client, owner, owners, published):
    # Nothing but its own list offers one being deleted; the events list's filter still did.
    doomed, kept, _ = owners
    of_doomed = {"source": doomed} if kind.name == "source" else {"deliveries__destination": doomed}
    doomed_events = set(WebhookEvent.objects.filter(**of_doomed).values_list("pk", flat=True))
    assert len(doomed_events) == 23
    kind.request(doomed)
    client.force_login(owner)
    events = reverse("dashboard:events", args=["acme"])

    response = client.get(events)
    offered = {value for value, _ in response.context["form"].fields[kind.name].choices}
    assert kept.pk in offered and doomed.pk not in offered
    select = re.search(rf'<select name="{kind.name}".*?</select>', response.content.decode(), re.S).group()
    assert f'<option value="{kept.pk}"' in select and f'<option value="{doomed.pk}"' not in select
    assert doomed_events <= {event.pk for event in response.context["events"]}

    # A link made before names it: the filter is said not to apply, and the list is not emptied.
    response = client.get(events, {kind.name: doomed.pk})
    assert f"Not applied: {kind.name.capitalize()}: " in response.content.decode()
    assert doomed_events <= {event.pk for event in response.context["events"]}


def test_the_other_kinds_page_no_longer_links_to_it(kind, client, owner, owners, published):
    # A destination's page lists the sources it receives from, a source's page the destinations it
    # delivers to; their subscriptions stay until the background deletion, and the page linked to
    # the one being deleted (a 404) as if it still received or delivered.
    doomed, kept, _ = owners
    other_kind = "destination" if kind.name == "source" else "source"
    subscription = Subscription.objects.filter(**{kind.name: doomed}).select_related(other_kind).first()
    other = getattr(subscription, other_kind)
    page = reverse(f"dashboard:{other_kind}_detail", args=["acme", other.pk])
    doomed_page = reverse(f"dashboard:{kind.name}_detail", args=["acme", doomed.pk])
    client.force_login(owner)
    assert doomed_page in client.get(page).content.decode()

    kind.request(doomed)

    assert doomed_page not in client.get(page).content.decode()
