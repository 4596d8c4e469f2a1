"""The one place that decides every access: ``may(principal, permission, resource)``.

Default deny. A person acts only after both factors (password and TOTP or a
backup code); a role grants a fixed set of permissions; anything not granted
is refused. Views, consumers, the DICOM SCP and STOW-RS all ask here; none
decides for itself.

The same data decides which route each principal reaches (``ROUTES``,
``WEBSOCKET_ROUTES``, :func:`route_access`): ``accounts.middleware.AccessGate``
applies it to every request, a route missing from the table is refused, and
``docs/access-matrix.md`` is generated from this module
(``python manage.py access_matrix --write``); a test fails when the document,
the table and the URL resolver disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from accounts.models import Role
from gateway.audit.catalogue import Action


class Permission(StrEnum):
    PATIENT_SEARCH = "patient.search"
    PATIENT_DEMOGRAPHICS = "patient.demographics"
    SCHEDULE_MANAGE = "schedule.manage"
    STUDY_VIEW = "study.view"
    STUDY_MEASURE = "study.measure"
    STUDY_REPORT = "study.report"
    STUDY_SHARE = "study.share"
    STUDY_RETRIEVE = "study.retrieve"
    STUDY_IMPORT_RAW = "study.import_raw"
    SHARE_MANAGE = "share.manage"
    STUDY_INGEST = "study.ingest"
    AUDIT_READ = "audit.read"
    AUDIT_EXPORT = "audit.export"
    AUDIT_VERIFY = "audit.verify"
    AUDIT_RESOLVE = "audit.resolve"
    USER_MANAGE = "user.manage"
    DEVICE_MANAGE = "device.manage"
    KEY_MANAGE = "key.manage"
    LAYOUT_MANAGE = "layout.manage"


PERMISSION_MEANING: dict[Permission, str] = {
    Permission.PATIENT_SEARCH: "search patients (pseudonymised worklist)",
    Permission.PATIENT_DEMOGRAPHICS: "read and edit patient demographics (identity zone)",
    Permission.SCHEDULE_MANAGE: "manage scheduling",
    Permission.STUDY_VIEW: "open a study in the viewer (images)",
    Permission.STUDY_MEASURE: "measure on images",
    Permission.STUDY_REPORT: "write and read findings/reports",
    Permission.STUDY_SHARE: "share a patient or study with a consultant (mint a macaroon)",
    Permission.STUDY_RETRIEVE: "search the hospital's PACS and retrieve a study from it into the gateway",
    Permission.STUDY_IMPORT_RAW: "import a NIfTI, NRRD or MetaImage volume as a new study or into a study "
                                 "the user may open, through ingest (de-identified, encrypted, audited)",
    Permission.SHARE_MANAGE: "list active shares with their last use and revoke them "
                             "(doctors: the shares they issued; IT admins: all)",
    Permission.STUDY_INGEST: "append new images (C-STORE, STOW-RS); never read",
    Permission.AUDIT_READ: "read and filter the audit log",
    Permission.AUDIT_EXPORT: "export the audit log (FHIR, DICOM, CSV)",
    Permission.AUDIT_VERIFY: "verify the audit chain",
    Permission.AUDIT_RESOLVE: "look up a pseudonym by patient ID (individual grant)",
    Permission.USER_MANAGE: "manage user accounts, roles, second factors, unlocks",
    Permission.DEVICE_MANAGE: "manage imaging device accounts",
    Permission.KEY_MANAGE: "rotate keys",
    Permission.LAYOUT_MANAGE: "set the hospital-wide hanging rules and grid layouts every reader gets "
                              "(audited; they hold no patient data)",
}

ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.DOCTOR: frozenset({Permission.PATIENT_SEARCH, Permission.STUDY_VIEW,
                            Permission.STUDY_MEASURE, Permission.STUDY_REPORT,
                            Permission.STUDY_SHARE, Permission.SHARE_MANAGE, Permission.STUDY_RETRIEVE,
                            Permission.STUDY_IMPORT_RAW}),
    Role.NURSE: frozenset({Permission.PATIENT_SEARCH, Permission.STUDY_VIEW, Permission.STUDY_RETRIEVE}),
    Role.ADMIN_STAFF: frozenset({Permission.PATIENT_SEARCH, Permission.PATIENT_DEMOGRAPHICS,
                                 Permission.SCHEDULE_MANAGE}),
    Role.DEVICE: frozenset({Permission.STUDY_INGEST}),
    Role.AUDITOR: frozenset({Permission.AUDIT_READ, Permission.AUDIT_EXPORT,
                             Permission.AUDIT_VERIFY}),
    Role.IT_ADMIN: frozenset({Permission.USER_MANAGE, Permission.DEVICE_MANAGE,
                              Permission.KEY_MANAGE, Permission.SHARE_MANAGE, Permission.STUDY_IMPORT_RAW,
                              Permission.LAYOUT_MANAGE}),
}

# Granted to individual auditors on top of their role (Django permission
# ``audit.resolve_patient_identity``), because resolving a pseudonym to a
# patient reaches into the identity zone.
INDIVIDUAL_GRANTS: dict[Permission, str] = {
    Permission.AUDIT_RESOLVE: "audit.resolve_patient_identity",
}
INDIVIDUAL_GRANT_ROLES: dict[Permission, frozenset[str]] = {
    Permission.AUDIT_RESOLVE: frozenset({Role.AUDITOR}),
}

# What an external consultant may do, and only inside the caveats of the
# share (macaroon) they hold: that patient or study, until it expires.
CAPABILITY_PERMISSIONS = frozenset({Permission.STUDY_VIEW, Permission.STUDY_MEASURE})

# Devices never sign in to the web: they authenticate with their own
# credential (AE title + device credential / token) at the ingest endpoints,
# whose authenticator marks the principal ``device_credential_verified``.
ROLES_WITHOUT_SECOND_FACTOR = frozenset({Role.DEVICE})


@runtime_checkable
class CapabilityPrincipal(Protocol):
    """A consultant holding a verified share (macaroon), not a user account.

    ``grants`` answers whether every caveat of the capability is met for
    ``permission`` on ``resource`` (the patient or study asked for); an
    unknown caveat must answer False.
    """

    is_capability: bool

    def grants(self, permission: Permission, resource: Any) -> bool: ...


def _is_capability(principal: Any) -> bool:
    return getattr(principal, "is_capability", False) is True


def authenticated(principal: Any) -> bool:
    """True when ``principal`` has proved everything its kind must prove."""
    if principal is None or not getattr(principal, "is_authenticated", False):
        return False
    if not getattr(principal, "is_active", False):
        return False
    if getattr(principal, "role", None) in ROLES_WITHOUT_SECOND_FACTOR:
        return getattr(principal, "device_credential_verified", False) is True
    is_verified = getattr(principal, "is_verified", None)
    return bool(is_verified and is_verified())


def may(principal: Any, permission: Permission, resource: Any = None) -> bool:
    """True only when ``principal`` is fully authenticated and granted ``permission``."""
    if _is_capability(principal):
        return (permission in CAPABILITY_PERMISSIONS and resource is not None
                and principal.grants(permission, resource) is True)
    if not authenticated(principal):
        return False
    role = getattr(principal, "role", None)
    if permission in INDIVIDUAL_GRANTS:
        return (role in INDIVIDUAL_GRANT_ROLES[permission]
                and principal.has_perm(INDIVIDUAL_GRANTS[permission]))
    return permission in ROLE_PERMISSIONS.get(str(role), frozenset())


# --- routes -----------------------------------------------------------------

class Stage(StrEnum):
    """How far a session must have come before a route is considered."""

    PUBLIC = "public"              # anyone, signed in or not
    FIRST_FACTOR = "first-factor"  # password accepted; the second factor may still be pending
    SIGNED_IN = "signed-in"        # both factors
    CAPABILITY = "capability"      # only a consultant session bound to a live share


class Access(StrEnum):
    ALLOW = "allow"
    SIGN_IN = "sign-in"  # redirected to the sign-in page
    DENY = "deny"        # 403; never the page


@dataclass(frozen=True)
class RouteRule:
    """``capability``: a consultant session also reaches the route (a signed-in rule only);
    the view then asks ``may()`` with the resource, which the share's caveats decide."""

    stage: Stage
    permission: Permission | None = None
    note: str = ""
    capability: bool = False
    denied_as: Action | None = None
    """The action a refusal is audited as, where the permission's own would say less."""


ROUTES: dict[str, RouteRule] = {
    "healthz": RouteRule(Stage.PUBLIC, note="liveness and database reachability"),
    "accounts:login": RouteRule(Stage.PUBLIC, note="first factor: user name and password"),
    "accounts:otp": RouteRule(Stage.FIRST_FACTOR, note="second factor: TOTP or backup code"),
    "accounts:enrol": RouteRule(Stage.FIRST_FACTOR,
                                note="TOTP enrolment; only while the account has no confirmed device"),
    "accounts:logout": RouteRule(Stage.FIRST_FACTOR, note="sign out (POST)"),
    "home": RouteRule(Stage.SIGNED_IN, note="start page"),
    "accounts:security": RouteRule(Stage.SIGNED_IN, note="own second factors and sessions"),
    "accounts:password_change": RouteRule(Stage.SIGNED_IN,
                                          note="change own password (current password asked again); "
                                               "ends every other session of the account"),
    "accounts:backup_codes": RouteRule(Stage.SIGNED_IN,
                                       note="regenerate own backup codes (POST)"),
    "accounts:logout_everywhere": RouteRule(Stage.SIGNED_IN,
                                            note="end every session of the account (POST)"),
    "audit:console": RouteRule(Stage.SIGNED_IN, Permission.AUDIT_READ, "audit console"),
    "audit:export": RouteRule(Stage.SIGNED_IN, Permission.AUDIT_EXPORT, "audit export"),
    "audit:verify": RouteRule(Stage.SIGNED_IN, Permission.AUDIT_VERIFY,
                              "verify the audit chain (POST)"),
    "imaging:worklist": RouteRule(Stage.SIGNED_IN, Permission.PATIENT_SEARCH,
                                  "worklist: patient search (audited; studies only with study.view)"),
    "imaging:retrieve": RouteRule(Stage.SIGNED_IN, Permission.STUDY_RETRIEVE,
                                  "retrieve a study the PACS answered with, through ingest (POST; "
                                  "audited as pacs.retrieve)", denied_as=Action.PACS_RETRIEVE),
    "imaging:retrieval": RouteRule(Stage.SIGNED_IN, Permission.STUDY_RETRIEVE,
                                   "a retrieval's progress: images received / expected, per series",
                                   denied_as=Action.PACS_RETRIEVE),
    "imaging:retrieval_stop": RouteRule(Stage.SIGNED_IN, Permission.STUDY_RETRIEVE,
                                        "stop a retrieval; what arrived is kept (POST)",
                                        denied_as=Action.PACS_RETRIEVE),
    "imaging:raw_import": RouteRule(Stage.SIGNED_IN, Permission.STUDY_IMPORT_RAW,
                                    "import a NIfTI, NRRD or MetaImage volume through ingest (multipart "
                                    "POST, admitted and bounded on its headers; audited as ingest)",
                                    denied_as=Action.INGEST),
    "imaging:pacs_queue": RouteRule(Stage.SIGNED_IN, Permission.STUDY_RETRIEVE,
                                    "retrievals, and results queued for the PACS with their attempts",
                                    denied_as=Action.PACS_SEND),
    "rendering:viewer": RouteRule(Stage.SIGNED_IN, Permission.STUDY_VIEW,
                                  "open a study in the viewer (audited as study.open); "
                                  "consultants: only a study their share grants",
                                  capability=True),
    "rendering:findings": RouteRule(Stage.SIGNED_IN, Permission.STUDY_VIEW,
                                    "a study's findings table as XLSX or CSV (audited as export)"),
    "rendering:report": RouteRule(Stage.SIGNED_IN, Permission.STUDY_VIEW,
                                  "a study's report: doctors read and write every version, nurses "
                                  "read signed versions (audited as report.read)"),
    "rendering:report_image": RouteRule(Stage.SIGNED_IN, Permission.STUDY_VIEW,
                                        "a key image rendered from its stored view state (PNG frame)"),
    "rendering:report_start": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                        "start a draft report or an addendum (POST)",
                                        denied_as=Action.REPORT_EDIT),
    "rendering:report_save": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                       "autosave the author's draft (POST, JSON)",
                                       denied_as=Action.REPORT_EDIT),
    "rendering:report_adjust": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                         "change a key image's window, slice, opacity or zoom (POST)",
                                         denied_as=Action.REPORT_EDIT),
    "rendering:report_sign": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                       "sign the author's draft: final, added to the study as "
                                       "Encapsulated PDF and KOS (POST)",
                                       denied_as=Action.REPORT_SIGN),
    "rendering:report_send": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                       "C-STORE a signed report to a destination IT registered (POST)",
                                       denied_as=Action.REPORT_SEND),
    "rendering:report_pdf": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                      "download the report as PDF, stamped with the exporter "
                                      "(audited with its SHA-256)",
                                      denied_as=Action.REPORT_EXPORT),
    "rendering:report_page": RouteRule(Stage.SIGNED_IN, Permission.STUDY_REPORT,
                                       "download one report page as PNG or JPG, stamped and audited",
                                       denied_as=Action.REPORT_EXPORT),
    "rendering:layouts": RouteRule(Stage.SIGNED_IN, Permission.STUDY_VIEW,
                                   "the reader's own hanging rules and grid layouts as JSON (edit, add, "
                                   "delete); the hospital's read-only"),
    "rendering:layouts_hospital": RouteRule(Stage.SIGNED_IN, Permission.LAYOUT_MANAGE,
                                            "IT: the hospital-wide hanging rules and grid layouts as JSON "
                                            "(changes audited as admin.layout)"),
    "sharing:mint": RouteRule(Stage.SIGNED_IN, Permission.STUDY_SHARE,
                              "share a study or its patient with a consultant (token shown once)"),
    "sharing:active": RouteRule(Stage.SIGNED_IN, Permission.SHARE_MANAGE,
                                "active shares with their last use", denied_as=Action.SHARE_LIST),
    "sharing:revoke": RouteRule(Stage.SIGNED_IN, Permission.SHARE_MANAGE,
                                "revoke a share and all derived from it (POST)"),
    "sharing:open": RouteRule(Stage.PUBLIC, note="share link: the page posts the token from "
                              "the URL fragment; no access until the PIN is given"),
    "sharing:pin": RouteRule(Stage.PUBLIC, note="the share's one-time PIN (5 wrong PINs burn it)"),
    "sharing:home": RouteRule(Stage.CAPABILITY, Permission.STUDY_VIEW,
                              "consultant: the studies the share grants"),
    "sharing:forward": RouteRule(Stage.CAPABILITY, Permission.STUDY_VIEW,
                                 "consultant: derive a narrower share for a colleague"),
    "sharing:leave": RouteRule(Stage.CAPABILITY, note="consultant: end the session (POST)"),
    "dicomweb:stow": RouteRule(Stage.PUBLIC, note="STOW-RS for devices: no session; the view "
                               "requires a device bearer token, then study.ingest"),
    "i18n:catalogue": RouteRule(Stage.PUBLIC, note="the page scripts' translated strings "
                                "(the reader's language; no data)"),
    "i18n:language": RouteRule(Stage.PUBLIC, note="choose the pages' language (POST; a cookie)"),
    "admin:*": RouteRule(Stage.SIGNED_IN, Permission.USER_MANAGE,
                         "every page of the Django admin (users, roles, devices, unlocks)"),
}

# Websocket routes by their path pattern (``str(pattern.pattern)``).
WEBSOCKET_ROUTES: dict[str, RouteRule] = {
    r"^ws/viewer/(?P<study>[0-9.]{1,64})/$": RouteRule(
        Stage.SIGNED_IN, Permission.STUDY_VIEW,
        "viewer frames for one study; policy asked on connect, session (or share) checked on "
        "every message", capability=True),
}


def route_rule(view_name: str | None, table: dict[str, RouteRule] | None = None) -> RouteRule | None:
    """The rule for a route name (``namespace:name``); ``namespace:*`` covers a whole namespace."""
    table = ROUTES if table is None else table
    if not view_name:
        return None
    if view_name in table:
        return table[view_name]
    namespace, separator, _ = view_name.rpartition(":")
    if separator:
        return table.get(f"{namespace}:*")
    return None


def route_access(principal: Any, rule: RouteRule | None) -> Access:
    """What ``principal`` gets on a route with ``rule``; no rule means deny."""
    if rule is None:
        return Access.DENY
    if rule.stage is Stage.PUBLIC:
        return Access.ALLOW
    if _is_capability(principal):
        admitted = rule.stage is Stage.CAPABILITY or rule.capability
        if admitted and (rule.permission is None or rule.permission in CAPABILITY_PERMISSIONS):
            return Access.ALLOW
        return Access.DENY
    if principal is None or not getattr(principal, "is_authenticated", False):
        return Access.SIGN_IN
    if rule.stage is Stage.CAPABILITY:
        return Access.DENY  # a consultant route: no user account reaches it
    if not getattr(principal, "is_active", False):
        return Access.SIGN_IN
    if getattr(principal, "role", None) in ROLES_WITHOUT_SECOND_FACTOR:
        return Access.DENY  # device accounts have no interactive sign-in
    if rule.stage is Stage.FIRST_FACTOR:
        return Access.ALLOW
    if not authenticated(principal):
        return Access.DENY
    if rule.permission is None or may(principal, rule.permission):
        return Access.ALLOW
    return Access.DENY


# --- the documented matrix ---------------------------------------------------

@dataclass(frozen=True)
class PrincipalSketch:
    """A stand-in principal for the documented matrix (and for tests)."""

    label: str
    role: str = ""
    is_authenticated: bool = True
    verified: bool = True
    is_active: bool = True

    def is_verified(self) -> bool:
        return self.verified

    def has_perm(self, perm: str) -> bool:
        return False


@dataclass(frozen=True)
class CapabilitySketch:
    """A stand-in consultant session for the documented matrix: routes only, no resource."""

    label: str = "consultant"
    is_capability: bool = True
    is_authenticated: bool = False

    def grants(self, permission: Permission, resource: Any) -> bool:
        return False


MATRIX_PRINCIPALS: tuple[PrincipalSketch | CapabilitySketch, ...] = (
    PrincipalSketch("anonymous", is_authenticated=False, verified=False),
    PrincipalSketch("password-only", role=Role.DOCTOR, verified=False),
    *(PrincipalSketch(role.value, role=role.value) for role in Role),
    CapabilitySketch(),
)


def matrix_markdown(route_names: list[str] | None = None,
                    websocket_routes: list[str] | None = None) -> str:
    """``docs/access-matrix.md``, generated from this module."""
    roles = [role.value for role in Role]
    lines = [
        "# Access matrix",
        "",
        "Generated from `gateway/policy.py` by `python manage.py access_matrix --write`;",
        "`tests/security/test_access_matrix.py` fails when this file, the policy and the",
        "URL resolver disagree. Default deny: an action or route not listed here is refused.",
        "",
        "## Actions x roles",
        "",
        "`yes`: granted by the role, after both factors (devices: after their device",
        "credential). `grant`: only to individual users of that role holding the Django",
        "permission named below. `share`: an external consultant, only inside the caveats of",
        "the share they hold (that patient or study, those actions, until it expires).",
        "",
        "| action | meaning | " + " | ".join(roles) + " | consultant |",
        "|---|---|" + "---|" * (len(roles) + 1),
    ]
    for permission in Permission:
        cells = []
        for role in roles:
            if permission in INDIVIDUAL_GRANTS:
                granted = role in INDIVIDUAL_GRANT_ROLES[permission]
                cells.append("grant" if granted else "—")
            else:
                cells.append("yes" if permission in ROLE_PERMISSIONS.get(role, frozenset()) else "—")
        cells.append("share" if permission in CAPABILITY_PERMISSIONS else "—")
        lines.append(f"| `{permission.value}` | {PERMISSION_MEANING[permission]} | "
                     + " | ".join(cells) + " |")
    lines += [
        "",
        "Individual grants: "
        + ", ".join(f"`{p.value}` ← Django permission `{codename}`"
                    for p, codename in INDIVIDUAL_GRANTS.items()) + ".",
        "",
        "## Routes x principals",
        "",
        "`allow`: the page is served (it may still answer 405 to a wrong method);",
        "`sign-in`: redirected to the sign-in page; `deny`: 403, never the page.",
        "`consultant` is a session bound to a redeemed share (token + one-time PIN); it",
        "reaches the consultant routes and, for the studies its caveats grant, the viewer.",
        "`password-only` is a session whose password was accepted but whose second factor",
        "was not (yet). `device` is a device account in a browser session: devices have no",
        "interactive sign-in and are refused everywhere but the public pages.",
        "",
        "| route | rule | " + " | ".join(p.label for p in MATRIX_PRINCIPALS) + " |",
        "|---|---|" + "---|" * len(MATRIX_PRINCIPALS),
    ]
    names = sorted(route_names if route_names is not None else ROUTES)
    for name in names:
        rule = route_rule(name)
        shown = "—" if rule is None else (
            rule.stage.value + (f" + `{rule.permission.value}`" if rule.permission else "")
            + (" + share" if rule.capability else ""))
        cells = [route_access(principal, rule).value for principal in MATRIX_PRINCIPALS]
        lines.append(f"| `{name}` | {shown} | " + " | ".join(cells) + " |")
    lines += ["", "## Websocket routes x principals", ""]
    ws_names = sorted(websocket_routes if websocket_routes is not None else WEBSOCKET_ROUTES)
    if not ws_names:
        lines.append("No websocket route exists yet; every websocket path is refused"
                     " (`gateway.consumers.RefuseConsumer`), as is every foreign Origin.")
    else:
        lines += ["| path | rule | " + " | ".join(p.label for p in MATRIX_PRINCIPALS) + " |",
                  "|---|---|" + "---|" * len(MATRIX_PRINCIPALS)]
        for name in ws_names:
            rule = route_rule(name, WEBSOCKET_ROUTES)
            shown = "—" if rule is None else rule.stage.value + (" or share" if rule.capability
                                                                  else "")
            cells = [route_access(principal, rule).value for principal in MATRIX_PRINCIPALS]
            lines.append(f"| `{name}` | {shown} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Notes",
        "",
        "- `admin:*` stands for every route of the Django admin (`/admin/`); the route",
        "  inventory test checks each concrete admin route against it. Inside the admin,",
        "  each model asks `may()` again (`user.manage`, `device.manage`).",
        "- Sessions end after 30 minutes idle or 12 hours in all, for HTTP and websockets;",
        "  an IT admin or the user can end every session of an account at once.",
        "- A verified user refused by a permission is recorded in the audit log.",
        "- `capability` routes answer only to a consultant session; `+ share` marks a",
        "  signed-in route that a consultant also reaches. A consultant session is",
        "  re-verified (token signature, share chain, expiry, client address) on every request",
        "  and websocket message; see docs/sharing.md.",
        "",
    ]
    return "\n".join(lines)
