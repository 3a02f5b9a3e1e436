from datetime import timedelta

from django import forms
from django.utils import timezone

from apps.keys.models import Provider, Scope
from apps.keys.services import provider_key_format_error

EXPIRY_CHOICES = [
    ("", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
]


class ProviderKeyForm(forms.Form):
    provider = forms.ChoiceField(choices=Provider.choices)
    label = forms.CharField(
        max_length=100, required=False, help_text="Optional, e.g. “production” or “EU project”."
    )
    key = forms.CharField(
        label="API key",
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Stored encrypted. After saving, only its last four characters are shown.",
    )

    def clean(self):
        cleaned = super().clean()
        provider, key = cleaned.get("provider"), cleaned.get("key")
        if provider and key:
            problem = provider_key_format_error(provider, key)
            if problem:
                self.add_error("key", problem)
        return cleaned


class ProxyTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “api-server prod”.")
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        initial=[Scope.PROXY],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one scope."},
    )
    expires_in_days = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")

    def expires_at(self):
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=int(days)) if days else None
