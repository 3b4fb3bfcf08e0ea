from django import forms

from deployments.models import Environment, Strategy


class ServiceCreateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="The stable name consumers call, e.g. churn-scoring.")
    model = forms.ChoiceField(
        help_text="The registered model it serves; the team that owns the model owns the service."
    )
    description = forms.CharField(required=False, max_length=500)

    def __init__(self, *args, models: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = models


class DeploymentRequestForm(forms.Form):
    version = forms.ChoiceField()
    environment = forms.ChoiceField()
    replicas = forms.IntegerField(min_value=1, initial=1)
    reason = forms.CharField(required=False, max_length=500, help_text="What changes for consumers; approvers read it.")
    strategy = forms.ChoiceField(
        choices=Strategy.choices,
        initial=Strategy.BLUE_GREEN,
        required=False,
        help_text="Blue/green switches at once after a smoke test; a canary tries growing shares of traffic first "
        "(rolled back on its own if it does worse); a shadow test gets copies of traffic until someone promotes it.",
    )
    steps = forms.CharField(
        required=False,
        max_length=100,
        label="Canary steps",
        help_text="Percents of traffic, e.g. 5, 25, 50 (100 comes last). Empty: 5, 25, 50.",
    )
    bake_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=3600,
        label="Bake (seconds)",
        help_text="Canary: each step runs this long (300).",
    )
    sticky = forms.BooleanField(required=False, help_text="Canary: one caller sees one version.")
    shadow_percent = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=100,
        label="Shadow percent",
        help_text="Shadow: share of requests copied (10).",
    )

    def clean_steps(self):
        text = self.cleaned_data.get("steps", "").replace("%", "").strip()
        if not text:
            return None
        try:
            return tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise forms.ValidationError("Write percents separated by commas, e.g. 5, 25, 50.") from None

    def __init__(self, *args, versions: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].choices = [(v, v) for v in versions]
        self.fields["environment"].choices = [
            (e.name, f"{e.name}{' (needs approval)' if e.requires_approval else ''}") for e in Environment.objects.all()
        ]


class DeprecationForm(forms.Form):
    sunset = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: the day this major stops being served, from 00:00 UTC (sent as the Sunset header).",
    )
    note = forms.CharField(required=False, max_length=500, help_text="What callers should do, e.g. 'Move to /v2'.")


class GrantLimitsForm(forms.Form):
    """A grant's optional end and limits; empty fields mean none (validated again by the service)."""

    expires = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: the grant is removed at 00:00 UTC that day.",
    )
    rate_per_second = forms.FloatField(
        required=False, min_value=0.001, help_text="Optional: sustained requests per second, e.g. 5."
    )
    burst = forms.IntegerField(required=False, min_value=1, help_text="Optional: requests at once above the rate.")
    daily_quota = forms.IntegerField(required=False, min_value=1, help_text="Optional: requests per UTC day.")


class GrantForm(GrantLimitsForm):
    user = forms.CharField(required=False, help_text="A person or a service account…")
    team = forms.CharField(required=False, help_text="…or a whole team.")

    field_order = ["user", "team", "expires", "rate_per_second", "burst", "daily_quota"]

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("team")):
            raise forms.ValidationError("Give a user or a team (one of them).")
        return data


class AccessRequestForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What will call the service, and why; the owning team reads it.",
    )
    service_account = forms.ChoiceField(
        required=False, label="For", help_text="Yourself, or a service account of a team you own or maintain."
    )
    expires = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        label="Until",
        help_text="Optional: the access ends at 00:00 UTC that day.",
    )

    def __init__(self, *args, accounts: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["service_account"].choices = [("", "Myself"), *[(name, name) for name in accounts]]
