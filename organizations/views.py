"""The Team page and its actions, and accepting an invitation. Rules live in organizations.team."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import urlencode
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView

from accounts.http import client_ip
from accounts.models import Invitation

from . import team
from .mixins import OrganizationMixin
from .models import Membership


class InvitationForm(forms.Form):
    email = forms.EmailField(label="Email address", widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(label="Role", choices=Membership.Role.choices, initial=Membership.Role.MEMBER)

    def __init__(self, *args, allowed_roles=None, **kwargs):
        super().__init__(*args, **kwargs)
        if allowed_roles is not None:
            self.fields["role"].choices = allowed_roles


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class TeamView(OrganizationMixin, TemplateView):
    template_name = "team/members.html"

    def get_context_data(self, invitation_form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        assignable = team.roles_assignable_by(self.membership.role)
        members = team.team_members(self.organization)
        owners = [member for member in members if member.role == Membership.Role.OWNER]
        context.update(
            members=members,
            # The last owner is offered no "Leave": the team would be left without an owner.
            can_leave=self.membership.role != Membership.Role.OWNER or len(owners) > 1,
            # Nor another role (member_role_change refuses it, for the same reason): the row says why.
            only_owner_id=owners[0].pk if len(owners) == 1 else None,
            invitations=team.team_open_invitations(self.organization),
            invitation_form=InvitationForm(allowed_roles=assignable) if invitation_form is None else invitation_form,
            role_choices=Membership.Role.choices,
            invitable_roles=[value for value, _ in assignable],
        )
        return context


class TeamActionMixin:
    """A POST that changes the team, then back to the Team page with a message."""

    http_method_names = ["get", "post"]

    def team_url(self) -> str:
        return reverse("team:members", args=[self.organization.slug])

    def get(self, request, *args, **kwargs):
        # A refused invitation is shown at the invite URL, so it is in the address bar and opened
        # again from there (Enter, a bookmark): back to the Team page, as the dashboard's other
        # actions go back on GET, rather than an empty 405.
        return redirect(self.team_url())

    def done(self, text: str):
        messages.success(self.request, text)
        return redirect(self.team_url())

    def refused(self, error: team.TeamRuleError):
        messages.error(self.request, str(error))
        return redirect(self.team_url())


class InviteView(TeamActionMixin, TeamView):
    required_role = Membership.Role.ADMIN

    def post(self, request, org_slug):
        form = InvitationForm(request.POST, allowed_roles=team.roles_assignable_by(self.membership.role))
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(invitation_form=form), status=400)
        try:
            invitation = team.invitation_create(
                organization=self.organization,
                actor=request.user,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                ip_address=client_ip(request),
            )
        except team.TeamRuleError as error:
            # Shown on the form, which keeps what was typed for the next try.
            form.add_error("email", str(error))
            return self.render_to_response(self.get_context_data(invitation_form=form), status=400)
        return self.done(f"Invitation sent to {invitation.email}.")


class MemberRoleView(TeamActionMixin, OrganizationMixin, View):
    required_role = Membership.Role.OWNER

    def post(self, request, org_slug, membership_id: int):
        membership = get_object_or_404(
            Membership.objects.select_related("user"), pk=membership_id, organization=self.organization
        )
        form = RoleForm(request.POST)
        if not form.is_valid():
            return self.refused(team.TeamRuleError("Choose a role: member, admin or owner."))
        try:
            team.member_role_change(
                organization=self.organization,
                actor=request.user,
                membership=membership,
                role=form.cleaned_data["role"],
                ip_address=client_ip(request),
            )
        except team.TeamRuleError as error:
            return self.refused(error)
        return self.done(f"{membership.user.email} is now {Membership.Role(form.cleaned_data['role']).label.lower()}.")


class MemberRemoveView(TeamActionMixin, OrganizationMixin, TemplateView):
    """GET asks for confirmation (one click on the Team page must not remove anyone); the button POSTs."""

    http_method_names = ["get", "post"]
    template_name = "team/member_remove.html"
    # Owners remove anyone; everyone may leave. The service decides, the views check early.
    required_role = None

    def get_membership(self, membership_id: int) -> Membership:
        membership = get_object_or_404(
            Membership.objects.select_related("user"), pk=membership_id, organization=self.organization
        )
        if membership.user_id != self.request.user.id:
            self.require_role(Membership.Role.OWNER)
        return membership

    def get(self, request, org_slug, membership_id: int):
        membership = self.get_membership(membership_id)
        return self.render_to_response(
            self.get_context_data(target=membership, leaving=membership.user_id == request.user.id)
        )

    def post(self, request, org_slug, membership_id: int):
        membership = self.get_membership(membership_id)
        try:
            team.member_remove(
                organization=self.organization, actor=request.user, membership=membership, ip_address=client_ip(request)
            )
        except team.TeamRuleError as error:
            return self.refused(error)
        if membership.user_id == request.user.id:
            messages.success(request, f"You left {self.organization.name}.")
            return redirect(settings.LOGIN_REDIRECT_URL)
        return self.done(f"{membership.user.email} was removed from {self.organization.name}.")


class InvitationRevokeView(TeamActionMixin, OrganizationMixin, View):
    required_role = Membership.Role.ADMIN

    def post(self, request, org_slug, invitation_id: int):
        invitation = get_object_or_404(Invitation, pk=invitation_id, organization=self.organization)
        try:
            team.invitation_revoke(
                organization=self.organization, actor=request.user, invitation=invitation, ip_address=client_ip(request)
            )
        except team.TeamRuleError as error:
            return self.refused(error)
        return self.done(f"The invitation to {invitation.email} is revoked.")


# Its URL holds the invitation's token, and the page names the invitee, the organization and the inviter.
@method_decorator(never_cache, name="dispatch")
class InvitationAcceptView(View):
    """Reached by invitees, who are not members yet: the token in the URL is what grants access.

    GET only shows what the invitation is (mail scanners open links); the button POSTs.
    """

    template_name = "team/invitation_accept.html"

    def dispatch(self, request, org_slug, token):
        self.invitation = team.invitation_for_token(organization_slug=org_slug, token=token)
        if self.invitation is None:
            return render(request, "team/invitation_unavailable.html", {"status": None}, status=404)
        return super().dispatch(request, org_slug, token)

    def get(self, request, org_slug, token):
        status = self.invitation.status()
        if status == Invitation.Status.ACCEPTED and self.invitation.accepted_by_id == request.user.pk:
            # Accepted already by this very user (perhaps by signing in): just go in.
            return redirect("dashboard:overview", self.invitation.organization.slug)
        if status != Invitation.Status.PENDING:
            return self.unavailable(status)
        return render(
            request,
            self.template_name,
            {"invitation": self.invitation, "role_label": Membership.Role(self.invitation.role).label},
        )

    def post(self, request, org_slug, token):
        try:
            accepted = team.invitation_accept(invitation=self.invitation, ip_address=client_ip(request))
        except team.InvitationUnavailable as unavailable:
            return self.unavailable(unavailable.status)
        user = accepted.user
        organization = self.invitation.organization
        landing = reverse("dashboard:overview", args=[organization.slug])
        if request.user.is_authenticated and request.user.pk == user.pk:
            messages.success(request, f"Welcome to {organization.name.rstrip('.')}.")
            return redirect(landing)
        if user.is_staff:
            # Platform admins keep their password as the proof of who they are, even for a dashboard session.
            messages.success(request, f"You joined {organization.name}. Sign in with your password to open it.")
            return redirect(reverse("admin:login") + "?" + urlencode({"next": landing}))
        if not accepted.account_created or request.user.is_authenticated:
            # The link joins; it signs in only the account it created (see team.AcceptedInvitation),
            # and never in place of someone signed in here, whom the page told they stay themselves.
            messages.success(request, f"You joined {organization.name}. Sign in as {user.email} to open it.")
            return redirect(reverse("accounts:sign_in") + "?" + urlencode({"next": landing}))
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome to {organization.name.rstrip('.')}.")
        return redirect(landing)

    def unavailable(self, status):
        replaced = status == Invitation.Status.REVOKED and team.invitation_replaced(self.invitation)
        return render(
            self.request,
            "team/invitation_unavailable.html",
            {"status": status, "replaced": replaced},
            # None: its organization was suspended or its deletion asked for meanwhile, which the
            # link answers 404 for (dispatch).
            status=404 if status is None else 410,
        )
