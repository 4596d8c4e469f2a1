"""A segmentation arriving with a study opens as a label volume and lies over its CT as a coloured overlay.

The SEG is written by highdicom over the phantom's CT files (before ingest, with their
original UIDs): a ball at a planted lesion, computed here from the CT headers alone.
Both go through the import door; the label volume must hold exactly the ball's voxels,
each where the CT headers put it, and the fused frame must colour the lesion and leave
the rest grey.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from imaging.models import Series, VolumeState
from imaging.services import IngestBatch
from imaging.volumes import load_volume
from rendering.engine import planes
from rendering.engine.core import RenderEngine
from rendering.protocol import Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession
from rendering.volume import volume_describe
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


def _ct(phantom) -> tuple[list[pydicom.Dataset], dict]:
    out, truth = phantom
    patient = truth["patients"][0]
    files = sorted((out / patient["folder"] / "CT").glob("*.dcm"))
    slices = sorted((pydicom.dcmread(path) for path in files),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    return slices, patient


def _ball(slices: list[pydicom.Dataset], center: np.ndarray, radius: float) -> np.ndarray:
    """[slice, row, column] True where the voxel centre is within ``radius`` mm of ``center``."""
    row_mm, column_mm = (float(v) for v in slices[0].PixelSpacing)
    x0, y0 = (float(v) for v in slices[0].ImagePositionPatient[:2])
    xs = x0 + column_mm * np.arange(int(slices[0].Columns))
    ys = y0 + row_mm * np.arange(int(slices[0].Rows))
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius ** 2


def _segmentation(slices: list[pydicom.Dataset], mask: np.ndarray) -> pydicom.Dataset:
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type="MANUAL")
    return hd.seg.Segmentation(
        source_images=slices, pixel_array=mask.astype(np.uint8), segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=50,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Test",
        manufacturer_model_name="Test", software_versions="1", device_serial_number="1")


def _ingest(datasets) -> None:
    batch = IngestBatch(actor="cli:test", door="import")
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        batch.ingest(buffer.getvalue())
    batch.close()


def test_a_segmentation_is_a_label_volume_with_the_ball_s_voxels_where_the_ct_has_them(store, phantom):
    slices, patient = _ct(phantom)
    lesion = max(patient["lesions"], key=lambda item: item["radius_mm"])
    center, radius = np.asarray(lesion["center_mm"]), float(lesion["radius_mm"])
    mask = _ball(slices, center, radius)
    _ingest([*slices, _segmentation(slices, mask)])
    seg_series = Series.objects.get(modality="SEG")
    assert seg_series.volume_state == VolumeState.READY, seg_series.volume_reason
    labels = load_volume(seg_series)
    assert labels.labels and labels.display["segments"] == [{"number": 1, "label": "lesion"}]
    inside = np.argwhere(labels.voxels > 0)
    assert len(inside) == int(mask.sum())
    where = labels.index_to_patient(inside.astype(np.float64))
    assert np.linalg.norm(where - center, axis=1).max() <= radius + 1e-3

    ct_series = Series.objects.get(modality="CT")
    ct = load_volume(ct_series)
    infos = [SeriesInfo(s.series_instance_uid, s.modality, "", volume_describe(v), number=n)
             for n, (s, v) in enumerate(((ct_series, ct), (seg_series, labels)), start=1)]
    session = ViewerSession(study_uid=ct_series.study.study_instance_uid, series=infos)
    session.layout_apply("1x1")
    session.resize(0, 256, 256)
    session.focus[infos[0].frame_of_reference] = center
    session.apply_setting(Setting(view=0, layer=0, name="overlay", value=seg_series.series_instance_uid))
    state = session.state(0)
    assert [layer.series_id for layer in state.layers] == [ct_series.series_instance_uid,
                                                           seg_series.series_instance_uid]
    frame = RenderEngine().pixels(state, {v.series_id: v for v in (ct, labels)})
    x, y = (round(v) for v in planes.view_plane(state, ct).screen(center))
    lesion_pixel, corner = frame[y, x].astype(int), frame[5, 5].astype(int)
    assert lesion_pixel.max() - lesion_pixel.min() > 40, "the lesion is coloured"
    assert corner.max() - corner.min() == 0, "outside the segment the CT stays grey"
    session.apply_setting(Setting(view=0, layer=0, name="overlay", value=seg_series.series_instance_uid))
    assert len(session.state(0).layers) == 1
    with pytest.raises(SessionError, match="segmentation"):
        session.apply_setting(Setting(view=0, layer=0, name="overlay", value=ct_series.series_instance_uid))


def _structure_set(slices: list[pydicom.Dataset], squares: dict[int, tuple[int, int, int, int]],
                   roi: int = 3) -> pydicom.Dataset:
    """An RT structure set: on each slice index, a square around voxel columns i0..i1, rows j0..j1,
    its corners half a voxel outside the outermost voxel centres (no centre on the outline)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    first = slices[0]
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 60
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "IssuerOfPatientID"):
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "test", "20240101", "120000"
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = first.SeriesInstanceUID
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    name = Dataset()
    name.ROINumber, name.ReferencedFrameOfReferenceUID, name.ROIName = roi, first.FrameOfReferenceUID, "GTV"
    name.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([name])
    contours = []
    for k, (i0, i1, j0, j1) in squares.items():
        x0, y0, z = (float(v) for v in slices[k].ImagePositionPatient)
        corners = [(i0 - 0.5, j0 - 0.5), (i1 + 0.5, j0 - 0.5), (i1 + 0.5, j1 + 0.5), (i0 - 0.5, j1 + 0.5)]
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        contour.ContourData = [v for i, j in corners for v in (x0 + i * column_mm, y0 + j * row_mm, z)]
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = roi
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    return ds


def test_an_rt_structure_set_is_filled_on_the_grid_of_its_images(store, phantom):
    slices, _ = _ct(phantom)
    middle = len(slices) // 2
    squares = {middle - 1: (100, 119, 90, 104), middle: (95, 124, 85, 109), middle + 1: (100, 119, 90, 104)}
    _ingest([*slices, _structure_set(slices, squares)])
    structures = Series.objects.get(modality="RTSTRUCT")
    assert structures.volume_state == VolumeState.READY, structures.volume_reason
    labels = load_volume(structures)
    assert labels.labels and labels.display["segments"] == [{"number": 3, "label": "ROI 3"}]  # ROIName: Z
    expected = sum((i1 - i0 + 1) * (j1 - j0 + 1) for i0, i1, j0, j1 in squares.values())
    assert int(np.count_nonzero(labels.voxels == 3)) == expected
    row_mm, column_mm = (float(v) for v in slices[0].PixelSpacing)
    x0, y0 = (float(v) for v in slices[0].ImagePositionPatient[:2])
    where = labels.index_to_patient(np.argwhere(labels.voxels == 3).astype(np.float64))
    i0, i1, j0, j1 = squares[middle]
    assert where[:, 0].min() >= x0 + i0 * column_mm - 1e-3 and where[:, 0].max() <= x0 + i1 * column_mm + 1e-3
    assert where[:, 1].min() >= y0 + j0 * row_mm - 1e-3 and where[:, 1].max() <= y0 + j1 * row_mm + 1e-3
    zs = sorted({round(float(v), 3) for v in where[:, 2]})
    assert zs == [round(float(slices[k].ImagePositionPatient[2]), 3) for k in sorted(squares)]
