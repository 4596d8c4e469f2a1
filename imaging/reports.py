"""A study's reports: drafts written by doctors, key images kept live, signing, addenda.

A report is a chain of versions (``Report`` rows, 1, 2, …) of which only the
last may be a draft. A draft belongs to its author; signing makes it final
(the row refuses every later save) and an addendum starts the next version
from the signed text. A key image is a view state, not pixels: it is rendered
again whenever it is shown or exported, so its window, slice and fusion can
still be changed while the report is a draft (InterView's "live" report).

Pixels never leave through here: what a browser gets of a report is rendered
pictures and text (:mod:`rendering.report_views`), like the viewer's frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext, pgettext

from gateway.i18n import gettext_noop
from imaging.findings import finding_rows
from imaging.models import Report, ReportLetterhead, ReportSigned, ReportStatus, Study
from imaging.report_document import FindingLine, KeyPicture, Letterhead, ReportDocument
from rendering.said import SaidError

CLINICAL = "default"
SECTIONS: tuple[tuple[str, str], ...] = (
    ("clinical_information", gettext_noop("Clinical information")),
    ("findings", gettext_noop("Findings")),
    # Translators: the report section with the radiologist's conclusion.
    ("impression", gettext_noop("Impression")),
    ("comments", gettext_noop("Comments")),
)
"""Each section's key and heading (English; ``gettext`` where a page or PDF shows one)."""
SECTION_LIMIT = 20_000
TITLE_LIMIT = 128
CAPTION_LIMIT = 128
MAX_KEY_IMAGES = 48
GRIDS = ((1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 4))
DEFAULT_GRID = (2, 2)
HEADER_FIELDS = ("patient", "study_date", "study", "author", "version")
WINDOW_LIMIT = 1.0e7
MAX_SLICE_STEPS = 2000


class ReportError(SaidError, ValueError):
    """A change the report cannot take (bad value, someone else's draft, nothing to sign)."""


@dataclass(frozen=True)
class ReportSummary:
    """What the worklist and the viewer list of a study's report: its latest version."""

    status: str
    version: int = 0
    author: str = ""

    @property
    def label(self) -> str:
        """The status as a reader is shown it, in the active language."""
        if not self.version:
            return pgettext("report status", "none")
        # Translators: a report's status and version, e.g. "draft (v2)".
        return gettext("%(status)s (v%(version)s)") % {"status": ReportStatus(self.status).label,
                                                      "version": self.version}


def reports_of(study_uid: str) -> list[Report]:
    return list(Report.objects.filter(study__study_instance_uid=study_uid).order_by("version"))


def report_latest(study_uid: str) -> Report | None:
    return Report.objects.filter(study__study_instance_uid=study_uid).order_by("-version").first()


def report_summaries(study_uids: Iterable[str]) -> dict[str, ReportSummary]:
    """Each study's latest report (status ``none`` where there is none), in one query."""
    summaries = {uid: ReportSummary("none") for uid in study_uids}
    rows = (Report.objects.filter(study__study_instance_uid__in=list(summaries))
            .order_by("study_id", "version").values_list("study__study_instance_uid", "status",
                                                          "version", "author"))
    for uid, status, version, author in rows:
        summaries[uid] = ReportSummary(status, version, author)
    return summaries


def report_get(study_uid: str, version: int) -> Report:
    found = Report.objects.filter(study__study_instance_uid=study_uid, version=version).first()
    if found is None:
        raise ReportError(gettext_noop("no such report version"))
    return found


# --- writing ----------------------------------------------------------------------------------


def _owned_draft(report: Report, author: str) -> Report:
    if report.status == ReportStatus.SIGNED:
        raise ReportSigned("this report is signed; write an addendum instead")
    if report.author != author:
        raise ReportError(gettext_noop("this draft is being written by %(author)s"), author=report.author)
    return report


def report_draft(*, study_uid: str, author: str) -> tuple[Report, bool]:
    """The author's draft of the study's report, started when there is none; (draft, created).

    Refused when the latest version is signed (write an addendum) or someone else's draft.
    """
    with transaction.atomic(using=CLINICAL):
        study = Study.objects.select_for_update().get(study_instance_uid=study_uid)
        latest = study.reports.order_by("-version").first()
        if latest is None:
            return Report.objects.create(study=study, author=author, sections=_blank_sections(),
                                         grid=list(DEFAULT_GRID)), True
        return _owned_draft(latest, author), False


def report_addendum(*, study_uid: str, author: str) -> Report:
    """A new draft version after the signed one, starting from its text and key images."""
    with transaction.atomic(using=CLINICAL):
        study = Study.objects.select_for_update().get(study_instance_uid=study_uid)
        latest = study.reports.order_by("-version").first()
        if latest is None or latest.status != ReportStatus.SIGNED:
            raise ReportError(gettext_noop("an addendum follows a signed report"))
        return Report.objects.create(
            study=study, version=latest.version + 1, author=author, title=latest.title,
            sections=dict(latest.sections), key_images=list(latest.key_images), grid=list(latest.grid),
            include_findings=latest.include_findings)


def _blank_sections() -> dict[str, str]:
    return {key: "" for key, _ in SECTIONS}


@contextmanager
def _draft_locked(report: Report, author: str) -> Iterator[Report]:
    """The draft as stored now, locked for one change: a viewer's capture and the page's
    autosave may arrive together, and neither may undo the other."""
    with transaction.atomic(using=CLINICAL):
        current = Report.objects.select_for_update().get(pk=report.pk)
        yield _owned_draft(current, author)
        current.save()


def key_image_add(*, study_uid: str, author: str, state: dict[str, Any], caption: str,
                  normal: list[float], step_mm: float) -> tuple[Report, bool]:
    """Keep a view's state as a key image of the author's draft (started if need be)."""
    draft, created = report_draft(study_uid=study_uid, author=author)
    with _draft_locked(draft, author) as report:
        _key_image_append(report, state=state, caption=caption, normal=normal, step_mm=step_mm)
    return report, created


def _key_image_append(report: Report, *, state: dict[str, Any], caption: str, normal: list[float],
                      step_mm: float) -> None:
    if len(report.key_images) >= MAX_KEY_IMAGES:
        raise ReportError(gettext_noop("a report holds at most %(most)s key images"), most=MAX_KEY_IMAGES)
    report.key_images = [*report.key_images, {
        "id": secrets.token_hex(6), "caption": _text(caption, CAPTION_LIMIT, "caption"),
        "state": state, "normal": [float(v) for v in normal], "step_mm": float(step_mm),
        "captured_at": timezone.now().isoformat(timespec="seconds")}]


def _text(value: Any, limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise ReportError(gettext_noop("%(what)s must be text"), what=what)
    if len(value) > limit:
        raise ReportError(gettext_noop("%(what)s is longer than %(most)s characters"), what=what, most=limit)
    return value.replace("\x00", "")


def report_update(report: Report, *, author: str, changes: dict[str, Any]) -> Report:
    """Apply an editor's autosave: title, sections, grid, findings on/off, key image order,
    captions and removals."""
    with _draft_locked(report, author) as current:
        _changes_apply(current, changes)
    return current


def _changes_apply(report: Report, changes: Any) -> None:
    if not isinstance(changes, dict):
        raise ReportError(gettext_noop("changes must be an object"))
    unknown = set(changes) - {"title", "sections", "grid", "include_findings", "key_images", "removed"}
    if unknown:
        raise ReportError(gettext_noop("unknown fields: %(fields)s"), fields=", ".join(sorted(unknown)))
    if "title" in changes:
        report.title = _text(changes["title"], TITLE_LIMIT, "title").strip() or "Report"
    if "sections" in changes:
        report.sections = _sections(changes["sections"], report.sections)
    if "grid" in changes:
        report.grid = _grid(changes["grid"])
    if "include_findings" in changes:
        if not isinstance(changes["include_findings"], bool):
            raise ReportError(gettext_noop("include_findings must be true or false"))
        report.include_findings = changes["include_findings"]
    if "key_images" in changes or "removed" in changes:
        report.key_images = _key_images_arranged(report.key_images, changes.get("key_images", []),
                                                 changes.get("removed", []))


def _sections(value: Any, current: dict[str, str]) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) - {key for key, _ in SECTIONS}:
        raise ReportError(gettext_noop("sections are %(sections)s"),
                          sections=", ".join(key for key, _ in SECTIONS))
    return {**current, **{key: _text(text, SECTION_LIMIT, key) for key, text in value.items()}}


def _grid(value: Any) -> list[int]:
    if not isinstance(value, list) or tuple(value) not in GRIDS:
        raise ReportError(gettext_noop("a page grid is one of %(grids)s"),
                          grids=", ".join(f"{c}x{r}" for c, r in GRIDS))
    return list(value)


def _key_images_arranged(current: list[dict[str, Any]], wanted: Any, removed: Any) -> list[dict[str, Any]]:
    """``wanted``: [{id, caption}] in the new order, ``removed``: ids to drop. Images named in
    neither (kept from the viewer since the page loaded) follow in their own order."""
    by_id = {image["id"]: image for image in current}
    if not isinstance(wanted, list) or not all(isinstance(item, dict) for item in wanted):
        raise ReportError(gettext_noop("key_images must be a list of {id, caption}"))
    if not isinstance(removed, list) or not all(isinstance(key, str) for key in removed):
        raise ReportError(gettext_noop("removed must be a list of key image ids"))
    ids = [item.get("id") for item in wanted]
    if len(set(ids)) != len(ids) or any(key not in by_id for key in ids):
        raise ReportError(gettext_noop("key_images names an image this report does not hold"))
    named = [{**by_id[item["id"]], "caption": _text(item.get("caption", by_id[item["id"]]["caption"]),
                                                    CAPTION_LIMIT, "caption")} for item in wanted]
    rest = [image for image in current if image["id"] not in set(ids)]
    return [image for image in [*named, *rest] if image["id"] not in set(removed)]


def key_image_adjust(report: Report, *, author: str, image_id: str, adjust: dict[str, Any]) -> dict[str, Any]:
    """Change a key image's window (first layer), slice (steps along its normal), top layer's
    opacity or zoom; returns the image. The state stays one the viewer could have produced."""
    with _draft_locked(report, author) as current:
        images = {image["id"]: image for image in current.key_images}
        if image_id not in images:
            raise ReportError(gettext_noop("no such key image"))
        image = images[image_id]
        image["state"] = state_adjusted(image, adjust)
        current.key_images = list(images.values())
    return image


def _number(adjust: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = adjust.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ReportError(gettext_noop("%(name)s must be a number from %(low)g to %(high)g"),
                          name=name, low=low, high=high)
    return float(value)


def state_adjusted(image: dict[str, Any], adjust: Any) -> dict[str, Any]:
    if not isinstance(adjust, dict) or set(adjust) - {"window_center", "window_width", "slices",
                                                      "opacity", "zoom"}:
        raise ReportError(gettext_noop("adjust names window_center, window_width, slices, opacity or zoom"))
    state = json.loads(json.dumps(image["state"]))
    layers = state["layers"]
    center = _number(adjust, "window_center", -WINDOW_LIMIT, WINDOW_LIMIT)
    width = _number(adjust, "window_width", 1e-6, WINDOW_LIMIT)
    if center is not None:
        layers[0]["window_center"] = center
    if width is not None:
        layers[0]["window_width"] = width
    opacity = _number(adjust, "opacity", 0.0, 1.0)
    if opacity is not None and len(layers) > 1:
        layers[-1]["opacity"] = opacity
    zoom = _number(adjust, "zoom", 0.05, 50.0)
    if zoom is not None:
        state.setdefault("camera2d", {})["zoom"] = zoom
    slices = _number(adjust, "slices", -MAX_SLICE_STEPS, MAX_SLICE_STEPS)
    if slices and state.get("focus_mm") is not None:
        shift = [n * image["step_mm"] * round(slices) for n in image["normal"]]
        state["focus_mm"] = [a + b for a, b in zip(state["focus_mm"], shift, strict=True)]
    return state


# --- signing ----------------------------------------------------------------------------------


def report_content(report: Report) -> dict[str, Any]:
    """What the signature covers: the text, the key images' states and the layout."""
    return {"study": report.study.study_instance_uid, "version": report.version, "title": report.title,
            "sections": report.sections, "key_images": report.key_images, "grid": report.grid,
            "include_findings": report.include_findings, "findings": report.findings,
            "author": report.author}


def content_digest(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def report_signable(report: Report, *, signer: str) -> None:
    _owned_draft(report, signer)
    if not any(report.sections.get(key, "").strip() for key, _ in SECTIONS) and not report.key_images:
        raise ReportError(gettext_noop("an empty report cannot be signed"))


def report_mark_signed(report: Report, *, signer: str, signed_at: datetime, series_uid: str) -> Report:
    """Final: signer, time, digest of the content and the series of its DICOM copies, in one save.

    ``report`` is the draft as it was laid out; if it has changed since (an autosave in between),
    nothing is signed: the PDF would not be what the signature covers."""
    laid_out = content_digest(report_content(report))
    with _draft_locked(report, signer) as current:
        report_signable(current, signer=signer)
        if content_digest(report_content(current)) != laid_out:
            raise ReportError(gettext_noop("the report changed while it was being signed; sign it again"))
        current.findings = [asdict(line) for line in report_findings(current)]
        current.status = ReportStatus.SIGNED
        current.signed_by = signer
        current.signed_at = signed_at
        current.content_sha256 = content_digest(report_content(current))
        current.pdf_series_instance_uid = series_uid
    return current


# --- laying out -------------------------------------------------------------------------------


def letterhead() -> Letterhead:
    row = ReportLetterhead.objects.order_by("pk").first()
    if row is None:
        return Letterhead()
    return Letterhead(hospital=row.hospital, department=row.department, logo_png=bytes(row.logo_png),
                      footer=row.footer)


def header_fields_shown() -> tuple[str, ...]:
    row = ReportLetterhead.objects.order_by("pk").first()
    return tuple(row.header_fields) if row is not None and row.header_fields else HEADER_FIELDS


def status_line(report: Report) -> str:
    """Who signed and when, or that it is a draft, in the active language."""
    if report.status == ReportStatus.SIGNED and report.signed_at is not None:
        return gettext("Signed by %(signer)s on %(when)s UTC") % {
            "signer": report.signed_by, "when": f"{report.signed_at:%Y-%m-%d %H:%M}"}
    return gettext("DRAFT - not signed")


def _version_text(report: Report) -> str:
    if report.version == 1:
        return "1"
    # Translators: a report's version number, e.g. "2 (addendum to 1)".
    return gettext("%(version)s (addendum to %(previous)s)") % {"version": report.version,
                                                                "previous": report.version - 1}


def _header_values(report: Report, patient: str) -> dict[str, tuple[str, str]]:
    study = report.study
    return {
        "patient": (gettext("Patient"), patient),
        "study_date": (gettext("Study date"), study.study_date.isoformat() if study.study_date else ""),
        "study": (gettext("Study"), study.study_description),
        "author": (gettext("Author"), report.author),
        "version": (gettext("Version"), _version_text(report)),
    }


def finding_lines(study_uid: str) -> tuple[FindingLine, ...]:
    return tuple(FindingLine(label=row["label"], series=row["series"][-12:],
                             size=_size_text(row), values=_values_text(row))
                 for row in finding_rows(study_uid))


def _size_text(row: dict[str, Any]) -> str:
    return "" if row["size"] is None else f"{row['size']:.4g} {row['size_unit']}"


def _values_text(row: dict[str, Any]) -> str:
    parts = [f"{name} {row[key]:.4g}" for key, name in (("mean", "mean"), ("sd", "SD"), ("maximum", "max"),
                                                         ("peak", "peak"), ("total", "total"))
             if isinstance(row.get(key), int | float)]
    return f"{', '.join(parts)} {row['unit']}".strip()


def report_findings(report: Report) -> tuple[FindingLine, ...]:
    """The table as signed, or the study's live findings while a draft."""
    if not report.include_findings:
        return ()
    if report.findings is not None:
        return tuple(FindingLine(**line) for line in report.findings)
    return finding_lines(report.study.study_instance_uid)


def report_document(report: Report, *, patient: str, pictures: list[bytes],
                    exported_by: str = "", exported_at: datetime | None = None) -> ReportDocument:
    """The report as laid out: ``patient`` is what the reader may see (pseudonym or name),
    ``pictures`` the key images rendered (PNG) in the report's order; its headings and labels in the
    active language (the exporter's, or the record's at signing)."""
    header = _header_values(report, patient)
    grid = tuple(report.grid) if tuple(report.grid) in GRIDS else DEFAULT_GRID
    return ReportDocument(
        title=report.title,
        header_fields=tuple(header[name] for name in header_fields_shown() if name in header),
        sections=tuple((gettext(heading), report.sections.get(key, "")) for key, heading in SECTIONS),
        pictures=tuple(KeyPicture(png=png, caption=image["caption"])
                       for png, image in zip(pictures, report.key_images, strict=True)),
        grid=(grid[0], grid[1]),
        findings=report_findings(report),
        letterhead=letterhead(), status_line=status_line(report),
        exported_by=exported_by, exported_at=exported_at)
