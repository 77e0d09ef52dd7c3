"""The admin's delete confirmation pages count what a deletion takes along, never list it.

Django's collector lists (and loads) every related row: a destination's hundreds of thousands of
deliveries timed the page out, so an operator could not delete it from the admin. Every admin
that deletes something with many related rows (organizations, sources, destinations, users)
counts them instead, on the delete page and on "Delete selected"'s page alike.
"""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from organizations import deletion_counts
from organizations.models import AuditLog, Organization
from webhooks.models import Delivery, DeliveryAttempt, Destination, WebhookEvent
from webhooks.services import destinations as destinations_service
from webhooks.services.destination_deletion import destination_deletion_run
from webhooks.tests.factories import make_destination, make_source
from webhooks.tests.test_admin import staff_account
from webhooks.tests.test_organization_deletion import add_events

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
# Enough that a page listing them would be hundreds of kilobytes, not a few (a listed row is over a
# hundred bytes; the pages compared may differ by 50), and that the counts need a thousands separator.
MANY = 1000


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def destination(organization):
    source = make_source(organization, name="Stripe")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    add_events(source, destination, 20, prefix="few")
    return destination


def grow(destination, count: int) -> None:
    add_events(destination.subscriptions.get().source, destination, count, prefix="many")


def page(client, url, data=None):
    """The page, and how many queries it ran."""
    with CaptureQueriesContext(connection) as queries:
        response = client.post(url, data) if data else client.get(url)
    assert response.status_code == 200
    return response.content.decode(), len(queries)


def assert_same_size(before: tuple[str, int], after: tuple[str, int]) -> None:
    """The same queries, and a page as long but for the counts' digits."""
    assert after[1] == before[1]
    assert abs(len(after[0]) - len(before[0])) < 50, (len(before[0]), len(after[0]))


def delete_selected(model_name: str, *pks):
    return reverse(f"admin:{model_name}_changelist"), {"action": "delete_selected", "_selected_action": list(pks)}


# --- Destinations ----------------------------------------------------------------------------------


def test_a_destinations_delete_page_counts_its_deliveries_in_a_page_that_does_not_grow(admin, destination):
    url = reverse("admin:webhooks_destination_delete", args=[destination.pk])
    few = page(admin, url)
    grow(destination, MANY)
    many = page(admin, url)
    assert_same_size(few, many)
    assert "Deliveries: 20" in few[0] and "Delivery attempts: 20" in few[0]
    assert "Source–destination links: 1" in few[0] and "the events stay" in few[0]
    assert "Deliveries: 1,020" in many[0] and "Delivery attempts: 1,020" in many[0]
    assert "Delivery object" not in many[0] and "Delivery attempt:" not in many[0]  # none is listed


def test_the_delete_selected_page_counts_each_destinations_deliveries(admin, destination, organization):
    other, _ = make_destination(organization, RECEIVER + "/other")
    url, selection = delete_selected("webhooks_destination", destination.pk, other.pk)
    few = page(admin, url, selection)
    assert "Destinations: 2" in few[0] and "Deliveries: 20" in few[0]

    grow(destination, MANY)
    many = page(admin, url, selection)
    assert "Deliveries: 1,020" in many[0] and "Delivery object" not in many[0]
    assert_same_size(few, many)


def test_counts_past_the_cap_say_so(admin, destination, monkeypatch):
    monkeypatch.setattr(deletion_counts, "COUNT_CAP", 5)
    content, _ = page(admin, reverse("admin:webhooks_destination_delete", args=[destination.pk]))
    assert "Deliveries: more than 5" in content and "counts stop at 5\n(“more than …”)" in content


def test_confirming_deletes_the_destination_through_the_service_audited(admin, destination, monkeypatch):
    called = []
    delete = destinations_service.destination_delete
    monkeypatch.setattr(
        "webhooks.admin.configuration.destination_delete",
        lambda **kwargs: called.append(kwargs["destination"].pk) or delete(**kwargs),
    )
    grow(destination, MANY)
    url = reverse("admin:webhooks_destination_delete", args=[destination.pk])
    assert admin.post(url, {"post": "yes"}).status_code == 302
    assert called == [destination.pk]
    entry = AuditLog.objects.get(action="destination.deletion_requested")
    assert entry.target_id == str(destination.pk) and entry.organization_id == destination.organization_id
    assert not AuditLog.objects.filter(action="admin.webhooks.destination.deleted").exists()  # the service's entry
    # The rows go in the background (destination_deletion), in batches.
    assert destination_deletion_run(destination_id=destination.pk, batch_size=1000).finished
    assert not Destination.objects.filter(pk=destination.pk).exists()
    assert not Delivery.objects.exists() and not DeliveryAttempt.objects.exists()
    assert WebhookEvent.objects.count() == 1020  # the events stay


def test_staff_may_delete_a_destination_as_django_allows_it_no_more(client, destination, organization):
    """Without a superuser's rights, as Django's collector decided: deliveries and attempts are the
    platform's own rows, which nobody deletes in the admin, so a destination with some is refused."""
    unused, _ = make_destination(organization, RECEIVER + "/unused")
    client.force_login(staff_account("staff@hookline.example", "view_destination", "delete_destination"))
    refused = reverse("admin:webhooks_destination_delete", args=[destination.pk])
    content = client.get(refused).content.decode()
    assert "doesn't have permission to delete" in content and "delivery" in content
    assert client.post(refused, {"post": "yes"}).status_code == 403
    assert Destination.objects.filter(pk=destination.pk).exists()

    allowed = reverse("admin:webhooks_destination_delete", args=[unused.pk])
    assert client.post(allowed, {"post": "yes"}).status_code == 302
    assert Destination.objects.get(pk=unused.pk).being_deleted


# --- Sources, organizations, users -------------------------------------------------------------------


def test_a_sources_pages_count_its_events_and_deliveries(admin, destination):
    source = destination.subscriptions.get().source
    single = reverse("admin:webhooks_source_delete", args=[source.pk])
    url, selection = delete_selected("webhooks_source", source.pk)
    few, few_selected = page(admin, single), page(admin, url, selection)
    assert "Events (and rejected requests): 20" in few[0] and "Deliveries: 20" in few[0]
    assert "in the background" in few[0] and "Deliveries: 20" in few_selected[0]

    grow(destination, MANY)
    many, many_selected = page(admin, single), page(admin, url, selection)
    assert "Events (and rejected requests): 1,020" in many[0] and "Delivery attempts: 1,020" in many[0]
    assert_same_size(few, many)
    assert_same_size(few_selected, many_selected)


def test_an_organizations_delete_selected_page_counts_too(admin, destination, organization):
    url, selection = delete_selected("organizations_organization", organization.pk)
    few = page(admin, url, selection)
    assert "Deliveries: 20" in few[0] and "in the background" in few[0]
    grow(destination, MANY)
    many = page(admin, url, selection)
    assert "Deliveries: 1,020" in many[0]
    assert_same_size(few, many)
    assert Organization.objects.get(pk=organization.pk).is_active  # only asked


def busy_admin(count: int):
    """A platform admin with ``count`` entries in Django's admin history (LogEntry): each change they made."""
    user = get_user_model().objects.create_user("busy@hookline.example", "correct horse battery", is_staff=True)
    add_history(user, count)
    return user


def add_history(user, count: int) -> None:
    kind = ContentType.objects.get_for_model(Organization)
    LogEntry.objects.bulk_create(
        LogEntry(user=user, content_type=kind, object_id="1", object_repr="Acme", action_flag=CHANGE)
        for _ in range(count)
    )


def test_a_users_pages_count_its_admin_history(admin, organization):
    user = busy_admin(20)
    single = reverse("admin:accounts_user_delete", args=[user.pk])
    url, selection = delete_selected("accounts_user", user.pk)
    few, few_selected = page(admin, single), page(admin, url, selection)
    assert "Admin history entries: 20" in few[0] and "Log entry" not in few[0]

    add_history(user, MANY)
    many, many_selected = page(admin, single), page(admin, url, selection)
    assert "Admin history entries: 1,020" in many[0] and "Log entry" not in many[0]
    assert_same_size(few, many)
    assert_same_size(few_selected, many_selected)

    assert admin.post(single, {"post": "yes"}).status_code == 302
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert AuditLog.objects.filter(action="admin.accounts.user.deleted", target_id=str(user.pk)).exists()


def test_staff_may_not_delete_another_staff_account_with_delete_selected(client, organization):
    """Django's collector asked each selected object's own admin (has_delete_permission(request, obj)):
    counting what a deletion takes must not skip that, or "Delete selected" deletes an account that
    the account's own delete page refuses (another staff account: a superuser's to delete)."""
    other_staff = busy_admin(1)
    customer = get_user_model().objects.create_user("customer@hookline.example", "correct horse battery")
    client.force_login(staff_account("staff@hookline.example", "view_user", "delete_user"))
    assert client.post(reverse("admin:accounts_user_delete", args=[other_staff.pk]), {"post": "yes"}).status_code == 403

    url, selection = delete_selected("accounts_user", other_staff.pk, customer.pk)
    client.post(url, {**selection, "post": "yes"})
    assert get_user_model().objects.filter(pk__in=[other_staff.pk, customer.pk]).count() == 2
    assert "doesn't have permission to delete" in client.post(url, selection).content.decode()

    url, selection = delete_selected("accounts_user", customer.pk)  # a customer's account: as before, theirs to delete
    assert client.post(url, {**selection, "post": "yes"}).status_code == 302
    assert not get_user_model().objects.filter(pk=customer.pk).exists()
