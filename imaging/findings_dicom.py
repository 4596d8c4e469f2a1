"""The findings table as DICOM in the study: an SR Measurement Report (TID 1500) and a SEG per VOI.

Written with highdicom, the maintained implementation of these templates and IODs
(its content items, codes and module rules are what ``dciodvfy`` checks; writing
them by hand would re-implement it). Every number comes from the finding as the
render workers computed it; the SEG of a VOI is its region on the measured
series' grid, asked of the workers again (``region_mask``): a sphere as each
voxel's share of it (fractional, occupancy), a threshold VOI or a VOI grown
from a seed as its voxels (binary; SEMIAUTOMATIC, identified as histogram
analysis and neighbourhood analysis, i.e. region growing, respectively). The
volume of a threshold VOI, and of a grown VOI on SUV, is coded as MTV.

What is coded: HU as Attenuation Coefficient, SUV as Standardized Uptake Value
in the units of the method the reading used (SUVbw, SUVlbm James or
Janmahasatian, SUVbsa, SUVibw, with the method's code); area, volume, length,
MTV and TLG. A layer in another unit keeps its geometric measurements only (its
statistics stay in the XLSX/CSV export). The objects
are derived from the clinical zone, so they carry the pseudonymised patient and
replaced UIDs of the images they reference and are stored without passing the
ingest door (which would replace their UIDs a second time and break the references).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
from django.db import transaction
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.i18n import gettext_noop
from imaging import storage
from imaging.findings import findings_of, result_layers
from imaging.models import Finding, Instance, Series, Study, VolumeState
from imaging.objects import objects_series_reason
from imaging.pacs_send import results_queue
from rendering.said import SaidError

if TYPE_CHECKING:
    from rendering.measure import RegionMask

CLINICAL = "default"
MANUFACTURER = "Fusion Gateway"
VOI_TOOLS = frozenset({"sphere", "threshold", "grow"})
ALGORITHMS = {"threshold": ("Fusion Gateway threshold VOI", codes.cid7162.HistogramAnalysis),
              "grow": ("Fusion Gateway region growing VOI", codes.cid7162.NeighborhoodAnalysis)}
"""The algorithm that drew each semi-automatic VOI (CID 7162 family); a sphere is drawn by hand."""
AREA_GRAPHIC = {"ellipse": "ELLIPSE", "rectangle": "POLYGON", "polygon": "POLYGON"}
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
GRAM = hd.sr.CodedConcept("g", "UCUM", "gram")
SQUARE_CENTIMETRE = hd.sr.CodedConcept("cm2", "UCUM", "square centimeter")
SUV_CODES: dict[str, tuple[Any, Any, Any]] = {
    "bw": (codes.UCUM.StandardizedUptakeValueBodyWeight, codes.DCM.SUVBodyWeightCalculationMethod, GRAM),
    "lbm_james": (codes.UCUM.StandardizedUptakeValueLeanBodyMassJames,
                  codes.DCM.SUVLeanBodyMassCalculationMethod, GRAM),
    "lbm_janma": (codes.UCUM.StandardizedUptakeValueLeanBodyMassJanma,
                  codes.DCM.SUVLeanBodyMassCalculationJanmahasatianMethod, GRAM),
    "bsa": (codes.UCUM.StandardizedUptakeValueBodySurfaceArea,
            codes.DCM.SUVBodySurfaceAreaCalculationMethod, SQUARE_CENTIMETRE),
    "ibw": (codes.UCUM.StandardizedUptakeValueIdealBodyWeight,
            codes.DCM.SUVIdealBodyWeightCalculationMethod, GRAM),
}
"""Per SUV method: the value's UCUM unit, the calculation method's code, and TLG's unit."""
STATISTICS = (("mean", codes.SCT.Mean), ("sd", codes.SCT.StandardDeviation), ("minimum", codes.SCT.Minimum),
              ("maximum", codes.SCT.Maximum), ("median", codes.SCT.Median),
              ("peak", codes.DCM.PeakValueWithinROI))


class FindingsExportError(SaidError, ValueError):
    """The findings cannot be written as DICOM (nothing is stored)."""


@dataclass(frozen=True)
class StoredFindings:
    """What was added to the study."""

    sr_series: str
    seg_series: str
    findings: int
    segmentations: int

    def wire(self) -> dict[str, Any]:
        return {"sr_series": self.sr_series, "seg_series": self.seg_series,
                "findings": self.findings, "segmentations": self.segmentations}


def region_request(finding: Finding) -> dict[str, Any] | None:
    """The ``region_mask`` arguments that give a VOI finding's region (None: not a VOI)."""
    if finding.tool not in VOI_TOOLS or not finding.points or not finding.plane:
        return None
    center = plane_point(finding.plane, finding.points[0])
    return {"tool": finding.tool, "center_mm": [float(v) for v in center], **finding.arguments}


def region_series(finding: Finding) -> str:
    """The series a VOI's segmentation lies on: the SUV layer's where there is one."""
    layers = result_layers(finding.result)
    suv = [layer["series_id"] for layer in layers if layer.get("unit") == "SUV"]
    return suv[0] if suv else str(layers[0].get("series_id") or finding.series_instance_uid)


def plane_point(plane: dict[str, Any], point: list[float]) -> np.ndarray:
    """Patient mm of a viewport point on the plane it was drawn on."""
    step = float(plane["mm_per_pixel"])
    return (np.asarray(plane["center_mm"], dtype=np.float64)
            + (float(point[0]) - plane["width"] / 2) * step * np.asarray(plane["right"], dtype=np.float64)
            + (float(point[1]) - plane["height"] / 2) * step * np.asarray(plane["down"], dtype=np.float64))


def _first_header(series_uid: str) -> Dataset:
    """One stored instance of the series, without pixel data: its frame of reference and patient."""
    object_id = (Instance.objects.filter(series__series_instance_uid=series_uid).order_by("id")
                 .values_list("object_id", flat=True).first())
    if object_id is None:
        raise FindingsExportError(gettext_noop("series %(series)s has no stored images"), series=series_uid)
    return pydicom.dcmread(io.BytesIO(storage.object_get(object_id)), stop_before_pixels=True)


def series_headers(series_uid: str) -> list[Dataset]:
    """The series' stored instances without pixel data, ordered along their slice normal."""
    datasets = [pydicom.dcmread(io.BytesIO(storage.object_get(object_id)), stop_before_pixels=True)
                for object_id in Instance.objects.filter(series__series_instance_uid=series_uid)
                .order_by("id").values_list("object_id", flat=True)]
    if not datasets:
        raise FindingsExportError(gettext_noop("series %(series)s has no stored images"), series=series_uid)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise FindingsExportError(gettext_noop("a segmentation of multi-frame images is not written yet"))
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    along = [float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal) for ds in datasets]
    gaps = np.diff(np.sort(along))
    if len(gaps) and (gaps.min() < 1e-3 or np.any(np.abs(gaps - np.median(gaps)) > 0.1 * np.median(gaps))):
        raise FindingsExportError(gettext_noop("the series' slices are not evenly spaced (dynamic or "
                                               "resampled); "
                                               "its VOIs are not written as SEG"))
    return [datasets[n] for n in np.argsort(along)]


def _segmentation(finding: Finding, region: RegionMask, sources: list[Dataset], series_uid: str,
                  number: int) -> Dataset:
    values = region.array()
    first, count = region.offset[0], region.shape[0]
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    frames = np.zeros((count, rows, columns), dtype=np.float32 if region.fractional else np.uint8)
    j, i = region.offset[1], region.offset[2]
    block = values.astype(np.float32) / 255.0 if region.fractional else (values > 0).astype(np.uint8)
    frames[:, j:j + region.shape[1], i:i + region.shape[2]] = block
    manual = finding.tool not in ALGORITHMS
    algorithm = None if manual else hd.AlgorithmIdentificationSequence(
        name=ALGORITHMS[finding.tool][0], version="1", family=ALGORITHMS[finding.tool][1])
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=finding.label[:64] or finding.tool,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type="MANUAL" if manual else "SEMIAUTOMATIC", algorithm_identification=algorithm,
        tracking_uid=_tracking_uid(finding), tracking_id=_tracking_id(finding))
    return hd.seg.Segmentation(
        source_images=sources[first:first + count], pixel_array=frames,
        segmentation_type="FRACTIONAL" if region.fractional else "BINARY",
        segment_descriptions=[description], series_instance_uid=series_uid, series_number=9901,
        sop_instance_uid=generate_uid(), instance_number=number, manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions="1", device_serial_number="0",
        content_label="FINDING", content_description=f"finding {finding.id}",
        fractional_type="OCCUPANCY")  # read only for a FRACTIONAL segmentation


def _tracking_uid(finding: Finding) -> str:
    """The same UID for a finding in every SR written of it (a UUID-derived 2.25 UID, PS3.5 B.2)."""
    digest = hashlib.sha256(f"{finding.study.study_instance_uid}/finding/{finding.id}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _tracking_id(finding: Finding) -> str:
    return f"{finding.id}: {finding.label}"[:64]


def _measurements(finding: Finding, layer: dict[str, Any]) -> list[hd.sr.Measurement]:
    out = []
    if "volume_ml" in layer:
        metabolic = finding.tool == "threshold" or (finding.tool == "grow" and layer.get("unit") == "SUV")
        name = codes.DCM.MetabolicVolume if metabolic else codes.SCT.Volume
        out.append(hd.sr.Measurement(name=name, value=float(layer["volume_ml"]), unit=MILLILITRE))
    if "area_mm2" in layer:
        out.append(hd.sr.Measurement(name=codes.SCT.Area, value=float(layer["area_mm2"]),
                                     unit=codes.UCUM.SquareMillimeter))
    unit_name = str(layer.get("unit", ""))
    if unit_name not in ("HU", "SUV"):
        return out
    name, unit, method, total_unit = codes.DCM.AttenuationCoefficient, codes.UCUM.HounsfieldUnit, None, None
    if unit_name == "SUV":
        name = codes.DCM.StandardizedUptakeValue
        unit, method, total_unit = SUV_CODES[str(finding.arguments.get("suv_method") or "bw")]
    for key, derivation in STATISTICS:
        if layer.get(key) is not None:
            out.append(hd.sr.Measurement(name=name, value=float(layer[key]), unit=unit,
                                         derivation=derivation, method=method))
    if total_unit is not None and layer.get("total") is not None:
        out.append(hd.sr.Measurement(name=codes.DCM.TotalLesionGlycolysis, value=float(layer["total"]),
                                     unit=total_unit))
    return out


def _region_3d(finding: Finding, frame_of_reference: str) -> hd.sr.ImageRegion3D:
    points = np.array([plane_point(finding.plane or {}, p) for p in finding.points])
    graphic = AREA_GRAPHIC[finding.tool]
    if finding.tool == "ellipse":
        (x0, y0), (x1, y1) = finding.points[0], finding.points[1]
        centre, rx, ry = ((x0 + x1) / 2, (y0 + y1) / 2), abs(x1 - x0) / 2, abs(y1 - y0) / 2
        axes = [(centre[0] - rx, centre[1]), (centre[0] + rx, centre[1]),
                (centre[0], centre[1] - ry), (centre[0], centre[1] + ry)]
        if ry > rx:
            axes = axes[2:] + axes[:2]
        points = np.array([plane_point(finding.plane or {}, list(p)) for p in axes])
    elif finding.tool == "rectangle":
        (x0, y0), (x1, y1) = finding.points[0], finding.points[1]
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        points = np.array([plane_point(finding.plane or {}, list(p)) for p in corners])
    else:
        points = np.vstack([points, points[:1]])
    return hd.sr.ImageRegion3D(graphic_type=graphic, graphic_data=points,
                               frame_of_reference_uid=frame_of_reference)


def _groups(finding: Finding, frames_of_reference: dict[str, str],
            segmentations: dict[int, Dataset]) -> list[Any]:
    tracking = hd.sr.TrackingIdentifier(uid=_tracking_uid(finding), identifier=_tracking_id(finding))
    groups: list[Any] = []
    for layer in result_layers(finding.result):
        series = str(layer.get("series_id") or finding.series_instance_uid)
        measurements = _measurements(finding, layer)
        if finding.tool in VOI_TOOLS:
            seg = segmentations[finding.id]
            reference = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
                source_series=hd.sr.SourceSeriesForSegmentation(region_series(finding)))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_segment=reference, measurements=measurements,
                finding_type=codes.SCT.Lesion))
        elif finding.tool in AREA_GRAPHIC:
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, measurements=measurements, finding_type=codes.SCT.Lesion,
                referenced_region=_region_3d(finding, frames_of_reference[series])))
    if finding.tool == "line" and isinstance(finding.result, dict):
        length = hd.sr.Measurement(
            name=codes.SCT.Length, value=float(finding.result["length_mm"]), unit=codes.UCUM.Millimeter,
            referenced_coordinates=[hd.sr.CoordinatesForMeasurement3D(
                graphic_type="POLYLINE",
                frame_of_reference_uid=frames_of_reference[finding.series_instance_uid],
                graphic_data=np.array([finding.result["start_mm"], finding.result["end_mm"]]))])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, measurements=[length], finding_type=codes.SCT.Lesion))
    return groups


def findings_dicom_build(*, study: Study, findings: list[Finding], regions: dict[int, RegionMask],
                         author: str) -> tuple[list[Dataset], Dataset]:
    """(one SEG per VOI finding, the SR) for ``findings``, without storing anything."""
    if not findings:
        raise FindingsExportError(gettext_noop("the study has no kept findings"))
    measured = {f.series_instance_uid for f in findings}
    measured |= {str(layer["series_id"]) for f in findings for layer in result_layers(f.result)
                 if layer.get("series_id")}
    headers = {uid: series_headers(uid) for uid in sorted({r.series_id for r in regions.values()})}
    firsts = {uid: headers[uid][0] if uid in headers else _first_header(uid)
              for uid in sorted(measured | set(headers))}
    frames_of_reference = {uid: str(first.get("FrameOfReferenceUID", "")) for uid, first in firsts.items()}
    seg_series = generate_uid()
    segmentations = {
        finding.id: _segmentation(finding, regions[finding.id], headers[regions[finding.id].series_id],
                                  seg_series, number)
        for number, finding in enumerate((f for f in findings if f.id in regions), start=1)}
    groups = [group for finding in findings for group in _groups(finding, frames_of_reference, segmentations)]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=f"{author[:63] or 'reader'}^"))  # a user name is one component (PS3.5 6.2)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    evidence = list(firsts.values()) + list(segmentations.values())
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=generate_uid(), series_number=9900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True)
    return list(segmentations.values()), sr


def _encoded(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = ds.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def derived_series_store(study: Study, datasets: Iterable[Dataset], *, modality: str, description: str,
                         written: list[str]) -> str:
    """Write ``datasets`` (one series) to the store and the catalogue; returns its Series UID.

    Each object written is added to ``written``, so a failure can take them back. The objects
    are queued for the PACS peers that take results (:mod:`imaging.pacs_send`)."""
    datasets = list(datasets)
    uid = str(datasets[0].SeriesInstanceUID)
    blobs = [(ds, _encoded(ds)) for ds in datasets]
    for ds, blob in blobs:
        storage.object_put(_object_id(ds), blob)
        written.append(_object_id(ds))
    series = Series.objects.create(
        study=study, series_instance_uid=uid, modality=modality, series_description=description,
        series_number=int(datasets[0].SeriesNumber),
        frame_of_reference_uid=str(datasets[0].get("FrameOfReferenceUID", ""))[:64],
        volume_state=VolumeState.REFUSED,
        volume_reason=objects_series_reason([str(ds.SOPClassUID) for ds in datasets]) or "")
    Instance.objects.bulk_create(
        Instance(series=series, sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                 transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                 instance_number=int(ds.InstanceNumber),
                 number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
                 object_id=_object_id(ds), size=len(blob))
        for ds, blob in blobs)
    sent_back = [str(ds.SOPInstanceUID) for ds in datasets]
    results_queue(study=study, modality=modality, sop_instance_uids=sent_back)
    return uid


def _object_id(ds: Dataset) -> str:
    from imaging.services import object_id_for

    return object_id_for(str(ds.SOPInstanceUID))


def findings_dicom_store(*, study_uid: str, regions: dict[int, RegionMask], author: str) -> StoredFindings:
    """Build the study's SR and SEGs from its live findings and add them to the study, all or nothing.

    ``regions`` holds each VOI finding's region (by finding id) as the workers computed it.
    """
    study = Study.objects.get(study_instance_uid=study_uid)
    findings = [f for f in findings_of(study_uid) if f.study_id == study.pk]
    missing = [f.id for f in findings if f.tool in VOI_TOOLS and f.id not in regions]
    if missing:
        raise FindingsExportError(gettext_noop("the regions of findings %(findings)s are missing"),
                                  findings=str(missing))
    segmentations, sr = findings_dicom_build(study=study, findings=findings, regions=regions, author=author)
    written: list[str] = []
    try:
        with transaction.atomic(using=CLINICAL):
            seg_series = (derived_series_store(study, segmentations, modality="SEG",
                                               description="Findings (SEG)", written=written)
                          if segmentations else "")
            sr_series = derived_series_store(study, [sr], modality="SR", description="Findings (SR TID 1500)",
                                             written=written)
    except BaseException:
        for object_id in written:
            storage.object_delete(object_id)
        raise
    return StoredFindings(sr_series, seg_series, len(findings), len(segmentations))
