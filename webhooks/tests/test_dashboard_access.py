"""Who may see and change what: 404 for outsiders everywhere, 403 for members on every change."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from organizations.api_keys import api_key_create
from organizations.models import AuditLog, Membership
from webhooks.models import Delivery, Destination, Source
from webhooks.services import delivery as delivery_service
from webhooks.services import operations

from .dashboard_helpers import build_world

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    # Retries and replays only schedule the dispatcher; these tests look at the rows, not at sending.
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)
    monkeypatch.setattr("webhooks.tasks.run_bulk_retry.delay", lambda job_id: None)


@pytest.fixture
def world(client, organization):
    world = build_world(client, organization)
    world.api_key, _ = api_key_create(organization=organization, name="ci")
    return world


def url_kwargs(world):
    slug = world.source.organization.slug
    return {
        "org": {"org_slug": slug},
        "event": {"org_slug": slug, "event_id": world.event.pk},
        "delivery": {"org_slug": slug, "delivery_id": world.delivery.pk},
        "source": {"org_slug": slug, "source_id": world.source.pk},
        "provider": {"org_slug": slug, "provider": "stripe"},
        "destination": {"org_slug": slug, "destination_id": world.destination.pk},
        "secret": {"org_slug": slug, "token": "no-such-token"},
        "api_key": {"org_slug": slug, "api_key_id": world.api_key.pk},
    }


# Every dashboard URL name with the kind of object it needs.
READ_PAGES = [
    ("overview", "org"),
    ("events", "org"),
    ("events_live", "org"),
    ("event_detail", "event"),
    ("event_progress", "event"),
    ("sources", "org"),
    ("source_detail", "source"),
    ("source_rejected", "source"),
    ("destinations", "org"),
    ("destination_detail", "destination"),
    ("destination_bulk_retries", "destination"),
    ("audit", "org"),
]
ADMIN_PAGES = [
    ("source_providers", "org"),
    ("source_create", "provider"),
    ("source_edit", "source"),
    ("source_rotate", "source"),
    ("source_delete", "source"),
    ("source_test", "source"),
    ("destination_create", "org"),
    ("destination_edit", "destination"),
    ("destination_delete", "destination"),
    ("secret_once", "secret"),
    ("api_keys", "org"),
    ("api_key_revoke", "api_key"),
]
# POSTs: URL name, object kind, form data an admin would send.
WRITES = [
    ("source_create", "provider", {"name": "Stripe test", "secret": "whsec_new_secret_value"}),
    ("source_edit", "source", {"name": "Renamed", "option_tolerance": "300"}),
    ("source_rotate", "source", {"new_secret": "whsec_rotated_secret", "overlap_seconds": "3600"}),
    ("source_set_active", "source", {"active": "0"}),
    ("source_delete", "source", {}),
    ("destination_create", "org", {"name": "App", "url": "http://127.0.0.1:9/new", "timeout_seconds": "10"}),
    ("destination_edit", "destination", {"name": "Edited", "url": "http://127.0.0.1:9/e", "timeout_seconds": "5"}),
    ("destination_rotate", "destination", {"overlap_seconds": "3600"}),
    ("destination_set_paused", "destination", {"paused": "1"}),
    ("destination_bulk_retry", "destination", {}),
    ("destination_send_waiting_now", "destination", {}),
    ("destination_delete", "destination", {}),
    ("delivery_retry", "delivery", {}),
    ("event_replay", "event", {"destination": "DESTINATION"}),
    ("api_keys", "org", {"name": "deploy", "access": "read_write"}),
    ("api_key_revoke", "api_key", {}),
]
# Reads that answer with a redirect: the top bar's find goes on to the event, or to the events list.
REDIRECTING_READS = [("find_event", "org")]
ALL_NAMES = sorted({name for name, _ in READ_PAGES + ADMIN_PAGES + REDIRECTING_READS} | {name for name, _, _ in WRITES})


def test_every_dashboard_url_name_is_covered():
    from webhooks.urls_dashboard import urlpatterns

    assert {pattern.name for pattern in urlpatterns} == set(ALL_NAMES)


def _data(world, data):
    return {key: (world.destination.pk if value == "DESTINATION" else value) for key, value in data.items()}


@pytest.mark.parametrize("name,kind", READ_PAGES + ADMIN_PAGES + REDIRECTING_READS)
def test_outsider_gets_404_on_every_page(client, world, outsider, name, kind):
    client.force_login(outsider)
    assert client.get(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind])).status_code == 404


@pytest.mark.parametrize("name,kind,data", WRITES)
def test_outsider_gets_404_on_every_change(client, world, outsider, name, kind, data):
    client.force_login(outsider)
    entries_before = AuditLog.objects.count()  # signing in is audited too
    response = client.post(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]), _data(world, data))
    assert response.status_code == 404
    assert AuditLog.objects.count() == entries_before


def test_anonymous_is_sent_to_sign_in(client, world):
    response = client.get(reverse("dashboard:events", kwargs={"org_slug": "acme"}))
    assert response.status_code == 302 and reverse("accounts:sign_in") in response["Location"]


@pytest.mark.parametrize("name,kind", READ_PAGES)
def test_member_reads_every_page(client, world, member, name, kind):
    client.force_login(member)
    response = client.get(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]))
    assert response.status_code == 200


@pytest.mark.parametrize("name,kind", ADMIN_PAGES)
def test_member_cannot_open_change_forms(client, world, member, name, kind):
    client.force_login(member)
    response = client.get(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]))
    assert response.status_code == 403
    # A page of the product that says why, not the server's bare "403 Forbidden".
    reason = (
        "API keys are for admins and owners: your role in this organization does not open this page."
        if name == "api_keys"  # a page to read, where "this change" was not what the member asked for
        else "Your role in this organization does not allow this change."
    )
    assert reason in response.content.decode()


def test_a_member_turned_away_is_not_told_members_read_everything(client, world, member):
    # The API keys page is closed to members: the refusal said "Members can read everything in
    # their organization", the opposite of what it was doing.
    client.force_login(member)
    response = client.get(reverse("dashboard:api_keys", kwargs={"org_slug": "acme"}))
    text = response.content.decode()
    assert response.status_code == 403
    assert "does not open this page" in text and "this change" not in text
    assert "read everything" not in text and "admins and owners make changes and manage API keys" in text


@pytest.mark.parametrize("name,kind,data", WRITES)
def test_member_gets_403_on_every_change_and_nothing_changes(client, world, member, name, kind, data):
    client.force_login(member)
    before = AuditLog.objects.count()
    response = client.post(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]), _data(world, data))
    assert response.status_code == 403
    assert AuditLog.objects.count() == before
    assert Source.objects.get(pk=world.source.pk).is_active
    assert Destination.objects.get(pk=world.destination.pk).paused_at is None
    assert Delivery.objects.get(pk=world.delivery.pk).status == Delivery.Status.DEAD


@pytest.mark.parametrize("role", [Membership.Role.ADMIN, Membership.Role.OWNER])
@pytest.mark.parametrize("name,kind,data", WRITES)
def test_admins_and_owners_make_every_change_and_it_is_audited(
    client, world, owner, django_user_model, role, name, kind, data
):
    if role == Membership.Role.OWNER:
        user = owner
    else:
        user = django_user_model.objects.create_user("admin@acme.example")
        Membership.objects.create(user=user, organization=world.source.organization, role=role)
    client.force_login(user)
    if name == "destination_send_waiting_now":  # something to send: the world's delivery waits for a retry
        Delivery.objects.filter(pk=world.delivery.pk).update(
            status=Delivery.Status.PENDING, next_attempt_at=timezone.now() + timedelta(hours=1)
        )
    before = AuditLog.objects.filter(actor_user=user).count()
    response = client.post(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]), _data(world, data))
    assert response.status_code in (200, 302), response.content[:2000]
    if response.status_code == 200:
        assert b"errorlist" not in response.content
    assert AuditLog.objects.filter(actor_user=user).count() > before


@pytest.mark.parametrize("name,kind", ADMIN_PAGES)
def test_admin_opens_every_change_form(client, world, owner, name, kind):
    client.force_login(owner)
    # (secret_once without a secret kept for it sends the admin on to the overview)
    assert client.get(reverse(f"dashboard:{name}", kwargs=url_kwargs(world)[kind]), follow=True).status_code == 200


def test_objects_of_another_organization_are_not_found_through_ones_own_slug(
    client, world, other_organization, outsider
):
    """An outsider with their own organization cannot reach our objects by id under their slug."""
    client.force_login(outsider)
    slug = other_organization.slug
    assert client.get(reverse("dashboard:event_detail", args=[slug, world.event.pk])).status_code == 404
    assert client.get(reverse("dashboard:source_detail", args=[slug, world.source.pk])).status_code == 404
    assert client.post(reverse("dashboard:delivery_retry", args=[slug, world.delivery.pk])).status_code == 404
    assert client.post(reverse("dashboard:source_delete", args=[slug, world.source.pk])).status_code == 404
    assert Source.objects.filter(pk=world.source.pk).exists()


def test_services_refuse_a_member_even_without_the_view(world, member):
    from webhooks.services.permissions import NotAllowed
    from webhooks.services.sources import source_set_active

    with pytest.raises(NotAllowed):
        source_set_active(source=world.source, active=False, actor=member)
    assert Source.objects.get(pk=world.source.pk).is_active


def test_platform_staff_acting_from_the_admin_pass_the_service_check(world, django_user_model):
    from webhooks.services.sources import source_set_active

    operator = django_user_model.objects.create_superuser("root@hookline.example", "pw-for-tests-only")
    source_set_active(source=world.source, active=False, actor=operator)
    assert not Source.objects.get(pk=world.source.pk).is_active


def test_dashboard_changes_are_audited_with_the_client_ip_and_user_agent(client, world, owner):
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:source_set_active", kwargs={"org_slug": "acme", "source_id": world.source.pk}),
        {"active": "0"},
        REMOTE_ADDR="203.0.113.7",
        HTTP_USER_AGENT="Hookline-Test-Browser/1.0",
    )
    assert response.status_code == 302
    entry = AuditLog.objects.filter(target_id=str(world.source.pk)).latest("id")
    assert entry.actor_user == owner
    assert entry.ip_address == "203.0.113.7" and entry.user_agent == "Hookline-Test-Browser/1.0"
