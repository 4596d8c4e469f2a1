"""MPR geometry: the plane a 2-D view shows, and sampling a volume on it with numpy.

Screen convention (radiological): axial seen from the feet (patient right on the
screen's left, anterior up); coronal seen from the front (head up, patient right on the
left); sagittal seen from the patient's left (anterior on the left, head up). The oblique
plane is the axial plane rotated about patient x by the first angle, then about patient y
by the second, so oblique (0, 0) is exactly axial.

Two sampling paths:

* **fast** — the plane is parallel to two index axes of the volume (any standard view of
  a volume whose direction cosines are a signed permutation): one slice (or a slab
  reduced along the third axis) is cut with numpy and resampled with 1-D index tables.
* **general** — anything else (oblique planes, tilted acquisitions, registered layers):
  every pixel's voxel index is computed and the volume is sampled nearest or trilinear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rendering.viewstate import SlabMode, ViewKind, ViewState
from rendering.volume import Volume

AXES = {
    ViewKind.AXIAL: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    ViewKind.CORONAL: ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    ViewKind.SAGITTAL: ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
}
LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
ALIGN_TOL = 1e-6


def orientation_letters(vector: np.ndarray) -> str:
    """DICOM patient-orientation letters (L/R, P/A, H/F) of an LPS direction, strongest first."""
    parts = sorted(((abs(float(c)), axis, float(c)) for axis, c in enumerate(vector)), reverse=True)
    letters = [LETTERS[axis][0 if c > 0 else 1] for size, axis, c in parts if size >= 0.25]
    return "".join(letters[:3])


def edge_letters(right: np.ndarray, down: np.ndarray) -> dict[str, str]:
    return {
        "left": orientation_letters(-right), "right": orientation_letters(right),
        "top": orientation_letters(-down), "bottom": orientation_letters(down),
    }


def plane_axes(state: ViewState, base: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, down, normal) unit vectors in patient LPS for a 2-D view, turned and mirrored on
    screen as ``camera2d`` says (:func:`screen_turned`)."""
    right, down, normal = _plane_axes(state, base)
    return (*screen_turned(right, down, state.camera2d.rotation, state.camera2d.flip_h,
                           state.camera2d.flip_v), normal)


def screen_turned(right: np.ndarray, down: np.ndarray, rotation: int, flip_h: bool,
                  flip_v: bool) -> tuple[np.ndarray, np.ndarray]:
    """The screen axes of a picture turned ``rotation`` degrees clockwise, then mirrored.

    Turning and mirroring the sampling axes, rather than the sampled pixels, keeps every user of
    the plane (probe, measurements, crosshair, orientation letters, the session's pixel-to-mm
    mapping) right by construction; on a square viewport the frame is exactly ``np.rot90`` /
    ``np.flip`` of the unturned one, since pixel centres map onto each other.
    """
    for _ in range(rotation // 90 % 4):
        right, down = -down, right
    return (-right if flip_h else right), (-down if flip_v else down)


def _plane_axes(state: ViewState, base: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if state.view is ViewKind.NATIVE:
        direction = np.asarray(base.direction, dtype=np.float64)
        return direction[:, 0].copy(), direction[:, 1].copy(), direction[:, 2].copy()
    if state.view is ViewKind.OBLIQUE:
        a, b = (math.radians(v) for v in state.oblique_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rotation = ry @ rx
        return rotation[:, 0].copy(), rotation[:, 1].copy(), rotation[:, 2].copy()
    right, down, normal = (np.array(v) for v in AXES[state.view])
    return right, down, normal


@dataclass(frozen=True)
class Plane:
    """Pixel (px, py) centre -> ``center + (px + .5 - W/2) * mpp * right + (py + .5 - H/2) * mpp * down``."""

    center: np.ndarray
    right: np.ndarray
    down: np.ndarray
    normal: np.ndarray
    mm_per_pixel: float
    width: int
    height: int

    def point(self, x: float, y: float) -> np.ndarray:
        """Patient mm of viewport position (x, y) in pixels (0, 0 = top-left corner)."""
        return (self.center + (x - self.width / 2) * self.mm_per_pixel * self.right
                + (y - self.height / 2) * self.mm_per_pixel * self.down)

    def screen(self, point: np.ndarray) -> tuple[float, float]:
        """Viewport pixels (x, y) of a patient point projected onto the plane."""
        offset = np.asarray(point, dtype=np.float64) - self.center
        return (float(offset @ self.right) / self.mm_per_pixel + self.width / 2,
                float(offset @ self.down) / self.mm_per_pixel + self.height / 2)

    def first_pixel(self) -> np.ndarray:
        return self.point(0.5, 0.5)

    def as_dict(self) -> dict:
        return {
            "center_mm": [float(v) for v in self.center],
            "right": [float(v) for v in self.right],
            "down": [float(v) for v in self.down],
            "normal": [float(v) for v in self.normal],
            "mm_per_pixel": self.mm_per_pixel,
        }


def view_plane(state: ViewState, base: Volume) -> Plane:
    """The plane through the focus, fitted so zoom 1 shows the whole base volume."""
    right, down, normal = plane_axes(state, base)
    focus = np.asarray(state.focus_mm, dtype=np.float64) if state.focus_mm else base.center()
    half = base.index_to_patient_matrix * 0.5
    corners = base.corners()
    corners = np.concatenate([corners + sx * half[:, 0] + sy * half[:, 1] + sz * half[:, 2]
                              for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    along_r, along_d = corners @ right, corners @ down
    extent_r = float(along_r.max() - along_r.min())
    extent_d = float(along_d.max() - along_d.min())
    mpp = max(extent_r / state.width, extent_d / state.height) / state.camera2d.zoom
    mid = (along_r.max() + along_r.min()) / 2 * right + (along_d.max() + along_d.min()) / 2 * down
    pan_r, pan_d = state.camera2d.pan_mm
    center = mid + (focus @ normal) * normal + pan_r * right + pan_d * down
    return Plane(center, right, down, normal, mpp, state.width, state.height)


@dataclass(frozen=True)
class Sampled:
    """Values on the viewport grid and where they are valid (inside the volume)."""

    values: np.ndarray
    valid: np.ndarray | None


def _affine(plane: Plane, volume: Volume, transform: np.ndarray | None):
    """(A, B, C, N): voxel index (k, j, i) of pixel (px, py) = A + px B + py C; N per mm of normal."""
    points = np.stack([plane.first_pixel(), plane.first_pixel() + plane.right * plane.mm_per_pixel,
                       plane.first_pixel() + plane.down * plane.mm_per_pixel,
                       plane.first_pixel() + plane.normal])
    if transform is not None:
        homogeneous = np.concatenate([points, np.ones((4, 1))], axis=1)
        points = (homogeneous @ np.linalg.inv(transform).T)[:, :3]
    a, b, c, n = volume.patient_to_index(points)
    return a, b - a, c - a, n - a


def _aligned_axis(vector: np.ndarray) -> int | None:
    nonzero = np.flatnonzero(np.abs(vector) > ALIGN_TOL * max(1.0, float(np.abs(vector).max())))
    return int(nonzero[0]) if nonzero.size == 1 else None


def _slab_count(mode: SlabMode, thickness_mm: float, step_mm: float) -> int:
    if mode is SlabMode.NONE or thickness_mm <= step_mm:
        return 1
    return max(1, round(thickness_mm / step_mm))


def _reduce(stack: np.ndarray, mode: SlabMode, axis: int) -> np.ndarray:
    if stack.shape[axis] == 1:
        return np.take(stack, 0, axis=axis)
    if mode is SlabMode.MIP:
        return stack.max(axis=axis)
    if mode is SlabMode.MINIP:
        return stack.min(axis=axis)
    return stack.mean(axis=axis, dtype=np.float32)


def _table(start: float, step: float, count: int, size: int, linear: bool):
    """Index table along one screen axis: (i0, i1, weight of i1, valid)."""
    pos = start + step * np.arange(count, dtype=np.float64)
    valid = (pos >= -0.5) & (pos <= size - 0.5)
    if not linear:
        idx = np.clip(np.floor(pos + 0.5), 0, size - 1).astype(np.intp)
        return idx, None, None, valid
    pos = np.clip(pos, 0, size - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, (pos - i0).astype(np.float32), valid


def sample(plane: Plane, volume: Volume, *, mode: SlabMode, thickness_mm: float, linear: bool,
           transform: np.ndarray | None = None) -> Sampled:
    """Values of ``volume`` on the plane's pixel grid (slab-reduced along the normal)."""
    a, b, c, n = _affine(plane, volume, transform)
    ax_r, ax_d, ax_n = _aligned_axis(b), _aligned_axis(c), _aligned_axis(n)
    if None not in (ax_r, ax_d, ax_n) and len({ax_r, ax_d, ax_n}) == 3:
        return _sample_fast(plane, volume, a, b, c, n, (ax_r, ax_d, ax_n), mode, thickness_mm, linear)
    return _sample_general(plane, volume, a, b, c, n, mode, thickness_mm, linear)


def _sample_fast(plane, volume, a, b, c, n, axes, mode, thickness_mm, linear) -> Sampled:
    ax_r, ax_d, ax_n = axes
    shape = volume.shape
    step_mm = volume.spacing[ax_n]
    count = _slab_count(mode, thickness_mm, step_mm)
    center = a[ax_n]
    if not -0.5 <= center <= shape[ax_n] - 0.5:
        return Sampled(np.zeros((plane.height, plane.width, *volume.voxels.shape[3:]), np.float32),
                       np.zeros((plane.height, plane.width), bool))
    k = int(np.clip(math.floor(center + 0.5), 0, shape[ax_n] - 1))
    lo = max(0, k - count // 2)
    hi = min(shape[ax_n], lo + count)
    index: list[slice | int] = [slice(None)] * 3
    if hi - lo == 1:
        index[ax_n] = lo
        slab = volume.voxels[tuple(index)]
    else:
        index[ax_n] = slice(lo, hi)
        slab = _reduce(volume.voxels[tuple(index)], mode, ax_n)
    if ax_r < ax_d:
        slab = np.swapaxes(slab, 0, 1)  # a view: rows of the slab are now screen rows
    r0, r1, rw, rvalid = _table(a[ax_r], b[ax_r], plane.width, shape[ax_r], linear)
    d0, d1, dw, dvalid = _table(a[ax_d], c[ax_d], plane.height, shape[ax_d], linear)
    if linear:
        top, bottom = _pick(slab, d0, r0, r1, rw), _pick(slab, d1, r0, r1, rw)
        column = _trailing(dw, top.ndim - 1)
        values = top * (1 - column) + bottom * column
    else:
        values = _pick(slab, d0, r0)
    valid = None
    if not (rvalid.all() and dvalid.all()):
        valid = dvalid[:, None] & rvalid[None, :]
    return Sampled(values, valid)


def _as_slice(indices: np.ndarray) -> slice | None:
    """The basic slice equal to an index table in arithmetic progression, else None."""
    if indices.size < 2:
        return slice(int(indices[0]), int(indices[0]) + 1) if indices.size else None
    step = int(indices[1] - indices[0])
    if step == 0 or not np.array_equal(np.diff(indices), np.full(indices.size - 1, step)):
        return None
    stop = int(indices[-1]) + step
    return slice(int(indices[0]), None if stop < 0 else stop, step)


def _pick(slab: np.ndarray, rows: np.ndarray, columns: np.ndarray,
          right: np.ndarray | None = None, weight: np.ndarray | None = None) -> np.ndarray:
    """``slab[rows][:, columns]`` (blended with ``right`` by ``weight``): views where the tables allow."""
    row_slice = _as_slice(rows)
    picked = slab[row_slice] if row_slice is not None else slab.take(rows, axis=0)
    if right is None or weight is None:
        column_slice = _as_slice(columns)
        return picked[:, column_slice] if column_slice is not None else picked.take(columns, axis=1)
    weight = _trailing(weight, picked.ndim - 2)
    return picked.take(columns, axis=1) * (1 - weight) + picked.take(right, axis=1) * weight


def _trailing(weights: np.ndarray, extra: int) -> np.ndarray:
    """Per-row or per-column weights shaped to broadcast over ``extra`` trailing (colour) axes."""
    return weights.reshape(weights.shape + (1,) * extra)


def _gather(flat: np.ndarray, shape, k, j, i) -> np.ndarray:
    return flat[(k * shape[1] + j) * shape[2] + i]


def _sample_general(plane, volume, a, b, c, n, mode, thickness_mm, linear) -> Sampled:
    shape = volume.shape
    flat = volume.voxels.reshape(-1)
    px = np.arange(plane.width, dtype=np.float32)
    py = np.arange(plane.height, dtype=np.float32)
    step_mm = min(volume.spacing)
    count = _slab_count(mode, thickness_mm, step_mm)
    offsets = (np.arange(count) - (count - 1) / 2) * (thickness_mm / count if count > 1 else 0.0)
    results = []
    valid_any = None
    for offset in offsets:
        start = a + n * offset
        coords = [start[d] + px[None, :] * np.float32(b[d]) + py[:, None] * np.float32(c[d])
                  for d in range(3)]
        valid = np.ones((plane.height, plane.width), bool)
        for d in range(3):
            valid &= (coords[d] >= -0.5) & (coords[d] <= shape[d] - 0.5)
        if linear:
            base, frac = [], []
            for d in range(3):
                pos = np.clip(coords[d], 0, shape[d] - 1)
                lower = np.minimum(pos.astype(np.intp), shape[d] - 2) if shape[d] > 1 else np.zeros_like(
                    pos, dtype=np.intp)
                base.append(lower)
                frac.append(pos - lower if shape[d] > 1 else np.zeros_like(pos))
            k0, j0, i0 = base
            fk, fj, fi = frac
            k1, j1, i1 = (np.minimum(x + 1, s - 1) for x, s in zip(base, shape, strict=True))
            c00 = _gather(flat, shape, k0, j0, i0) * (1 - fi) + _gather(flat, shape, k0, j0, i1) * fi
            c01 = _gather(flat, shape, k0, j1, i0) * (1 - fi) + _gather(flat, shape, k0, j1, i1) * fi
            c10 = _gather(flat, shape, k1, j0, i0) * (1 - fi) + _gather(flat, shape, k1, j0, i1) * fi
            c11 = _gather(flat, shape, k1, j1, i0) * (1 - fi) + _gather(flat, shape, k1, j1, i1) * fi
            values = (c00 * (1 - fj) + c01 * fj) * (1 - fk) + (c10 * (1 - fj) + c11 * fj) * fk
        else:
            k, j, i = (np.clip(np.floor(coords[d] + 0.5), 0, shape[d] - 1).astype(np.intp) for d in range(3))
            values = _gather(flat, shape, k, j, i)
        results.append(values)
        valid_any = valid if valid_any is None else (valid_any | valid)
    values = _reduce(np.stack(results), mode, 0) if count > 1 else results[0]
    if valid_any is None or valid_any.all():
        return Sampled(values, None)
    return Sampled(values, valid_any)


def probe_voxel(volume: Volume, point: np.ndarray, transform: np.ndarray | None = None) -> float | None:
    """Nearest-voxel value at a patient point, or None outside the volume."""
    if transform is not None:
        point = (np.linalg.inv(transform) @ np.append(point, 1.0))[:3]
    index = np.floor(volume.patient_to_index(point) + 0.5).astype(int)
    if any(not 0 <= v < s for v, s in zip(index, volume.shape, strict=True)):
        return None
    return float(volume.voxels[tuple(index)])
