from django import forms
from django.conf import settings

from accounts.models import AuditAction, Role, TokenScope


class TeamCreateForm(forms.Form):
    name = forms.SlugField(max_length=64, help_text="Lowercase letters, digits and hyphens, e.g. data-science.")
    description = forms.CharField(max_length=500, required=False, widget=forms.TextInput)


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


EXPIRY_CHOICES = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (180, "180 days"), (365, "1 year")]


class TokenCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="Where the token will be used, e.g. 'laptop CLI' or 'CI pipeline'."
    )
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, initial=settings.API_TOKEN_DEFAULT_DAYS, label="Expires in"
    )
    scopes = forms.MultipleChoiceField(
        choices=TokenScope.choices,
        initial=TokenScope.values,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the token may do.",
    )


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, label="Who")
    action = forms.ChoiceField(required=False, choices=[("", "Any action"), *AuditAction.choices])
    team = forms.CharField(required=False)
    target = forms.CharField(required=False, label="Target contains")
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From")
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Until", help_text="Inclusive."
    )
