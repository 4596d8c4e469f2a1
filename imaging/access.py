"""The one way views and consumers reach a study: through the policy.

``study_for_viewer`` returns the study with the series this principal may
see, or raises :class:`StudyNotFound` — the same error whether the study is
missing or forbidden, so a refusal tells nobody that a study exists.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import pydicom
from django.db.models import Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from gateway.policy import Permission, may
from imaging import storage
from imaging.models import Instance, Study, VolumeState
from imaging.objects import GRAYSCALE_PRESENTATION, presentation_facts
from imaging.pacs_retrieve import series_arriving

log = logging.getLogger(__name__)

PRESENTATIONS_READ_LIMIT = 50


class StudyNotFound(LookupError):
    """No such study, or not for this principal."""


@dataclass(frozen=True)
class ViewerSeries:
    uid: str
    modality: str
    description: str
    frame_of_reference_uid: str
    number: int | None = None
    images: int = 0
    refused: str = ""
    """Why the series cannot be shown (empty when it can)."""


@dataclass(frozen=True)
class ViewerStudy:
    study_uid: str
    patient_pseudonym: str
    series: tuple[ViewerSeries, ...]
    description: str = ""
    presentations: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Series UID -> the latest presentation state that references it (``presentation_facts``)."""

    @property
    def showable(self) -> tuple[ViewerSeries, ...]:
        return tuple(s for s in self.series if not s.refused)


def _withheld(principal: Any) -> bool:
    """Consultants never see series whose pixels may carry burned-in identity."""
    return getattr(principal, "is_capability", False) is True


def study_for_viewer(*, principal: Any, study_uid: str) -> ViewerStudy:
    if not may(principal, Permission.STUDY_VIEW, study_uid):
        raise StudyNotFound(study_uid)
    study = (Study.objects.filter(study_instance_uid=study_uid).select_related("patient")
             .first())
    if study is None:
        raise StudyNotFound(study_uid)
    Study.objects.filter(pk=study.pk).update(last_opened_at=timezone.now())
    arriving = series_arriving(study_uid=study_uid)
    series = (study.series.annotate(images=Sum("instances__number_of_frames"))
              .order_by("series_number", "id"))
    if _withheld(principal):
        series = series.filter(pixels_may_identify=False)
    return ViewerStudy(
        study_uid=study.study_instance_uid,
        patient_pseudonym=study.patient.pseudonym,
        description=study.study_description,
        series=tuple(ViewerSeries(s.series_instance_uid, s.modality, s.series_description,
                                  s.frame_of_reference_uid, s.series_number, int(s.images or 0),
                                  arriving.get(s.series_instance_uid) or _refusal(s)) for s in series),
        presentations=study_presentations(study=study),
    )


def study_presentations(*, study: Study) -> dict[str, dict[str, Any]]:
    """What the study's presentation states ask of each series; the latest one wins.

    A state that cannot be read is logged and left out: the images still open as stored.
    """
    rows = (Instance.objects.filter(series__study=study, sop_class_uid=GRAYSCALE_PRESENTATION)
            .order_by("-id").values_list("object_id", flat=True)[:PRESENTATIONS_READ_LIMIT])
    chosen: dict[str, dict[str, Any]] = {}
    for object_id in rows:
        try:
            ds = pydicom.dcmread(io.BytesIO(storage.object_get(object_id)))
            found = presentation_facts(ds)
        except Exception:
            log.warning("presentation state %s cannot be read", object_id, exc_info=True)
            continue
        for series_uid, facts in found.items():
            if series_uid not in chosen or facts["created"] > chosen[series_uid]["created"]:
                chosen[series_uid] = facts
    return chosen


def _refusal(series: Any) -> str:
    if series.volume_state != VolumeState.REFUSED:
        return ""
    return series.volume_reason or _("the images cannot be shown")


@dataclass(frozen=True)
class RelatedStudy:
    """Another study of the same patient that this principal may view (a prior, or a later one)."""

    study_uid: str
    date: str
    description: str
    modalities: tuple[str, ...]

    def wire(self) -> dict[str, Any]:
        return {"uid": self.study_uid, "date": self.date, "description": self.description,
                "modalities": list(self.modalities)}


def related_studies(*, principal: Any, study: ViewerStudy) -> list[RelatedStudy]:
    """The patient's other studies the policy lets this principal view, newest first (shifted dates)."""
    others = (Study.objects.filter(patient__pseudonym=study.patient_pseudonym)
              .exclude(study_instance_uid=study.study_uid)
              .prefetch_related("series").order_by("-study_date", "-study_time", "-id"))
    return [RelatedStudy(other.study_instance_uid, other.study_date.isoformat() if other.study_date else "",
                         other.study_description,
                         tuple(sorted({s.modality for s in other.series.all() if s.modality})))
            for other in others if may(principal, Permission.STUDY_VIEW, other.study_instance_uid)]
