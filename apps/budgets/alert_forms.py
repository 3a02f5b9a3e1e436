"""The Alerts page's forms. They check shape only; the rules for URLs and event types, with their
messages, are ``alert_services``' (shared with the API)."""

from django import forms

from apps.budgets.models import EventType


class EmailAlertsForm(forms.Form):
    email_admins = forms.BooleanField(
        required=False,
        label="E-mail alerts to the organization's admins and owners",
    )


class SlackWebhookForm(forms.Form):
    slack_url = forms.CharField(
        label="Slack incoming webhook URL",
        max_length=2000,
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="https://hooks.slack.com/services/… from Slack's Incoming Webhooks app. "
        "Stored encrypted; afterwards only its last four characters are shown.",
    )


class WebhookForm(forms.Form):
    url = forms.CharField(
        label="Endpoint URL",
        max_length=2000,
        strip=True,
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/costr-alerts"}),
        help_text="https, on a public host. Costr signs every request; the secret is shown once.",
    )
    events = forms.MultipleChoiceField(
        choices=EventType.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=list(EventType.values),
        error_messages={"required": "Choose at least one event type."},
    )
