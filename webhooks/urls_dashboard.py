# PLACEHOLDER (ui-base branch): the dashboard helper replaces this file.
from django.urls import path
from django.views.generic import TemplateView

from organizations.mixins import OrganizationMixin


class Placeholder(OrganizationMixin, TemplateView):
    template_name = "dashboard/placeholder.html"


app_name = "dashboard"
urlpatterns = [
    path("", Placeholder.as_view(), name="overview"),
    path("events/", Placeholder.as_view(), name="events"),
    path("sources/", Placeholder.as_view(), name="sources"),
    path("destinations/", Placeholder.as_view(), name="destinations"),
    path("audit/", Placeholder.as_view(), name="audit"),
]
