from django import forms

from registry import reference
from registry.models import Flavor


class ModelCreateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Lowercase letters, digits and hyphens, e.g. churn-predictor.")
    team = forms.ChoiceField(help_text="The team that owns the model and its services.")
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 5}), help_text="Markdown: what the model does, for whom."
    )

    def __init__(self, *args, teams: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = [(name, name) for name in teams]


class ModelEditForm(forms.Form):
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}), help_text="Markdown.")


JSON_WIDGET = forms.Textarea(attrs={"rows": 4, "class": "mono", "spellcheck": "false"})


class VersionRegisterForm(forms.Form):
    """Rendered on the registration page; the submission is parsed like the API's."""

    artifact = forms.FileField(help_text="joblib/pickle for scikit-learn, .onnx, or a .py file defining predict().")
    version = forms.CharField(max_length=40, help_text="MAJOR.MINOR.PATCH; a new major for breaking schema changes.")
    flavor = forms.ChoiceField(choices=Flavor.choices)
    sample_input = forms.CharField(
        widget=JSON_WIDGET, help_text='A few instances the model can predict, e.g. {"instances": [{"age": 42}]}.'
    )
    metrics = forms.CharField(required=False, widget=JSON_WIDGET, help_text='e.g. {"accuracy": 0.93, "f1": 0.91}')
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}), help_text="Markdown.")
    git_commit = forms.CharField(required=False, max_length=64, label="Git commit")
    data_ref = forms.CharField(required=False, max_length=500, label="Training data", help_text="A path or URL.")
    parameters = forms.CharField(required=False, widget=JSON_WIDGET, help_text='Training parameters, e.g. {"C": 1.0}')
    input_schema = forms.CharField(
        required=False, widget=JSON_WIDGET, help_text="JSON Schema of one instance. Leave empty to infer it."
    )
    output_schema = forms.CharField(
        required=False, widget=JSON_WIDGET, help_text="JSON Schema of one prediction. Leave empty to infer it."
    )
    sha256 = forms.CharField(
        required=False, max_length=64, label="Expected sha256", help_text="Optional: refused if the upload differs."
    )
    task = forms.ChoiceField(
        required=False,
        choices=[("", "Infer from the outputs"), ("classification", "Classification"), ("regression", "Regression")],
        help_text="What its live quality is measured as, once ground truth comes in.",
    )

    # How the page groups the fields: what every registration needs, then what documents it.
    def _fields(self, names: list[str]) -> list:
        return [self[name] for name in names]

    @property
    def essential_fields(self) -> list:
        return self._fields(["artifact", "version", "flavor", "sample_input", "metrics"])

    @property
    def documentation_fields(self) -> list:
        return self._fields(["description", "git_commit", "data_ref", "parameters"])

    @property
    def advanced_fields(self) -> list:
        return self._fields(["task", "input_schema", "output_schema", "sha256"])


class ReferenceForm(forms.Form):
    file = forms.FileField(
        label="Reference data",
        help_text="Inputs like the ones this version was validated on: CSV with a column per input field, "
        "Parquet, or JSON (an array of instances).",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.parquet,.json,.jsonl"}),
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > reference.MAX_BYTES:
            raise forms.ValidationError(f"The file may be at most {reference.MAX_BYTES // (1024 * 1024)} MiB.")
        return upload
