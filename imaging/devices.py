"""Device credentials for the ingest doors: calling AE titles and STOW-RS tokens.

A device is a ``role=device`` account (accounts app). Its
:class:`~imaging.models.DeviceEndpoint` names the calling AE title the SCP
accepts from it and holds SHA-256 of its STOW-RS bearer token (tokens are
256-bit random, so a plain hash is enough and lookups stay indexed). A
principal returned here carries ``device_credential_verified`` so that
``gateway.policy.may`` can grant it ``study.ingest`` and nothing else.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import secrets
from typing import Any

from django.db import connections, router, transaction

from accounts.models import Role, User
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.policy import Permission, may
from imaging.models import DeviceEndpoint

TOKEN_PREFIX = "fgw_"  # noqa: S105 - a marker, not a secret


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_issue() -> tuple[str, str]:
    """A fresh STOW-RS bearer token and the hash that is all the gateway keeps of it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_hash(token)


def device_endpoint_register(*, user: User, ae_title: str,
                             actor: Any = "system") -> tuple[DeviceEndpoint, str]:
    """Allow ``user`` (a device account) to call as ``ae_title``; returns (endpoint, new token).

    The token is shown once; only its hash is kept. Registering an AE title
    again issues a fresh token and revokes the old one.
    """
    if user.role != Role.DEVICE:
        raise ValueError(f"{user.username} is not a device account")
    ae_title = ae_title.strip()
    if not ae_title or len(ae_title) > 16 or not ae_title.isascii() or "\\" in ae_title:
        raise ValueError("an AE title is 1 to 16 ASCII characters")
    token, digest = _token_issue()
    endpoint, _ = DeviceEndpoint.objects.update_or_create(
        ae_title=ae_title, defaults={"user": user, "token_hash": digest, "active": True})
    audit_record(actor=actor, action=Action.ADMIN_DEVICE, outcome=Outcome.SUCCESS,
                 details={"change": "endpoint registered", "user": user.username, "ae_title": ae_title})
    return endpoint, token


@transaction.atomic
def device_endpoint_disable(*, endpoint: DeviceEndpoint, actor: Any,
                            source_ip: str | None = None) -> bool:
    """Stop ``endpoint`` at both ingest doors (C-STORE and STOW-RS); False if it already was.

    The row, its AE title and its account stay, so the audit trail of what it
    sent still names it; ``device_register`` enables it again with a new token.
    The SCP asks :func:`device_still_allowed` before every C-STORE, so an open
    association stops too.
    """
    changed = DeviceEndpoint.objects.filter(pk=endpoint.pk, active=True).update(active=False)
    endpoint.active = False
    if changed:
        audit_record(actor=actor, action=Action.ADMIN_DEVICE, outcome=Outcome.SUCCESS, source_ip=source_ip,
                     details={"change": "endpoint disabled", "user": endpoint.user.username,
                              "ae_title": endpoint.ae_title})
    return bool(changed)


@transaction.atomic
def device_endpoint_token_rotate(*, endpoint: DeviceEndpoint, actor: Any,
                                 source_ip: str | None = None) -> str:
    """Give ``endpoint`` a new STOW-RS token and return it; the old one is refused from now on.

    The token is for showing once; only its hash is kept. Whether the
    endpoint is enabled does not change.
    """
    token, digest = _token_issue()
    DeviceEndpoint.objects.filter(pk=endpoint.pk).update(token_hash=digest)
    endpoint.token_hash = digest
    audit_record(actor=actor, action=Action.ADMIN_DEVICE, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 details={"change": "token rotated", "user": endpoint.user.username,
                          "ae_title": endpoint.ae_title})
    return token


def _device_principal(user: User, *, endpoint_active: bool, ae_title: str) -> User | None:
    if not endpoint_active or user.role != Role.DEVICE or not user.is_active:
        return None
    user.device_credential_verified = True  # type: ignore[attr-defined]
    user.device_ae_title = ae_title  # type: ignore[attr-defined]
    return user if may(user, Permission.STUDY_INGEST) else None


def _principal(endpoint: DeviceEndpoint | None) -> User | None:
    if endpoint is None:
        return None
    return _device_principal(endpoint.user, endpoint_active=endpoint.active, ae_title=endpoint.ae_title)


def device_by_ae_title(ae_title: str) -> User | None:
    """The device principal allowed to call as ``ae_title``, or None."""
    endpoint = DeviceEndpoint.objects.select_related("user").filter(ae_title=ae_title.strip()).first()
    return _principal(endpoint)


@functools.cache
def _endpoint_state_sql(alias: str) -> str:
    """The SQL of one indexed lookup (unique AE title) of an endpoint's state and its account's."""
    query = DeviceEndpoint.objects.using(alias).filter(ae_title="AE").values_list(
        "active", "user_id", "user__is_active", "user__role").query
    sql, params = query.get_compiler(alias).as_sql()
    if list(params) != ["AE"]:
        raise RuntimeError(f"expected the AE title as the only parameter, got {params!r}")
    return sql


def device_still_allowed(*, device: User, ae_title: str) -> bool:
    """Whether ``device`` may still store as ``ae_title``: asked again for every C-STORE.

    Parameters
    ----------
    device : User
        The principal :func:`device_by_ae_title` gave when the association began.
    ae_title : str
        The association's calling AE title.

    Returns
    -------
    bool
        False once the account is deactivated or no longer a device, the
        endpoint is deactivated, removed or renamed, or the AE title now
        belongs to another account; otherwise what ``gateway.policy.may``
        answers for ``study.ingest``. One indexed query whose SQL the ORM
        builds once: compiling the query anew would cost a C-STORE more than
        running it.
    """
    alias = router.db_for_read(DeviceEndpoint)
    with connections[alias].cursor() as cursor:
        cursor.execute(_endpoint_state_sql(alias), [ae_title.strip()])
        row = cursor.fetchone()
    if row is None:
        return False
    endpoint_active, user_id, is_active, role = row
    if user_id != device.pk:
        return False
    current = copy.copy(device)  # the association's principal keeps its audited role
    current.is_active, current.role = bool(is_active), role
    return _device_principal(current, endpoint_active=bool(endpoint_active),
                             ae_title=ae_title.strip()) is not None


def device_by_token(token: str) -> User | None:
    """The device principal holding ``token``, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    digest = token_hash(token)
    endpoint = DeviceEndpoint.objects.select_related("user").filter(token_hash=digest).first()
    if endpoint is None or not hmac.compare_digest(endpoint.token_hash or "", digest):
        return None
    return _principal(endpoint)


def allowed_ae_titles() -> list[str]:
    return sorted(DeviceEndpoint.objects.filter(
        active=True, user__is_active=True, user__role=Role.DEVICE).values_list("ae_title", flat=True))
