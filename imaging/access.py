"""The one way views and consumers reach a study: through the policy.

``study_for_viewer`` returns the study with the series this principal may
see, or raises :class:`StudyNotFound` — the same error whether the study is
missing or forbidden, so a refusal tells nobody that a study exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Sum

from gateway.policy import Permission, may
from imaging.models import Study, VolumeState


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
                                  _refusal(s)) for s in series),
    )


def _refusal(series: Any) -> str:
    if series.volume_state != VolumeState.REFUSED:
        return ""
    return series.volume_reason or "the images cannot be shown"
