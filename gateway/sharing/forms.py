"""Forms of the sharing pages."""

from __future__ import annotations

import secrets
from typing import cast

from django import forms
from django.core.validators import RegexValidator
from django.http import QueryDict

from gateway.sharing import conf

ACTION_CHOICES = [("view", "view"), ("view,measure", "view and measure")]


IDEMPOTENCY_KEY = "idempotency_key"
_EXPIRED = "This form has expired: check it and submit it again."


def idempotency_key_new() -> str:
    return secrets.token_urlsafe(24)


class _Once(forms.Form):
    """A form whose every rendering carries a fresh idempotency key (hidden): posting the same
    rendering twice (a double click, a resubmitted POST) mints one share."""

    idempotency_key = forms.CharField(
        widget=forms.HiddenInput, min_length=16, max_length=64,
        validators=[RegexValidator(r"^[A-Za-z0-9_-]+\Z", message=_EXPIRED)],
        error_messages={"required": _EXPIRED, "min_length": _EXPIRED, "max_length": _EXPIRED})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields[IDEMPOTENCY_KEY].initial = idempotency_key_new()

    def renew_key(self) -> None:
        """After a refusal: a rendering with a key that did not mint keeps it, a bad one gets a new one."""
        if self.is_bound and IDEMPOTENCY_KEY in self.errors:
            data = QueryDict(mutable=True)
            data.update(self.data)
            data[IDEMPOTENCY_KEY] = idempotency_key_new()
            self.data = data


def _hours_field(initial: int) -> forms.IntegerField:
    return forms.IntegerField(label="Valid for (hours)", min_value=1,
                              max_value=conf.max_days() * 24, initial=initial,
                              help_text=f"default {conf.default_hours()} h, at most "
                                        f"{conf.max_days()} days")


class ShareForm(_Once):
    scope = forms.ChoiceField(choices=[("study", "this study"),
                                       ("patient", "all studies of this patient")],
                              initial="study", widget=forms.RadioSelect)
    actions = forms.ChoiceField(choices=ACTION_CHOICES, initial="view")
    hours = forms.IntegerField()
    client_cidr = forms.CharField(label="Client network (CIDR, optional)", required=False,
                                  max_length=64)
    recipient = forms.CharField(label="Recipient (name, hospital)", max_length=120)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["hours"] = _hours_field(conf.default_hours())


class ForwardForm(_Once):
    study = forms.ChoiceField(label="Scope", required=False)
    actions = forms.ChoiceField(choices=ACTION_CHOICES, initial="view")
    hours = forms.IntegerField()
    client_cidr = forms.CharField(label="Client network (CIDR, optional)", required=False,
                                  max_length=64)
    recipient = forms.CharField(label="Recipient (name, hospital)", max_length=120)

    def __init__(self, *args, studies=(), max_hours: int = 1, actions=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        study_field = cast(forms.ChoiceField, self.fields["study"])
        action_field = cast(forms.ChoiceField, self.fields["actions"])
        study_field.choices = [("", "everything this share grants"),
                               *((uid, label) for uid, label in studies)]
        action_field.choices = [c for c in ACTION_CHOICES if set(c[0].split(",")) <= set(actions)]
        self.fields["hours"] = forms.IntegerField(
            label="Valid for (hours)", min_value=1, max_value=max(1, max_hours),
            initial=max(1, min(conf.default_hours(), max_hours)))
