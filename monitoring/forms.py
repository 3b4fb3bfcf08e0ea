from __future__ import annotations

from django import forms

from monitoring.models import EventType, Metric
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


class AlertRuleForm(forms.Form):
    metric = forms.ChoiceField(
        choices=Metric.choices,
        help_text="Quality metrics fire below the threshold (RMSE and MAE above); drift, errors and latency above.",
    )
    threshold = forms.FloatField(help_text="Shares are from 0 to 1 (0.05 is 5 %); PSI 0.25 is a significant drift.")
    window_minutes = forms.IntegerField(min_value=1, initial=60, label="Window (minutes)")
    min_samples = forms.IntegerField(
        min_value=1, initial=50, label="Judge from", help_text="Requests, labelled predictions or instances needed."
    )


def events_field(**kwargs) -> forms.MultipleChoiceField:
    """The event types a webhook is sent, as checkboxes."""
    return forms.MultipleChoiceField(
        choices=[(kind, kind) for kind in EventType.values],
        widget=forms.CheckboxSelectMultiple,
        label="Events to send",
        **kwargs,
    )


class WebhookForm(forms.Form):
    url = forms.URLField(
        max_length=500,
        label="Webhook URL",
        assume_scheme="https",
        help_text="Events are POSTed here as JSON, signed with a secret shown once (X-Portal-Signature).",
    )
    events = events_field(
        initial=list(EventType.values),
        help_text="Alerts, this service's deployments and access requests, its consumers' expiring tokens.",
        error_messages={"required": "Choose at least one event to send."},
    )


class WebhookEventsForm(forms.Form):
    """The event types an existing webhook is sent."""

    events = events_field(error_messages={"required": "Choose at least one event to send, or remove the webhook."})


def preference_field(kind: str) -> str:
    """A form field's name for an event type (dots do not suit field names in templates)."""
    return "email_" + kind.replace(".", "__")


class NotificationPreferencesForm(forms.Form):
    """One checkbox per event type: whether its email is sent to you."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for kind, label in EventType.choices:
            self.fields[preference_field(kind)] = forms.BooleanField(required=False, label=label)

    def choices(self) -> dict[str, bool]:
        return {kind: self.cleaned_data[preference_field(kind)] for kind in EventType.values}


class ThresholdsForm(forms.Form):
    psi_warn = forms.FloatField(min_value=0, label="PSI: drifting from", help_text="0.1 by default.")
    psi_alert = forms.FloatField(min_value=0, label="PSI: significant from", help_text="0.25 by default.")
    missing_rate = forms.FloatField(min_value=0, max_value=1, label="Missing values: at most (share)")
    out_of_range_rate = forms.FloatField(min_value=0, max_value=1, label="Out of range: at most (share)")
