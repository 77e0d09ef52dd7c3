"""An operator's day in the admin: finding what a tenant asks about, following it to its destination,
bulk retries, and what a read-only staff account may not do."""

from __future__ import annotations

import pytest
from django.contrib.admin import site as admin_site
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from organizations.admin import ActionFilter
from organizations.models import AuditLog
from organizations.services import audit_record
from webhooks.models import BulkRetry, Delivery
from webhooks.services.operations import destination_pause
from webhooks.services.organization_deletion import organization_request_deletion
from webhooks.services.sources import source_delete, source_rotate_secret
from webhooks.tests.factories import STRIPE_SECRET, make_destination, make_source
from webhooks.tests.test_admin import (
    RECEIVER,
    attempt,
    deliver,
    destination_form,
    listed,
    make_event,
    organization_form,
)

pytestmark = pytest.mark.django_db

DESTINATIONS = "admin:webhooks_destination_changelist"
BULK_RETRIES = "admin:webhooks_bulkretry_changelist"
PERIODIC_TASKS = "admin:django_celery_beat_periodictask_changelist"


@pytest.fixture
def admin(client):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return client


def named_destination(organization, source, name: str):
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    destination.name = name
    destination.save(update_fields=["name"])
    return destination


def dead_delivery(source, destination, provider_event_id: str) -> Delivery:
    delivery = deliver(make_event(source, provider_event_id, "invoice.paid"), destination, Delivery.Status.DEAD, 1)
    attempt(delivery, 1, 500, "")
    return delivery


# --- The audit log's action filter ------------------------------------------------------------------


def test_the_audit_logs_action_filter_offers_each_action_once(admin, organization):
    for _ in range(3):
        audit_record(action="source.created", organization=organization, changes={})
    audit_record(action="destination.paused", organization=organization, changes={})
    response = admin.get(reverse("admin:organizations_auditlog_changelist"))
    (action_filter,) = [spec for spec in response.context["cl"].filter_specs if isinstance(spec, ActionFilter)]
    offered = [value for value, _ in action_filter.lookup_choices]
    assert offered == sorted(set(AuditLog.objects.values_list("action", flat=True)))
    assert offered.count("source.created") == 1 and "destination.paused" in offered


# --- Periodic tasks: switching them off is a change ------------------------------------------------


def staff_with(*codenames: str):
    user = get_user_model().objects.create_user("ops@hookline.example", "another horse battery", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def test_a_read_only_staff_account_cannot_switch_periodic_tasks_off_or_run_them(client):
    call_command("install_periodic_tasks")
    sweep = PeriodicTask.objects.get(name="hookline-sweep")
    client.force_login(staff_with("view_periodictask"))
    page = client.get(reverse(PERIODIC_TASKS))
    assert page.status_code == 200 and "hookline-sweep" in page.content.decode()
    for action in ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks"):
        assert f'value="{action}"' not in page.content.decode()
    client.post(reverse(PERIODIC_TASKS), {"action": "disable_tasks", "_selected_action": [sweep.pk]})
    sweep.refresh_from_db()
    assert sweep.enabled
    assert not AuditLog.objects.filter(action__startswith="admin.django_celery_beat").exists()


def test_a_staff_account_allowed_to_change_periodic_tasks_can_switch_them_off(client):
    call_command("install_periodic_tasks")
    retention = PeriodicTask.objects.get(name="hookline-retention")
    client.force_login(staff_with("view_periodictask", "change_periodictask"))
    client.post(reverse(PERIODIC_TASKS), {"action": "disable_tasks", "_selected_action": [retention.pk]})
    retention.refresh_from_db()
    assert not retention.enabled
    assert AuditLog.objects.filter(action="admin.django_celery_beat.periodictask.action.disable_tasks").exists()


def periodic_task_form(client, periodic: PeriodicTask, **changes) -> dict:
    """The task's change form as the admin shows it, with ``changes``, ready to post."""
    form = (
        client.get(reverse("admin:django_celery_beat_periodictask_change", args=[periodic.pk]))
        .context["adminform"]
        .form
    )
    data = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, list | tuple):  # a date and a time, posted apart
            data.update({f"{name}_{index}": part or "" for index, part in enumerate(value)})
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = "" if value is None else value
    data.update(changes)
    return data


def test_a_staff_account_allowed_to_change_periodic_tasks_cannot_choose_what_they_run(client):
    # Otherwise it could have beat run any registered task (an organization's deletion, say) with
    # any arguments: what a task runs is a superuser's to choose, or the code's.
    call_command("install_periodic_tasks")
    sweep = PeriodicTask.objects.get(name="hookline-sweep")
    client.force_login(staff_with("view_periodictask", "change_periodictask", "add_periodictask"))
    url = reverse("admin:django_celery_beat_periodictask_change", args=[sweep.pk])
    posted = periodic_task_form(
        client,
        sweep,
        regtask="webhooks.tasks.purge_expired_events",
        task="webhooks.tasks.purge_expired_events",
        args="[1, 2]",
        kwargs='{"organization_id": 1}',
        headers='{"x": 1}',
        queue="elsewhere",
        description="looked at by ops",
    )
    posted.pop("enabled", None)  # what such an account may do: switch it off, describe it
    response = client.post(url, posted)
    assert response.status_code == 302, response.context["adminform"].form.errors
    sweep.refresh_from_db()
    assert (sweep.task, sweep.args, sweep.kwargs, sweep.headers, sweep.queue) == (
        "webhooks.tasks.sweep",
        "[]",
        "{}",
        "{}",
        None,
    )
    assert not sweep.enabled and sweep.description == "looked at by ops"

    before = PeriodicTask.objects.count()
    assert client.get(reverse("admin:django_celery_beat_periodictask_add")).status_code == 403
    added = client.post(
        reverse("admin:django_celery_beat_periodictask_add"),
        {**posted, "name": "mine", "task": "webhooks.tasks.purge_expired_events", "enabled": "on"},
    )
    assert added.status_code == 403 and PeriodicTask.objects.count() == before


def test_a_superuser_still_chooses_what_a_periodic_task_runs(admin):
    call_command("install_periodic_tasks")
    retention = PeriodicTask.objects.get(name="hookline-retention")
    url = reverse("admin:django_celery_beat_periodictask_change", args=[retention.pk])
    response = admin.post(url, periodic_task_form(admin, retention, task="webhooks.tasks.sweep", args="[]"))
    assert response.status_code == 302
    retention.refresh_from_db()
    assert retention.task == "webhooks.tasks.sweep"
    assert admin.get(reverse("admin:django_celery_beat_periodictask_add")).status_code == 200


# --- From an event to its destinations ----------------------------------------------------------


def test_an_events_page_links_each_delivery_to_its_destination_and_says_when_it_is_paused(admin, organization):
    source = make_source(organization, name="Billing")
    destination = named_destination(organization, source, "Ledger")
    delivery = dead_delivery(source, destination, "evt_asked_about")
    destination_pause(destination=destination, reason="receiver down")
    page = admin.get(reverse("admin:webhooks_webhookevent_change", args=[delivery.event_id])).content.decode()
    assert reverse("admin:webhooks_destination_change", args=[destination.pk]) in page
    assert reverse("admin:webhooks_delivery_change", args=[delivery.pk]) in page
    assert "destination paused" in page


# --- Bulk retries: which destination, and whether anything is sent -------------------------------


def test_bulk_retries_name_their_destination_and_a_destinations_page_lists_its_own(
    admin, organization, other_organization
):
    source = make_source(organization, name="Billing")
    ledger = named_destination(organization, source, "Ledger")
    mailer = named_destination(organization, source, "Mailer")
    for number in range(3):
        dead_delivery(source, ledger, f"evt_ledger_{number}")
    dead_delivery(source, mailer, "evt_mailer")
    admin.post(
        reverse(DESTINATIONS),
        {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [ledger.pk, mailer.pk]},
    )
    assert BulkRetry.objects.count() == 2
    ledger_job = BulkRetry.objects.get(filters__destination=ledger.pk)

    destination_page = admin.get(reverse("admin:webhooks_destination_change", args=[ledger.pk])).content.decode()
    its_jobs = reverse(BULK_RETRIES) + f"?destination={ledger.pk}"
    assert f'href="{its_jobs}"' in destination_page
    assert listed(admin.get(its_jobs)) == [ledger_job]

    page = admin.get(reverse(BULK_RETRIES))
    content = page.content.decode()
    assert "dead deliveries of" in content
    assert f'<a href="{reverse("admin:webhooks_destination_change", args=[ledger.pk])}">Ledger</a>' in content
    assert f'<a href="{reverse("admin:webhooks_destination_change", args=[mailer.pk])}">Mailer</a>' in content
    # The names come with the list's own query, not one query per job.
    with CaptureQueriesContext(connection) as two_jobs:
        admin.get(reverse(BULK_RETRIES))
    other_source = make_source(other_organization, name="Shop")
    for number in range(5):
        other = named_destination(other_organization, other_source, f"Other {number}")
        dead_delivery(other_source, other, f"evt_other_{number}")
        admin.post(
            reverse(DESTINATIONS), {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [other.pk]}
        )
    with CaptureQueriesContext(connection) as seven_jobs:
        assert len(listed(admin.get(reverse(BULK_RETRIES)))) == 7
    assert len(seven_jobs.captured_queries) == len(two_jobs.captured_queries)


def test_a_bulk_retry_of_a_paused_destination_says_its_deliveries_wait(admin, organization):
    source = make_source(organization, name="Billing")
    destination = named_destination(organization, source, "Ledger")
    dead_delivery(source, destination, "evt_waits")
    destination_pause(destination=destination, reason="receiver down")
    response = admin.post(
        reverse(DESTINATIONS),
        {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [destination.pk]},
        follow=True,
    )
    assert BulkRetry.objects.filter(filters__destination=destination.pk).exists()
    shown = [str(message) for message in response.context["messages"]]
    assert any("sent only once resumed" in message and "Ledger" in message for message in shown), shown


# --- Changing a source while the services change it too -------------------------------------------


def change_while(admin, monkeypatch, obj, meanwhile, form):
    """Post ``obj``'s change form, with ``meanwhile`` run (by another process, say) on a fresh copy
    just after the admin has loaded the row it is about to save."""
    model_admin = admin_site._registry[type(obj)]
    loaded = model_admin.get_object

    def get_object_then_meanwhile(request, object_id, from_field=None):
        found = loaded(request, object_id, from_field)
        if request.method == "POST":
            meanwhile(type(obj).objects.get(pk=obj.pk))
        return found

    monkeypatch.setattr(model_admin, "get_object", get_object_then_meanwhile)
    opts = obj._meta
    return admin.post(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]), form)


def change_source_while(admin, monkeypatch, source, meanwhile, **form):
    return change_while(
        admin,
        monkeypatch,
        source,
        meanwhile,
        {"name": source.name, "options": "{}", "is_active": "on", "new_secret": "", **form},
    )


def test_a_source_whose_deletion_was_asked_meanwhile_is_not_made_active_again(admin, organization, monkeypatch):
    source = make_source(organization, name="Billing")
    response = change_source_while(
        admin, monkeypatch, source, lambda fresh: source_delete(source=fresh), name="Billing renamed"
    )
    assert response.status_code == 200 and "being deleted" in response.content.decode()
    source.refresh_from_db()
    assert source.being_deleted and not source.is_active and source.name == "Billing"


def test_a_secret_rotated_meanwhile_is_kept_when_the_admin_saves_other_fields(admin, organization, monkeypatch):
    source = make_source(organization, name="Billing")
    rotated = "whsec_rotated_on_the_dashboard_meanwhile"
    response = change_source_while(
        admin,
        monkeypatch,
        source,
        lambda fresh: source_rotate_secret(source=fresh, new_secret=rotated),
        name="Billing renamed",
    )
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.name == "Billing renamed"
    assert source.secret == rotated and source.previous_secret == STRIPE_SECRET


def test_a_pause_made_meanwhile_is_kept_when_the_admin_saves_a_destination(admin, organization, monkeypatch):
    source = make_source(organization, name="Billing")
    destination = named_destination(organization, source, "Ledger")
    response = change_while(
        admin,
        monkeypatch,
        destination,
        lambda fresh: destination_pause(destination=fresh, reason="circuit breaker"),
        destination_form(destination, timeout_seconds="7"),
    )
    assert response.status_code == 302
    destination.refresh_from_db()
    assert destination.timeout_seconds == 7
    assert destination.paused_at is not None and destination.pause_reason == "circuit breaker"


def test_an_organization_whose_deletion_was_asked_meanwhile_stays_marked_and_inactive(admin, organization, monkeypatch):
    response = change_while(
        admin,
        monkeypatch,
        organization,
        lambda fresh: organization_request_deletion(organization=fresh),
        organization_form(organization, plan="team"),
    )
    assert response.status_code == 200 and "being deleted" in response.content.decode()
    organization.refresh_from_db()
    assert organization.being_deleted and not organization.is_active and organization.plan != "team"


def test_an_organizations_change_saves_only_the_fields_its_form_changed(admin, organization, monkeypatch):
    def progress(fresh):
        fresh.deletion_progress = {"events": 500}
        fresh.save(update_fields=["deletion_progress"])

    response = change_while(admin, monkeypatch, organization, progress, organization_form(organization, plan="team"))
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.plan == "team" and organization.deletion_progress == {"events": 500}
