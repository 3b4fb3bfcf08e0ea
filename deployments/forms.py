from django import forms

from deployments.models import Environment


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

    def __init__(self, *args, versions: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].choices = [(v, v) for v in versions]
        self.fields["environment"].choices = [
            (e.name, f"{e.name}{' (needs approval)' if e.requires_approval else ''}") for e in Environment.objects.all()
        ]


class GrantForm(forms.Form):
    user = forms.CharField(required=False, help_text="A person or a service account…")
    team = forms.CharField(required=False, help_text="…or a whole team.")

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("team")):
            raise forms.ValidationError("Give a user or a team (one of them).")
        return data


class DeprecationForm(forms.Form):
    sunset = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: the day this major stops being served, from 00:00 UTC (sent as the Sunset header).",
    )
    note = forms.CharField(required=False, max_length=500, help_text="What callers should do, e.g. 'Move to /v2'.")
