"""The Budgets page's forms. They read what a person typed into the values ``services`` takes
(thresholds as a list of whole numbers, check boxes as booleans); ``services`` decides what is
allowed and its messages are put on the fields they name (``add_service_errors``)."""

from django import forms

from apps.budgets.models import DEFAULT_THRESHOLDS, Period, Scope
from apps.budgets.services import BudgetError, active_tokens

THRESHOLDS_HELP = "Percentages of the limit that send an alert, separated by commas."


def _thresholds(text: str) -> list[int]:
    parts = [part.strip().rstrip("%").strip() for part in text.replace(";", ",").split(",")]
    parts = [part for part in parts if part]
    if not parts:
        raise forms.ValidationError("Give at least one percentage, such as 80, 100.")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise forms.ValidationError(
            "Whole percentages separated by commas, such as 50, 80, 100."
        ) from None


class BudgetChangeForm(forms.Form):
    """What a budget may change after it is created."""

    period = forms.ChoiceField(
        choices=Period.choices,
        help_text="A calendar day or month, in the organization's time zone.",
    )
    limit_usd = forms.CharField(
        label="Limit (USD)",
        max_length=32,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "250.00"}),
    )
    enforce = forms.TypedChoiceField(
        label="When the limit is reached",
        choices=[
            ("true", "Refuse requests (429 budget_exceeded)"),
            ("false", "Alert only"),
        ],
        coerce=lambda value: value == "true",
        initial="true",
    )
    fail_closed = forms.BooleanField(
        label="Fail closed",
        required=False,
        help_text="While the budget store cannot be reached, refuse the requests under this "
        "budget instead of forwarding them and counting them later.",
    )
    alert_thresholds = forms.CharField(
        label="Alert thresholds (%)",
        max_length=100,
        initial=", ".join(str(t) for t in DEFAULT_THRESHOLDS),
        help_text=THRESHOLDS_HELP,
    )

    def clean_alert_thresholds(self):
        return _thresholds(self.cleaned_data["alert_thresholds"])

    def add_service_errors(self, error: BudgetError) -> None:
        for field, message in error.errors.items():
            self.add_error(field if field in self.fields else None, message)

    def values(self) -> dict:
        return {
            name: self.cleaned_data[name]
            for name in ("period", "limit_usd", "enforce", "fail_closed", "alert_thresholds")
        }

    @classmethod
    def initial_for(cls, budget) -> dict:
        return {
            "period": budget.period,
            "limit_usd": format(budget.limit_usd.normalize(), "f"),
            "enforce": "true" if budget.enforce else "false",
            "fail_closed": budget.fail_closed,
            "alert_thresholds": ", ".join(str(t) for t in budget.alert_thresholds),
        }


class BudgetCreateForm(BudgetChangeForm):
    """A new budget: its scope and what it covers, then what ``BudgetChangeForm`` holds."""

    field_order = [
        "scope",
        "customer",
        "token",
        "property_name",
        "property_value",
        "period",
        "limit_usd",
        "enforce",
        "fail_closed",
        "alert_thresholds",
    ]

    scope = forms.ChoiceField(choices=Scope.choices, label="Applies to")
    customer = forms.CharField(
        required=False,
        max_length=255,
        strip=False,
        help_text="The customer's id, as your code sends it in X-Costr-Customer.",
    )
    token = forms.ChoiceField(required=False, label="Token")
    property_name = forms.CharField(
        required=False,
        max_length=64,
        help_text="As in X-Costr-Property-<name>, e.g. feature.",
    )
    property_value = forms.CharField(required=False, max_length=255, help_text="e.g. chat.")

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        tokens = active_tokens(organization)
        self.fields["token"].choices = [("", "Choose a token")] + [
            (token.prefix, f"{token.name} ({token.prefix}…)") for token in tokens
        ]
        if len(self.fields["token"].choices) == 1:
            self.fields["token"].help_text = "This organization has no active token."

    def values(self) -> dict:
        target = {
            name: self.cleaned_data[name]
            for name in ("scope", "customer", "token", "property_name", "property_value")
        }
        return {**target, **super().values()}
