from django import forms

from apps.billing.models import DEFAULT_METADATA_FIELD
from apps.billing.services import stripe_key_format_error


class StripeConnectForm(forms.Form):
    key = forms.CharField(
        label="Restricted key",
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=(
            "Starts with rk_live_ or rk_test_. Stored encrypted; afterwards only its last four "
            "characters are shown."
        ),
    )
    metadata_field = forms.CharField(
        label="Metadata field naming the Costr customer",
        max_length=40,
        initial=DEFAULT_METADATA_FIELD,
        help_text=(
            "A Stripe customer whose metadata has this key maps to the Costr customer with that "
            "X-Costr-Customer value."
        ),
    )

    def clean_key(self):
        key = self.cleaned_data["key"]
        problem = stripe_key_format_error(key)
        if problem:
            raise forms.ValidationError(problem)
        return key


class MetadataFieldForm(forms.Form):
    metadata_field = forms.CharField(label="Metadata field", max_length=40)


class CustomerMappingForm(forms.Form):
    external_id = forms.CharField(
        label="Costr customer",
        max_length=255,
        required=False,
        help_text="Its X-Costr-Customer value. Empty: back to the automatic rules.",
    )
