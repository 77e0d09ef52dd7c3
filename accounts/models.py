from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .signals import account_deactivated


def canonical_email(email: str) -> str:
    """The one spelling of an address used for lookups, rate limits and invitations."""
    return BaseUserManager.normalize_email(email.strip()).lower()


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **fields):
        if not email:
            raise ValueError("an email address is required")
        user = self.model(email=canonical_email(email), **fields)
        if password:
            user.set_password(password)
        else:
            # Tenants sign in without a password (magic link / one-time code).
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields):
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields):
        fields["is_staff"] = True
        fields["is_superuser"] = True
        return self._create(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. The email address is the login; staff flags are for platform admins only."""

    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    # Part of every session's auth hash: raising it ends all of the user's sessions ("sign out everywhere").
    session_generation = models.PositiveIntegerField(default=0, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email

    def clean(self):
        # The one spelling sign-in and invitations look an address up by: an account the admin saved
        # as typed ("Owner@Tenant.example") was never found by its owner's sign-in, and an
        # invitation to the same mailbox made a second account beside it.
        super().clean()
        self.email = canonical_email(self.email or "")

    def save(self, *args, **kwargs):
        # Deactivating an account, or giving it another address (whose mailbox is what signs in),
        # ends its sessions and voids the links and codes sent before, as signing out everywhere
        # does. Otherwise a session only looked signed out while the account was inactive (Django
        # skips it then, but keeps it) and came back with the account's reactivation: a stolen
        # laptop's with it. And whoever held the old address stayed in after the account moved on.
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:  # read twice below: a generator would be used up by the first
            update_fields = kwargs["update_fields"] = list(update_fields)
        saved = {"is_active", "email"} if update_fields is None else {"is_active", "email"} & set(update_fields)
        deactivated = False
        if not self._state.adding and saved:
            stored = User.objects.filter(pk=self.pk).values("is_active", "email", "session_generation").first()
            deactivated = stored is not None and "is_active" in saved and stored["is_active"] and not self.is_active
            # Another mailbox, not the same one spelled as sign-in looks it up (clean() lower-cases a
            # legacy address on any admin save: that alone must not sign its owner out).
            moved = (
                stored is not None
                and "email" in saved
                and canonical_email(stored["email"] or "") != canonical_email(self.email or "")
            )
            if deactivated or moved:
                self.session_generation = stored["session_generation"] + 1
                if update_fields is not None and "session_generation" not in update_fields:
                    kwargs["update_fields"] = [*update_fields, "session_generation"]
        super().save(*args, **kwargs)
        if deactivated:
            account_deactivated.send(sender=type(self), user=self)

    # Django checks this hash on every request and flushes a session whose stored copy differs.
    # The password alone would do for platform admins, but tenants have no password to change.
    def get_session_auth_hash(self) -> str:
        return self._session_hash_with(secret=None)

    def get_session_auth_fallback_hash(self):
        for fallback_secret in settings.SECRET_KEY_FALLBACKS:
            yield self._session_hash_with(secret=fallback_secret)

    def _session_hash_with(self, *, secret: str | None) -> str:
        # Staff status is in it too: a session signed in by link or code (a mailbox's proof) must not
        # become an admin's session when its account is made staff, which the admin's password
        # alone opens. Only staff hashes gain the mark, so tenants' sessions outlive this line.
        staff = ":staff" if self.is_staff else ""
        return salted_hmac(
            "accounts.User.session_auth_hash",
            f"{self.password}:{self.session_generation}{staff}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()


class InvitationQuerySet(models.QuerySet):
    def open(self):
        """Neither accepted nor revoked (possibly expired)."""
        return self.filter(accepted_at__isnull=True, revoked_at__isnull=True)

    def pending(self, now=None):
        """Open and not yet expired: these can still be accepted."""
        return self.open().filter(expires_at__gt=now or timezone.now())


class Invitation(models.Model):
    """An email address asked to join an organization with a role; accepted once through its link.

    Only the SHA-256 of the link's token is stored. The rules (who may invite whom, accepting,
    revoking) live in ``organizations.team``; ``role`` holds one of ``Membership.Role``'s values,
    which that module validates (accounts does not import organizations).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10)
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            # At most one open invitation per address and organization; inviting again replaces it.
            models.UniqueConstraint(
                fields=("organization", "email"),
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_open_per_org_email",
            )
        ]
        indexes = [models.Index(fields=("email",), name="invitation_email")]

    def __str__(self) -> str:
        return f"{self.email} as {self.role}"

    def status(self, now=None) -> str:
        if self.accepted_at:
            return self.Status.ACCEPTED
        if self.revoked_at:
            return self.Status.REVOKED
        if self.expires_at <= (now or timezone.now()):
            return self.Status.EXPIRED
        return self.Status.PENDING
