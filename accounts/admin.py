from django.contrib import admin
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, SetUnusablePasswordMixin

from .models import User

# What makes an account powerful. Only superusers grant it: a staff account allowed to change
# users could otherwise tick is_superuser on itself.
PRIVILEGE_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")
# Sign-in is by a link or code sent to this address, so whoever sets it takes the account: a
# tenant's as much as a colleague's. Only superusers change it (on an existing account).
SIGN_IN_FIELDS = ("email",)


class AccountCreationForm(AdminUserCreationForm):
    """A new account without a password unless one is asked for.

    Tenants sign in by a link or code mailed to their address and need none; Django's form made
    one mandatory, so an operator adding a tenant's owner here had to invent a password for them.
    """

    usable_password = SetUnusablePasswordMixin.create_usable_password_field(
        help_text=(
            "Leave it disabled for a tenant's account: they sign in with a link or code mailed to "
            "this address. Enable it only for a platform admin, who signs in at /admin/ with it "
            "(then tick “Is staff” on the next page)."
        )
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["usable_password"].initial = "false"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ("email",)
    list_display = ("email", "full_name", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "full_name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name",)}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_form = AccountCreationForm
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "usable_password", "password1", "password2")}),)

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        if request.user.is_superuser:
            return readonly
        if obj is None:  # adding: the address is the new account's own
            return (*readonly, *PRIVILEGE_FIELDS)
        return (*readonly, *PRIVILEGE_FIELDS, *SIGN_IN_FIELDS)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and obj.pk == request.user.pk:
            # A new address ends the account's sessions (User.save), but not the one that changed it.
            update_session_auth_hash(request, obj)

    def has_change_permission(self, request, obj=None):
        # Another staff account's email or password is a superuser's to change: sign-in is by
        # emailed link or code, so whoever sets the address takes the account and its permissions.
        if self._another_staff_account(request, obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if self._another_staff_account(request, obj):
            return False
        return super().has_delete_permission(request, obj)

    @staticmethod
    def _another_staff_account(request, obj) -> bool:
        return (
            obj is not None
            and not request.user.is_superuser
            and (obj.is_staff or obj.is_superuser)
            and obj.pk != request.user.pk
        )
