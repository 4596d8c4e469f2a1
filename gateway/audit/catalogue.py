"""What can be audited, and how each action maps onto the audit standards.

Each action carries its DICOM PS3.15 A.5 / RFC 3881 EventID, the EventTypeCode
where one applies, and the CRUDE action code, so the DICOM XML and the FHIR
AuditEvent (IHE BALP) exports are derived from one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """RFC 3881 / DICOM EventOutcomeIndicator, named."""

    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"
    ERROR = "error"

    @property
    def indicator(self) -> str:
        return {"success": "0", "denied": "4", "failure": "8", "error": "12"}[self.value]


@dataclass(frozen=True)
class Code:
    code: str
    system: str
    display: str


def _dcm(code: str, display: str) -> Code:
    return Code(code, "DCM", display)


USER_AUTHENTICATION = _dcm("110114", "User Authentication")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
QUERY = _dcm("110112", "Query")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
EXPORT = _dcm("110106", "Export")
SECURITY_ALERT = _dcm("110113", "Security Alert")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")
SECURITY_CONFIGURATION = _dcm("110132", "Use of a restricted function")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
PATIENT_RECORD = _dcm("110110", "Patient Record")
NETWORK_ENTRY = _dcm("110108", "Network Entry")


@dataclass(frozen=True)
class ActionSpec:
    event_id: Code
    event_type: Code | None
    crude: str
    description: str


class Action(StrEnum):
    LOGIN = "auth.login"
    LOGIN_FAILED = "auth.login-failed"
    OTP_FAILED = "auth.otp-failed"
    LOCKOUT = "auth.lockout"
    UNLOCK = "auth.unlock"
    LOGOUT = "auth.logout"
    SESSION_TIMEOUT = "auth.timeout"
    PATIENT_SEARCH = "patient.search"
    STUDY_OPEN = "study.open"
    RENDER_START = "render.start"
    RENDER_END = "render.end"
    SHARE_MINT = "share.mint"
    SHARE_REDEEM = "share.redeem"
    SHARE_USE = "share.use"
    SHARE_DENY = "share.deny"
    SHARE_REVOKE = "share.revoke"
    SHARE_LIST = "share.list"
    INGEST = "ingest"
    EXPORT = "export"
    ADMIN_USER = "admin.user"
    ADMIN_ROLE = "admin.role"
    ADMIN_DEVICE = "admin.device"
    ADMIN_KEY = "admin.key"
    AUDIT_READ = "audit.read"
    AUDIT_EXPORT = "audit.export"
    AUDIT_RESOLVE = "audit.resolve"
    AUDIT_VERIFY = "audit.verify"
    FINDING_KEEP = "finding.keep"
    FINDING_DELETE = "finding.delete"
    FINDING_EDIT = "finding.edit"
    FINDINGS_STORE = "findings.store"
    SUV_INPUT = "suv.input"
    SEGMENTATION_CREATE = "segmentation.create"
    SEGMENTATION_STORE = "segmentation.store"
    SEGMENTATION_MODEL = "segmentation.model"
    SEGMENTATION_DELETE = "segmentation.delete"
    ADMIN_MODEL = "admin.model"
    REPORT_CREATE = "report.create"
    REPORT_EDIT = "report.edit"
    REPORT_SIGN = "report.sign"
    REPORT_READ = "report.read"
    REPORT_EXPORT = "report.export"
    REPORT_SEND = "report.send"
    ADMIN_DESTINATION = "admin.destination"
    ADMIN_LETTERHEAD = "admin.letterhead"
    REGISTRATION_RUN = "registration.run"
    REGISTRATION_ACCEPT = "registration.accept"
    REGISTRATION_REJECT = "registration.reject"
    DERIVED_CREATE = "derived.create"
    PACS_ECHO = "pacs.echo"
    PACS_QUERY = "pacs.query"
    PACS_RETRIEVE = "pacs.retrieve"
    PACS_SEND = "pacs.send"
    STORE_EVICT = "store.evict"
    BOOKMARK_SHARE = "bookmark.share"
    BOOKMARK_UNSHARE = "bookmark.unshare"
    ADMIN_LAYOUT = "admin.layout"

    @property
    def spec(self) -> ActionSpec:
        return ACTION_SPECS[self]


ACTION_SPECS: dict[Action, ActionSpec] = {
    Action.LOGIN: ActionSpec(USER_AUTHENTICATION, LOGIN, "E", "signed in"),
    Action.LOGIN_FAILED: ActionSpec(USER_AUTHENTICATION, LOGIN, "E", "sign-in refused"),
    Action.OTP_FAILED: ActionSpec(USER_AUTHENTICATION, LOGIN, "E", "second factor refused"),
    Action.LOCKOUT: ActionSpec(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, "U",
                               "account locked after repeated failures"),
    Action.UNLOCK: ActionSpec(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, "U",
                              "account unlocked"),
    Action.LOGOUT: ActionSpec(USER_AUTHENTICATION, LOGOUT, "E", "signed out"),
    Action.SESSION_TIMEOUT: ActionSpec(USER_AUTHENTICATION, LOGOUT, "E", "session expired"),
    Action.PATIENT_SEARCH: ActionSpec(QUERY, None, "E", "searched patients"),
    Action.STUDY_OPEN: ActionSpec(INSTANCES_ACCESSED, None, "R", "opened a study"),
    Action.RENDER_START: ActionSpec(INSTANCES_ACCESSED, None, "R", "started a render session"),
    Action.RENDER_END: ActionSpec(INSTANCES_ACCESSED, None, "R", "ended a render session"),
    Action.SHARE_MINT: ActionSpec(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, "C",
                                  "shared a patient or study"),
    Action.SHARE_REDEEM: ActionSpec(USER_AUTHENTICATION, LOGIN, "E", "redeemed a share"),
    Action.SHARE_USE: ActionSpec(INSTANCES_ACCESSED, None, "R", "used a share"),
    Action.SHARE_DENY: ActionSpec(SECURITY_ALERT, None, "E", "share refused"),
    Action.SHARE_REVOKE: ActionSpec(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, "D",
                                    "revoked a share"),
    Action.SHARE_LIST: ActionSpec(QUERY, None, "R", "listed the active shares"),
    Action.INGEST: ActionSpec(INSTANCES_TRANSFERRED, None, "C", "received DICOM instances"),
    Action.EXPORT: ActionSpec(EXPORT, None, "R", "exported data"),
    Action.ADMIN_USER: ActionSpec(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, "U",
                                  "changed a user account"),
    Action.ADMIN_ROLE: ActionSpec(SECURITY_ALERT, SECURITY_ROLES_CHANGED, "U", "changed a role"),
    Action.ADMIN_DEVICE: ActionSpec(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, "U",
                                    "changed a device account"),
    Action.ADMIN_KEY: ActionSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, "U", "changed a key"),
    Action.AUDIT_READ: ActionSpec(AUDIT_LOG_USED, None, "R", "read the audit log"),
    Action.AUDIT_EXPORT: ActionSpec(AUDIT_LOG_USED, None, "R", "exported the audit log"),
    Action.AUDIT_RESOLVE: ActionSpec(PATIENT_RECORD, None, "R",
                                     "looked up a pseudonym by patient ID"),
    Action.AUDIT_VERIFY: ActionSpec(AUDIT_LOG_USED, None, "E", "verified the audit chain"),
    Action.FINDING_KEEP: ActionSpec(PATIENT_RECORD, None, "C", "kept a measurement"),
    Action.FINDING_DELETE: ActionSpec(PATIENT_RECORD, None, "D", "deleted a measurement"),
    Action.FINDING_EDIT: ActionSpec(PATIENT_RECORD, None, "U", "renamed a measurement"),
    Action.FINDINGS_STORE: ActionSpec(PATIENT_RECORD, None, "C",
                                      "stored the findings in the study as DICOM SR and SEG"),
    Action.SUV_INPUT: ActionSpec(PATIENT_RECORD, None, "U",
                                 "entered a weight or dose for the SUV of a reading"),
    Action.SEGMENTATION_CREATE: ActionSpec(PATIENT_RECORD, None, "C", "started a segmentation"),
    Action.SEGMENTATION_STORE: ActionSpec(PATIENT_RECORD, None, "C",
                                          "stored a segmentation in the study as DICOM SEG"),
    Action.SEGMENTATION_MODEL: ActionSpec(PATIENT_RECORD, None, "C",
                                          "ran a segmentation model on a series"),
    Action.SEGMENTATION_DELETE: ActionSpec(PATIENT_RECORD, None, "D", "deleted a segmentation"),
    Action.ADMIN_MODEL: ActionSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, "U",
                                   "registered or withdrew a segmentation model"),
    Action.REPORT_CREATE: ActionSpec(PATIENT_RECORD, None, "C", "started a report or an addendum"),
    Action.REPORT_EDIT: ActionSpec(PATIENT_RECORD, None, "U", "changed a draft report"),
    Action.REPORT_SIGN: ActionSpec(PATIENT_RECORD, None, "U",
                                   "signed a report (final; added to the study as DICOM)"),
    Action.REPORT_READ: ActionSpec(PATIENT_RECORD, None, "R", "read a report"),
    Action.REPORT_EXPORT: ActionSpec(EXPORT, None, "R", "downloaded a report (PDF, PNG or JPG)"),
    Action.REPORT_SEND: ActionSpec(INSTANCES_TRANSFERRED, None, "R",
                                   "sent a signed report to a DICOM destination"),
    Action.ADMIN_DESTINATION: ActionSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, "U",
                                         "registered or withdrew a DICOM destination"),
    Action.ADMIN_LETTERHEAD: ActionSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, "U",
                                        "changed the report letterhead"),
    Action.REGISTRATION_RUN: ActionSpec(PATIENT_RECORD, None, "C",
                                        "registered one series onto another (automatic or landmarks)"),
    Action.REGISTRATION_ACCEPT: ActionSpec(PATIENT_RECORD, None, "U",
                                           "accepted a registration (added to the study as DICOM REG)"),
    Action.REGISTRATION_REJECT: ActionSpec(PATIENT_RECORD, None, "U", "rejected a registration"),
    Action.DERIVED_CREATE: ActionSpec(PATIENT_RECORD, None, "C",
                                      "made a derived series (filter or image arithmetic)"),
    Action.PACS_ECHO: ActionSpec(NETWORK_ENTRY, None, "E", "checked a DICOM peer with C-ECHO"),
    Action.PACS_QUERY: ActionSpec(QUERY, None, "E", "searched the hospital's PACS (C-FIND)"),
    Action.PACS_RETRIEVE: ActionSpec(INSTANCES_TRANSFERRED, None, "C",
                                     "retrieved a study from the PACS (C-GET or C-MOVE)"),
    Action.PACS_SEND: ActionSpec(INSTANCES_TRANSFERRED, None, "R",
                                 "sent a result to the PACS, re-identified for it"),
    Action.STORE_EVICT: ActionSpec(INSTANCES_TRANSFERRED, None, "D",
                                   "evicted a retrieved study from the local store (still in the PACS)"),
    Action.BOOKMARK_SHARE: ActionSpec(PATIENT_RECORD, None, "C",
                                      "showed a reading bookmark to a consultant's share"),
    Action.BOOKMARK_UNSHARE: ActionSpec(PATIENT_RECORD, None, "D",
                                        "stopped showing a reading bookmark to a consultant's share"),
    Action.ADMIN_LAYOUT: ActionSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, "U",
                                    "changed a hospital-wide hanging rule or grid layout"),
}
