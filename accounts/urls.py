from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
    path("sign-in/", views.SignInView.as_view(), name="sign_in"),
    path("sign-in/code/", views.SignInCodeView.as_view(), name="sign_in_code"),
    path("sign-in/link/<str:token>/", views.SignInLinkView.as_view(), name="sign_in_link"),
    path("sign-out/", views.SignOutView.as_view(), name="sign_out"),
    path("sign-out/everywhere/", views.SignOutEverywhereView.as_view(), name="sign_out_everywhere"),
]
