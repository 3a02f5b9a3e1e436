import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.accounts.tenancy import TenantModel
from apps.keys import vault


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GOOGLE = "google", "Google Gemini"


class Scope(models.TextChoices):
    PROXY = "proxy", "Proxy: forward requests to providers"
    READ = "read", "Read: reporting API"
    INGEST = "ingest", "Ingest: report usage of direct calls"
    MANAGE = "manage", "Manage: create, change and delete budgets through the API"


class EncryptedSecret(TenantModel):
    """A row holding one vault blob, bound to this row by ``secret_id`` and ``VAULT_PURPOSE``.

    ``kek_id`` repeats the keyring id recorded inside the blob so rotation can find the rows
    still wrapped by an old key with an indexed query, in batches, and resume after a stop.
    """

    VAULT_PURPOSE = ""

    secret_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    ciphertext = models.BinaryField(editable=False)
    kek_id = models.CharField(max_length=16, editable=False, db_index=True)

    class Meta:
        abstract = True

    def vault_context(self) -> vault.Context:
        return vault.Context(
            org_id=self.organization_id, record_id=str(self.secret_id), purpose=self.VAULT_PURPOSE
        )


class ProviderKey(EncryptedSecret):
    VAULT_PURPOSE = "provider_key"

    provider = models.CharField(max_length=16, choices=Provider.choices)
    label = models.CharField(max_length=100, blank=True)
    last4 = models.CharField(max_length=4)
    # Keyed hash of the key, to notice the same key pasted twice without being able to test
    # guesses against it.
    fingerprint = models.CharField(max_length=64)
    is_default = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["provider", "-is_default", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "fingerprint"], name="keys_providerkey_fingerprint_unique"
            ),
            models.UniqueConstraint(
                fields=["organization", "provider"],
                condition=Q(is_default=True),
                name="keys_providerkey_one_default",
            ),
        ]

    def __str__(self):
        return f"{self.get_provider_display()} key {self.masked}"

    @property
    def masked(self) -> str:
        return f"{MASK_PREFIX[self.provider]}…{self.last4}"


MASK_PREFIX = {Provider.OPENAI: "sk-", Provider.ANTHROPIC: "sk-ant-", Provider.GOOGLE: "AIza"}


class ProxyToken(TenantModel):
    """A Costr token. Only its SHA-256 is stored: the token itself is shown once, at creation."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    def is_active(self, now) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
