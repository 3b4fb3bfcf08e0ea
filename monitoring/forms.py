from __future__ import annotations

from django import forms

from monitoring.services import FEEDBACK_FILE_MAX_BYTES


class LoggingForm(forms.Form):
    enabled = forms.BooleanField(required=False, label="Log predictions")
    sample_rate = forms.FloatField(
        min_value=0.0, max_value=1.0, label="Share logged", help_text="From 0 to 1: 0.1 logs one prediction in ten."
    )
    keep_payloads = forms.BooleanField(
        required=False,
        label="Keep inputs and predictions",
        help_text="Needed for drift and live quality; without, only ids, times, versions, statuses and latencies.",
    )
    retention_days = forms.IntegerField(min_value=1, max_value=3650, label="Keep for (days)")


class FeedbackUploadForm(forms.Form):
    file = forms.FileField(
        label="Outcomes file",
        help_text=(
            "CSV with the columns prediction_id and actual, or JSON: an array of "
            '{"prediction_id", "actual"} objects (or one per line).'
        ),
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.json,.jsonl,text/csv,application/json"}),
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > FEEDBACK_FILE_MAX_BYTES:
            raise forms.ValidationError(f"The file may be at most {FEEDBACK_FILE_MAX_BYTES // (1024 * 1024)} MiB.")
        return upload
