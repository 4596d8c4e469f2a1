"""Threshold and region growing from a lesion centre against the phantom's planted lesions (issue #17).

The tools run as the viewer runs them: the edit the consumer builds from a click, replayed on the
reference series by :func:`rendering.segment_ops.segmentation_replay` (what ``SegmentationMaps.build``
calls in a render worker). The truth is ``truth.json``'s centre and radius of each lesion and each
series' voxel centres and values, read here with pydicom: a lesion's mask is every voxel whose centre
lies within ``radius_mm`` of ``center_mm``.

The phantom is written at its default length here: the shared 40-slice fixture squeezes the torso into
80 mm, so every lesion's sphere runs into a neighbouring organ within a PET voxel or two, and even the
best threshold reproduces its five PET lesions with Dice 0.77 to 0.90 only.

Which lesions can be reproduced, from the truth alone:

* PET. The phantom plants a flat core out to half the radius whose uptake falls as a raised cosine to
  the background at ``radius_mm``. Voxels near ``radius_mm`` carry almost none of the lesion's uptake,
  and how many of them a sphere's voxelisation holds depends on where the shells of voxel centres fall,
  not steadily on the radius: on 3.9 x 3.9 x 4 mm voxels an 11 mm sphere has none, a 12 mm one a third
  of its voxels. The threshold sits 5% of the contrast above the background; a lesion is tested where
  Dice 0.9 stays within reach though every voxel carrying under 10% of the contrast is lost, and where
  the background around it varies by no more than 5% of the contrast (the tissues near the spine, or
  a lesion of twice the liver's uptake, vary more than that).
* CT. A lesion is a hard sphere of its own HU. It is tested where its HU stands apart from all around
  it. The liver lesions (30 HU in 60 HU liver, noise SD 10 HU) and the lymph nodes (40 HU in 35 HU soft
  tissue) have no such contrast on this phantom's CT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging.phantom import phantom_write
from rendering.segment_ops import SegmentError, segmentation_replay
from rendering.testing import volumes_from_phantom
from rendering.volume import Volume

TORSO_SLICES = 200
PATIENTS = 3
SEED = 7
MIN_DICE = 0.9
THRESHOLD_SHARE = 0.05  # of the lesion's contrast, above the background
LOST_SHARE = 0.10  # voxels carrying less than this may fall below the threshold
BACKGROUND_MM = 8.0  # the background is the shell this far outside the sphere
CT_SDS = 4.0  # the CT range: the lesion's HU give or take this many noise SDs
BESIDE_MM = 6.0  # negative seeds: this far outside the sphere's edge

pytestmark = pytest.mark.slow  # three patients at the phantom's default size


@dataclass(frozen=True)
class Grid:
    """A series' voxel centres from its headers alone, slices in order along their normal."""

    files: tuple[Path, ...]
    positions: np.ndarray
    along_row: np.ndarray
    along_column: np.ndarray
    row_step: float
    column_step: float
    rows: int
    columns: int

    @classmethod
    def read(cls, folder: Path) -> Grid:
        headers = [(path, pydicom.dcmread(path, stop_before_pixels=True)) for path in folder.glob("*.dcm")]
        cosines = np.asarray(headers[0][1].ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(cosines[:3], cosines[3:])
        headers.sort(key=lambda item: float(np.asarray(item[1].ImagePositionPatient, dtype=float) @ normal))
        first = headers[0][1]
        row_step, column_step = (float(v) for v in first.PixelSpacing)
        return cls(
            files=tuple(path for path, _ in headers),
            positions=np.stack([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in headers]),
            along_row=cosines[:3],
            along_column=cosines[3:],
            row_step=row_step,
            column_step=column_step,
            rows=int(first.Rows),
            columns=int(first.Columns),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.files), self.rows, self.columns

    def box(self, centre: np.ndarray, reach: float) -> tuple[slice, slice, slice]:
        """Index ranges that hold every voxel centre within ``reach`` mm of ``centre``."""
        normal = np.cross(self.along_row, self.along_column)
        depth = np.abs((self.positions - centre) @ normal)
        planes = np.nonzero(depth <= reach)[0]
        offset = centre - self.positions[0]
        i = offset @ self.along_row / self.column_step
        j = offset @ self.along_column / self.row_step
        di, dj = reach / self.column_step, reach / self.row_step
        return (
            slice(int(planes.min()), int(planes.max()) + 1),
            slice(max(int(np.floor(j - dj)), 0), min(int(np.ceil(j + dj)) + 1, self.rows)),
            slice(max(int(np.floor(i - di)), 0), min(int(np.ceil(i + di)) + 1, self.columns)),
        )

    def whole(self) -> tuple[slice, slice, slice]:
        return slice(0, len(self.files)), slice(0, self.rows), slice(0, self.columns)

    def centres(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Patient mm of the voxel centres in ``box``, [k, j, i, xyz]."""
        j, i = np.meshgrid(np.arange(self.rows)[box[1]], np.arange(self.columns)[box[2]], indexing="ij")
        plane = (i[..., None] * self.column_step * self.along_row
                 + j[..., None] * self.row_step * self.along_column)
        return self.positions[box[0]][:, None, None, :] + plane[None]

    def values(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Rescaled pixel values in ``box`` (Bq/ml for PET, HU for CT)."""
        planes = []
        for path in self.files[box[0]]:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array[box[1], box[2]].astype(np.float64)
            planes.append(pixels * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        return np.stack(planes)


@dataclass(frozen=True)
class Study:
    name: str
    truth: dict
    pet: Volume
    ct: Volume
    pet_grid: Grid
    ct_grid: Grid
    pet_centres: np.ndarray
    suv: np.ndarray


@dataclass(frozen=True)
class Case:
    """One lesion on one series: its sphere (in ``box``), the range a reader would pick, and why it is
    tested or not."""

    name: str
    lesion: dict
    volume: Volume
    box: tuple[slice, slice, slice]
    sphere: np.ndarray
    low: float
    high: float
    why_not: str
    neighbours: tuple[dict, ...]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[Study]:
    out = tmp_path_factory.mktemp("segment_phantom")
    phantom_write(out_dir=out, slices=TORSO_SLICES, patients=PATIENTS, seed=SEED)
    found = []
    for patient in range(PATIENTS):
        ct, pet, truth = volumes_from_phantom(out, patient)
        pet_grid = Grid.read(out / truth["folder"] / "PT")
        ct_grid = Grid.read(out / truth["folder"] / "CT")
        assert pet_grid.shape == pet.shape and ct_grid.shape == ct.shape
        whole = pet_grid.whole()
        found.append(Study(truth["folder"], truth, pet, ct, pet_grid, ct_grid,
                           pet_grid.centres(whole), pet_grid.values(whole) * _suv(truth)))
    return found


@pytest.fixture(scope="module")
def cases(studies) -> dict[str, list[Case]]:
    """Every lesion of every patient on each modality, tested or with the reason it is not."""
    lesions = [(study, n, lesion) for study in studies for n, lesion in enumerate(study.truth["lesions"])]
    return {"PT": [_pet_case(*each) for each in lesions], "CT": [_ct_case(*each) for each in lesions]}


def _suv(truth: dict) -> float:
    """SUVbw per Bq/ml from the truth: the images are decay-corrected to the PET series' start."""
    dose_at_start = truth["injected_dose_bq"] * 2.0 ** (-truth["uptake_s"] / truth["half_life_s"])
    return truth["patient_weight_kg"] * 1000.0 / dose_at_start


def _planted_share(distance: np.ndarray, radius: float) -> np.ndarray:
    """The share of its contrast the phantom plants at a distance from a lesion's centre: all of it in
    the core, to half the radius, falling as a raised cosine to none at ``radius_mm``."""
    edge = np.clip((distance - radius / 2) / (radius / 2), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * edge))


def _dice(labels: np.ndarray, case: Case) -> float:
    """Dice of every labelled voxel of the series against the sphere (which lies within ``case.box``)."""
    labelled = labels != 0
    both = np.count_nonzero(labelled[case.box] & case.sphere)
    return 2.0 * both / (np.count_nonzero(labelled) + np.count_nonzero(case.sphere))


def _pet_case(study: Study, number: int, lesion: dict) -> Case:
    centre, radius, suv_max = np.asarray(lesion["center_mm"]), lesion["radius_mm"], lesion["suv_max"]
    distance = np.linalg.norm(study.pet_centres - centre, axis=-1)
    sphere = distance <= radius
    around = study.suv[(distance > radius) & (distance <= radius + BACKGROUND_MM)]
    background = float(np.median(around))
    contrast = suv_max - background
    spread = float(np.percentile(around, 95) - np.percentile(around, 5))
    assert float(study.suv[sphere].max()) == pytest.approx(suv_max, rel=0.01), "SUV read here disagrees"
    # The rim where the planted uptake has faded to under LOST_SHARE of the contrast is lost to any
    # threshold that the background's spread can lie below: a sphere whose voxelisation holds much
    # rim cannot reach MIN_DICE, however good the tool.
    kept = np.count_nonzero(sphere & (_planted_share(distance, radius) >= LOST_SHARE))
    best = 2.0 * kept / (kept + np.count_nonzero(sphere))
    why_not = ""
    if best < MIN_DICE:
        why_not = f"Dice {best:.3f} at best once voxels under {LOST_SHARE:.0%} of the contrast are lost"
    elif spread > THRESHOLD_SHARE * contrast:
        why_not = f"background varies by {spread / contrast:.0%} of the contrast"
    name = f"{study.name} PET lesion {number} ({lesion['organ']}, {radius} mm, SUVmax {suv_max})"
    low = background + THRESHOLD_SHARE * contrast
    return Case(name, lesion, study.pet, study.pet_grid.whole(), sphere, low, 2.0 * suv_max, why_not,
                tuple(study.truth["lesions"]))


def _ct_case(study: Study, number: int, lesion: dict) -> Case:
    centre, radius, hu = np.asarray(lesion["center_mm"]), lesion["radius_mm"], lesion["hu"]
    box = study.ct_grid.box(centre, radius + 4.0)
    distance = np.linalg.norm(study.ct_grid.centres(box) - centre, axis=-1)
    values = study.ct_grid.values(box)
    noise = float(np.std(values[distance <= radius / 2]))
    low, high = hu - CT_SDS * noise, hu + CT_SDS * noise
    around = values[(distance > radius + 1.0) & (distance <= radius + 3.0)]
    alike = float(np.mean((around >= low) & (around <= high)))
    why_not = ""
    if alike > 0.01:
        why_not = f"{alike:.0%} of the tissue around it lies within {low:.0f} to {high:.0f} HU"
    name = f"{study.name} CT lesion {number} ({lesion['organ']}, {radius} mm, {hu:g} HU)"
    return Case(name, lesion, study.ct, box, distance <= radius, low, high, why_not,
                tuple(study.truth["lesions"]))


def _edit(case: Case, tool: str, seed: list[float] | None = None) -> dict:
    """The edit a click at the lesion's centre makes (a box as wide as the lesion where the tool takes
    one); thresholds on PET are given in SUV, as the reader gives them."""
    centre = [float(v) for v in case.lesion["center_mm"]]
    unit = {"unit": "suv"} if case.volume.modality == "PT" else {}
    if tool == "grow":
        return {"tool": "grow", "segment": 1, "seeds_mm": [seed or centre], "low": case.low,
                "high": case.high, **unit}
    if tool == "threshold":
        return {"tool": "threshold", "segment": 1, "low": case.low, "high": case.high, "center_mm": centre,
                "box_mm": case.lesion["radius_mm"], **unit}
    assert tool == "suv_fraction"
    return {"tool": "suv_fraction", "segment": 1, "fraction": case.low / case.lesion["suv_max"],
            "center_mm": centre, "box_mm": case.lesion["radius_mm"]}


def _chosen(cases: list[Case]) -> list[Case]:
    chosen = [case for case in cases if not case.why_not]
    assert chosen, "no lesion can be tested: " + "; ".join(f"{c.name}: {c.why_not}" for c in cases)
    return chosen


def _reproduce(cases: list[Case], tool: str) -> None:
    figures, failures = [], []
    for case in _chosen(cases):
        score = _dice(segmentation_replay(case.volume, [_edit(case, tool)]), case)
        figures.append(f"{case.name}: Dice {score:.3f}")
        if not score >= MIN_DICE:
            failures.append(figures[-1])
    assert not failures, f"{tool} from the lesion centre: {failures} (all: {figures})"


@pytest.mark.parametrize("tool", ["grow", "threshold", "suv_fraction"])
def test_pet_growing_and_thresholds_from_a_lesion_centre_reproduce_the_planted_sphere(cases, tool):
    _reproduce(cases["PT"], tool)


@pytest.mark.parametrize("tool", ["grow", "threshold"])
def test_ct_growing_and_thresholds_from_a_lesion_centre_reproduce_the_planted_sphere(cases, tool):
    _reproduce(cases["CT"], tool)


@pytest.mark.parametrize("modality", ["PT", "CT"])
def test_a_seed_just_beside_a_lesion_grows_nothing_of_it(cases, modality):
    """The same range as from the centre, clicked in the background 6 mm outside the lesion's edge (to
    the patient's left, and towards the feet): it is refused (the seed is outside the range) or grows
    none of the lesion and under a tenth of its size."""
    wrong = []
    for case in _chosen(cases[modality]):
        centre, radius = np.asarray(case.lesion["center_mm"]), case.lesion["radius_mm"]
        for step in ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)):
            seed = centre + (radius + BESIDE_MM) * np.asarray(step)
            assert all(np.linalg.norm(seed - np.asarray(other["center_mm"])) > other["radius_mm"] + 2.0
                       for other in case.neighbours), f"{case.name}: the seed {seed} lies in a lesion"
            try:
                labels = segmentation_replay(case.volume, [_edit(case, "grow", [float(v) for v in seed])])
            except SegmentError as error:
                assert "no seed lies inside the range" in str(error), error
                continue
            grown, inside = np.count_nonzero(labels), np.count_nonzero(labels[case.box] & case.sphere)
            if inside or grown * 10 > np.count_nonzero(case.sphere):
                wrong.append(f"{case.name}, seed {seed.round(1).tolist()}: {grown} voxels, {inside} in it")
    assert not wrong, wrong
