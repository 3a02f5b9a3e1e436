import zoneinfo

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.utils.html import format_html, format_html_join
from django.utils.text import slugify

from apps.accounts.models import (
    Organization,
    Role,
    User,
    slug_validator,
    validate_slug_not_reserved,
)


class EmailAuthenticationForm(AuthenticationForm):
    username = forms.EmailField(
        label="E-mail", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )

    def clean_username(self):
        return User.objects.normalize_email(self.cleaned_data["username"])


class OrganizationFieldsMixin:
    def clean_organization_slug(self):
        slug = (self.cleaned_data.get("organization_slug") or "").strip().lower()
        if not slug:
            slug = slugify(self.data.get("organization_name", ""))[:50].strip("-")
            if len(slug) < 3:
                raise forms.ValidationError(
                    "Choose a URL for your organization (at least 3 letters or digits)."
                )
        slug_validator(slug)
        validate_slug_not_reserved(slug)
        if Organization.objects.filter(slug=slug).exists():
            raise forms.ValidationError("This organization URL is already taken.")
        return slug


class OrganizationForm(OrganizationFieldsMixin, forms.Form):
    organization_name = forms.CharField(label="Organization name", max_length=100)
    organization_slug = forms.CharField(
        label="Organization URL",
        max_length=50,
        required=False,
        help_text="Lowercase letters, digits and hyphens. Left empty, it is made from the name.",
    )


class SignupForm(OrganizationFieldsMixin, forms.Form):
    email = forms.EmailField(
        label="Work e-mail", widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    name = forms.CharField(label="Your name", max_length=150, required=False)
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    organization_name = forms.CharField(label="Organization name", max_length=100)
    organization_slug = forms.CharField(
        label="Organization URL",
        max_length=50,
        required=False,
        help_text="Lowercase letters, digits and hyphens. Left empty, it is made from the name.",
    )

    def clean_email(self):
        email = User.objects.normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(
                "An account with this e-mail address already exists. Log in instead."
            )
        return email

    def clean(self):
        cleaned = super().clean()
        password = cleaned.get("password")
        if password:
            candidate = User(email=cleaned.get("email", ""), name=cleaned.get("name", ""))
            try:
                password_validation.validate_password(password, candidate)
            except forms.ValidationError as error:
                self.add_error("password", error)
        return cleaned


class InvitedSignupForm(SignupForm):
    """Sign-up from an invitation link: the address is the invitation's and the organization
    the inviter's, so neither is asked."""

    def __init__(self, *args, invitation, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["organization_name"], self.fields["organization_slug"]
        email = self.fields["email"]
        # Disabled: the posted value is ignored and the invitation's address is used.
        email.disabled = True
        email.help_text = f"The address {invitation.organization.name} invited."
        self.initial["email"] = invitation.email


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


TIME_ZONE_NAMES = sorted(zoneinfo.available_timezones())


class TimeZoneInput(forms.TextInput):
    """A text box that suggests the ~600 IANA names as one types: a native ``<datalist>``, so
    the browser does the searching (by any part of the name, with the keyboard, no script and
    nothing vendored); the model's validator still refuses a name that is not a time zone."""

    list_id = "time-zone-names"

    def __init__(self, attrs=None):
        defaults = {"list": self.list_id, "autocomplete": "off", "spellcheck": "false"}
        super().__init__({**defaults, **(attrs or {})})

    def render(self, name, value, attrs=None, renderer=None):
        options = format_html_join("", '<option value="{}">', ((zone,) for zone in TIME_ZONE_NAMES))
        box = super().render(name, value, attrs, renderer)
        return format_html('{}<datalist id="{}">{}</datalist>', box, self.list_id, options)


class OrganizationSettingsForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name", "time_zone", "inject_openai_stream_usage"]
        labels = {
            "name": "Organization name",
            "time_zone": "Time zone of the dashboards",
            "inject_openai_stream_usage": "Meter streaming OpenAI chat requests that do not ask "
            "for usage",
        }
        widgets = {"time_zone": TimeZoneInput()}
        help_texts = {
            "time_zone": "Type part of a place to search, such as Paris or New_York. Days, "
            "months and “today” on the dashboards start at midnight here. The API speaks UTC.",
            "inject_openai_stream_usage": (
                "OpenAI reports the tokens of a streamed chat completion only when the request "
                "sets stream_options.include_usage. When this is on, Costr sets it on requests "
                "that lack it and removes the extra usage chunk before the stream reaches your "
                'code; the only visible trace is a "usage": null field on each chunk. When it '
                "is off, such requests pass untouched and are recorded with tokens unknown. "
                "Changes reach the proxy within a few seconds."
            ),
        }


class AuditLogFilterForm(forms.Form):
    """The audit log's filters, read from the query string; every field is optional."""

    action = forms.ChoiceField(required=False)
    actor = forms.CharField(required=False, max_length=255, label="Person (e-mail contains)")
    start = forms.DateField(
        required=False, label="From (UTC)", widget=forms.DateInput({"type": "date"})
    )
    end = forms.DateField(
        required=False, label="To (UTC)", widget=forms.DateInput({"type": "date"})
    )

    def __init__(self, *args, actions: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "Any action"), *((a, a) for a in actions)]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            raise forms.ValidationError("The start date is after the end date.")
        return cleaned
