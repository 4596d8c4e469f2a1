"""Registrations as DICOM in the study: an accepted one written as a Spatial Registration object,
and the REG objects that came with the studies read back as links between frames of reference
(and series-level links, for a REG that moves one series within its frame).

The REG is derived from the clinical zone (pseudonymised patient, replaced UIDs), so its frames
of reference are those of the stored series and it is stored beside them without passing the
ingest door (:func:`imaging.findings_dicom.derived_series_store`). An incoming REG was
de-identified at ingest with the same UID map as the images it registers, so its frames match.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
from django.db import transaction
from pydicom.uid import generate_uid

from gateway.i18n import gettext_noop
from imaging import storage
from imaging.findings_dicom import derived_series_store
from imaging.models import Instance, Registration, Study
from imaging.registration_dicom import (
    MatrixType,
    RegistrationDicomError,
    registration_read,
    spatial_registration,
)
from imaging.registrations import FrameLink, RegistrationStoreError

log = logging.getLogger(__name__)

CLINICAL = "default"
REG_SERIES_NUMBER = 9920
KINDS: dict[str, MatrixType] = {"rigid": "RIGID", "landmarks": "RIGID", "manual": "RIGID",
                                "affine": "AFFINE"}


def _headers(series_uid: str) -> list[pydicom.Dataset]:
    object_ids = list(Instance.objects.filter(series__series_instance_uid=series_uid).order_by("id")
                      .values_list("object_id", flat=True))
    if not object_ids:
        raise RegistrationStoreError(gettext_noop("series %(series)s has no stored images"),
                                     series=series_uid)
    return [pydicom.dcmread(io.BytesIO(storage.object_get(object_id)), stop_before_pixels=True)
            for object_id in object_ids]


def _kind(registration: Registration) -> MatrixType:
    matrix = np.asarray(registration.matrix, dtype=np.float64).reshape(4, 4)
    rigid = np.allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3), atol=1e-6)
    return KINDS.get(registration.method, "RIGID") if rigid else "AFFINE"


def registration_dicom_store(registration: Registration, *, author: str) -> str:
    """Write the accepted registration into the fixed series' study as a REG; its series UID."""
    if registration.matrix is None:
        raise RegistrationStoreError(gettext_noop("this registration has no transform"))
    fixed, moving = _headers(registration.fixed_series), _headers(registration.moving_series)
    reg = spatial_registration(
        fixed=fixed, moving=moving, matrix=registration.matrix, kind=_kind(registration),
        description=f"{registration.method} registration of {moving[0].get('Modality', '')} onto "
                    f"{fixed[0].get('Modality', '')}", author=author,
        series_instance_uid=generate_uid(), series_number=REG_SERIES_NUMBER)
    written: list[str] = []
    try:
        with transaction.atomic(using=CLINICAL):
            return derived_series_store(Study.objects.get(pk=registration.study_id), [reg], modality="REG",
                                        description="Registration", written=written)
    except BaseException:
        for object_id in written:
            storage.object_delete(object_id)
        raise


def incoming_links(study_uids: list[str]) -> list[FrameLink]:
    """Every rigid or affine registration that came with these studies as a REG object (ours, once
    accepted, are links already: only other systems' are read here)."""
    ours = set(Registration.objects.filter(study__study_instance_uid__in=study_uids)
               .exclude(reg_series="").values_list("reg_series", flat=True))
    links: list[FrameLink] = []
    for instance in (Instance.objects.filter(series__study__study_instance_uid__in=study_uids,
                                             series__modality="REG")
                     .exclude(series__series_instance_uid__in=ours)):
        try:
            facts = registration_read(pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id))))
        except (RegistrationDicomError, ValueError, OSError) as error:
            log.info("registration %s is not used: %s", instance.sop_instance_uid, error)
            continue
        links.extend(FrameLink(frame.frame_of_reference_uid, facts.frame_of_reference_uid,
                               np.asarray(frame.matrix, dtype=np.float64)) for frame in facts.frames)
        links.extend(FrameLink(item.frame_of_reference_uid, item.frame_of_reference_uid,
                               np.asarray(item.matrix, dtype=np.float64), series=series)
                     for item in facts.within for series in item.series_instance_uids)
    return links
