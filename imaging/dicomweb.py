"""DICOMweb STOW-RS: ``POST /dicomweb/studies`` (PS3.18 10.5), for device accounts.

The device authenticates with its bearer token (``Authorization: Bearer fgw_...``,
see :mod:`imaging.devices`); the policy must grant it ``study.ingest``. The body
is ``multipart/related; type="application/dicom"``; each part goes through the
same ingest service as every other door. The answer is the standard Store
Instances Response (``application/dicom+json``): ReferencedSOPSequence for
instances stored (or already stored), FailedSOPSequence with a FailureReason
per refused instance (and its reason in ErrorComment); 200 when all were
stored, 202 when some failed, 409 when none was stored.

How the request is admitted and received (limits, refusals before the body,
streaming to disk, nothing stored unless the whole multipart arrived) is
:mod:`imaging.stow`. Under ASGI, :class:`imaging.stow_asgi.StowGate` has
done that before this view runs and left a receipt in the scope; otherwise
(WSGI, the test client) the view does it here, reading the request stream.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.net import client_address
from imaging.stow import (
    SCOPE_KEY,
    Refusal,
    StowReceipt,
    stow_admit,
    stow_refusal_record,
    stow_store,
)

DICOM_JSON = "application/dicom+json"
READ_BYTES = 1 << 20
INTERRUPTED = Refusal(503, "the upload was interrupted", "upload interrupted")


def _receive(request: HttpRequest) -> StowReceipt:
    """Admit and receive the request here (no gate in front of Django)."""
    receipt = stow_admit(headers=request.headers, source_ip=client_address(request))
    while receipt.refusal is None:
        chunk = request.read(READ_BYTES)
        if not chunk:
            receipt.finish()
            break
        receipt.feed(chunk)
    return receipt


def _refused(receipt: StowReceipt) -> HttpResponse:
    refusal = receipt.refusal or INTERRUPTED
    stow_refusal_record(receipt, refusal)
    response = HttpResponse(json.dumps({"error": refusal.message}), status=refusal.status,
                            content_type="application/json")
    for name, value in refusal.headers:
        response[name] = value
    return response


@csrf_exempt
@login_not_required
@require_POST
def stow(request: HttpRequest) -> HttpResponse:
    """Store the instances of a multipart/related request; answer per instance."""
    scope = getattr(request, "scope", None) or {}
    receipt = scope.get(SCOPE_KEY) or _receive(request)
    if not receipt.claim():
        return _refused(StowReceipt(source_ip=receipt.source_ip, device=receipt.device))
    try:
        if receipt.refusal is not None or receipt.upload is None:
            return _refused(receipt)
        status, document = stow_store(device=receipt.device, upload=receipt.upload,
                                      source_ip=receipt.source_ip)
        return JsonResponse(document, status=status, content_type=DICOM_JSON)
    finally:
        receipt.close()
