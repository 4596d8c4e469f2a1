"""Associations with DICOM peers IT registered: C-ECHO, C-STORE of a batch, and the shared plumbing.

pynetdicom is the SCU (the same library as the gateway's SCP). Every association
this module opens is ended before it returns — released, or aborted when the
release goes unanswered — and has Nagle turned off (dcmtk and pynetdicom leave it
on: each request would wait ~45 ms for a delayed ACK). A peer registered with
``tls`` is reached over TLS 1.2+, verified against ``GATEWAY_PACS_TLS_CA`` (else
the system's trust store).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

from imaging import conf

STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""Success, and the storage warnings (elements coerced, elements discarded, data set does not
match the SOP Class) under which the SCP has still stored the object."""
STATUS_WORDS = {**GENERAL_STATUS, **STORAGE_SERVICE_CLASS_STATUS}
VERIFICATION = UID("1.2.840.10008.1.1")
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
REJECTED = frozenset({0x01, 0x02})
"""A-ASSOCIATE-RJ results: rejected permanent, rejected transient."""


class SendError(RuntimeError):
    """No association with the peer: nothing was sent."""


@dataclass(frozen=True)
class SendResult:
    """How a C-STORE batch went: instances stored, and (SOP Instance UID, reason) for the rest."""

    sent: int
    failed: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Peer:
    """Where a DICOM peer listens, and how to reach it."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    @classmethod
    def of(cls, destination: Any) -> Peer:
        """The peer of a registered :class:`~imaging.models.DicomDestination`."""
        return cls(destination.ae_title, destination.host, destination.port, bool(destination.tls))

    def __str__(self) -> str:
        return f"{self.ae_title} at {self.host}:{self.port}" + (" (TLS)" if self.tls else "")


def client_tls() -> ssl.SSLContext:
    """Client TLS 1.2+, the peer's certificate verified (``GATEWAY_PACS_TLS_CA`` or the system store)."""
    context = ssl.create_default_context(cafile=getattr(settings, "IMAGING_PACS_TLS_CA", None) or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def entity(*, timeout_s: float = 30) -> AE:
    """An AE calling as the gateway (``GATEWAY_SCP_AE_TITLE``) with every timeout set."""
    ae = AE(ae_title=conf.scp_ae_title())
    ae.connection_timeout = ae.acse_timeout = timeout_s
    ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae


def associate(ae: AE, peer: Peer, **kwargs: Any) -> Association:
    """An established association with ``peer``, Nagle off; :class:`SendError` saying why otherwise."""
    tls_args = (client_tls(), peer.host) if peer.tls else None
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args, **kwargs)
    if not association.is_established:
        raise SendError(no_association_reason(association, peer=peer, timeout_s=ae.acse_timeout or 0))
    _no_delay(association)
    return association


@contextlib.contextmanager
def associated(ae: AE, peer: Peer, **kwargs: Any) -> Iterator[Association]:
    association = associate(ae, peer, **kwargs)
    try:
        yield association
    finally:
        end(association)


def dicom_echo(peer: Peer, *, timeout_s: float = 10) -> str:
    """C-ECHO ``peer``; '' when it answered Success, else why not (a line for IT)."""
    ae = entity(timeout_s=timeout_s)
    ae.add_requested_context(VERIFICATION)
    try:
        with associated(ae, peer) as association:
            status = association.send_c_echo().get("Status")
    except SendError as error:
        return str(error)
    if status is None:
        return f"{peer} did not answer the C-ECHO within {timeout_s:g} s"
    return "" if status == 0x0000 else f"{peer} answered the C-ECHO with 0x{status:04X}"


def dicom_send(datasets: list[Dataset], *, ae_title: str, host: str, port: int, tls: bool = False,
               timeout_s: float = 30) -> SendResult:
    """C-STORE each dataset to a peer over one association.

    One presentation context is requested per (SOP Class, transfer syntax) pair, the
    transfer syntax being the dataset's own (``file_meta.TransferSyntaxUID``), so
    nothing is transcoded.

    Parameters
    ----------
    datasets
        Instances with file meta naming their transfer syntax.
    ae_title, host, port, tls
        The peer (its called AE title) and how to reach it.
    timeout_s
        Connection, ACSE, DIMSE and network timeout.

    Returns
    -------
    SendResult
        Stored instances counted (success or a storage warning); every other instance
        with its reason: the status in hex and words, or why no status came.

    Raises
    ------
    SendError
        When no association was established: peer unreachable, association rejected
        or aborted, or no presentation context accepted.
    ValueError
        When a dataset has no transfer syntax in its file meta.
    """
    ae = entity(timeout_s=timeout_s)
    for sop_class, transfer_syntax in _context_pairs(datasets):
        ae.add_requested_context(sop_class, transfer_syntax)
    with associated(ae, Peer(ae_title, host, port, tls)) as association:
        failed = tuple(_store_each(association, datasets))
    return SendResult(sent=len(datasets) - len(failed), failed=failed)


def _context_pairs(datasets: Iterable[Dataset]) -> list[tuple[UID, UID]]:
    pairs: dict[tuple[UID, UID], None] = {}
    for dataset in datasets:
        pairs[(UID(dataset.SOPClassUID), _transfer_syntax(dataset))] = None
    return list(pairs)


def _transfer_syntax(dataset: Dataset) -> UID:
    transfer_syntax = getattr(dataset.get("file_meta"), "TransferSyntaxUID", None)
    if transfer_syntax is None:
        raise ValueError(f"{dataset.SOPInstanceUID} has no file meta Transfer Syntax UID to send it in")
    return UID(transfer_syntax)


def no_association_reason(association: Association, *, peer: Peer, timeout_s: float) -> str:
    answer = _association_answer(association)
    if answer is not None and answer.result in REJECTED:
        why = f"{answer.result_str}, {answer.source_str}: {answer.reason_str}"
        return f"{peer} rejected the association ({why})"
    if answer is not None and not association.accepted_contexts:
        offered = ", ".join(sorted({_sop_class_name(cx.abstract_syntax)
                                    for cx in association.rejected_contexts}))
        return f"{peer} accepted none of the presentation contexts offered ({offered})"
    return (f"no association with {peer}: peer unreachable, connection refused, association aborted, "
            f"or no answer within {timeout_s:g} s")


def _association_answer(association: Association) -> A_ASSOCIATE | None:
    if association.acceptor.primitive is not None:
        return association.acceptor.primitive
    # A peer that rejects and closes at once can look to pynetdicom 3.0 like one never connected
    # (it sees the socket closed first); the A-ASSOCIATE-RJ is then left unread in the DUL's queue.
    unread = association.dul.peek_next_pdu()
    return unread if isinstance(unread, A_ASSOCIATE) else None


def _sop_class_name(uid: str | None) -> str:
    return UID(uid).name if uid else "?"


def _no_delay(association: Association) -> None:
    connection = association.dul.socket
    if connection is not None and connection.socket is not None:
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_each(association: Association, datasets: list[Dataset]) -> Iterator[tuple[str, str]]:
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in association.accepted_contexts}
    for position, dataset in enumerate(datasets):
        uid = str(dataset.SOPInstanceUID)
        if not association.is_established:
            yield from _not_sent(datasets[position:])
            return
        if (dataset.SOPClassUID, _transfer_syntax(dataset)) not in accepted:
            sop_class = _sop_class_name(dataset.SOPClassUID)
            yield uid, f"not sent: the peer accepted no context for {sop_class} in this transfer syntax"
            continue
        status = association.send_c_store(dataset).get("Status")
        if status is None:
            # The peer aborted or went silent; pynetdicom may not have marked the association yet.
            yield uid, "no response: association aborted, or no answer within the DIMSE timeout"
            yield from _not_sent(datasets[position + 1:])
            return
        if status not in STORED_STATUSES:
            yield uid, f"0x{status:04X} {STATUS_WORDS.get(status, ('', 'unknown status'))[1]}"


def _not_sent(datasets: list[Dataset]) -> Iterator[tuple[str, str]]:
    for dataset in datasets:
        yield str(dataset.SOPInstanceUID), "not sent: the association ended before it"


def end(association: Association) -> None:
    """Release, or abort when the release goes unanswered."""
    if association.is_established:
        association.release()
    if not (association.is_released or association.is_aborted):
        association.abort()
