"""Writes for the vault: provider keys, proxy tokens, rotation. Each leaves an AuditEvent that
names what changed and never the secret itself."""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.apps import apps
from django.db import transaction
from django.db.models import CharField, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_event_record
from apps.keys import keycache, vault
from apps.keys.keyring import fingerprint_secret, get_keyring, seal
from apps.keys.models import EncryptedSecret, Provider, ProviderKey, ProxyToken, Scope

TOKEN_PREFIX = "costr_"  # noqa: S105 -- a public marker, not a secret
# Shown in lists and accepted by `revoketoken`: "costr_" plus 8 characters of the random part.
TOKEN_DISPLAY_LENGTH = len(TOKEN_PREFIX) + 8


class KeysError(Exception):
    """Refused input about keys or tokens; the message is for the person who typed it."""


KEY_FORMATS = {
    Provider.OPENAI: (
        re.compile(r"^sk-(?!ant-)[A-Za-z0-9_\-]{20,}$"),
        "OpenAI keys start with “sk-” (for example sk-proj-…) and have no spaces.",
    ),
    Provider.ANTHROPIC: (
        re.compile(r"^sk-ant-[A-Za-z0-9_\-]{20,}$"),
        "Anthropic keys start with “sk-ant-” and have no spaces.",
    ),
    Provider.GOOGLE: (
        re.compile(r"^AIza[A-Za-z0-9_\-]{35}$"),
        "Google AI Studio keys start with “AIza” and are 39 characters long.",
    ),
}
_LOOKS_LIKE = [
    ("sk-ant-", Provider.ANTHROPIC),
    ("AIza", Provider.GOOGLE),
    ("sk-", Provider.OPENAI),
    ("rk_", None),
]


@sensitive_variables("key")
def provider_key_format_error(provider: str, key: str) -> str | None:
    """Why ``key`` cannot be a key of ``provider``, or None when it looks right."""
    pattern, explanation = KEY_FORMATS[Provider(provider)]
    if pattern.match(key):
        return None
    # The most specific known prefix says whose key it probably is.
    start, owner = next(((s, o) for s, o in _LOOKS_LIKE if key.startswith(s)), (None, provider))
    if start is not None and owner is None:
        return "This looks like a Stripe key, not a provider key."
    wanted = Provider(provider).label
    if owner != provider:
        return f"This looks like a key for {Provider(owner).label}, not for {wanted}."
    return f"This does not look like a key for {wanted}. {explanation}"


def _invalidate_on_commit(organization_id: int) -> None:
    transaction.on_commit(lambda: keycache.invalidate_organization(organization_id))


@sensitive_variables("key")
def provider_key_create(
    *,
    organization: Organization,
    provider: str,
    key: str,
    label: str = "",
    actor: User | None,
    ip: str | None = None,
) -> ProviderKey:
    key = key.strip()
    problem = provider_key_format_error(provider, key)
    if problem:
        raise KeysError(problem)
    fingerprint = fingerprint_secret(key)
    with transaction.atomic():
        existing = ProviderKey.objects.for_org(organization).filter(fingerprint=fingerprint).first()
        if existing is not None:
            label_text = f" as “{existing.label}”" if existing.label else ""
            raise KeysError(f"This key is already stored{label_text} ({existing.masked}).")
        has_default = (
            ProviderKey.objects.for_org(organization)
            .filter(provider=provider, is_default=True)
            .exists()
        )
        provider_key = ProviderKey(
            organization=organization,
            provider=provider,
            label=label.strip(),
            last4=key[-4:],
            fingerprint=fingerprint,
            is_default=not has_default,
            created_by=actor,
        )
        seal(provider_key, key)
        provider_key.save()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="provider_key.created",
            target=provider_key.masked,
            ip=ip,
            details={"provider": provider, "label": provider_key.label},
        )
        _invalidate_on_commit(organization.pk)
    return provider_key


def provider_key_set_default(
    *, provider_key: ProviderKey, actor: User | None, ip: str | None = None
) -> ProviderKey:
    organization = provider_key.organization
    with transaction.atomic():
        ProviderKey.objects.for_org(organization).filter(
            provider=provider_key.provider, is_default=True
        ).exclude(pk=provider_key.pk).update(is_default=False)
        provider_key.is_default = True
        provider_key.save(update_fields=["is_default"])
        audit_event_record(
            organization=organization,
            actor=actor,
            action="provider_key.default_set",
            target=provider_key.masked,
            ip=ip,
            details={"provider": provider_key.provider},
        )
        _invalidate_on_commit(organization.pk)
    return provider_key


def provider_key_delete(
    *, provider_key: ProviderKey, actor: User | None, ip: str | None = None
) -> None:
    """Delete the row, ciphertext and all. The newest other key of the provider becomes default,
    so requests keep flowing when a spare key exists."""
    organization = provider_key.organization
    with transaction.atomic():
        masked, provider = provider_key.masked, provider_key.provider
        was_default = provider_key.is_default
        provider_key.delete()
        if was_default:
            successor = (
                ProviderKey.objects.for_org(organization)
                .filter(provider=provider)
                .order_by("-created_at")
                .first()
            )
            if successor is not None:
                successor.is_default = True
                successor.save(update_fields=["is_default"])
        audit_event_record(
            organization=organization,
            actor=actor,
            action="provider_key.deleted",
            target=masked,
            ip=ip,
            details={"provider": provider},
        )
        _invalidate_on_commit(organization.pk)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedToken:
    token: ProxyToken
    plaintext: str


@sensitive_variables("plaintext")
def proxy_token_create(
    *,
    organization: Organization,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    actor: User | None,
    ip: str | None = None,
) -> CreatedToken:
    scopes = sorted(set(scopes))
    if not scopes:
        raise KeysError("Choose at least one scope.")
    unknown = set(scopes) - set(Scope.values)
    if unknown:
        raise KeysError(f"Unknown scope: {', '.join(sorted(unknown))}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise KeysError("The expiry must be in the future.")
    name = name.strip() or "Token"
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ProxyToken.objects.create(
            organization=organization,
            name=name,
            prefix=plaintext[:TOKEN_DISPLAY_LENGTH],
            token_hash=token_hash(plaintext),
            scopes=scopes,
            expires_at=expires_at,
            created_by=actor,
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="token.created",
            target=f"{token.name} ({token.prefix}…)",
            ip=ip,
            details={
                "scopes": scopes,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
        _invalidate_on_commit(organization.pk)
    return CreatedToken(token=token, plaintext=plaintext)


def proxy_token_revoke(*, token: ProxyToken, actor: User | None, ip: str | None = None) -> None:
    if token.revoked_at is not None:
        raise KeysError(f"{token.name} ({token.prefix}…) is already revoked.")
    with transaction.atomic():
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_event_record(
            organization=token.organization,
            actor=actor,
            action="token.revoked",
            target=f"{token.name} ({token.prefix}…)",
            ip=ip,
        )
        _invalidate_on_commit(token.organization_id)


def encrypted_secret_models() -> list[type[EncryptedSecret]]:
    return [m for m in apps.get_models() if issubclass(m, EncryptedSecret)]


def encryption_keys_rotate(*, batch_size: int = 200, progress=None) -> int:
    """Re-wrap every stored secret still under an old key so that key can leave the keyring.

    Works in batches, each its own transaction, selecting only rows not yet under the primary
    key: stopping half-way and running again picks up where it stopped, and a second run finds
    nothing to do.
    """
    keyring = get_keyring()
    rewrapped = 0
    for model in encrypted_secret_models():
        while True:
            with transaction.atomic():
                batch = list(
                    model.objects.unscoped(reason="rotation re-wraps every tenant's secrets")
                    .exclude(kek_id=keyring.primary_id)
                    .select_for_update()
                    .order_by("pk")[:batch_size]
                )
                if not batch:
                    break
                per_org: dict[int, int] = {}
                for row in batch:
                    row.ciphertext = vault.rewrap(
                        bytes(row.ciphertext), context=row.vault_context(), keyring=keyring
                    )
                    row.kek_id = keyring.primary_id
                    per_org[row.organization_id] = per_org.get(row.organization_id, 0) + 1
                model.objects.unscoped(reason="the batch spans tenants").bulk_update(
                    batch, ["ciphertext", "kek_id"]
                )
                for organization in Organization.objects.filter(pk__in=per_org):
                    audit_event_record(
                        organization=organization,
                        actor=None,
                        action="encryption_keys.rotated",
                        target=model._meta.verbose_name_plural,
                        details={"rows": per_org[organization.pk], "key_id": keyring.primary_id},
                    )
                transaction.on_commit(keycache.invalidate_all)
            rewrapped += len(batch)
            if progress is not None:
                progress(model, rewrapped)
    return rewrapped


def organization_secrets_destroy(*, organization: Organization) -> int:
    """Delete every secret the organization stored (provider keys, the Stripe key, anything kept
    in the vault), revoke every token and overwrite its hash, and make each worker forget them.
    For account deletion: nothing is left to decrypt or to authenticate with from the moment this
    commits. Token rows stay until the organization's data is deleted: deleting them now would
    make the database null the token of every usage event in this request."""
    with transaction.atomic():
        destroyed = sum(
            model.objects.for_org(organization).delete()[0] for model in encrypted_secret_models()
        )
        destroyed += ProxyToken.objects.for_org(organization).update(
            revoked_at=timezone.now(),
            token_hash=Concat(Value("destroyed:"), Cast("pk", CharField())),
        )
        _invalidate_on_commit(organization.pk)
    return destroyed
