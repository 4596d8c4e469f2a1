"""What IT sets: the report letterhead, and the DICOM peers (report destinations, PACS) the gateway talks to.

Both are audited when changed. A destination is an AE title at a host and port; nothing is sent
anywhere else, and a browser never receives a report's DICOM objects.
"""

from __future__ import annotations

import io
import urllib.parse
from typing import Any

from PIL import Image, UnidentifiedImageError

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from imaging.dicom_net import Peer, dicom_echo
from imaging.dicomweb_client import dicomweb_echo
from imaging.models import DicomDestination, ReportLetterhead, RetrieveMethod
from imaging.reports import HEADER_FIELDS

LOGO_LIMIT = 256 * 1024


class ReportSettingError(ValueError):
    """A letterhead or destination IT gave that cannot be used."""


def _ae_title(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or not value.isascii() or "\\" in value:
        raise ReportSettingError("an AE title is 1 to 16 ASCII characters")
    return value


def destination_register(*, name: str, ae_title: str, host: str, port: int, actor: Any, retrieve: str = "",
                         send_results: bool = False, tls: bool = False,
                         dicomweb_url: str = "") -> DicomDestination:
    """Register (or change) a DICOM peer; with ``retrieve`` it is also a PACS the worklist searches."""
    if not 1 <= port <= 65535:
        raise ReportSettingError("a port is 1 to 65535")
    if not host.strip() or len(host) > 253:
        raise ReportSettingError("a host name or address is required")
    if retrieve not in RetrieveMethod.values:
        methods = ", ".join(filter(None, RetrieveMethod.values))
        raise ReportSettingError(f"the retrieve method is one of {methods}")
    dicomweb_url = _dicomweb_url(dicomweb_url)
    if bool(dicomweb_url) != (retrieve == RetrieveMethod.WADO_RS) and (dicomweb_url or retrieve):
        raise ReportSettingError("a DICOMweb peer retrieves with wado-rs, and wado-rs needs a DICOMweb URL")
    destination, _ = DicomDestination.objects.update_or_create(
        name=name.strip()[:64], defaults={"ae_title": _ae_title(ae_title), "host": host.strip(), "port": port,
                                          "retrieve": retrieve, "send_results": send_results, "tls": tls,
                                          "dicomweb_url": dicomweb_url,
                                          "active": True, "registered_by": str(actor)[:150]})
    audit_record(actor=actor, action=Action.ADMIN_DESTINATION, outcome=Outcome.SUCCESS, details={
        "change": "registered", "name": destination.name, "ae_title": destination.ae_title,
        "host": destination.host, "port": port, "retrieve": retrieve, "send_results": send_results,
        "tls": tls, "dicomweb": bool(dicomweb_url)})
    return destination


def _dicomweb_url(value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        raise ReportSettingError("a DICOMweb URL is http(s)://host[:port]/path, without credentials or query")
    return value.rstrip("/")


def destination_echo(*, name: str, actor: Any) -> str:
    """C-ECHO a registered peer, audited; '' when it answered, else why not."""
    destination = DicomDestination.objects.filter(name=name, active=True).first()
    if destination is None:
        raise ReportSettingError(f"no active destination named {name!r}")
    why = (dicomweb_echo(destination.dicomweb_url) if destination.dicomweb_url
           else dicom_echo(Peer.of(destination)))
    audit_record(actor=actor, action=Action.PACS_ECHO, outcome=Outcome.FAILURE if why else Outcome.SUCCESS,
                 details={"name": name, **({"why": why} if why else {})})
    return why


def destination_withdraw(*, name: str, actor: Any) -> None:
    changed = DicomDestination.objects.filter(name=name, active=True).update(active=False)
    if not changed:
        raise ReportSettingError(f"no active destination named {name!r}")
    audit_record(actor=actor, action=Action.ADMIN_DESTINATION, outcome=Outcome.SUCCESS,
                 details={"change": "withdrawn", "name": name})


def _logo(data: bytes) -> bytes:
    if len(data) > LOGO_LIMIT:
        raise ReportSettingError(f"a logo is at most {LOGO_LIMIT // 1024} KiB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ReportSettingError("the logo must be a PNG")
            image.verify()
    except (UnidentifiedImageError, OSError) as error:
        raise ReportSettingError(f"the logo is not a readable PNG: {error}") from error
    return data


def letterhead_set(*, actor: Any, hospital: str | None = None, department: str | None = None,
                   footer: str | None = None, logo_png: bytes | None = None,
                   header_fields: list[str] | None = None) -> ReportLetterhead:
    """Change the given parts of the letterhead (others stay)."""
    row = ReportLetterhead.objects.order_by("pk").first() or ReportLetterhead()
    if header_fields is not None:
        unknown = set(header_fields) - set(HEADER_FIELDS)
        if unknown:
            raise ReportSettingError(f"header fields are {', '.join(HEADER_FIELDS)}")
        row.header_fields = header_fields
    for name, value, limit in (("hospital", hospital, 128), ("department", department, 128),
                               ("footer", footer, 256)):
        if value is not None:
            setattr(row, name, value.strip()[:limit])
    if logo_png is not None:
        row.logo_png = _logo(logo_png) if logo_png else b""
    row.updated_by = str(actor)[:150]
    row.save()
    audit_record(actor=actor, action=Action.ADMIN_LETTERHEAD, outcome=Outcome.SUCCESS, details={
        "hospital": row.hospital, "department": row.department, "logo_bytes": len(row.logo_png),
        "header_fields": row.header_fields})
    return row
