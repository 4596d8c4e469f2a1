"""The consultant principal: a verified share token, re-verified on every request.

It implements ``gateway.policy.CapabilityPrincipal``: ``grants(permission,
study_uid)`` asks every caveat of the token (patient, study, action, time,
client address) about that study. It is not a user account:
``is_authenticated`` is False, so nothing that expects a signed-in user
treats it as one; only routes whose rule admits a capability reach it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from gateway.policy import Permission
from gateway.sharing.caveats import Context, ShareAction
from gateway.sharing.tokens import ParsedToken

PERMISSION_ACTIONS = {Permission.STUDY_VIEW: ShareAction.VIEW,
                      Permission.STUDY_MEASURE: ShareAction.MEASURE}


def study_pseudonym(study_uid: str) -> str | None:
    """The patient pseudonym of a study (one indexed query; asked on every consultant message)."""
    from django.db import connections, router

    from imaging.models import Patient, Study

    alias = router.db_for_read(Study)
    connection = connections[alias]
    quote = connection.ops.quote_name
    sql = (f"SELECT p.{quote('pseudonym')} FROM {quote(Study._meta.db_table)} s "  # noqa: S608
           f"JOIN {quote(Patient._meta.db_table)} p ON p.{quote('id')} = s.{quote('patient_id')} "
           f"WHERE s.{quote('study_instance_uid')} = %s")  # names from _meta; the value is bound
    with connection.cursor() as cursor:
        cursor.execute(sql, [study_uid])
        row = cursor.fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class ChainLink:
    """One share of the token's chain (root first), as read for this request."""

    pk: int
    public_id: str
    parent_id: int | None
    state: str
    expires_at: dt.datetime


@dataclass(eq=False)
class ConsultantPrincipal:
    token: ParsedToken
    chain: tuple[ChainLink, ...]
    issuer: str
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    _patients: dict[str, str | None] = field(default_factory=dict, repr=False)

    is_capability = True
    is_authenticated = False
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None
    role = "consultant"

    @property
    def share_id(self) -> str:
        """The share this session redeemed (the last of the chain)."""
        return self.chain[-1].public_id

    @property
    def username(self) -> str:
        return f"share:{self.share_id}"

    @property
    def chain_ids(self) -> list[str]:
        return [link.public_id for link in self.chain]

    @property
    def expires_at(self) -> dt.datetime:
        return min([*self.token.expires, *(link.expires_at for link in self.chain)])

    @property
    def actions(self) -> frozenset[ShareAction]:
        granted = set(ShareAction)
        for caveat in self.token.caveats:
            if caveat.key == "action":
                granted &= caveat.actions  # type: ignore[attr-defined]
        return frozenset(granted)

    def is_verified(self) -> bool:
        return False

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return False

    def get_role_display(self) -> str:
        return "external consultant"

    def audit_fields(self) -> dict[str, Any]:
        return {"actor": self.username, "actor_role": self.role, "acting_for": self.issuer}

    def _patient_of(self, study_uid: str) -> str | None:
        if study_uid not in self._patients:
            self._patients[study_uid] = study_pseudonym(study_uid)
        return self._patients[study_uid]

    def grants(self, permission: Permission, resource: Any) -> bool:
        action = PERMISSION_ACTIONS.get(permission)
        if action is None or not isinstance(resource, str) or not resource:
            return False
        pseudonym = self._patient_of(resource)
        if pseudonym is None:
            return False
        context = Context(now=timezone.now(), client_ip=self.client_ip, action=action,
                          patient=pseudonym, study=resource)
        return self.token.holds(context)


def audit_fields(principal: Any) -> dict[str, Any]:
    """``audit_record`` actor fields for a user or a consultant principal."""
    if getattr(principal, "is_capability", False) is True:
        return dict(principal.audit_fields())
    return {"actor": principal}
