"""The auditor's filter, validated before it reaches a query."""

from __future__ import annotations

from django import forms

from accounts.models import Role
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.selectors import EventFilter


def _choices(values: list[str]) -> list[tuple[str, str]]:
    return [("", "any"), *[(value, value) for value in values]]


class AuditFilterForm(forms.Form):
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}))
    actor = forms.CharField(required=False, max_length=150, label="User",
                            help_text="Any part of the user name; upper and lower case match alike.")
    actor_role = forms.ChoiceField(required=False, label="Role",
                                   choices=_choices([*Role.values, "consultant"]))
    patient = forms.RegexField(
        required=False, regex=r"^[0-9a-fA-F]{8,64}$", label="Patient pseudonym",
        help_text="Its first 8 or more hexadecimal digits, or all 64.",
        error_messages={"invalid": "Enter at least the first 8 hexadecimal digits of the pseudonym "
                                   "(a whole pseudonym is 64 hexadecimal digits)."})
    study = forms.RegexField(required=False, regex=r"^[0-9.]{1,64}$", label="Study UID",
                             error_messages={"invalid": "A study UID is digits and dots."})
    patient_id = forms.CharField(required=False, max_length=64, label="Patient ID")
    issuer = forms.CharField(required=False, max_length=64, label="Issuer of patient ID")
    action = forms.ChoiceField(required=False, choices=_choices([a.value for a in Action]))
    outcome = forms.ChoiceField(required=False, choices=_choices([o.value for o in Outcome]))
    source_ip = forms.GenericIPAddressField(required=False, label="Source address")

    def __init__(self, *args: object, may_resolve: bool, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not may_resolve:
            del self.fields["patient_id"]
            del self.fields["issuer"]

    def clean_patient(self) -> str:
        return str(self.cleaned_data.get("patient") or "").lower()

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("The start of the range must be before its end.")
        return cleaned

    def criteria(self, *, resolved_pseudonyms: list[str] | None = None) -> EventFilter:
        data = self.cleaned_data
        prefix = data.get("patient") or ""
        resolved = tuple(resolved_pseudonyms or ())
        return EventFilter(
            matches_nothing=resolved_pseudonyms is not None and not resolved and not prefix,
            since=data.get("since"), until=data.get("until"), actor=data.get("actor", ""),
            actor_role=data.get("actor_role", ""), patient_pseudonym_prefix=prefix,
            patient_pseudonyms=resolved,
            action=data.get("action", ""), outcome=data.get("outcome", ""),
            source_ip=data.get("source_ip") or "", study=data.get("study") or "",
        )
