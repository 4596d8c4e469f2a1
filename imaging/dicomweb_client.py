"""The gateway as a DICOMweb client of a PACS that offers it: QIDO-RS search, WADO-RS retrieve, STOW-RS send.

Used instead of DIMSE for a peer registered with ``--dicomweb URL`` (PS3.18). Answers
are read as DICOM JSON into pydicom datasets, so the same code keeps them in the identity
zone as C-FIND answers. A WADO-RS answer is parsed as it arrives with the same
streaming multipart parser and spool as an incoming STOW-RS body
(:class:`imaging.stow.StowUpload`): memory stays bounded whatever the PACS sends, and
each instance is handed on as soon as its part is complete. An ``https`` URL is verified
like a DIMSE TLS peer (``GATEWAY_PACS_TLS_CA`` or the system's trust store).
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.dataset import Dataset

from imaging import conf
from imaging.dicom_net import SendError, SendResult, client_tls

TIMEOUT_S = 60
SEARCH_TIMEOUT_S = 15
JSON_LIMIT = 32 << 20
"""The largest QIDO-RS answer read (bytes): memory stays bounded whatever the PACS sends."""
"""A search holds a worklist page: it gives up sooner than a retrieval."""
CHUNK = 1 << 16
STUDY_FIELDS = ("00081030", "00080061", "00201206", "00201208", "00100030", "00100040", "00100021",
                "00080050")
SERIES_FIELDS = ("0008103E", "00201209", "00200011")


class DicomwebError(RuntimeError):
    """The DICOMweb service could not be used; the message says why."""


def _open(request: urllib.request.Request, *, timeout_s: float = TIMEOUT_S) -> Any:
    context = client_tls() if request.full_url.startswith("https:") else None
    try:
        # S310: the URL is IT's, checked to be http(s) when registered (report_settings._dicomweb_url).
        return urllib.request.urlopen(request, timeout=timeout_s, context=context)  # noqa: S310
    except urllib.error.HTTPError as error:
        raise DicomwebError(f"{request.full_url.split('?')[0]} answered HTTP {error.code}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DicomwebError(f"{request.full_url.split('?')[0]} cannot be reached ({error})") from error


def _json(base: str, path: str, query: Iterable[tuple[str, str]]) -> list[Dataset]:
    # "*" is a legal query character (RFC 3986 sub-delim); some servers (Orthanc's plugin) do not
    # decode "%2A" back into the wildcard.
    url = f"{base.rstrip('/')}/{path}?{urllib.parse.urlencode(list(query), safe='*')}"
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})  # noqa: S310
    with _open(request, timeout_s=SEARCH_TIMEOUT_S) as answer:
        body = answer.read(JSON_LIMIT + 1)
    if len(body) > JSON_LIMIT:
        raise DicomwebError(f"{url.split('?')[0]} answered more than {JSON_LIMIT >> 20} MB of JSON")
    if not body.strip():
        return []  # 204 No Content: nothing matched
    try:
        return [Dataset.from_json(item) for item in json.loads(body)]
    except (ValueError, TypeError, KeyError) as error:
        raise DicomwebError(f"{url.split('?')[0]} answered something that is not DICOM JSON") from error


def dicomweb_echo(base: str) -> str:
    """'' when the service answers a one-study QIDO-RS search, else why not."""
    try:
        _json(base, "studies", [("limit", "1")])
    except DicomwebError as error:
        return str(error)
    return ""


def qido_studies(base: str, keys: Dataset, *, limit: int) -> list[Dataset]:
    """QIDO-RS studies matching the non-empty attributes of a C-FIND-style identifier."""
    query = [(element.keyword, str(element.value)) for element in keys
             if element.keyword not in ("QueryRetrieveLevel", "") and element.value not in (None, "")]
    query += [("includefield", field) for field in STUDY_FIELDS] + [("limit", str(limit))]
    return _json(base, "studies", query)


def qido_series(base: str, study_uid: str) -> list[Dataset]:
    return _json(base, f"studies/{urllib.parse.quote(study_uid)}/series",
                 [("includefield", field) for field in SERIES_FIELDS])


def wado_series(base: str, study_uid: str, series_uid: str, on_instance: Callable[[bytes], None]) -> int:
    """Retrieve a series' instances, handing each to ``on_instance`` as soon as it is whole."""
    from imaging.stow import StowRefused, StowUpload, _boundary

    quote = urllib.parse.quote
    url = f"{base.rstrip('/')}/studies/{quote(study_uid)}/series/{quote(series_uid)}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    with _open(urllib.request.Request(url, headers={"Accept": accept})) as answer:  # noqa: S310
        boundary = _boundary(answer.headers.get("Content-Type", ""))
        if boundary is None:
            raise DicomwebError(f"{url} did not answer multipart/related with a boundary")
        upload = StowUpload(boundary=boundary, max_bytes=conf.stow_max_bytes(),
                            max_parts=conf.stow_max_parts())
        handed = 0
        try:
            while chunk := answer.read(CHUNK):
                upload.feed(chunk)
                for part in upload.parts[handed:]:
                    on_instance(upload.read(part))
                    handed += 1
            upload.finish()
        except StowRefused as refused:
            raise DicomwebError(f"{url}: {refused.refusal.message}") from refused
        except (OSError, urllib.error.URLError) as error:
            raise DicomwebError(f"{url} went away after {handed} instances ({error})") from error
        finally:
            upload.close()
    return handed


def stow_send(base: str, datasets_bytes: list[tuple[str, bytes]]) -> SendResult:
    """STOW-RS ``(SOP Instance UID, Part-10 bytes)`` pairs in one request; SendError when none got there."""
    boundary = secrets.token_hex(16)
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for _, data in datasets_bytes) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(  # noqa: S310
        f"{base.rstrip('/')}/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"})
    try:
        with _open(request) as answer:
            reply = answer.read(JSON_LIMIT)
    except DicomwebError as error:
        raise SendError(str(error)) from error
    failed = _stow_failures(reply)
    return SendResult(sent=len(datasets_bytes) - len(failed), failed=tuple(failed))


def _stow_failures(reply: bytes) -> list[tuple[str, str]]:
    if not reply.strip():
        return []
    try:
        answer = Dataset.from_json(json.loads(reply))
    except (ValueError, TypeError, KeyError):
        return []
    return [(str(item.get("ReferencedSOPInstanceUID", "")),
             f"STOW-RS failure 0x{int(item.get('FailureReason', 0)):04X}")
            for item in answer.get("FailedSOPSequence", [])]
