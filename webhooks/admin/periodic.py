"""django-celery-beat's admin, with every change and action also written to the audit log."""

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


for model, base in (
    (PeriodicTask, beat_admin.PeriodicTaskAdmin),
    (IntervalSchedule, beat_admin.IntervalScheduleAdmin),
    (CrontabSchedule, beat_admin.CrontabScheduleAdmin),
    (SolarSchedule, beat_admin.SolarScheduleAdmin),
    (ClockedSchedule, beat_admin.ClockedScheduleAdmin),
):
    admin.site.unregister(model)
    admin.site.register(
        model,
        type(base.__name__, (ActionsNeedChangePermissionMixin, AuditedAdminMixin, base), {"__module__": __name__}),
    )
