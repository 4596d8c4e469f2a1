"""DICOMweb STOW-RS: ``POST /dicomweb/studies`` (PS3.18 10.5), for device accounts.

The device authenticates with its bearer token (``Authorization: Bearer fgw_...``,
see :mod:`imaging.devices`); the policy must grant it ``study.ingest``. The body
is ``multipart/related; type="application/dicom"``; each part goes through the
same ingest service as every other door. The answer is the standard Store
Instances Response (``application/dicom+json``): ReferencedSOPSequence for
instances stored (or already stored), FailedSOPSequence with a FailureReason
per refused instance (and its reason in ErrorComment); 200 when all were
stored, 202 when some failed, 409 when none was stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from imaging import conf
from imaging.devices import device_by_token
from imaging.scp import STATUS_FOR_REASON
from imaging.services import IngestBatch, IngestOutcome, Reason, Status

DICOM_JSON = "application/dicom+json"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def _parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers, content) pairs (RFC 2046)."""
    delimiter = b"\r\n--" + boundary
    chunks = (b"\r\n" + body).split(delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, chunk = chunk.partition(b"\r\n")
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            continue
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def _item(outcome: IngestOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
    if outcome.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
    if outcome.status is Status.REJECTED:
        code = STATUS_FOR_REASON.get(outcome.reason, 0xC000)  # type: ignore[arg-type]
        item["00081197"] = {"vr": "US", "Value": [code]}
        item["00000902"] = {"vr": "LO", "Value": [f"{outcome.reason}: {outcome.detail}"[:64]]}
    return item


def _refuse(request: HttpRequest, status: int, message: str, **headers: str) -> HttpResponse:
    response = HttpResponse(json.dumps({"error": message}), status=status,
                            content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response


@csrf_exempt
@login_not_required
@require_POST
def stow(request: HttpRequest) -> HttpResponse:
    """Store the instances of a multipart/related request; answer per instance."""
    source = client_address(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    device = device_by_token(token.strip()) if scheme.lower() == "bearer" else None
    if device is None:
        audit_record(actor="stow:unknown", action=Action.INGEST, outcome=Outcome.DENIED,
                     source_ip=source, details={"door": "stow-rs", "reason": "no valid device token"})
        return _refuse(request, 401, "a device bearer token is required",
                       **{"WWW-Authenticate": 'Bearer realm="dicomweb"'})
    content_type = request.headers.get("Content-Type", "")
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/related") or match is None:
        return _refuse(request, 415, 'expected multipart/related; type="application/dicom"')
    length = int(request.headers.get("Content-Length") or 0)
    if length > conf.stow_max_bytes():
        return _refuse(request, 413, f"the request exceeds {conf.stow_max_bytes()} bytes")
    body = request.read()
    batch = IngestBatch(actor=device, door="stow-rs", source_ip=source)
    for headers, content in _parts(body, match.group(1).encode("latin-1")):
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            batch.reject(IngestOutcome(Status.REJECTED, Reason.NOT_DICOM,
                                       f"part of type {part_type} is not application/dicom"))
            continue
        batch.ingest(content)
    batch.close()
    stored = [o for o in batch.outcomes if o.status is not Status.REJECTED]
    failed = [o for o in batch.outcomes if o.status is Status.REJECTED]
    document: dict[str, Any] = {}
    if stored:
        document["00081199"] = {"vr": "SQ", "Value": [_item(o) for o in stored]}
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": [_item(o) for o in failed]}
    status = 200 if stored and not failed else 202 if stored else 409
    return JsonResponse(document, status=status, content_type=DICOM_JSON)
