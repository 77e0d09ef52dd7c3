from django.urls import path

from . import views

app_name = "team"
urlpatterns = [
    path("", views.TeamView.as_view(), name="members"),
    path("invite/", views.InviteView.as_view(), name="invite"),
    path("members/<int:membership_id>/role/", views.MemberRoleView.as_view(), name="member_role"),
    path("members/<int:membership_id>/remove/", views.MemberRemoveView.as_view(), name="member_remove"),
    path("invitations/<int:invitation_id>/revoke/", views.InvitationRevokeView.as_view(), name="invitation_revoke"),
    # Not behind OrganizationMixin: invitees are not members yet; the token is the permission.
    path("join/<str:token>/", views.InvitationAcceptView.as_view(), name="invitation_accept"),
]
