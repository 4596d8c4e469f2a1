"""Structured reports from other systems: accepted, cleaned (Clean Structured Content), and read.

The incoming report is what another workstation would send about the phantom PET/CT:
a TID 1500 Measurement Report built with highdicom on the original (identified) files —
a planar ROI drawn as an image-pixel polygon on one CT slice — plus a group written by
hand as a loosely conforming vendor would (an SUVbw maximum at a SCOORD3D point), the
subject's name in a subject-context item, a narrative naming the patient, and a
tracking identifier holding the patient's family name. The patient coordinates a viewer
must draw are worked out here with SimpleITK from the original file, not by the code.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from imaging import storage
from imaging.documents import documents_of, drawn_shape
from imaging.findings_dicom import MANUFACTURER
from imaging.models import Instance, Series, Study, VolumeState
from imaging.services import IngestBatch, Status
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

SUV_MAX = 7.31
AREA_MM2 = 123.4
POLYGON_PX = [(100.5, 120.5), (140.5, 120.5), (140.5, 150.5), (100.5, 150.5)]  # pixel centres
OBSERVER = "Okonkwo^Adaeze"
NARRATIVE = "Compared with the study of {name} from last spring, the liver lesion has grown markedly."


def _code(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = scheme, value, meaning
    return item


def _item(
    value_type: str, concept: tuple[str, str, str], relationship: str = "CONTAINS", **values
) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([_code(*concept)])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _vendor_group(frame_of_reference: str, point_mm: list[float]) -> Dataset:
    """An SUVbw maximum at a point, as a vendor that only loosely follows TID 1500 writes it."""
    measured = Dataset()
    measured.NumericValue = str(SUV_MAX)
    measured.MeasurementUnitsCodeSequence = Sequence(
        [_code("UCUM", "{SUVbw}g/ml", "Standardized Uptake Value")]
    )
    suv = _item("NUM", ("DCM", "126401", "SUVbw"), MeasuredValueSequence=Sequence([measured]))
    suv.ContentSequence = Sequence(
        [
            _item(
                "CODE",
                ("DCM", "121401", "Derivation"),
                "HAS CONCEPT MOD",
                ConceptCodeSequence=Sequence([_code("SCT", "56851009", "Maximum")]),
            )
        ]
    )
    where = _item(
        "SCOORD3D",
        ("DCM", "111030", "Image Region"),
        GraphicType="POINT",
        GraphicData=point_mm,
        ReferencedFrameOfReferenceUID=frame_of_reference,
    )
    group = _item("CONTAINER", ("DCM", "125007", "Measurement Group"), ContinuityOfContent="SEPARATE")
    group.ContentSequence = Sequence(
        [
            _item("TEXT", ("DCM", "112039", "Tracking Identifier"), "HAS OBS CONTEXT", TextValue="Hot spot"),
            suv,
            where,
        ]
    )
    return group


def incoming_report(files: list[Path], *, manufacturer: str = "Other Workstation") -> tuple[Dataset, dict]:
    """(the SR, what the test knows about it) for the phantom files of one patient."""
    originals = [pydicom.dcmread(path) for path in files]
    cts = sorted(
        (ds for ds in originals if ds.Modality == "CT"), key=lambda ds: float(ds.ImagePositionPatient[2])
    )
    pet = next(ds for ds in originals if ds.Modality == "PT")
    image = cts[len(cts) // 2]
    family = str(image.PatientName).split("^")[0]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([*POLYGON_PX, POLYGON_PX[0]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"Lesion {family}"),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Liver)],
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Area, value=AREA_MM2, unit=codes.UCUM.SquareMillimeter)
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=OBSERVER),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[planar],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image, pet],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=700,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
    )
    sr = pydicom.dcmread(
        io.BytesIO(_bytes(sr))
    )  # plain pydicom from here: what a vendor adds is not highdicom's
    point = [float(v) for v in pet.ImagePositionPatient]
    measurements = next(
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    measurements.ContentSequence.append(_vendor_group(str(pet.FrameOfReferenceUID), point))
    sr.ContentSequence.extend(
        [
            _item(
                "PNAME",
                ("DCM", "121029", "Subject Name"),
                "HAS OBS CONTEXT",
                PersonName=str(image.PatientName),
            ),
            _item("TEXT", ("DCM", "121106", "Comment"), TextValue=NARRATIVE.format(name=image.PatientName)),
        ]
    )
    known = {
        "image": image,
        "pet": pet,
        "point": point,
        "family": family,
        "identifying": [str(image.PatientName), str(image.PatientID), family, OBSERVER.split("^")[0]],
    }
    return sr, known


def _patient_files(phantom) -> list[Path]:
    out, truth = phantom
    return sorted((out / truth["patients"][0]["folder"]).rglob("*.dcm"))


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def received(store, phantom):
    files = _patient_files(phantom)
    sr, known = incoming_report(files)
    batch = IngestBatch(actor="cli:test", door="import")
    for path in files:
        batch.ingest(path.read_bytes())
    outcome = batch.ingest(_bytes(sr))
    batch.close()
    assert outcome.status is Status.STORED, outcome
    stored_series = Series.objects.get(pk=outcome.series_id)
    stored = pydicom.dcmread(
        io.BytesIO(storage.object_get(Instance.objects.get(series=stored_series).object_id))
    )
    return stored, stored_series, known


def _texts(ds: Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence") or []:
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found.extend(_texts(item))
    return found


def test_an_incoming_report_keeps_its_content_without_the_subjects_identity(received):
    stored, series, known = received
    assert series.volume_state == VolumeState.REFUSED and "listed with the findings" in series.volume_reason
    everything = str(stored)
    for word in known["identifying"]:
        assert word not in everything, word
    assert "113104" in [item.CodeValue for item in stored.DeidentificationMethodCodeSequence]
    texts = _texts(stored)
    assert "Hot spot" in texts and "[text removed at de-identification]" in texts
    assert any(text.startswith("Lesion ***") for text in texts), texts
    names = [str(item.PersonName) for item in stored.ContentSequence if "PersonName" in item]
    assert names and all(name == "ANONYMOUS" for name in names)
    subject = [
        item for item in stored.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121029"
    ]
    assert subject == []


def test_the_report_references_the_stored_images_not_the_originals(received):
    stored, _, known = received
    references = _referenced_instances(stored)
    image = Instance.objects.get(sop_instance_uid__in=references)
    assert image.series.modality == "CT"
    assert str(known["image"].SOPInstanceUID) not in references


def _referenced_instances(ds: Dataset) -> set[str]:
    found = set()
    for item in ds.get("ContentSequence") or []:
        for reference in item.get("ReferencedSOPSequence") or []:
            found.add(str(reference.ReferencedSOPInstanceUID))
        found |= _referenced_instances(item)
    return found


def test_the_viewer_gets_each_groups_numbers_and_where_they_are(received, tmp_path):
    _, _, known = received
    study = Study.objects.get()
    documents = documents_of(study.study_instance_uid, exclude_manufacturer=MANUFACTURER)
    assert len(documents) == 1 and documents[0]["title"] == "Imaging Measurement Report"
    planar, vendor = documents[0]["groups"]
    assert planar["label"].startswith("Lesion ***") and (planar["finding"], planar["site"]) == (
        "Lesion",
        "Liver",
    )
    assert planar["measurements"] == [{"name": "Area", "value": pytest.approx(AREA_MM2), "unit": "mm²"}]
    assert vendor["label"] == "Hot spot"
    assert vendor["measurements"] == [
        {"name": "SUVbw (Maximum)", "value": pytest.approx(SUV_MAX), "unit": "SUVbw"}
    ]
    ct = Series.objects.get(modality="CT").series_instance_uid
    pet = Series.objects.get(modality="PT").series_instance_uid
    assert planar["graphic"]["shape"] == "polygon" and planar["graphic"]["series"] == [ct]
    path = tmp_path / "slice.dcm"
    known["image"].save_as(path, enforce_file_format=True)
    image = sitk.ReadImage(str(path))
    truth = [image.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, 0.0)) for x, y in POLYGON_PX]
    assert np.allclose(planar["graphic"]["points_mm"], truth, atol=1e-3)
    assert vendor["graphic"]["shape"] == "point" and pet in vendor["graphic"]["series"]
    assert np.allclose(vendor["graphic"]["points_mm"], [known["point"]], atol=1e-3)


def test_the_gateways_own_report_is_left_out_and_a_broken_one_hides_nothing_else(store, phantom):
    files = _patient_files(phantom)
    own, _ = incoming_report(files, manufacturer=MANUFACTURER)
    other, _ = incoming_report(files)
    broken, _ = incoming_report(files)
    broken.ContentSequence[-3].ContentSequence[0].ContentSequence = Sequence(
        [Dataset()]
    )  # an item without type
    batch = IngestBatch(actor="cli:test", door="import")
    for ds in (own, other, broken):
        assert batch.ingest(_bytes(ds)).status is Status.STORED
    batch.close()
    documents = documents_of(Study.objects.get().study_instance_uid, exclude_manufacturer=MANUFACTURER)
    assert len(documents) == 2
    assert all(len(document["groups"]) == 2 for document in documents)
    assert all(group["graphic"] is None for document in documents for group in document["groups"]), (
        "the images the regions are drawn on were not imported: nothing can be placed"
    )


@pytest.mark.parametrize(
    ("kind", "points", "shape", "count"),
    [
        ("POINT", [[1, 2, 3]], "point", 1),
        ("POLYLINE", [[0, 0, 0], [10, 0, 0]], "line", 2),
        ("POLYLINE", [[0, 0, 0], [10, 0, 0], [10, 10, 0]], "polyline", 3),
        ("POLYGON", [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 0, 0]], "polygon", 3),
        ("POLYLINE", [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 0, 0]], "polygon", 3),
        ("POLYGON", [[0, 0, 0], [10, 0, 0]], None, 0),
    ],
)
def test_each_graphic_type_becomes_a_shape_a_view_can_draw(kind, points, shape, count):
    drawn = drawn_shape(kind, np.asarray(points, dtype=float))
    assert (drawn[0], len(drawn[1])) == (shape, count) if shape else drawn is None


def test_an_ellipse_is_traced_through_its_four_axis_endpoints():
    endpoints = np.array([[-20.0, 0, 5], [20.0, 0, 5], [0, -10.0, 5], [0, 10.0, 5]])
    _, outline = drawn_shape("ELLIPSE", endpoints)
    on_ellipse = (outline[:, 0] / 20.0) ** 2 + (outline[:, 1] / 10.0) ** 2
    assert np.allclose(on_ellipse, 1.0) and np.allclose(outline[:, 2], 5.0)
    for endpoint in endpoints:
        assert np.min(np.linalg.norm(outline - endpoint, axis=1)) < 1e-9
