"""Sign-in (password, then TOTP or a backup code), enrolment, sign-out, own security page and password.

The session is marked verified (``django_otp.login``) only after both
factors; its key rotates when the password is accepted and again when the
second factor is. Every refusal reads the same whether or not the account
exists, and every outcome is audited.
"""

from __future__ import annotations

import math
from typing import Any, cast

import segno
from django import forms
from django.contrib import messages
from django.contrib.auth import authenticate, update_session_auth_hash
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.password_validation import password_validators_help_texts
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_otp import login as otp_login

from accounts import services
from accounts.models import BackupCodeDevice, Role, TOTPDevice, User
from accounts.sessions import session_begin
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address

NEXT = "gw.next"
BAD_CREDENTIALS = gettext_lazy("The user name or password is not right.")
BAD_CODE = gettext_lazy("That code is not right, or it has already been used.")
LOCKED = gettext_lazy("Too many failed attempts: sign-in is blocked until the IT service desk unlocks it. "
                      "Please contact them.")


def slow_down(verdict: services.ThrottleVerdict) -> str:
    """What a throttled person is told: how long to wait, read from the throttle rows.

    The wait is the same for a name that matches no account, so it tells
    nothing about which accounts exist.
    """
    if verdict.locked:
        return str(LOCKED)
    seconds = max(1, math.ceil(verdict.retry_after))
    if seconds < 120:
        wait = ngettext("%(count)d second", "%(count)d seconds", seconds) % {"count": seconds}
    else:
        minutes = math.ceil(seconds / 60)
        wait = ngettext("%(count)d minute", "%(count)d minutes", minutes) % {"count": minutes}
    # Translators: %(wait)s is a duration such as "8 seconds" or "3 minutes".
    return _("Too many failed attempts: try again in %(wait)s. "
             "If this keeps happening, contact the IT service desk.") % {"wait": wait}


class PasswordForm(forms.Form):
    username = forms.CharField(max_length=150, strip=True)
    password = forms.CharField(strip=False, widget=forms.PasswordInput)


class CodeForm(forms.Form):
    otp_token = forms.CharField(max_length=64, strip=True)


class PasswordChangeForm(forms.Form):
    """The fields' shapes only; ``services.user_password_change`` decides."""

    current_password = forms.CharField(
        label=gettext_lazy("Current password"), strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))
    new_password = forms.CharField(
        label=gettext_lazy("New password"), strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    new_password_again = forms.CharField(
        label=gettext_lazy("New password again"), strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        new, again = cleaned.get("new_password"), cleaned.get("new_password_again")
        if new is not None and again is not None and new != again:
            self.add_error("new_password_again", _("The two new passwords are not the same."))
        return cleaned


def _next_url(request: HttpRequest, candidate: str | None) -> str:
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()},
                                                     require_https=request.is_secure()):
        return candidate
    return reverse("home")


def _after_second_factor(request: HttpRequest) -> HttpResponseRedirect:
    return HttpResponseRedirect(_next_url(request, request.session.pop(NEXT, None)))


def _person(request: HttpRequest) -> User:
    """The signed-in account (the gate has already refused anonymous requests)."""
    return cast(User, request.user)


def _is_verified(user: object) -> bool:
    check = getattr(user, "is_verified", None)
    return bool(check and check())


@login_not_required
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home") if _is_verified(request.user) else redirect("accounts:otp")
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    form = PasswordForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["username"]
        address = client_address(request)
        verdict = services.throttle_verdict(username=username, address=address)
        if not verdict.allowed:
            audit_record(actor=services.account_key(username) or "anonymous",
                         action=Action.LOGIN_FAILED, outcome=Outcome.DENIED, source_ip=address,
                         details={"factor": "password",
                                  "reason": "locked" if verdict.locked else "throttled"})
            error = slow_down(verdict)
        else:
            user = authenticate(request, username=username, password=form.cleaned_data["password"])
            if user is not None and getattr(user, "role", None) == Role.DEVICE:
                audit_record(actor=user, action=Action.LOGIN_FAILED, outcome=Outcome.DENIED,
                             source_ip=address, details={"factor": "password",
                                                         "reason": "device account"})
                user = None
            if user is None:
                services.throttle_failure(username=username, address=address, step="password")
                error = str(BAD_CREDENTIALS)
            else:
                auth_login(request, user)  # rotates the session key; LOGIN is audited after both factors
                session_begin(request.session)
                request.session[NEXT] = _next_url(request, next_url)
                return redirect("accounts:otp")
    elif request.method == "POST":
        error = str(BAD_CREDENTIALS)
    return render(request, "accounts/login.html", {"form": form, "error": error, "next": next_url},
                  status=200)


@require_http_methods(["GET", "POST"])
def otp_view(request: HttpRequest) -> HttpResponse:
    user = _person(request)
    if _is_verified(user):
        return _after_second_factor(request)
    if not TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        return redirect("accounts:enrol")
    form = CodeForm(request.POST or None)
    error = ""
    if request.method == "POST":
        address = client_address(request)
        verdict = services.throttle_verdict(username=user.username, address=address)
        if not verdict.allowed:
            audit_record(actor=user, action=Action.OTP_FAILED, outcome=Outcome.DENIED, source_ip=address,
                         details={"reason": "locked" if verdict.locked else "throttled"})
            error = slow_down(verdict)
        else:
            device = (services.second_factor_verify(user=user, token=form.data.get("otp_token", ""))
                      if form.is_valid() else None)
            if device is None:
                services.throttle_failure(username=user.username, address=address, step="otp")
                audit_record(actor=user, action=Action.OTP_FAILED, outcome=Outcome.DENIED,
                             source_ip=address, details={"factor": "second"})
                error = str(BAD_CODE)
            else:
                return _second_factor_passed(request, device)
    return render(request, "accounts/otp.html", {"form": form, "error": error})


def _second_factor_passed(request: HttpRequest, device: TOTPDevice | BackupCodeDevice) -> HttpResponse:
    user = _person(request)
    address = client_address(request)
    otp_login(request, device)
    request.session.cycle_key()
    services.throttle_success(username=user.username, address=address)
    factor = "backup-code" if isinstance(device, BackupCodeDevice) else "totp"
    details: dict[str, object] = {"factor": factor}
    if isinstance(device, BackupCodeDevice):
        details["backup_codes_left"] = device.remaining()
    audit_record(actor=user, action=Action.LOGIN, outcome=Outcome.SUCCESS, source_ip=address,
                 details=details)
    return _after_second_factor(request)


@require_http_methods(["GET", "POST"])
def enrol_view(request: HttpRequest) -> HttpResponse:
    user = _person(request)
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        return redirect("accounts:otp")
    device = services.totp_enrolment_device(user=user)
    form = CodeForm(request.POST or None)
    error = ""
    if request.method == "POST":
        address = client_address(request)
        verdict = services.throttle_verdict(username=user.username, address=address)
        if not verdict.allowed:
            error = slow_down(verdict)
        else:
            codes = (services.totp_enrolment_confirm(user=user, token=form.data.get("otp_token", ""),
                                                     source_ip=address)
                     if form.is_valid() else None)
            if codes is None:
                services.throttle_failure(username=user.username, address=address, step="enrolment")
                audit_record(actor=user, action=Action.OTP_FAILED, outcome=Outcome.DENIED,
                             source_ip=address, details={"factor": "totp", "step": "enrolment"})
                error = str(BAD_CODE)
            else:
                device.refresh_from_db()
                response = _second_factor_passed(request, device)
                return render(request, "accounts/backup_codes.html",
                              {"codes": codes, "continue_url": response["Location"]})
    uri = device.config_url()
    return render(request, "accounts/enrol.html", {
        "form": form, "error": error, "otpauth_uri": uri,
        "qr_data_uri": segno.make(uri, error="m").svg_data_uri(scale=5),
    })


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    auth_logout(request)  # flushes the session; audited as LOGOUT
    return redirect("accounts:login")


@require_GET
def security_view(request: HttpRequest) -> HttpResponse:
    backup = BackupCodeDevice.objects.filter(user=request.user).first()
    return render(request, "accounts/security.html",
                  {"backup_codes_left": backup.remaining() if backup else 0})


@require_http_methods(["GET", "POST"])
def password_change_view(request: HttpRequest) -> HttpResponse:
    """Change one's own password; this session goes on (with a new key), every other one ends."""
    user = _person(request)
    form = PasswordChangeForm(request.POST or None)
    error = ""
    if request.method == "POST":
        address = client_address(request)
        verdict = services.throttle_verdict(username=user.username, address=address)
        if not verdict.allowed:
            error = slow_down(verdict)
        elif form.is_valid():
            try:
                services.user_password_change(user=user,
                                              current_password=form.cleaned_data["current_password"],
                                              new_password=form.cleaned_data["new_password"],
                                              source_ip=address)
            except ValidationError as refused:
                form.add_error(None, refused)
            else:
                update_session_auth_hash(request, user)  # rotates this session's key, keeps it signed in
                messages.success(request, _("Your password is changed. Every other session of yours "
                                            "has ended; this one goes on."))
                return redirect("accounts:security")
    return render(request, "accounts/password_change.html",
                  {"form": form, "error": error, "rules": password_validators_help_texts()})


@require_POST
def backup_codes_view(request: HttpRequest) -> HttpResponse:
    codes = services.backup_codes_regenerate(user=_person(request), actor=_person(request),
                                             source_ip=client_address(request))
    return render(request, "accounts/backup_codes.html",
                  {"codes": codes, "continue_url": reverse("accounts:security")})


@require_POST
def logout_everywhere_view(request: HttpRequest) -> HttpResponse:
    services.user_logout_everywhere(user=_person(request), actor=_person(request),
                                    source_ip=client_address(request))
    request.session.flush()
    request.user = AnonymousUser()
    return redirect("accounts:login")
