"""The auditor's filter, validated before it reaches a query."""

from __future__ import annotations

from django import forms
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from accounts.models import Role
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.selectors import EventFilter


def _choices(values: list[str]) -> list[tuple[str, str | Promise]]:
    return [("", _("any")), *[(value, value) for value in values]]


# The codes as the events, their exports and details hold them: data, not to be translated.
_CODES = forms.Select(attrs={"translate": "no"})


class AuditFilterForm(forms.Form):
    # Translators: the start and the end of the time range of the audit events shown.
    since = forms.DateTimeField(required=False, label=_("Since"), widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, label=_("Until"), widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}))
    actor = forms.CharField(required=False, max_length=150, label=_("User"),
                            help_text=_("Any part of the user name; upper and lower case match alike."))
    actor_role = forms.ChoiceField(required=False, label=_("Role"), widget=_CODES,
                                   choices=_choices([*Role.values, "consultant"]))
    patient = forms.RegexField(
        required=False, regex=r"^[0-9a-fA-F]{8,64}$", label=_("Patient pseudonym"),
        help_text=_("Its first 8 or more hexadecimal digits, or all 64."),
        error_messages={"invalid": _("Enter at least the first 8 hexadecimal digits of the pseudonym "
                                     "(a whole pseudonym is 64 hexadecimal digits).")})
    # Translators: the DICOM Study Instance UID, an identifier made of digits and dots.
    study = forms.RegexField(required=False, regex=r"^[0-9.]{1,64}$", label=_("Study UID"),
                             error_messages={"invalid": _("A study UID is digits and dots.")})
    patient_id = forms.CharField(required=False, max_length=64, label=_("Patient ID"))
    issuer = forms.CharField(required=False, max_length=64, label=_("Issuer of patient ID"))
    action = forms.ChoiceField(required=False, label=_("Action"), widget=_CODES,
                               choices=_choices([a.value for a in Action]))
    # Translators: the outcome of an audited action (success, denied, failure).
    outcome = forms.ChoiceField(required=False, label=_("Outcome"), widget=_CODES,
                                choices=_choices([o.value for o in Outcome]))
    source_ip = forms.GenericIPAddressField(required=False, label=_("Source address"))

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
            raise forms.ValidationError(_("The start of the range must be before its end."))
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
