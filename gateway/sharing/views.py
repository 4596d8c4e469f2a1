"""Sharing pages: thin; the services decide and audit.

The token is shown exactly once, inside a link whose fragment carries it: a
fragment is never sent to a server, so it stays out of access logs, proxies
and Referer headers. The open page's script posts it in a form body and
removes it from the address bar.

Minting and forwarding are POST → 303 → GET: the POST mints, keeps the link
and PIN in the (server-side) session and redirects to ``?created=<share>``
on the same route (so the same access rule guards it); that GET pops them
and shows them once. A reload of that page, or a second POST of the same
form (its idempotency key), shows "already shown" and mints nothing. What
is kept for display lives at most :data:`SHOWN_SECONDS`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.sessions import session_begin
from gateway.net import client_address
from gateway.sharing.forms import IDEMPOTENCY_KEY, ForwardForm, ShareForm
from gateway.sharing.middleware import SESSION_ENDED, SESSION_PENDING, SESSION_TOKEN
from gateway.sharing.selectors import shared_studies, shares_live
from gateway.sharing.services import (
    Minted,
    PinResult,
    Scope,
    ShareAlreadyMinted,
    ShareInvalid,
    ShareNotFound,
    ShareRefused,
    capability_verify,
    share_deny_record,
    share_forward,
    share_mint,
    share_redeem,
    share_revoke,
    share_use_record,
    shares_manageable,
    study_for_share,
)

SESSION_SHOWN = "gw.share.shown"
SHOWN_SECONDS = 600
_SHARE_ID = re.compile(r"[0-9a-f]{24}")


def _link(request: HttpRequest, token: str) -> str:
    return request.build_absolute_uri(reverse("sharing:open")) + "#" + token


def _see_created(request: HttpRequest, share_id: str) -> HttpResponse:
    response = HttpResponseRedirect(f"{request.path}?{urlencode({'created': share_id})}")
    response.status_code = 303
    return response


def _shown_pending(request: HttpRequest) -> dict[str, dict[str, Any]]:
    """What awaits its one display, without what has waited too long."""
    now = timezone.now().timestamp()
    return {share_id: entry for share_id, entry in request.session.get(SESSION_SHOWN, {}).items()
            if now - entry["at"] < SHOWN_SECONDS}


def _minted(request: HttpRequest, minted: Minted) -> HttpResponse:
    """Keep the link and PIN for the one GET that shows them; redirect there (303)."""
    pending = _shown_pending(request)
    pending[minted.share.public_id] = {
        "path": request.path, "token": minted.token, "pin": minted.pin,
        "recipient": minted.share.recipient, "expires_at": minted.share.expires_at.isoformat(),
        "at": timezone.now().timestamp()}
    request.session[SESSION_SHOWN] = pending
    return _see_created(request, minted.share.public_id)


def _created(request: HttpRequest, *, forwarded: bool) -> HttpResponse:
    """The link and PIN of a share just minted here, once; afterwards "already shown"."""
    share_id = request.GET.get("created", "")
    pending = _shown_pending(request)
    entry = pending.get(share_id) if _SHARE_ID.fullmatch(share_id) else None
    context: dict[str, Any] = {"forwarded": forwarded, "shown": False}
    if entry is not None and entry["path"] == request.path:
        del pending[share_id]
        context.update(shown=True, link=_link(request, entry["token"]), pin=entry["pin"],
                       recipient=entry["recipient"],
                       expires_at=dt.datetime.fromisoformat(entry["expires_at"]))
    if pending:
        request.session[SESSION_SHOWN] = pending
    else:
        request.session.pop(SESSION_SHOWN, None)
    return render(request, "sharing/minted.html", context)


@require_http_methods(["GET", "POST"])
def mint(request: HttpRequest, study: str) -> HttpResponse:
    try:
        record = study_for_share(principal=request.user, study_uid=study)
    except ShareNotFound:
        raise Http404("No such study.") from None
    if request.method == "GET" and "created" in request.GET:
        return _created(request, forwarded=False)
    form = ShareForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            minted = share_mint(doctor=request.user, study_uid=record.study_instance_uid,
                                scope=Scope(form.cleaned_data["scope"]),
                                actions=form.cleaned_data["actions"].split(","),
                                hours=form.cleaned_data["hours"],
                                client_cidr=form.cleaned_data["client_cidr"],
                                recipient=form.cleaned_data["recipient"],
                                source_ip=client_address(request),
                                idempotency_key=form.cleaned_data[IDEMPOTENCY_KEY])
        except ShareInvalid as invalid:
            form.add_error(None, str(invalid))
        except ShareAlreadyMinted as earlier:
            return _see_created(request, earlier.share_id)
        else:
            return _minted(request, minted)
    form.renew_key()
    return render(request, "sharing/mint.html", {"form": form, "study": record},
                  status=400 if form.errors else 200)


@require_GET
def active(request: HttpRequest) -> HttpResponse:
    shares = shares_live(shares_manageable(request.user)).order_by("-created_at")[:500]
    return render(request, "sharing/active.html", {"shares": shares})


@require_POST
def revoke(request: HttpRequest, share: str) -> HttpResponse:
    try:
        share_revoke(user=request.user, share_id=share, source_ip=client_address(request))
    except ShareNotFound:
        raise Http404("No such share.") from None
    return redirect("sharing:active")


def _signed_in_user(request: HttpRequest) -> bool:
    return bool(getattr(request.user, "is_authenticated", False))


def _consultant(request: HttpRequest) -> bool:
    return getattr(request.user, "is_capability", False) is True


@login_not_required
@require_http_methods(["GET", "POST"])
def open_share(request: HttpRequest) -> HttpResponse:
    if _signed_in_user(request) or _consultant(request):
        return render(request, "sharing/open.html", {"busy": True}, status=409)
    if request.method == "GET":
        return render(request, "sharing/open.html", {})
    token = request.POST.get("token", "")
    address = client_address(request)
    try:
        capability_verify(token, client_ip=address, redeemed=False)
    except ShareRefused as refusal:
        share_deny_record(refusal=refusal, source_ip=address)
        return render(request, "sharing/open.html", {"refused": True}, status=400)
    request.session.cycle_key()
    request.session[SESSION_PENDING] = token
    return redirect("sharing:pin")


@login_not_required
@require_http_methods(["GET", "POST"])
def pin(request: HttpRequest) -> HttpResponse:
    token = request.session.get(SESSION_PENDING)
    if _signed_in_user(request) or _consultant(request) or not token:
        return redirect("sharing:open")
    if request.method == "GET":
        return render(request, "sharing/pin.html", {})
    address = client_address(request)
    try:
        result, left = share_redeem(token=token, pin=request.POST.get("pin", ""),
                                    source_ip=address)
    except ShareRefused as refusal:
        share_deny_record(refusal=refusal, source_ip=address)
        request.session.pop(SESSION_PENDING, None)
        return render(request, "sharing/open.html", {"refused": True}, status=403)
    if result is PinResult.WRONG:
        return render(request, "sharing/pin.html", {"wrong": True, "left": left}, status=403)
    request.session.pop(SESSION_PENDING, None)
    if result is PinResult.BURNED:
        return render(request, "sharing/open.html", {"burned": True}, status=403)
    request.session.cycle_key()
    request.session.pop(SESSION_ENDED, None)
    request.session[SESSION_TOKEN] = token
    session_begin(request.session)
    return redirect("sharing:home")


def _remaining_hours(principal: Any) -> int:
    return max(0, math.floor((principal.expires_at - timezone.now()).total_seconds() / 3600))


@login_not_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    principal: Any = request.user
    studies = shared_studies(principal)
    share_use_record(principal=principal, source_ip=client_address(request), what="list",
                     pseudonym=next(iter(principal.token.patients), ""))
    return render(request, "sharing/home.html", {
        "studies": studies, "principal": principal, "expires_at": principal.expires_at,
        "actions": sorted(a.value for a in principal.actions),
        "can_forward": len(principal.chain) <= 3 and _remaining_hours(principal) >= 1})


@login_not_required
@require_http_methods(["GET", "POST"])
def forward(request: HttpRequest) -> HttpResponse:
    if request.method == "GET" and "created" in request.GET:
        return _created(request, forwarded=True)
    principal: Any = request.user
    studies = shared_studies(principal)
    form = ForwardForm(request.POST or None,
                       studies=[(s.study_uid, s.description) for s in studies],
                       max_hours=_remaining_hours(principal),
                       actions=[a.value for a in principal.actions])
    if request.method == "POST" and form.is_valid():
        try:
            minted = share_forward(holder=principal, token=request.session[SESSION_TOKEN],
                                   study_uid=form.cleaned_data["study"] or None,
                                   actions=form.cleaned_data["actions"].split(","),
                                   hours=form.cleaned_data["hours"],
                                   client_cidr=form.cleaned_data["client_cidr"],
                                   recipient=form.cleaned_data["recipient"],
                                   source_ip=client_address(request),
                                   idempotency_key=form.cleaned_data[IDEMPOTENCY_KEY])
        except ShareInvalid as invalid:
            form.add_error(None, str(invalid))
        except ShareAlreadyMinted as earlier:
            return _see_created(request, earlier.share_id)
        else:
            return _minted(request, minted)
    form.renew_key()
    return render(request, "sharing/forward.html", {"form": form},
                  status=400 if form.errors else 200)


@login_not_required
@require_POST
def leave(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return redirect("sharing:open")



