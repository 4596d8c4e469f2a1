"""Factories for the sharing tests: clinical rows, doctors, shares, consultant sessions."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from django.test import Client
from django.urls import reverse

from accounts.models import User
from gateway.sharing.services import Minted, Scope, share_mint
from imaging.models import Patient, Series, Study

_FORM_KEY = re.compile(r'name="idempotency_key" value="([A-Za-z0-9_-]+)"')
_LINK = re.compile(r"/share/open/#([A-Za-z0-9_-]+)<")
_PIN = re.compile(r'class="share-pin"><strong>(\d{4}) (\d{4})<')


def form_key(html: str | bytes) -> str:
    """The idempotency key of the mint or forward form in a page."""
    text = html.decode() if isinstance(html, bytes) else html
    match = _FORM_KEY.search(text)
    assert match, "no idempotency key in the form"
    return match.group(1)


def shown(html: str | bytes) -> tuple[str, str] | None:
    """(token, PIN) from a "share created" page, None when it says they were shown already."""
    text = html.decode() if isinstance(html, bytes) else html
    link, pin = _LINK.search(text), _PIN.search(text)
    assert bool(link) == bool(pin), "a link without its PIN, or a PIN without its link"
    return (link.group(1), pin.group(1) + pin.group(2)) if link and pin else None


def post_form(client: Client, url: str, fields: dict[str, Any]) -> Any:
    """GET the form at ``url`` for its idempotency key, then POST ``fields`` with it."""
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    return client.post(url, {"idempotency_key": form_key(page.content), **fields})


def pseudonym_for(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def clinical_study(*, patient: str = "patient-a", uid: str = "2.25.1001",
                   description: str = "PET-CT whole body") -> Study:
    record, _ = Patient.objects.get_or_create(pseudonym=pseudonym_for(patient))
    study = Study.objects.create(patient=record, study_instance_uid=uid,
                                 study_description=description)
    Series.objects.create(study=study, series_instance_uid=uid + ".1", modality="CT",
                          series_description="CT")
    return study


def doctor(username: str = "dr.share") -> User:
    return User.objects.create_user(username=username, password="a long enough password 1",
                                    role="doctor")


def verified(user: User) -> User:
    """The user as OTPMiddleware leaves it after both factors (the policy asks is_verified)."""
    user.is_verified = lambda: True  # type: ignore[method-assign]
    return user


def mint(issuer: User, study: Study, *, scope: Scope = Scope.STUDY, actions=("view",),
         hours: float = 72, client_cidr: str = "", recipient: str = "Dr Consult, Elsewhere UH",
         source_ip: str = "127.0.0.1", idempotency_key: str = "") -> Minted:
    minted = share_mint(doctor=verified(issuer), study_uid=study.study_instance_uid, scope=scope,
                        actions=actions, hours=hours, client_cidr=client_cidr,
                        recipient=recipient, source_ip=source_ip,
                        idempotency_key=idempotency_key)
    return minted


def redeem(client: Client, minted: Minted, *, pin: str | None = None) -> Any:
    """The consultant's steps: post the token (as open.js does), then the PIN."""
    response = client.post(reverse("sharing:open"), {"token": minted.token})
    assert response.status_code == 302, response.status_code
    return client.post(reverse("sharing:pin"), {"pin": pin if pin is not None else minted.pin})


def consultant_client(minted: Minted) -> Client:
    client = Client()
    response = redeem(client, minted)
    assert response.status_code == 302 and response.url == reverse("sharing:home")
    return client
