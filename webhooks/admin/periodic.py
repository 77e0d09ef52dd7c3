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

for model, base in (
    (PeriodicTask, beat_admin.PeriodicTaskAdmin),
    (IntervalSchedule, beat_admin.IntervalScheduleAdmin),
    (CrontabSchedule, beat_admin.CrontabScheduleAdmin),
    (SolarSchedule, beat_admin.SolarScheduleAdmin),
    (ClockedSchedule, beat_admin.ClockedScheduleAdmin),
):
    admin.site.unregister(model)
    admin.site.register(model, type(base.__name__, (AuditedAdminMixin, base), {"__module__": __name__}))
