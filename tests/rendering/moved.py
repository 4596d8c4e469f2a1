"""A phantom PET series rewritten as if the patient had moved between the CT and the PET.

A rigid move of the patient is, for the images, only a change of their planes' geometry:
every file keeps its pixels and gets a new ``ImageOrientationPatient`` and
``ImagePositionPatient``, so the moved series is exact (no resampling) and its truth is
the transform itself. The moved series gets its own frame of reference, as a scan on
another day or another scanner would, or (``same_frame``) keeps the original's, as the PET
of a PET/CT does when the patient moved or breathed between the two scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

DEMO_SHIFT_MM = (8.0, -4.0, 8.0)
"""12 mm in all."""
DEMO_ROTATION_DEG = (6.0, 0.0, 6.0)
"""About the x (left-right) and z (head-foot) axes through the volume's centre."""


def rotation_matrix(degrees_xyz: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (LPS axes), angles in degrees."""
    ax, ay, az = np.radians(degrees_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_matrix(rotation: np.ndarray, shift_mm, about_mm) -> np.ndarray:
    """4x4 of ``p -> R (p - about) + about + shift``."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = np.asarray(about_mm) + np.asarray(shift_mm) - rotation @ np.asarray(about_mm)
    return matrix


def series_centre_mm(headers: Sequence[pydicom.Dataset]) -> np.ndarray:
    """Patient mm of the centre of a single-frame series' voxel block."""
    orientation = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = sorted((np.array([float(v) for v in ds.ImagePositionPatient]) for ds in headers),
                       key=lambda position: float(position @ normal))
    first, last = positions[0], positions[-1]
    column_step, row_step = (float(v) for v in headers[0].PixelSpacing[::-1])
    across = (orientation[:3] * column_step * (int(headers[0].Columns) - 1)
              + orientation[3:] * row_step * (int(headers[0].Rows) - 1))
    return (first + last + across) / 2


def pet_move(source: Path, dest: Path, *, shift_mm=DEMO_SHIFT_MM,
             rotation_deg=DEMO_ROTATION_DEG, same_frame: bool = False) -> np.ndarray:
    """Write ``source``'s series to ``dest`` as seen after the patient moved; return T.

    The patient (everything the images show) is carried by ``M: p -> R (p - c) + c + shift``,
    ``c`` the series' centre. ``T = M^-1`` maps the moved series' patient mm back onto the
    original frame (the CT's): the registration that undoes the move.
    """
    files = sorted(Path(source).glob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    move = rigid_matrix(rotation_matrix(rotation_deg), shift_mm, series_centre_mm(headers))
    frame_of_reference = str(headers[0].FrameOfReferenceUID) if same_frame else generate_uid()
    series = generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        _move_plane(ds, move)
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dest / path.name, enforce_file_format=True)
    return np.linalg.inv(move)


def _move_plane(ds: pydicom.Dataset, move: np.ndarray) -> None:
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    turned = orientation @ move[:3, :3].T
    placed = move[:3, :3] @ position + move[:3, 3]
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in turned.ravel()]
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in placed]
    if "SliceLocation" in ds:
        del ds.SliceLocation
