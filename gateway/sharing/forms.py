"""Forms of the sharing pages."""

from __future__ import annotations

import secrets
from typing import cast

from django import forms
from django.core.validators import RegexValidator
from django.http import QueryDict
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from gateway.sharing import conf

# Translators: what a share lets its recipient do with the images.
ACTION_CHOICES = [("view", _("view")), ("view,measure", _("view and measure"))]


IDEMPOTENCY_KEY = "idempotency_key"
_EXPIRED = _("This form has expired: check it and submit it again.")


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
    # Translators: "h" is the abbreviation of hours.
    help_text = ngettext("default %(hours)d h, at most %(days)d day",
                         "default %(hours)d h, at most %(days)d days",
                         conf.max_days()) % {"hours": conf.default_hours(), "days": conf.max_days()}
    return forms.IntegerField(label=_("Valid for (hours)"), min_value=1,
                              max_value=conf.max_days() * 24, initial=initial, help_text=help_text)


class ShareForm(_Once):
    # Translators: what a share covers; a "study" is one imaging examination.
    scope = forms.ChoiceField(label=_("Scope"),
                              choices=[("study", _("this study")),
                                       ("patient", _("all studies of this patient"))],
                              initial="study", widget=forms.RadioSelect)
    actions = forms.ChoiceField(label=_("Actions"), choices=ACTION_CHOICES, initial="view")
    hours = forms.IntegerField()
    client_cidr = forms.CharField(label=_("Client network (CIDR, optional)"), required=False,
                                  max_length=64)
    recipient = forms.CharField(label=_("Recipient (name, hospital)"), max_length=120)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["hours"] = _hours_field(conf.default_hours())


class ForwardForm(_Once):
    study = forms.ChoiceField(label=_("Scope"), required=False)
    actions = forms.ChoiceField(label=_("Actions"), choices=ACTION_CHOICES, initial="view")
    hours = forms.IntegerField()
    client_cidr = forms.CharField(label=_("Client network (CIDR, optional)"), required=False,
                                  max_length=64)
    recipient = forms.CharField(label=_("Recipient (name, hospital)"), max_length=120)

    def __init__(self, *args, studies=(), max_hours: int = 1, actions=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        study_field = cast(forms.ChoiceField, self.fields["study"])
        action_field = cast(forms.ChoiceField, self.fields["actions"])
        study_field.choices = [("", _("everything this share grants")),
                               *((uid, label) for uid, label in studies)]
        action_field.choices = [c for c in ACTION_CHOICES if set(c[0].split(",")) <= set(actions)]
        self.fields["hours"] = forms.IntegerField(
            label=_("Valid for (hours)"), min_value=1, max_value=max(1, max_hours),
            initial=max(1, min(conf.default_hours(), max_hours)))
