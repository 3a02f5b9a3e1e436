import base64
import time

from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import client_ip
from apps.keys import services, vault
from apps.keys.forms import ProviderKeyForm, ProxyTokenForm
from apps.keys.keyring import get_keyring
from apps.keys.models import Provider, ProviderKey, ProxyToken
from apps.keys.proxy_urls import costr_origin, proxy_base_urls


class VaultPageMixin(OrganizationViewMixin):
    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["can_manage"] = self.membership.has_role("admin")
        context["generated_keyring"] = settings.COSTR_ENCRYPTION_KEYS_GENERATED
        return context


@method_decorator(sensitive_post_parameters("key"), name="dispatch")
class ProviderKeysView(VaultPageMixin, TemplateView):
    template_name = "keys/provider_keys.html"
    model = ProviderKey

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        keys = list(self.get_queryset().select_related("created_by"))
        context["keys"] = keys
        context["missing"] = [
            label for value, label in Provider.choices if not any(k.provider == value for k in keys)
        ]
        context["form"] = kwargs.get("form") or ProviderKeyForm()
        return context

    @sensitive_variables("form")
    def post(self, request, *args, **kwargs):
        form = ProviderKeyForm(request.POST)
        if form.is_valid():
            try:
                provider_key = services.provider_key_create(
                    organization=self.organization,
                    provider=form.cleaned_data["provider"],
                    key=form.cleaned_data["key"],
                    label=form.cleaned_data["label"],
                    actor=request.user,
                    ip=client_ip(request),
                )
            except services.KeysError as error:
                form.add_error("key", str(error))
            else:
                messages.success(request, f"Saved {provider_key}. It is stored encrypted.")
                return redirect("provider_keys", org_slug=self.organization.slug)
        # Never send the typed key back to the browser.
        form.data = form.data.copy()
        form.data["key"] = ""
        return self.render_to_response(self.get_context_data(form=form), status=400)


class ProviderKeyDefaultView(OrganizationViewMixin, View):
    def post(self, request, org_slug, pk):
        provider_key = get_object_or_404(ProviderKey.objects.for_org(self.organization), pk=pk)
        services.provider_key_set_default(
            provider_key=provider_key, actor=request.user, ip=client_ip(request)
        )
        messages.success(request, f"{provider_key} is now the default.")
        return redirect("provider_keys", org_slug=org_slug)


class ProviderKeyDeleteView(VaultPageMixin, TemplateView):
    template_name = "keys/provider_key_delete.html"
    required_role = "admin"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["provider_key"] = get_object_or_404(
            ProviderKey.objects.for_org(self.organization), pk=self.kwargs["pk"]
        )
        return context

    def post(self, request, org_slug, pk):
        provider_key = get_object_or_404(ProviderKey.objects.for_org(self.organization), pk=pk)
        description = str(provider_key)
        services.provider_key_delete(
            provider_key=provider_key, actor=request.user, ip=client_ip(request)
        )
        messages.success(request, f"Deleted {description}. Its ciphertext is gone.")
        return redirect("provider_keys", org_slug=org_slug)


# The session key under which a new token waits, sealed, for the one page that shows it.
SHOWN_ONCE_SESSION_ENTRY = "costr_new_token"
# How long after creation that page may still show it; past this it is gone unseen.
NEW_TOKEN_SHOWN_WITHIN_SECONDS = 300


def _shown_once_context(organization, token_pk) -> vault.Context:
    return vault.Context(org_id=organization.pk, record_id=token_pk, purpose="token-shown-once")


class TokensView(VaultPageMixin, TemplateView):
    template_name = "keys/tokens.html"
    model = ProxyToken

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["tokens"] = self.get_queryset().select_related("created_by")
        context["form"] = kwargs.get("form") or ProxyTokenForm()
        return context

    @sensitive_variables("created", "sealed")
    def post(self, request, *args, **kwargs):
        form = ProxyTokenForm(request.POST)
        if form.is_valid():
            try:
                created = services.proxy_token_create(
                    organization=self.organization,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.expires_at(),
                    actor=request.user,
                    ip=client_ip(request),
                )
            except services.KeysError as error:
                form.add_error(None, str(error))
            else:
                # Post/redirect/get: a reload of the page that shows the token must not create
                # another. The plaintext waits for that page in the session, sealed by the vault
                # (the session table never holds it in the clear), and is removed when shown.
                sealed = vault.encrypt(
                    created.plaintext,
                    context=_shown_once_context(self.organization, created.token.pk),
                    keyring=get_keyring(),
                )
                request.session[SHOWN_ONCE_SESSION_ENTRY] = {
                    "org": self.organization.pk,
                    "token": created.token.pk,
                    "sealed": base64.b64encode(sealed).decode(),
                    "at": time.time(),
                }
                return redirect("token_created", org_slug=self.organization.slug)
        return self.render_to_response(self.get_context_data(form=form), status=400)


@method_decorator(never_cache, name="dispatch")
class TokenCreatedView(VaultPageMixin, TemplateView):
    """Shows a new token's secret once: the first GET after creating it takes it out of the
    session; a reload, a second tab or the back button finds nothing and says so."""

    template_name = "keys/token_created.html"
    required_role = "admin"

    @sensitive_variables("waiting", "plaintext")
    def get(self, request, *args, **kwargs):
        waiting = request.session.get(SHOWN_ONCE_SESSION_ENTRY)
        token = None
        if waiting and waiting.get("org") == self.organization.pk:
            del request.session[SHOWN_ONCE_SESSION_ENTRY]
            if time.time() - waiting.get("at", 0) <= NEW_TOKEN_SHOWN_WITHIN_SECONDS:
                token = (
                    ProxyToken.objects.for_org(self.organization)
                    .filter(pk=waiting.get("token"), revoked_at=None)
                    .first()
                )
        if token is None:
            messages.info(
                request,
                "A token's secret is shown only once, right after it is created; Costr keeps "
                "only its hash. Create a new token if you did not copy it.",
            )
            return redirect("tokens", org_slug=self.organization.slug)
        plaintext = vault.decrypt(
            base64.b64decode(waiting["sealed"]),
            context=_shown_once_context(self.organization, token.pk),
            keyring=get_keyring(),
        ).decode()
        return self.render_to_response(
            self.get_context_data(
                token=token,
                plaintext=plaintext,
                base_urls=proxy_base_urls(request, self.organization),
                costr_url=costr_origin(request),
            )
        )


class TokenRevokeView(VaultPageMixin, TemplateView):
    template_name = "keys/token_revoke.html"
    required_role = "admin"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["token"] = get_object_or_404(
            ProxyToken.objects.for_org(self.organization), pk=self.kwargs["pk"]
        )
        return context

    def post(self, request, org_slug, pk):
        token = get_object_or_404(ProxyToken.objects.for_org(self.organization), pk=pk)
        try:
            services.proxy_token_revoke(token=token, actor=request.user, ip=client_ip(request))
        except services.KeysError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"Revoked {token}. The proxy refuses it within seconds.")
        return redirect("tokens", org_slug=org_slug)
