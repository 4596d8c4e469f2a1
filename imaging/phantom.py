"""Synthetic whole-body FDG PET/CT phantom written as real DICOM files.

The phantom is an anatomy-like torso (body outline with fat and muscle, lungs,
heart, liver, spleen, kidneys, bladder, aorta, spine, ribs and pelvis) that
varies along z, imaged as a CT series (Hounsfield units) and a PET series
(Bq/ml, FDG uptake in SUV converted with the body-weight formula) sharing one
study and one frame of reference. Hot spherical lesions with known centre,
radius and SUVmax are planted so that viewers, SUV tools and de-identification
can be tested against a ground truth.

Layout written by :func:`phantom_write`::

    out_dir/truth.json                     ground truth for every patient
    out_dir/patient_01/CT/CT_0001.dcm ...  CT Image Storage, head first
    out_dir/patient_01/PT/PT_0001.dcm ...  PET Image Storage, head first

Folder and file names carry no patient identity; the identity lives only in
the DICOM headers and in ``truth.json``.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

FOV_MM = 500.0
CT_SIZE = 512
CT_SLICE_MM = 2.0
PET_SIZE = 128
PET_SLICE_MM = 4.0
MIN_SLICES = 32
HU_OFFSET = 1024
CT_NOISE_HU = 10.0
PET_NOISE = 0.03
PET_FWHM_MM = 6.0
PET_BED_SLICES = 40
PET_FRAME_S = 120
F18_HALF_LIFE_S = 6586.2
F18_POSITRON_FRACTION = 0.9673
LESION_CLIP_MARGIN_MM = 4.0
LAYOUT = "<out>/truth.json; <out>/patient_NN/CT/CT_NNNN.dcm; <out>/patient_NN/PT/PT_NNNN.dcm"


@dataclass(frozen=True)
class Tissue:
    """A tissue class with its CT attenuation and its FDG uptake."""

    name: str
    hu: float
    suv: float


TISSUES = (
    Tissue("air", -1000.0, 0.0),
    Tissue("table", -350.0, 0.0),
    Tissue("fat", -100.0, 0.4),
    Tissue("muscle", 50.0, 0.7),
    Tissue("soft_tissue", 35.0, 0.8),
    Tissue("lung", -850.0, 0.5),
    Tissue("liver", 60.0, 2.0),
    Tissue("spleen", 45.0, 1.8),
    Tissue("kidney", 30.0, 3.0),
    Tissue("bladder", 5.0, 25.0),
    Tissue("aorta", 40.0, 1.6),
    Tissue("heart_blood", 40.0, 1.6),
    Tissue("myocardium", 45.0, 4.0),
    Tissue("cancellous_bone", 220.0, 1.5),
    Tissue("cortical_bone", 700.0, 0.6),
    Tissue("spinal_canal", 15.0, 0.5),
)
LABEL = {tissue.name: index for index, tissue in enumerate(TISSUES)}
HU_BY_LABEL = np.array([tissue.hu for tissue in TISSUES], dtype=np.float32)
SUV_BY_LABEL = np.array([tissue.suv for tissue in TISSUES], dtype=np.float64)


@dataclass(frozen=True)
class Organ:
    """An ellipsoid-like organ: an axial ellipse whose size follows z.

    ``t_top``/``t_bottom`` are fractions of the scanned length (0 = top);
    the ellipse scales by sqrt(1 - u**2) across that span.
    """

    tissue: str
    t_top: float
    t_bottom: float
    cx: float
    cy: float
    ax: float
    ay: float

    def scale(self, t: float) -> float:
        half = (self.t_bottom - self.t_top) / 2
        u = (t - self.t_top - half) / half
        return math.sqrt(1 - u * u) if abs(u) < 1 else 0.0


# Patient coordinates (LPS): +x towards the patient's left, +y posterior.
ORGANS = (
    Organ("liver", 0.38, 0.66, -60.0, -5.0, 85.0, 75.0),
    Organ("spleen", 0.42, 0.60, 85.0, 25.0, 35.0, 50.0),
    Organ("kidney", 0.54, 0.74, -70.0, 45.0, 28.0, 38.0),
    Organ("kidney", 0.54, 0.74, 70.0, 45.0, 28.0, 38.0),
    Organ("bladder", 0.86, 1.08, 0.0, -40.0, 45.0, 35.0),
    Organ("aorta", -0.90, 0.84, 22.0, 32.0, 12.0, 12.0),
    Organ("lung", 0.03, 0.47, -75.0, -5.0, 60.0, 85.0),
    Organ("lung", 0.03, 0.47, 75.0, -5.0, 60.0, 85.0),
    Organ("myocardium", 0.22, 0.44, 25.0, -25.0, 55.0, 45.0),
    Organ("heart_blood", 0.24, 0.42, 28.0, -25.0, 34.0, 28.0),
    Organ("cortical_bone", 0.74, 0.98, -95.0, 45.0, 40.0, 14.0),
    Organ("cancellous_bone", 0.74, 0.98, -95.0, 45.0, 34.0, 9.0),
    Organ("cortical_bone", 0.74, 0.98, 95.0, 45.0, 40.0, 14.0),
    Organ("cancellous_bone", 0.74, 0.98, 95.0, 45.0, 34.0, 9.0),
)


@dataclass(frozen=True)
class LesionSite:
    """Where a lesion of one kind is planted, before per-patient jitter."""

    organ: str
    t: float
    x: float
    y: float
    jitter_mm: float
    hu: float


LESION_SITES = (
    LesionSite("liver", 0.53, -70.0, -15.0, 6.0, 30.0),
    LesionSite("lung", 0.18, -85.0, 15.0, 5.0, 30.0),
    LesionSite("lung", 0.36, 95.0, 35.0, 4.0, 30.0),
    LesionSite("lymph_node", 0.78, -25.0, 25.0, 3.0, 40.0),
    LesionSite("bone", 0.30, 0.0, 60.0, 2.0, 450.0),
)


@dataclass(frozen=True)
class Grid:
    """Voxel centres of one series: square slices, head first, z decreasing.

    Rows and columns share the same centres (``xs``), so ``xs`` serves for y too.
    """

    size: int
    slice_mm: float
    slices: int

    @property
    def spacing(self) -> float:
        return FOV_MM / self.size

    @property
    def xs(self) -> np.ndarray:
        return -FOV_MM / 2 + self.spacing * (np.arange(self.size) + 0.5)

    @property
    def zs(self) -> np.ndarray:
        return -self.slice_mm * (np.arange(self.slices) + 0.5)

    def snap(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """Return the voxel centre nearest to a point."""
        i, j = (min(max(round((v - self.xs[0]) / self.spacing), 0), self.size - 1) for v in (x, y))
        k = min(max(round((self.zs[0] - z) / self.slice_mm), 0), self.slices - 1)
        return float(self.xs[i]), float(self.xs[j]), float(self.zs[k])


@dataclass(frozen=True)
class Lesion:
    """A planted hot sphere: flat core at ``suv_max``, smooth edge at ``radius_mm``."""

    organ: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    suv_max: float
    hu: float


@dataclass(frozen=True)
class Identity:
    """Identifying attributes of one synthetic patient and their visit."""

    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    other_patient_id: str
    other_issuer: str
    birth_date: str
    sex: str
    age: str
    address: str
    telephone: str
    accession_number: str
    study_id: str
    referring_physician: str
    performing_physician: str
    operator: str
    institution_name: str
    institution_address: str
    station_name: str
    device_serial_number: str


@dataclass(frozen=True)
class Visit:
    """Times (seconds after midnight of ``date``), dose and body habitus."""

    date: str
    injection_s: int
    ct_start_s: int
    pet_start_s: int
    weight_kg: float
    size_m: float
    dose_bq: int

    @property
    def dose_at_pet_start_bq(self) -> float:
        uptake_s = self.pet_start_s - self.injection_s
        return self.dose_bq * 2.0 ** (-uptake_s / F18_HALF_LIFE_S)


@dataclass(frozen=True)
class PatientPlan:
    """Everything needed to write one patient's PET/CT study."""

    seed: int
    index: int
    identity: Identity
    visit: Visit
    lesions: tuple[Lesion, ...]
    uids: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return f"patient_{self.index + 1:02d}"


class Anatomy:
    """Tissue labels of the torso phantom at any axial position."""

    def __init__(self, length_mm: float) -> None:
        self.length_mm = length_mm

    def t(self, z: float) -> float:
        """Fraction of the scanned length from the top (z = 0) down."""
        return -z / self.length_mm

    def z(self, t: float) -> float:
        return -t * self.length_mm

    def labels(self, xs: np.ndarray, z: float) -> np.ndarray:
        """Label image (rows = y, columns = x) of the axial slice at ``z``."""
        t = self.t(z)
        image = np.full((xs.size, xs.size), LABEL["air"], dtype=np.uint8)
        _paint_table(image, xs)
        ax, ay = _body_axes(t)
        for tissue, inset in (("fat", 0.0), ("muscle", 15.0), ("soft_tissue", 27.0)):
            _paint_ellipse(image, xs, LABEL[tissue], 0.0, 0.0, ax - inset, ay - inset)
        for organ in ORGANS:
            scale = organ.scale(t)
            if scale > 0:
                _paint_ellipse(
                    image, xs, LABEL[organ.tissue], organ.cx, organ.cy,
                    organ.ax * scale, organ.ay * scale,
                )
        _paint_spine(image, xs, z)
        if 0.04 <= t <= 0.60:
            _paint_ribs(image, xs, z, ax, ay)
        return image


def _body_axes(t: float) -> tuple[float, float]:
    waist = math.exp(-(((t - 0.68) / 0.12) ** 2))
    return 172.0 - 14.0 * waist, 118.0


def _window(coords: np.ndarray, low: float, high: float) -> slice:
    inside = np.nonzero((coords >= low) & (coords <= high))[0]
    if inside.size == 0:
        return slice(0, 0)
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _paint_ellipse(image, xs, value, cx, cy, ax, ay) -> None:
    cols, rows = _window(xs, cx - ax, cx + ax), _window(xs, cy - ay, cy + ay)
    u = ((xs[cols] - cx) / ax) ** 2
    v = ((xs[rows] - cy) / ay) ** 2
    image[rows, cols][v[:, None] + u[None, :] <= 1.0] = value


def _paint_table(image, xs) -> None:
    image[_window(xs, 128.0, 140.0), _window(xs, -210.0, 210.0)] = LABEL["table"]


def _paint_spine(image, xs, z) -> None:
    bone, marrow = LABEL["cortical_bone"], LABEL["cancellous_bone"]
    _paint_ellipse(image, xs, bone, 0.0, 86.0, 13.0, 13.0)
    _paint_ellipse(image, xs, bone, 0.0, 103.0, 4.5, 9.0)
    _paint_ellipse(image, xs, LABEL["spinal_canal"], 0.0, 86.0, 8.0, 8.0)
    if z % 30.0 < 25.0:
        _paint_ellipse(image, xs, bone, 0.0, 60.0, 17.0, 17.0)
        _paint_ellipse(image, xs, marrow, 0.0, 60.0, 14.0, 14.0)
    else:
        _paint_ellipse(image, xs, LABEL["soft_tissue"], 0.0, 60.0, 17.0, 17.0)


def _paint_ribs(image, xs, z, ax, ay) -> None:
    x, y = xs[None, :], xs[:, None]
    outer = (x / (ax - 30.0)) ** 2 + (y / (ay - 30.0)) ** 2 <= 1.0
    inner = (x / (ax - 38.0)) ** 2 + (y / (ay - 38.0)) ** 2 <= 1.0
    # Ribs run obliquely: their posterior ends lie higher than their anterior ends.
    band = (z - 12.0 * np.clip(y / ay, -1.0, 1.0)) % 24.0 < 9.0
    image[outer & ~inner & band & (np.abs(x) > 25.0)] = LABEL["cortical_bone"]


def _gaussian_blur(volume: np.ndarray, sigmas: tuple[float, ...]) -> np.ndarray:
    for axis, sigma in enumerate(sigmas):
        radius = max(1, math.ceil(3 * sigma))
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
        kernel /= kernel.sum()
        pad = [(0, 0)] * volume.ndim
        pad[axis] = (radius, radius)
        moved = np.moveaxis(np.pad(volume, pad, mode="edge"), axis, 0)
        n = volume.shape[axis]
        blurred = sum(w * moved[i : i + n] for i, w in enumerate(kernel))
        volume = np.moveaxis(blurred, 0, axis)
    return np.ascontiguousarray(volume)


def _lesion_weight(d: np.ndarray, radius: float) -> np.ndarray:
    edge = np.clip((d - radius / 2) / (radius / 2), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * edge))


def _plant_lesion(suv: np.ndarray, grid: Grid, lesion: Lesion) -> None:
    cx, cy, cz = lesion.center_mm
    reach = lesion.radius_mm + LESION_CLIP_MARGIN_MM
    xs, zs = grid.xs, grid.zs
    planes = _window(zs, cz - reach, cz + reach)
    rows = _window(xs, cy - reach, cy + reach)
    cols = _window(xs, cx - reach, cx + reach)
    d = np.sqrt(
        (zs[planes, None, None] - cz) ** 2
        + (xs[None, rows, None] - cy) ** 2
        + (xs[None, None, cols] - cx) ** 2
    )
    block = suv[planes, rows, cols]
    w = _lesion_weight(d, lesion.radius_mm)
    block[...] = block * (1.0 - w) + lesion.suv_max * w
    # The planted peak must be the maximum anywhere a reader looks for it.
    np.minimum(block, lesion.suv_max, out=block, where=d <= reach)


def pet_suv_volume(anatomy: Anatomy, grid: Grid, lesions, rng) -> np.ndarray:
    """SUV at the PET voxel centres, indexed [slice, row, column].

    Parameters
    ----------
    anatomy : Anatomy
        The phantom geometry.
    grid : Grid
        The PET voxel grid.
    lesions : iterable of Lesion
        Hot spheres planted after blurring and noise.
    rng : numpy.random.Generator
        Source of the small multiplicative noise.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (slices, size, size).
    """
    labels = np.stack([anatomy.labels(grid.xs, float(z)) for z in grid.zs])
    sigma_mm = PET_FWHM_MM / (2 * math.sqrt(2 * math.log(2)))
    sigmas = (sigma_mm / grid.slice_mm, sigma_mm / grid.spacing, sigma_mm / grid.spacing)
    suv = _gaussian_blur(SUV_BY_LABEL[labels], sigmas)
    suv *= 1.0 + np.clip(rng.normal(0.0, PET_NOISE, suv.shape), -3 * PET_NOISE, 3 * PET_NOISE)
    for lesion in lesions:
        _plant_lesion(suv, grid, lesion)
    return suv


def ct_hu_slice(anatomy: Anatomy, grid: Grid, z: float, lesions, rng) -> np.ndarray:
    """Hounsfield units of one CT slice with lesions and Gaussian noise.

    Parameters
    ----------
    anatomy : Anatomy
        The phantom geometry.
    grid : Grid
        The CT voxel grid.
    z : float
        Slice position (mm).
    lesions : iterable of Lesion
        Spheres painted with their own attenuation.
    rng : numpy.random.Generator
        Source of the noise.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (size, size).
    """
    hu = HU_BY_LABEL[anatomy.labels(grid.xs, z)]
    for lesion in lesions:
        cx, cy, cz = lesion.center_mm
        if abs(z - cz) < lesion.radius_mm:
            r = math.sqrt(lesion.radius_mm**2 - (z - cz) ** 2)
            _paint_ellipse(hu, grid.xs, lesion.hu, cx, cy, r, r)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * CT_NOISE_HU
    return hu


# --- per-patient plan -------------------------------------------------------

FEMALE_NAMES = ("Jane", "Maria", "Aisha", "Ingrid", "Sofía", "Mei", "Olga", "Fatima", "Claire")
MALE_NAMES = ("John", "Ahmed", "Lars", "José", "Kenji", "Pierre", "Mehmet", "David", "Tomasz")
FAMILY_NAMES = (
    "Doe", "Müller", "García", "Nakamura", "O'Brien", "Kowalski", "Haddad",
    "Johansson", "Rossi", "Nguyen", "Dubois", "Okafor", "Søndergaard", "Petrov",
)
STREETS = ("Harbour Road", "Elm Street", "Rue des Lilas", "Lindenallee", "Via Roma", "Oak Lane")
CITIES = ("Springfield", "Riverton", "Lakeside", "Fairview", "Mapleton")
PHYSICIANS = (
    "Smith^John^^Dr.", "Novak^Eva^^Dr.", "Adeyemi^Tunde^^Dr.",
    "Lindqvist^Karin^^Dr.", "Moreau^Luc^^Dr.",
)
OPERATORS = ("Brown^Alex", "Kim^Soo-jin", "Fischer^Jonas", "Silva^Ana")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _digits(rng: np.random.Generator, count: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, count))


def _plan_identity(rng: np.random.Generator, study_date: datetime.date) -> Identity:
    sex = _pick(rng, ("F", "M"))
    given = _pick(rng, FEMALE_NAMES if sex == "F" else MALE_NAMES)
    initial = chr(ord("A") + int(rng.integers(26)))
    age = int(rng.integers(35, 82))
    birth = study_date - datetime.timedelta(days=365 * age + int(rng.integers(1, 360)))
    city = _pick(rng, CITIES)
    return Identity(
        patient_name=f"{_pick(rng, FAMILY_NAMES)}^{given}^{initial}",
        patient_id=f"MRN{_digits(rng, 7)}",
        issuer_of_patient_id="RIVERSIDE-UH",
        other_patient_id=f"{_digits(rng, 3)}-{_digits(rng, 3)}-{_digits(rng, 4)}",
        other_issuer="NATIONAL-HEALTH-REGISTRY",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age=f"{_age_years(birth, study_date):03d}Y",
        address=f"{int(rng.integers(1, 200))} {_pick(rng, STREETS)}, {_digits(rng, 5)} {city}",
        telephone=f"+1-555-{_digits(rng, 3)}-{_digits(rng, 4)}",
        accession_number=f"ACC{_digits(rng, 9)}",
        study_id=f"PETCT{_digits(rng, 5)}",
        referring_physician=_pick(rng, PHYSICIANS),
        performing_physician=_pick(rng, PHYSICIANS),
        operator=_pick(rng, OPERATORS),
        institution_name="Riverside University Hospital",
        institution_address="1 Hospital Way, 40210 Riverton",
        station_name=f"PETCT{int(rng.integers(1, 4)):02d}",
        device_serial_number=f"SN{_digits(rng, 6)}",
    )


def _age_years(birth: datetime.date, on: datetime.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _plan_visit(rng: np.random.Generator, study_date: datetime.date) -> Visit:
    weight = round(float(rng.uniform(55.0, 105.0)), 1)
    injection = int(rng.integers(7 * 3600 + 1800, 14 * 3600))
    pet_start = injection + 3600 + int(rng.integers(-300, 420))
    return Visit(
        date=study_date.strftime("%Y%m%d"),
        injection_s=injection,
        ct_start_s=pet_start - 240,
        pet_start_s=pet_start,
        weight_kg=weight,
        size_m=round(float(rng.uniform(1.55, 1.95)), 2),
        dose_bq=int(round(weight * float(rng.uniform(3.5, 4.5)) * 1e6, -5)),
    )


def _plan_lesions(rng, anatomy: Anatomy, pet: Grid) -> tuple[Lesion, ...]:
    lesions = []
    for site in LESION_SITES:
        radius = round(float(rng.uniform(6.0, 15.0)) * 2) / 2
        suv_max = round(float(rng.uniform(4.0, 15.0)), 1)
        dx, dy = rng.uniform(-site.jitter_mm, site.jitter_mm, 2)
        dz = float(rng.uniform(-0.02, 0.02)) * anatomy.length_mm
        keep_in = radius + 2 * pet.slice_mm
        z = min(max(anatomy.z(site.t) + dz, -anatomy.length_mm + keep_in), -keep_in)
        center = pet.snap(site.x + float(dx), site.y + float(dy), z)
        lesions.append(Lesion(site.organ, center, radius, suv_max, site.hu))
    _check_apart(lesions)
    return tuple(lesions)


def _check_apart(lesions: list[Lesion]) -> None:
    for i, a in enumerate(lesions):
        for b in lesions[i + 1 :]:
            gap = math.dist(a.center_mm, b.center_mm) - a.radius_mm - b.radius_mm
            if gap < 2 * LESION_CLIP_MARGIN_MM:
                raise ValueError(f"lesions in {a.organ} and {b.organ} overlap; use more slices")


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["fusion-gateway-phantom", *map(str, parts)])


def _plan_patient(seed: int, index: int, anatomy: Anatomy, pet: Grid) -> PatientPlan:
    rng = np.random.default_rng([seed, index, 0])
    study_date = datetime.date(2024, 1, 8) + datetime.timedelta(days=int(rng.integers(0, 360)))
    uids = {
        name: _uid(seed, index, name)
        for name in ("study", "frame_of_reference", "ct_series", "pet_series")
    }
    return PatientPlan(
        seed=seed,
        index=index,
        identity=_plan_identity(rng, study_date),
        visit=_plan_visit(rng, study_date),
        lesions=_plan_lesions(rng, anatomy, pet),
        uids=uids,
    )


def organ_samples(anatomy: Anatomy, ct: Grid, lesions) -> dict[str, list[float]]:
    """Pick, per tissue, a CT voxel centre deep inside it and far from lesions.

    Parameters
    ----------
    anatomy : Anatomy
        The phantom geometry.
    ct : Grid
        The CT grid; returned points are its voxel centres.
    lesions : iterable of Lesion
        Points within a lesion radius plus 10 mm are not chosen.

    Returns
    -------
    dict
        Tissue name to [x, y, z] in mm.
    """
    step = max(1, ct.slices // 24)
    coarse = np.arange(-FOV_MM / 2 + 1.0, FOV_MM / 2, 2.0)
    best: dict[str, tuple[int, list[float]]] = {}
    for z in ct.zs[step // 2 :: step]:
        labels = anatomy.labels(coarse, float(z))
        depth = _erosion_depth(labels) * _far_from_lesions(coarse, float(z), lesions)
        for label in np.unique(labels):
            where = np.where(labels == label, depth, -1)
            j, i = np.unravel_index(int(np.argmax(where)), where.shape)
            name = TISSUES[label].name
            if where[j, i] >= 1 and where[j, i] > best.get(name, (0, []))[0]:
                best[name] = (int(where[j, i]), list(ct.snap(coarse[i], coarse[j], float(z))))
    return {name: point for name, (_, point) in sorted(best.items())}


def _erosion_depth(labels: np.ndarray) -> np.ndarray:
    depth = np.zeros(labels.shape, dtype=np.int32)
    alive = np.ones(labels.shape, dtype=bool)
    alive[[0, -1], :] = alive[:, [0, -1]] = False
    while alive.any():
        same = alive.copy()
        for axis in (0, 1):
            for shift in (1, -1):
                rolled = np.roll(labels, shift, axis)
                same &= (rolled == labels) & np.roll(alive, shift, axis)
        depth += same
        alive = same
    return depth


def _far_from_lesions(coords: np.ndarray, z: float, lesions) -> np.ndarray:
    far = np.ones((coords.size, coords.size), dtype=bool)
    for lesion in lesions:
        cx, cy, cz = lesion.center_mm
        d2 = (coords[None, :] - cx) ** 2 + (coords[:, None] - cy) ** 2 + (z - cz) ** 2
        far &= d2 > (lesion.radius_mm + 10.0) ** 2
    return far


# --- DICOM ------------------------------------------------------------------


def _tm(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}{whole // 60 % 60:02d}{whole % 60:02d}"


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _add_patient_and_study(ds: Dataset, plan: PatientPlan) -> None:
    who, visit = plan.identity, plan.visit
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = who.patient_name
    ds.PatientID = who.patient_id
    ds.IssuerOfPatientID = who.issuer_of_patient_id
    other = Dataset()
    other.PatientID = who.other_patient_id
    other.IssuerOfPatientID = who.other_issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientBirthDate = who.birth_date
    ds.PatientSex = who.sex
    ds.PatientAge = who.age
    ds.PatientSize = _ds(visit.size_m)
    ds.PatientWeight = _ds(visit.weight_kg)
    ds.PatientAddress = who.address
    ds.PatientTelephoneNumbers = who.telephone
    ds.PatientComments = "Synthetic phantom; not a real person"
    ds.StudyInstanceUID = plan.uids["study"]
    ds.StudyDate = visit.date
    ds.StudyTime = _tm(visit.ct_start_s - 60)
    ds.StudyID = who.study_id
    ds.AccessionNumber = who.accession_number
    ds.ReferringPhysicianName = who.referring_physician
    ds.StudyDescription = "PET/CT FDG whole body"


def _add_series_and_equipment(ds: Dataset, plan: PatientPlan, modality: str) -> None:
    who = plan.identity
    ds.Modality = modality
    ds.SeriesDate = plan.visit.date
    ds.PerformingPhysicianName = who.performing_physician
    ds.OperatorsName = who.operator
    ds.BodyPartExamined = "WHOLEBODY"
    ds.FrameOfReferenceUID = plan.uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "Fusion Gateway"
    ds.ManufacturerModelName = "Synthetic PET/CT phantom"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = who.institution_name
    ds.InstitutionAddress = who.institution_address
    ds.InstitutionalDepartmentName = "Nuclear Medicine"
    ds.StationName = who.station_name
    ds.DeviceSerialNumber = who.device_serial_number


def _add_ct_series(ds: Dataset, plan: PatientPlan) -> None:
    ds.SeriesInstanceUID = plan.uids["ct_series"]
    ds.SeriesNumber = 2
    ds.SeriesDescription = "CT WB 2.0 mm B30f (attenuation correction)"
    ds.ProtocolName = "PET/CT FDG whole body"
    ds.PatientPosition = "HFS"


def _add_plane_and_pixels(ds: Dataset, grid: Grid, signed: bool, bits_stored: int) -> None:
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(grid.spacing), _ds(grid.spacing)]
    ds.SliceThickness = _ds(grid.slice_mm)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = grid.size
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.LossyImageCompression = "00"


def _set_slice(ds: Dataset, grid: Grid, k: int, sop_uid: str, pixels: np.ndarray) -> None:
    z = float(grid.zs[k])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(grid.xs[0]), _ds(grid.xs[0]), _ds(z)]
    ds.SliceLocation = _ds(z)
    ds.PixelData = pixels.tobytes()


def _new_dataset(sop_class: UID) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    return ds


def _ct_template(plan: PatientPlan, grid: Grid) -> Dataset:
    ds = _new_dataset(CTImageStorage)
    _add_patient_and_study(ds, plan)
    _add_series_and_equipment(ds, plan, "CT")
    _add_plane_and_pixels(ds, grid, signed=False, bits_stored=12)
    start = _tm(plan.visit.ct_start_s)
    _add_ct_series(ds, plan)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = start
    ds.AcquisitionDate = ds.ContentDate = plan.visit.date
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept = str(-HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.XRayTubeCurrent = 80
    ds.ExposureTime = 500
    ds.ScanOptions = "HELICAL MODE"
    ds.DataCollectionDiameter = ds.ReconstructionDiameter = _ds(FOV_MM)
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ConvolutionKernel = "B30f"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _pet_template(plan: PatientPlan, grid: Grid) -> Dataset:
    ds = _new_dataset(PositronEmissionTomographyImageStorage)
    _add_patient_and_study(ds, plan)
    _add_series_and_equipment(ds, plan, "PT")
    _add_plane_and_pixels(ds, grid, signed=True, bits_stored=16)
    ds.SeriesInstanceUID = plan.uids["pet_series"]
    ds.SeriesNumber = 3
    ds.SeriesTime = _tm(plan.visit.pet_start_s)
    ds.SeriesDescription = "PET WB FDG AC"
    ds.ProtocolName = "PET/CT FDG whole body"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDate = ds.ContentDate = plan.visit.date
    ds.ContentTime = ds.SeriesTime
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.NumberOfSlices = grid.slices
    ds.CollimatorType = "NONE"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.DecayCorrection = "START"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "CT-based"
    ds.ScatterCorrectionMethod = "Model-based"
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.ReconstructionDiameter = _ds(FOV_MM)
    ds.ConvolutionKernel = f"Gaussian {PET_FWHM_MM:g} mm"
    ds.RadiopharmaceuticalInformationSequence = [_radiopharmaceutical(plan.visit)]
    ds.PatientOrientationCodeSequence = [_code("102538003", "SCT", "recumbent")]
    ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = [
        _code("40199007", "SCT", "supine")
    ]
    ds.PatientGantryRelationshipCodeSequence = [_code("102540008", "SCT", "headfirst")]
    ds.RescaleIntercept = "0"
    ds.ActualFrameDuration = PET_FRAME_S * 1000
    ds.DeadTimeFactor = "1.02"
    ds.ScatterFractionFactor = "0.3"
    ds.SliceSensitivityFactor = "1"
    return ds


def _radiopharmaceutical(visit: Visit) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = "Fludeoxyglucose F^18^"
    item.RadiopharmaceuticalRoute = "Intravenous"
    item.RadiopharmaceuticalStartTime = _tm(visit.injection_s)
    item.RadiopharmaceuticalStartDateTime = visit.date + _tm(visit.injection_s)
    item.RadionuclideTotalDose = _ds(visit.dose_bq)
    item.RadionuclideHalfLife = _ds(F18_HALF_LIFE_S)
    item.RadionuclidePositronFraction = _ds(F18_POSITRON_FRACTION)
    item.RadionuclideCodeSequence = [_code("77004003", "SCT", "^18^Fluorine")]
    item.RadiopharmaceuticalCodeSequence = [
        _code("35321007", "SCT", "Fluorodeoxyglucose F^18^")
    ]
    return item


def _pet_frame(ds: Dataset, plan: PatientPlan, k: int) -> None:
    """Per-slice timing of a step-and-shoot bed position, decay-corrected to START."""
    bed_start = (k // PET_BED_SLICES) * PET_FRAME_S
    decay = math.log(2) / F18_HALF_LIFE_S
    in_frame = decay * PET_FRAME_S / (1 - math.exp(-decay * PET_FRAME_S))
    reference_s = bed_start + math.log(in_frame) / decay
    ds.AcquisitionTime = _tm(plan.visit.pet_start_s + bed_start)
    ds.FrameReferenceTime = _ds(reference_s * 1000)
    ds.DecayFactor = _ds(math.exp(decay * reference_s))
    ds.ImageIndex = k + 1


def _int16_with_slope(bqml: np.ndarray) -> tuple[np.ndarray, str]:
    slope_text = _ds(max(float(bqml.max()), 1e-3) / 32767)
    stored = np.clip(np.rint(bqml / float(slope_text)), 0, 32767)
    return stored.astype("<i2"), slope_text


def _write_ct(plan: PatientPlan, anatomy: Anatomy, grid: Grid, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([plan.seed, plan.index, 1])
    ds = _ct_template(plan, grid)
    for k, z in enumerate(grid.zs):
        hu = ct_hu_slice(anatomy, grid, float(z), plan.lesions, rng)
        stored = np.clip(np.rint(hu + HU_OFFSET), 0, 4095).astype("<u2")
        _set_slice(ds, grid, k, _uid(plan.seed, plan.index, "ct", k), stored)
        ds.save_as(folder / f"CT_{k + 1:04d}.dcm", enforce_file_format=True)
    return grid.slices


def _write_pet(plan: PatientPlan, anatomy: Anatomy, grid: Grid, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([plan.seed, plan.index, 2])
    suv = pet_suv_volume(anatomy, grid, plan.lesions, rng)
    bqml = suv * (plan.visit.dose_at_pet_start_bq / (plan.visit.weight_kg * 1000.0))
    ds = _pet_template(plan, grid)
    for k in range(grid.slices):
        stored, slope = _int16_with_slope(bqml[k])
        ds.RescaleSlope = slope
        _pet_frame(ds, plan, k)
        _set_slice(ds, grid, k, _uid(plan.seed, plan.index, "pet", k), stored)
        ds.save_as(folder / f"PT_{k + 1:04d}.dcm", enforce_file_format=True)
    return grid.slices


# --- truth and entry point ----------------------------------------------------


def _grid_truth(grid: Grid) -> dict:
    return {
        "rows": grid.size,
        "columns": grid.size,
        "pixel_spacing_mm": grid.spacing,
        "slice_spacing_mm": grid.slice_mm,
        "slices": grid.slices,
        "z_range_mm": [float(grid.zs[-1]), float(grid.zs[0])],
    }


def _patient_truth(plan: PatientPlan, samples: dict, counts: dict) -> dict:
    visit = plan.visit
    return {
        "folder": plan.folder,
        "identity": asdict(plan.identity),
        "study_instance_uid": plan.uids["study"],
        "frame_of_reference_uid": plan.uids["frame_of_reference"],
        "ct_series_instance_uid": plan.uids["ct_series"],
        "pet_series_instance_uid": plan.uids["pet_series"],
        "study_date": visit.date,
        "patient_weight_kg": visit.weight_kg,
        "patient_size_m": visit.size_m,
        "injected_dose_bq": visit.dose_bq,
        "half_life_s": F18_HALF_LIFE_S,
        "injection_time": _tm(visit.injection_s),
        "ct_series_time": _tm(visit.ct_start_s),
        "pet_series_time": _tm(visit.pet_start_s),
        "uptake_s": visit.pet_start_s - visit.injection_s,
        "lesions": [
            {
                "organ": lesion.organ,
                "center_mm": list(lesion.center_mm),
                "radius_mm": lesion.radius_mm,
                "suv_max": lesion.suv_max,
                "hu": lesion.hu,
            }
            for lesion in plan.lesions
        ],
        "organ_samples_mm": samples,
        "files": counts,
    }


def phantom_write(*, out_dir: Path, slices: int = 200, patients: int = 1, seed: int = 0) -> dict:
    """Write a synthetic FDG PET/CT study per patient and its ground truth.

    Parameters
    ----------
    out_dir : Path
        Folder to write into (created if missing); see the module docstring
        for the layout.
    slices : int
        Number of CT slices (2 mm apart); the PET covers the same extent with
        4 mm slices. At least 32, so that every lesion fits.
    patients : int
        Number of patients, each with its own identity, study and lesions.
    seed : int
        Same seed, same identities, UIDs and pixel data.

    Returns
    -------
    dict
        The ground truth, also written to ``out_dir/truth.json``.
    """
    if slices < MIN_SLICES or patients < 1:
        raise ValueError(f"need slices >= {MIN_SLICES} and patients >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ct = Grid(CT_SIZE, CT_SLICE_MM, slices)
    pet = Grid(PET_SIZE, PET_SLICE_MM, math.ceil(slices * CT_SLICE_MM / PET_SLICE_MM))
    anatomy = Anatomy(slices * CT_SLICE_MM)
    truth: dict[str, Any] = {
        "generator": "imaging.phantom",
        "seed": seed,
        "layout": LAYOUT,
        "ct": _grid_truth(ct),
        "pet": _grid_truth(pet),
        "tissues": {t.name: {"hu": t.hu, "suv": t.suv} for t in TISSUES},
        "patients": [],
    }
    for index in range(patients):
        plan = _plan_patient(seed, index, anatomy, pet)
        counts = {
            "ct": _write_ct(plan, anatomy, ct, out_dir / plan.folder / "CT"),
            "pet": _write_pet(plan, anatomy, pet, out_dir / plan.folder / "PT"),
        }
        samples = organ_samples(anatomy, ct, plan.lesions)
        truth["patients"].append(_patient_truth(plan, samples, counts))
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n")
    return truth
