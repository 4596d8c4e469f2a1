"""The DICOM C-STORE SCP door (pynetdicom): C-ECHO, and C-STORE of images and the objects ingest keeps.

Calling AE titles are allowlisted per device account (:mod:`imaging.devices`):
an association from any other title is rejected at negotiation (A-ASSOCIATE-RJ,
"calling AE title not recognised"), and every C-STORE asks the policy again:
one indexed lookup of the calling AE title's device per instance, so a device
account deactivated, moved to another role or stripped of its AE title in the
middle of an association is refused (0x0124) from its next C-STORE on.
C-FIND, C-MOVE and C-GET are not offered, so their presentation contexts are
refused. The handlers only translate between DIMSE and
:mod:`imaging.services`; storage is not their business, and neither is
serving several associations at once on several cores
(:mod:`imaging.scp_server`). Each C-STORE's status is the outcome of that
instance's own ingest, answered only once it is durably stored; an
association's release audits its batch and builds nothing (the volume
builder picks its series up).
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from django.db import close_old_connections, connections
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from imaging.devices import allowed_ae_titles, device_by_ae_title, device_still_allowed
from imaging.objects import OBJECT_CLASSES
from imaging.services import IngestBatch, Reason, Status

log = logging.getLogger(__name__)

IMAGE_CLASS_WORDS = ("Image", "Segmentation", "Positron", "Nuclear Medicine", "Secondary Capture",
                     "Ultrasound", "Photograph", "Volume")
STATUS_FOR_REASON = {
    Reason.OVERSIZE: 0xA700,       # Refused: out of resources
    Reason.MISSING_UID: 0xA900,    # Error: data set does not match SOP class
    Reason.NOT_IMAGE: 0xA900,
    Reason.NOT_DICOM: 0xC000,      # Error: cannot understand
    Reason.TRUNCATED: 0xC000,
    Reason.UNDECODABLE: 0xC000,
    Reason.UNAUTHORISED: 0x0124,   # Refused: not authorised
    Reason.INTERNAL: 0xC001,
}


def accepted_storage_classes() -> list[str]:
    """Storage SOP classes the door negotiates: images (CT, MR, PET, NM, SC, enhanced CT/MR, ...)
    and the non-image objects ingest keeps (presentation states, registrations, SEG, RTSTRUCT, SR)."""
    classes = []
    for context in StoragePresentationContexts:
        uid = UID(str(context.abstract_syntax))
        if any(word in uid.name for word in IMAGE_CLASS_WORDS) and "Report" not in uid.name:
            classes.append(str(uid))
    return classes + sorted(set(OBJECT_CLASSES) - set(classes))


class GatewayAE(AE):
    """An AE whose calling-AE allowlist is read from the device accounts at each association."""

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        try:
            titles = allowed_ae_titles()
        finally:
            close_old_connections()
        # An empty list would mean "anyone" to pynetdicom: no device means nobody.
        return titles or ["\x00"]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("the allowlist comes from the device accounts")


class Associations:
    """One :class:`IngestBatch` per association, closed (audited) when it ends."""

    def __init__(self, *, build_volumes: bool = False) -> None:
        self._batches: dict[int, IngestBatch] = {}
        self._lock = threading.Lock()
        self.build_volumes = build_volumes

    def batch(self, event: Any) -> IngestBatch | None:
        """The association's batch, or None when the policy refuses this C-STORE.

        The device is looked up, and the policy asked, for every C-STORE rather
        than once per association: a device disabled mid-association must stop
        storing at once. The batch keeps the account it was opened for; the
        calling AE title now naming another account is refused too.
        """
        key, ae_title = id(event.assoc), event.assoc.requestor.ae_title
        with self._lock:
            batch = self._batches.get(key)
        if batch is not None:
            return batch if device_still_allowed(device=batch.actor, ae_title=ae_title) else None
        device = device_by_ae_title(ae_title)
        if device is None:
            return None
        batch = IngestBatch(actor=device, door="c-store", source_ip=str(event.assoc.requestor.address),
                            build_volumes=self.build_volumes)
        with self._lock:
            return self._batches.setdefault(key, batch)

    def close(self, event: Any) -> None:
        with self._lock:
            batch = self._batches.pop(id(event.assoc), None)
        try:
            if batch is not None and batch.outcomes:
                batch.close()
        except Exception:
            log.exception("closing the ingest batch of an association failed")
        finally:
            connections.close_all()


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def handle_echo(event: Any, associations: Associations) -> int:
    return 0x0000 if device_by_ae_title(event.assoc.requestor.ae_title) else 0x0124


def handle_store(event: Any, associations: Associations) -> Dataset:
    """C-STORE: ask the policy, hand the encoded instance to the ingest service, answer its outcome."""
    batch = associations.batch(event)
    if batch is None:
        audit_record(actor=f"ae:{event.assoc.requestor.ae_title}", action=Action.INGEST,
                     outcome=Outcome.DENIED, source_ip=str(event.assoc.requestor.address),
                     details={"door": "c-store", "reason": "calling AE title not allowed"})
        return _status(0x0124, "calling AE title is not allowed to store")
    outcome = batch.ingest(bytes(event.encoded_dataset(include_meta=True)))
    if outcome.status is Status.REJECTED:
        return _status(STATUS_FOR_REASON.get(outcome.reason, 0xC000),  # type: ignore[arg-type]
                       f"{outcome.reason}: {outcome.detail}")
    return _status(0x0000)


def scp_build(*, ae_title: str, build_volumes: bool = False) -> tuple[AE, list[evt.EventHandlerType]]:
    """The SCP application entity and its event handlers.

    ``build_volumes`` builds the touched series when an association ends, in
    the association's thread: off by default, the volume builder does it.
    """
    ae = GatewayAE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.maximum_pdu_size = 0
    ae.add_supported_context(Verification)
    for sop_class in accepted_storage_classes():
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    associations = Associations(build_volumes=build_volumes)
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_C_ECHO, handle_echo, [associations]),
        (evt.EVT_C_STORE, handle_store, [associations]),
        (evt.EVT_RELEASED, _closed, [associations]),
        (evt.EVT_ABORTED, _closed, [associations]),
    ]
    return ae, handlers


def _closed(event: Any, associations: Associations) -> None:
    associations.close(event)


def tls_context(*, certificate: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """Server TLS (1.2+); with ``client_ca`` the device must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
