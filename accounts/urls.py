# PLACEHOLDER (ui-base branch): the accounts helper replaces this file.
from django.urls import path
from django.views.generic import TemplateView

app_name = "accounts"
urlpatterns = [
    path("sign-in/", TemplateView.as_view(template_name="placeholder.html"), name="sign_in"),
    path("sign-out/", TemplateView.as_view(template_name="placeholder.html"), name="sign_out"),
]
