# PLACEHOLDER (ui-base branch): the accounts/team helper replaces this file.
from django.urls import path
from django.views.generic import TemplateView

from .mixins import OrganizationMixin


class Placeholder(OrganizationMixin, TemplateView):
    template_name = "dashboard/placeholder.html"


app_name = "team"
urlpatterns = [path("", Placeholder.as_view(), name="members")]
