"""Findings stored in the study as DICOM: an SR Measurement Report (TID 1500) and a SEG per VOI.

The phantom PET/CT goes through the import door; findings are measured by the
registered operations and kept as a reader keeps them. The objects written must
pass dicom3tools' ``dciodvfy`` and dcmtk's ``dsrdump``, read back with highdicom
to the findings' own numbers, and their segmentations must hold the planted
lesion's volume (4/3 pi r^3, from the phantom's truth file, not the code).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from imaging import storage
from imaging.findings import Kept, finding_keep, findings_of
from imaging.findings_dicom import FindingsExportError, findings_dicom_store, region_request, region_series
from imaging.models import Instance, Series, VolumeState
from imaging.services import IngestBatch
from imaging.volumes import load_volume
from rendering.engine import planes
from rendering.operations import operation_named
from rendering.viewstate import viewstate_from_dict
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

VIEWPORT = 512


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: make sysdeps installs dicom3tools and dcmtk")
    return path


@pytest.fixture
def imported(store, phantom):
    out, truth = phantom
    patient = truth["patients"][0]
    batch = IngestBatch(actor="cli:test", door="import")
    for path in sorted((out / patient["folder"]).rglob("*.dcm")):
        batch.ingest(path.read_bytes())
    batch.close()
    ct = Series.objects.get(modality="CT")
    pet = Series.objects.get(modality="PT")
    volumes = {s.series_instance_uid: load_volume(s) for s in (ct, pet)}
    return ct, pet, volumes, patient


def _fused(ct, pet, focus):
    return viewstate_from_dict({
        "view": "axial", "width": VIEWPORT, "height": VIEWPORT, "quality": "still", "focus_mm": focus,
        "layers": [{"series_id": ct.series_instance_uid, "window_preset": "abdomen"},
                   {"series_id": pet.series_instance_uid, "window_preset": "pet_suv_0_10", "opacity": 0.5}]})


def _keep(state, volumes, tool, operation, points, label, **arguments):
    plane = planes.view_plane(state, volumes[state.layers[0].series_id])
    plane_wire = {**plane.as_dict(), "width": VIEWPORT, "height": VIEWPORT}
    screen = [list(plane.screen(np.asarray(p))) for p in points]
    run_arguments = dict(arguments)
    if tool in ("sphere", "threshold", "grow"):
        run_arguments["center_mm"] = list(points[0])
    elif tool == "line":
        run_arguments["points"] = screen
    else:
        run_arguments.update(shape=tool, points=screen)
    result = operation_named(operation).run(None, state, volumes, run_arguments)
    wire = operation_named(operation).to_wire(result)
    kept = Kept(state.layers[0].series_id, tool, screen, plane_wire, wire, arguments)
    return finding_keep(study_uid=Series.objects.get(series_instance_uid=state.layers[0].series_id)
                        .study.study_instance_uid, kept=kept, label=label, author="dr.test",
                        by_consultant=False)


def _regions(findings, volumes, ct, pet):
    regions = {}
    for finding in findings:
        request = region_request(finding)
        if request is None:
            continue
        series = region_series(finding)
        single = viewstate_from_dict({"view": "axial", "layers": [{"series_id": series, "window_center": 0,
                                                                    "window_width": 1}]})
        operation = operation_named("region_mask")
        mask = operation.run(None, single, volumes, request)
        regions[finding.id] = operation.from_wire(operation.to_wire(mask))
    return regions


def _stored(series_uid: str, tmp_path: Path) -> list[Path]:
    paths = []
    for instance in Instance.objects.filter(series__series_instance_uid=series_uid).order_by("id"):
        path = tmp_path / f"{instance.sop_instance_uid}.dcm"
        path.write_bytes(storage.object_get(instance.object_id))
        paths.append(path)
    return paths


def _valid(path: Path) -> str:
    run = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    report = run.stdout + run.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report
    return report


def test_findings_become_an_sr_and_segs_that_validate_and_read_back(imported, tmp_path):
    ct, pet, volumes, patient = imported
    lesion = next(item for item in patient["lesions"] if item["organ"] == "lung" and item["radius_mm"] >= 10)
    center, radius = np.asarray(lesion["center_mm"]), float(lesion["radius_mm"])
    fused = _fused(ct, pet, list(center))
    _keep(fused, volumes, "sphere", "measure_sphere", [center], "lung sphere", radius_mm=radius)
    _keep(fused, volumes, "threshold", "measure_threshold", [center], "lung 41%",
          box_mm=radius + 10, mode="fraction", value=0.41)
    _keep(fused, volumes, "grow", "measure_grow", [center], "lung grown", box_mm=radius + 10, mode="range",
          value=0.5)
    corner, across = np.array([radius, radius, 0.0]), np.array([radius, 0.0, 0.0])
    _keep(fused, volumes, "ellipse", "measure_area", [center - corner, center + corner], "lung ellipse")
    _keep(fused, volumes, "line", "measure_line", [center - across, center + across], "width")
    findings = findings_of(ct.study.study_instance_uid)
    stored = findings_dicom_store(study_uid=ct.study.study_instance_uid,
                                  regions=_regions(findings, volumes, ct, pet), author="dr.test")
    assert (stored.findings, stored.segmentations) == (5, 3)

    sr_series = Series.objects.get(series_instance_uid=stored.sr_series)
    assert sr_series.volume_state == VolumeState.REFUSED
    assert sr_series.volume_reason.startswith("not an image")
    (sr_path,) = _stored(stored.sr_series, tmp_path)
    assert "Comprehensive3DSR" in _valid(sr_path)
    dump = subprocess.run([_tool("dsrdump"), str(sr_path)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "lung 41%" in dump.stdout

    report = hd.sr.srread(sr_path)
    by_label = {f.label: f for f in findings}
    sphere = by_label["lung sphere"]
    suv_layer = next(layer for layer in sphere.result if layer["unit"] == "SUV")
    volumetric = report.content.get_volumetric_roi_measurement_groups()
    sphere_groups = [g for g in volumetric if g.tracking_identifier.endswith("lung sphere")]
    assert len(sphere_groups) == 2  # its CT and its PET layer
    values = {(m.name.meaning, m.derivation.meaning if m.derivation else "", m.unit.value): m.value
              for group in sphere_groups for m in group.get_measurements()}
    suv = "Standardized Uptake Value"
    assert values[(suv, "Maximum", "g/ml{SUVbw}")] == pytest.approx(suv_layer["maximum"])
    assert values[(suv, "Peak Value Within ROI", "g/ml{SUVbw}")] == pytest.approx(suv_layer["peak"])
    assert values[(suv, "Maximum", "g/ml{SUVbw}")] == pytest.approx(lesion["suv_max"], rel=0.01)
    assert any(unit == "[hnsf'U]" for _, _, unit in values)
    planar = report.content.get_planar_roi_measurement_groups()
    assert {g.tracking_identifier.split(": ", 1)[1] for g in planar} == {"lung ellipse"}

    pixel_mm3 = float(np.prod(volumes[pet.series_instance_uid].spacing))
    segs = {hd.seg.segread(path).get_segment_description(1).segment_label: hd.seg.segread(path)
            for path in _stored(stored.seg_series, tmp_path)}
    for path in _stored(stored.seg_series, tmp_path):
        assert "Segmentation" in _valid(path)
    planted_ml = 4 / 3 * math.pi * radius ** 3 / 1000
    sphere_seg = segs["lung sphere"]
    assert sphere_seg.SegmentationType == "FRACTIONAL"
    occupancy = sphere_seg.pixel_array.astype(np.float64) / float(sphere_seg.MaximumFractionalValue)
    assert occupancy.sum() * pixel_mm3 / 1000 == pytest.approx(planted_ml, rel=0.05)
    threshold_seg = segs["lung 41%"]
    assert threshold_seg.SegmentationType == "BINARY"
    voxels = int(np.count_nonzero(threshold_seg.pixel_array))
    assert voxels == by_label["lung 41%"].result["voxels"]
    grown_seg = segs["lung grown"]
    grown = by_label["lung grown"].result
    assert grown_seg.SegmentationType == "BINARY"
    assert int(np.count_nonzero(grown_seg.pixel_array)) == grown["voxels"]
    description = grown_seg.get_segment_description(1)
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    assert description.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeValue == "123101"
    grown_groups = [g for g in volumetric if g.tracking_identifier.endswith("lung grown")]
    grown_values = {(m.name.meaning, m.derivation.meaning if m.derivation else ""): m.value
                    for group in grown_groups for m in group.get_measurements()}
    assert grown_values[("Metabolic Volume", "")] == pytest.approx(grown["volume_ml"])
    suv_max = grown_values[("Standardized Uptake Value", "Maximum")]
    assert suv_max == pytest.approx(lesion["suv_max"], rel=0.01)
    for seg in (sphere_seg, threshold_seg, grown_seg):
        assert np.linalg.norm(_centroid_mm(seg) - center) < 4.0  # within a PET voxel of the lesion
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for frame in threshold_seg.PerFrameFunctionalGroupsSequence
                  for item in frame.DerivationImageSequence[0].SourceImageSequence}
    pet_instances = set(Instance.objects.filter(series=pet).values_list("sop_instance_uid", flat=True))
    assert referenced and referenced <= pet_instances


def _centroid_mm(seg) -> np.ndarray:
    """Weighted centre of a SEG's voxels in patient mm, from its own frame positions and pixel measures."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    row_mm, column_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)).astype(np.float64)
    total, weighted = 0.0, np.zeros(3)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        corner = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        rows, columns = np.nonzero(frame)
        weights = frame[rows, columns]
        points = (corner + np.outer(columns * column_mm, orientation[:3])
                  + np.outer(rows * row_mm, orientation[3:]))
        weighted += weights @ points
        total += weights.sum()
    return weighted / total


def test_nothing_is_stored_when_a_region_is_missing(imported):
    ct, pet, volumes, patient = imported
    lesion = patient["lesions"][0]
    center = np.asarray(lesion["center_mm"])
    _keep(_fused(ct, pet, list(center)), volumes, "sphere", "measure_sphere", [center], "s",
          radius_mm=lesion["radius_mm"])
    before = Series.objects.count()
    with pytest.raises(FindingsExportError, match="regions"):
        findings_dicom_store(study_uid=ct.study.study_instance_uid, regions={}, author="dr.test")
    assert Series.objects.count() == before


def test_a_study_without_findings_is_refused(imported):
    ct = imported[0]
    with pytest.raises(FindingsExportError, match="no kept findings"):
        findings_dicom_store(study_uid=ct.study.study_instance_uid, regions={}, author="dr.test")
