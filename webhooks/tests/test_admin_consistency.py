"""The admin's rules hold however a change is made: a staff account's restrictions on an object's
own page and in the list's bulk actions alike, and every action's audit entries say what it did."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from organizations.models import AuditLog, Membership, Organization
from organizations.services import audit_verify_chain
from webhooks.models import WebhookEvent
from webhooks.services.organization_deletion import organization_request_deletion
from webhooks.tests.api_helpers import make_event
from webhooks.tests.factories import make_source
from webhooks.tests.test_admin import user_form
from webhooks.tests.test_admin_operator import staff_with
from webhooks.tests.test_platform_health import set_aside_event

pytestmark = pytest.mark.django_db

PERIODIC_MODELS = (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule)


@pytest.fixture
def superuser_client(client):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return client


@pytest.fixture
def periodic_staff(client):
    """Staff holding every permission Django has on periodic tasks and schedules, delete included."""
    codenames = [
        f"{verb}_{model._meta.model_name}" for model in PERIODIC_MODELS for verb in ("view", "add", "change", "delete")
    ]
    client.force_login(staff_with(*codenames))
    return client


def one_of_each_periodic_model(nth: int = 0) -> dict:
    """The project's installed periodic tasks, plus one schedule of each kind that no task uses
    (the ``nth`` such one): {model: a row of it}, the task being the sweeper (what keeps lost
    deliveries moving) or, for the next, the retention."""
    call_command("install_periodic_tasks")
    return {
        PeriodicTask: PeriodicTask.objects.get(name=("hookline-sweep", "hookline-retention")[nth]),
        IntervalSchedule: IntervalSchedule.objects.create(every=17 + nth, period=IntervalSchedule.SECONDS),
        CrontabSchedule: CrontabSchedule.objects.create(minute=str(7 + nth), hour="3"),
        SolarSchedule: SolarSchedule.objects.create(event="sunrise", latitude=48.85 + nth, longitude=2.35),
        ClockedSchedule: ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(days=1 + nth)),
    }


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def offered_actions(client, model) -> list[str]:
    page = client.get(admin_url(model, "changelist"))
    assert page.status_code == 200
    form = page.context["action_form"]  # None when no action is left at all
    return [value for value, _ in form.fields["action"].choices] if form else []


def deleted_entries(model) -> int:
    return AuditLog.objects.filter(action=f"admin.django_celery_beat.{model._meta.model_name}.deleted").count()


# --- Periodic tasks and their schedules ----------------------------------------------------------


def test_staff_allowed_to_delete_periodic_tasks_and_schedules_still_cannot(periodic_staff):
    # Deleting the sweeper stops it until beat starts again; deleting a schedule deletes its tasks.
    # A superuser's to do, as adding one is: staff switch a task off instead.
    rows = one_of_each_periodic_model()
    tasks = PeriodicTask.objects.count()
    for model, row in rows.items():
        name = model._meta.model_name
        assert periodic_staff.get(admin_url(model, "delete", row.pk)).status_code == 403, name
        assert periodic_staff.post(admin_url(model, "delete", row.pk), {"post": "yes"}).status_code == 403, name
        assert "delete_selected" not in offered_actions(periodic_staff, model), name
        periodic_staff.post(
            admin_url(model, "changelist"), {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
        )
        assert model.objects.filter(pk=row.pk).exists(), name
        assert deleted_entries(model) == 0, name
    # Nor through a schedule the sweeper runs on (which would take it along).
    sweep_schedule = rows[PeriodicTask].interval
    url = admin_url(IntervalSchedule, "delete", sweep_schedule.pk)
    assert periodic_staff.post(url, {"post": "yes"}).status_code == 403
    assert PeriodicTask.objects.count() == tasks
    # What such an account may still do: switch a task off.
    assert "disable_tasks" in offered_actions(periodic_staff, PeriodicTask)


def test_a_superuser_deletes_periodic_tasks_and_schedules_from_their_page_and_in_bulk(superuser_client):
    first, second = one_of_each_periodic_model(), one_of_each_periodic_model(1)
    for model in PERIODIC_MODELS:
        name = model._meta.model_name
        one, other = first[model], second[model]
        response = superuser_client.post(admin_url(model, "delete", one.pk), {"post": "yes"})
        assert response.status_code == 302, name
        assert not model.objects.filter(pk=one.pk).exists(), name
        assert deleted_entries(model) == 1, name

        assert "delete_selected" in offered_actions(superuser_client, model), name
        superuser_client.post(
            admin_url(model, "changelist"),
            {"action": "delete_selected", "_selected_action": [other.pk], "post": "yes"},
        )
        assert not model.objects.filter(pk=other.pk).exists(), name
        assert deleted_entries(model) == 2, name


SCHEDULE_MODELS = PERIODIC_MODELS[1:]


def tasks_on(schedule, *names: str) -> list[PeriodicTask]:
    field = next(field.name for field in PeriodicTask._meta.fields if field.related_model is type(schedule))
    return [
        PeriodicTask.objects.create(
            name=name, task="webhooks.tasks.sweep", one_off=isinstance(schedule, ClockedSchedule), **{field: schedule}
        )
        for name in names
    ]


@pytest.mark.parametrize("model", SCHEDULE_MODELS, ids=lambda model: model._meta.model_name)
@pytest.mark.parametrize("in_bulk", [False, True], ids=["its page", "delete selected"])
def test_deleting_a_schedule_audits_the_periodic_tasks_deleted_with_it(superuser_client, model, in_bulk):
    rows, kept = one_of_each_periodic_model(), one_of_each_periodic_model(1)
    schedule = rows[model]
    going = tasks_on(schedule, "nightly report", "hourly check")
    schedule.refresh_from_db()  # as the admin reads it: a solar schedule's decimals are then padded
    labels = {str(task.pk): str(PeriodicTask.objects.get(pk=task.pk)) for task in going}
    staying = tasks_on(kept[model], "elsewhere")
    if in_bulk:
        url = admin_url(model, "changelist")
        asked = {"action": "delete_selected", "_selected_action": [schedule.pk]}
    else:
        url, asked = admin_url(model, "delete", schedule.pk), {}
    # Django's confirmation page names the tasks that go with it, each linked to its page.
    page = (superuser_client.post(url, asked) if in_bulk else superuser_client.get(url)).content.decode()
    for task in going:
        assert admin_url(PeriodicTask, "change", task.pk) in page and f"{task.name}:" in page
    assert "elsewhere" not in page

    assert superuser_client.post(url, {**asked, "post": "yes"}).status_code == 302
    assert not PeriodicTask.objects.filter(pk__in=[task.pk for task in going]).exists()
    entry = AuditLog.objects.get(action=f"admin.django_celery_beat.{model._meta.model_name}.deleted")
    assert entry.target_id == str(schedule.pk)
    assert entry.changes["periodic_tasks_deleted"] == ["hourly check", "nightly report"]
    by_task = {
        item.target_id: item for item in AuditLog.objects.filter(action="admin.django_celery_beat.periodictask.deleted")
    }
    assert set(by_task) == {str(task.pk) for task in going}  # and none of the task left on another schedule
    for task in going:
        assert by_task[str(task.pk)].target_label == labels[str(task.pk)]
        assert by_task[str(task.pk)].changes["deleted_with"] == f"{model._meta.verbose_name} {schedule.pk}: {schedule}"
        assert by_task[str(task.pk)].actor_label == "root@hookline.example"
    assert PeriodicTask.objects.filter(pk=staying[0].pk).exists()
    assert audit_verify_chain().ok


# --- Memberships, on a user's page as on an organization's -----------------------------------------


def test_a_users_page_changes_no_membership_of_an_organization_being_deleted(
    superuser_client, owner, organization, other_organization
):
    # The organization's own page refuses every change once its deletion is asked for, its members
    # included: so does a user's page, whose memberships are the same rows.
    organization_request_deletion(organization=other_organization)
    user_page = admin_url(get_user_model(), "change", owner.pk)
    (kept,) = Membership.objects.filter(user=owner)
    added_there = user_form(
        owner,
        **{
            "memberships-TOTAL_FORMS": "2",
            "memberships-1-user": owner.pk,
            "memberships-1-organization": other_organization.pk,
            "memberships-1-role": "admin",
        },
    )
    moved_there = user_form(owner, **{"memberships-0-organization": other_organization.pk})
    for posted in (added_there, moved_there):
        response = superuser_client.post(user_page, posted)
        assert response.status_code == 200
        errors = [str(fs.formset.non_form_errors()) for fs in response.context["inline_admin_formsets"]]
        assert any("being deleted" in error for error in errors), errors
    assert list(Membership.objects.filter(user=owner)) == [kept]
    assert not Membership.objects.filter(organization=other_organization, user=owner).exists()
    # A membership of a live organization still changes there.
    assert superuser_client.post(user_page, user_form(owner, **{"memberships-0-role": "admin"})).status_code == 302
    kept.refresh_from_db()
    assert kept.role == "admin"


def test_a_users_page_removes_no_membership_of_an_organization_being_deleted(superuser_client, owner, organization):
    organization_request_deletion(organization=organization)
    user_page = admin_url(get_user_model(), "change", owner.pk)
    response = superuser_client.post(user_page, user_form(owner, **{"memberships-0-DELETE": "on"}))
    assert response.status_code == 200
    assert Membership.objects.filter(user=owner, organization=organization).exists()
    # The organization's own page refuses the same.
    assert (
        superuser_client.get(admin_url(Organization, "change", organization.pk)).context["has_change_permission"]
        is False
    )


# --- What each action writes to the audit log ------------------------------------------------------


def test_processing_set_aside_events_now_audits_what_it_did_in_each_organization(
    superuser_client, organization, other_organization
):
    # As every other action's entries: done (with the events brought forward) or nothing to do.
    set_aside = set_aside_event(make_source(organization), next_try_in=timedelta(minutes=30))
    waiting = make_event(make_source(other_organization), status=WebhookEvent.Status.RECEIVED)
    superuser_client.post(
        admin_url(WebhookEvent, "changelist"),
        {"action": "process_set_aside_now", "_selected_action": [str(set_aside.pk), str(waiting.pk)]},
    )
    entries = AuditLog.objects.filter(action="admin.webhooks.webhookevent.action.process_set_aside_now")
    done = entries.get(organization_id=organization.pk).changes
    assert (done["outcome"], done["done"], done["selected"]) == ("done", [f"event {set_aside.pk}"], [str(set_aside.pk)])
    nothing = entries.get(organization_id=other_organization.pk).changes
    assert (nothing["outcome"], nothing["reason"]) == ("nothing to do", "not set aside, or already due")
    assert "done" not in nothing
