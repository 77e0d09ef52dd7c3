"""django-celery-beat's admin, with every change and action also written to the audit log."""

import copy

from django.contrib import admin
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from organizations.admin import AuditedAdminMixin
from organizations.services import audit_record

# What a periodic task runs and how it is sent: beat sends any registered task, with any arguments.
WHAT_A_TASK_RUNS = ("regtask", "task", "args", "kwargs", "headers", "queue", "exchange", "routing_key", "priority")


class PeriodicTaskForm(beat_admin.PeriodicTaskForm):
    """A periodic task's form, where only a superuser chooses what a task runs (see
    WhatRunsIsASuperusersMixin): for other staff those fields are shown, disabled, and what a
    request posts for them is ignored (a disabled field keeps the task's own value)."""

    chooses_what_runs = True  # set for each request by WhatRunsIsASuperusersMixin.get_form

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.chooses_what_runs:
            for name in WHAT_A_TASK_RUNS:
                if name in self.fields:
                    self.fields[name].disabled = True


class WhatRunsIsASuperusersMixin:
    """Only a superuser adds a periodic task or changes what one runs.

    The project's periodic tasks are defined in code (settings.CELERY_BEAT_SCHEDULE, installed by
    install_periodic_tasks and by beat at start-up); the admin is where an operator switches them
    off and on, changes their schedule, or runs one now. A staff account allowed to add or change
    periodic tasks could otherwise have beat run any registered task with any arguments (delete a
    tenant's organization or source, send an email anywhere), which none of its other permissions
    would let it do."""

    form = PeriodicTaskForm

    def has_add_permission(self, request):
        return request.user.is_superuser and super().has_add_permission(request)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)  # a class made for this request
        form.chooses_what_runs = request.user.is_superuser
        return form


class DeletingIsASuperusersMixin:
    """Only a superuser deletes a periodic task or a schedule, from its page or with "Delete selected".

    As adding one (WhatRunsIsASuperusersMixin): a deleted task (the sweeper, which gives lost
    deliveries back; retention) stops running until it is installed again, at beat's next start or
    the next release, and deleting a schedule deletes every task on it. Staff switch a task off
    instead, which is audited and undone with a click. With no delete permission, Django leaves
    "Delete selected" out of the list's actions and refuses the delete page."""

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)


class AuditsTasksDeletedWithTheScheduleMixin:
    """Deleting a schedule deletes every periodic task on it (a cascade, which Django's confirmation
    page lists). Each such task gets the entry deleting it directly writes
    (admin.django_celery_beat.periodictask.deleted, saying with which schedule), and the schedule's
    own entry names them: otherwise the sweeper or the retention run stopped with no trace of why."""

    def _task_field(self):
        """PeriodicTask's key to this kind of schedule (interval, crontab, solar or clocked)."""
        return next(field for field in PeriodicTask._meta.fields if field.related_model is self.model)

    def log_deletions(self, request, queryset):
        # Read while the tasks still exist (see AuditedAdminMixin.log_deletions); copies keep their ids.
        entries = super().log_deletions(request, queryset)
        on_schedule = self._task_field().name
        tasks = (
            PeriodicTask.objects.filter(**{f"{on_schedule}__in": [obj.pk for obj in queryset]})
            .select_related(on_schedule)  # a task's name says its schedule, gone by the time it is audited
            .order_by("name")
        )
        request._hookline_tasks_on_schedules = [copy.copy(task) for task in tasks]
        return entries

    def _audit_deletions(self, request) -> None:
        tasks = getattr(request, "_hookline_tasks_on_schedules", [])
        on_schedule = self._task_field().attname
        for schedule in getattr(request, "_hookline_deleting", ()):
            going = [task for task in tasks if getattr(task, on_schedule) == schedule.pk]
            deleted_with = f"{self.opts.verbose_name} {schedule.pk}: {schedule}"
            for task in going:
                audit_record(
                    action="admin.django_celery_beat.periodictask.deleted",
                    actor=request.user,
                    target=task,
                    changes={"fields": {}, "deleted_with": deleted_with},
                    request=request,
                )
            self._audit(request, schedule, "deleted", more={"periodic_tasks_deleted": [task.name for task in going]})
        request._hookline_deleting = request._hookline_tasks_on_schedules = []


class ActionsNeedChangePermissionMixin:
    """django-celery-beat's actions (enable, disable, toggle, run) name no permission, so Django
    would offer them to anyone who may view the list: a read-only staff account could switch the
    sweeper off. Here an action that names none needs the change permission."""

    def get_actions(self, request):
        actions = super().get_actions(request)
        if self.has_change_permission(request):
            return actions
        return {
            name: action
            for name, action in actions.items()
            if getattr(action[0], "allowed_permissions", None)  # Django has checked those already
        }


for model, base, restrictions in (
    (PeriodicTask, beat_admin.PeriodicTaskAdmin, (WhatRunsIsASuperusersMixin,)),
    (IntervalSchedule, beat_admin.IntervalScheduleAdmin, (AuditsTasksDeletedWithTheScheduleMixin,)),
    (CrontabSchedule, beat_admin.CrontabScheduleAdmin, (AuditsTasksDeletedWithTheScheduleMixin,)),
    (SolarSchedule, beat_admin.SolarScheduleAdmin, (AuditsTasksDeletedWithTheScheduleMixin,)),
    (ClockedSchedule, beat_admin.ClockedScheduleAdmin, (AuditsTasksDeletedWithTheScheduleMixin,)),
):
    admin.site.unregister(model)
    admin.site.register(
        model,
        type(
            base.__name__,
            (*restrictions, DeletingIsASuperusersMixin, ActionsNeedChangePermissionMixin, AuditedAdminMixin, base),
            {"__module__": __name__},
        ),
    )
