import re
import zoneinfo
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import dateformat, timezone

from apps.accounts.tenancy import TenantModel

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{1,48}[a-z0-9])$"
slug_validator = RegexValidator(
    SLUG_PATTERN,
    "Use 3 to 50 lowercase letters, digits and hyphens, starting and ending with a letter or "
    "digit.",
)


# Words that name pages beside the organizations (``/app/new/``), so no organization may take them.
RESERVED_SLUGS = frozenset({"new", "admin", "api", "app", "static", "settings", "www", "costr"})


def validate_slug_not_reserved(value):
    if value in RESERVED_SLUGS:
        raise ValidationError(f"“{value}” is reserved. Choose another organization URL.")


class UserManager(BaseUserManager):
    use_in_migrations = True

    @classmethod
    def normalize_email(cls, email):
        # The whole address is compared case-insensitively: one person, one account.
        return (email or "").strip().lower()

    def _create_user(self, email, password, **extra_fields):
        if not email:
            raise ValueError("An e-mail address is required")
        user = self.model(email=self.normalize_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField("e-mail address", unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self):
        return self.email

    def get_full_name(self):
        return self.name or self.email

    def get_short_name(self):
        return self.name or self.email.split("@")[0]


# What the retention page offers: from a week to two years.
RETENTION_CHOICES = [
    (7, "7 days"),
    (14, "14 days"),
    (30, "30 days"),
    (60, "60 days"),
    (90, "90 days"),
    (180, "180 days"),
    (365, "1 year"),
    (730, "2 years"),
]


def validate_time_zone(value):
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"“{value}” is not a time zone name such as Europe/Paris or UTC.")


def default_retention_days() -> int:
    return settings.COSTR_DEFAULT_RETENTION_DAYS


def retention_choices() -> list[tuple[int, str]]:
    """The offered choices, plus the deployment's default if it set one of its own."""
    choices = dict(RETENTION_CHOICES)
    choices.setdefault(default_retention_days(), f"{default_retention_days()} days")
    return sorted(choices.items())


class Organization(models.Model):
    """The tenant. Everything a customer of Costr owns hangs off one of these."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(
        max_length=50, unique=True, validators=[slug_validator, validate_slug_not_reserved]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Streaming OpenAI chat requests without stream_options.include_usage get it set by the
    # proxy (and the extra usage chunk removed), so their tokens are known. Off: such requests
    # are forwarded untouched and recorded with tokens unknown.
    inject_openai_stream_usage = models.BooleanField(default=True)
    # Usage metadata older than this many days is purged (events and rollups).
    retention_days = models.PositiveSmallIntegerField(
        default=default_retention_days,
        validators=[MinValueValidator(7), MaxValueValidator(730)],
    )
    # Dashboards count days, months and "today" in this zone; the API speaks UTC.
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    # Set when an owner deletes the organization: from then on no page, token or API call
    # reaches it, and a task deletes its data (the row itself last).
    deletion_requested_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


ROLE_RANK = {Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


def role_at_least(role: str, required: str) -> bool:
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role(required)]


class Membership(TenantModel):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "user"], name="accounts_membership_unique"
            ),
        ]

    def __str__(self):
        return f"{self.user} in {self.organization_id} ({self.role})"

    def has_role(self, required: str) -> bool:
        return role_at_least(self.role, required)


class Invitation(TenantModel):
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        indexes = [models.Index(fields=["organization", "email"])]

    def __str__(self):
        return f"Invitation of {self.email} to {self.organization_id}"

    @property
    def is_pending(self) -> bool:
        return self.accepted_at is None and self.expires_at > timezone.now()


class AuditEvent(TenantModel):
    """Who did what, when and from where. ``details`` never holds a secret."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    # Kept apart from ``actor`` so the record still names the person after their account is gone.
    actor_label = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=255, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "-created_at"])]
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.action} {self.target}"

    def details_lines(self) -> list[str]:
        """``details`` for people: "Retention days: 90 → 30", "Scopes: proxy, read",
        "Expires at: none", dates as the dashboard writes them, never a Python repr."""
        return [
            f"{_detail_label(key)}: {_detail_text(value)}" for key, value in self.details.items()
        ]


_ISO_MOMENT = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
)


def _detail_label(key) -> str:
    words = str(key).replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _detail_text(value) -> str:
    """One value of an audit event's details as plain text (nested values included)."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_detail_text(item) for item in value) if value else "none"
    if isinstance(value, dict):
        if value.keys() == {"from", "to"}:
            return f"{_detail_text(value['from'])} → {_detail_text(value['to'])}"
        if not value:
            return "none"
        return "; ".join(f"{str(k).replace('_', ' ')} {_detail_text(v)}" for k, v in value.items())
    if isinstance(value, str) and _ISO_MOMENT.match(value):
        return _moment_text(value)
    return str(value)


def _moment_text(text: str) -> str:
    """An ISO date or moment in the dashboard's format: "Mar 1, 2026" or "Mar 1, 2026 14:30 UTC"."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if len(text) == 10:
        return dateformat.format(moment, "M j, Y")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{dateformat.format(moment, 'M j, Y H:i')} UTC"


class DpaAcceptance(TenantModel):
    """An organization's acceptance of one version of the Data Processing Agreement: once per
    version, backed by the audit event that recorded who accepted it, when and from where."""

    version = models.CharField(max_length=32)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    accepted_by_label = models.CharField(max_length=255)
    accepted_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    audit_event = models.OneToOneField(AuditEvent, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "version"], name="accounts_dpa_acceptance_once"
            )
        ]
        ordering = ["-accepted_at"]

    def __str__(self):
        return f"DPA {self.version} accepted by {self.accepted_by_label}"
