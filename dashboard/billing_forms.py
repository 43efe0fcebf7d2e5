"""The dashboard's forms for prices and budgets (the services decide what is allowed)."""

from __future__ import annotations

from django import forms

from billing.models import Period, Scope

SPEND_WINDOWS = [("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("31d", "Last 31 days")]


def _style(form: forms.Form) -> None:
    for field in form.fields.values():
        field.widget.attrs.setdefault("class", "input")


class PriceForm(forms.Form):
    model = forms.CharField(label="Model", max_length=64)
    # Text, not a number input: money is typed and kept as an exact decimal.
    prompt_per_million = forms.CharField(label="Prompt, per million tokens", max_length=24)
    completion_per_million = forms.CharField(label="Completion, per million tokens", max_length=24)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _style(self)
        self.fields["model"].widget.attrs.update(placeholder="nebula-7b", autocomplete="off")
        self.fields["prompt_per_million"].widget.attrs.update(
            placeholder="0.15", inputmode="decimal"
        )
        self.fields["completion_per_million"].widget.attrs.update(
            placeholder="0.60", inputmode="decimal"
        )


class BudgetForm(forms.Form):
    """An operator's budget for a key (by id), a user (by name) or a team (by id)."""

    scope = forms.ChoiceField(label="Applies to", choices=Scope.choices)
    target = forms.CharField(
        label="Key id, username or team id", max_length=150, help_text="What the budget caps."
    )
    amount = forms.CharField(label="Amount", max_length=24)
    period = forms.ChoiceField(label="Period", choices=Period.choices, initial=Period.MONTH)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _style(self)
        self.fields["amount"].widget.attrs.update(placeholder="100.00", inputmode="decimal")


class KeyBudgetForm(forms.Form):
    """A key's own budget, from its page. An empty amount removes the budget."""

    amount = forms.CharField(
        label="Budget", max_length=24, required=False, help_text="Empty: no budget of its own."
    )
    period = forms.ChoiceField(label="Period", choices=Period.choices, initial=Period.MONTH)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _style(self)
        self.fields["amount"].widget.attrs.update(placeholder="50.00", inputmode="decimal")
