"""3-D volume rendering with VTK off-screen (EGL), presets as transfer functions.

Mapper choice, measured on the 2-core llvmpipe machine (docs/benchmarks.md): the
OpenGL GPU ray caster costs 250 ms for a 128^3 proxy at 256^2 and 1.7 s for the full CT,
while the multithreaded CPU ray caster (``vtkFixedPointVolumeRayCastMapper``) costs
~40 ms and ~90 ms. ``mapper="auto"`` therefore takes the CPU ray caster when the OpenGL
renderer is llvmpipe/softpipe and the GPU ray caster when a real GPU is present.

Interactive quality renders a block-averaged proxy (longest side <= 128 voxels) into a
viewport at most 256 pixels on its longest side, one sample per proxy voxel (half-voxel
steps cost 97 against 62 ms a frame for the bone preset, same run); still quality renders the full viewport
from the volume block-averaged only as far as needed to stay under 32 M voxels (a
512x512x300 CT renders at 256x256x150: ~0.3 s instead of ~0.5 s warm and 8 s cold).
Each (series, level) keeps its mapper, so gradients and min/max tables are computed
once per worker.

Fused layers (issue #16): each visible one is rendered as a MIP of its own volume with the
base's camera and framing, its actor carried into the base's frame by its registration, as a
grey ramp over its window (0 below it, 255 at its top) read back into numpy; its palette and
``alpha = opacity x that ramp`` then lay it over the base in 8-bit fixed point, so its empty
background and everything under its window leave the base as it was.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  (registers OpenGL volume overrides)
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkUnsignedCharArray
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPiecewiseFunction
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkColorTransferFunction,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkVolume,
    vtkVolumeProperty,
)
from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper, vtkVolumeMapper
from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkOpenGLGPUVolumeRayCastMapper

from rendering.engine.crop import cropping_planes
from rendering.engine.palettes import palette_rgb
from rendering.viewstate import MAX_LAYERS, Camera3D, Palette, Preset3D, Quality
from rendering.volume import Volume

PROXY_MAX_VOXELS_SIDE = 128
INTERACTIVE_MAX_PIXELS_SIDE = 256
STILL_MAX_VOXELS = 32 * 1024 * 1024
MAPPER_CACHE = 2 * MAX_LAYERS
"""Levels kept: every layer of a fused view at both qualities, so moving and letting go of a
fused 3-D view never rebuilds a level (a fused layer's is small: a PET of 128^2 x 150 is 10 MB)."""
FUSED_SPARSE_VOXEL_PX = 2.0
"""While interactive, a fused layer whose level's voxels span at least this many pixels casts a
ray every second pixel each way (the mapper interpolates between them): at least one ray per
proxy voxel, as the base takes one sample per proxy voxel along its rays. A still casts one ray
per pixel."""


@dataclass(frozen=True)
class TransferFunction:
    colours: tuple[tuple[float, tuple[float, float, float]], ...]
    opacities: tuple[tuple[float, float], ...]
    shade: bool
    mip: bool = False


CT_PRESETS: dict[Preset3D, TransferFunction] = {
    Preset3D.CT_BONE: TransferFunction(
        colours=((-1000, (0, 0, 0)), (150, (0.73, 0.25, 0.30)), (300, (0.90, 0.82, 0.56)),
                 (1000, (1.0, 1.0, 0.95)), (3000, (1, 1, 1))),
        opacities=((-1000, 0.0), (150, 0.0), (250, 0.25), (600, 0.7), (3000, 0.9)),
        shade=True,
    ),
    Preset3D.CT_SOFT_TISSUE: TransferFunction(
        colours=((-1000, (0, 0, 0)), (-300, (0.55, 0.25, 0.15)), (-100, (0.88, 0.60, 0.29)),
                 (40, (0.80, 0.30, 0.25)), (200, (1.0, 0.94, 0.85)), (3000, (1, 1, 1))),
        opacities=((-1000, 0.0), (-300, 0.0), (-120, 0.0), (-60, 0.01), (20, 0.03), (60, 0.12),
                   (250, 0.6), (3000, 0.8)),
        shade=True,
    ),
    Preset3D.CT_LUNG: TransferFunction(
        colours=((-1000, (0, 0, 0)), (-900, (0.9, 0.55, 0.5)), (-600, (0.95, 0.75, 0.7)),
                 (-200, (0.8, 0.4, 0.3)), (300, (1, 1, 0.9))),
        opacities=((-1000, 0.0), (-940, 0.0), (-850, 0.08), (-700, 0.15), (-500, 0.0),
                   (200, 0.0), (400, 0.3), (3000, 0.5)),
        shade=True,
    ),
}


@dataclass(frozen=True)
class FusedLayer:
    """A layer drawn over the base as a MIP in its palette.

    ``low``/``high`` is its window in stored units (what maps to the palette's first and last
    entries); ``transform`` the row-major 4x4 from its patient mm into the base's (None: the
    same frame), as :class:`rendering.viewstate.Layer` carries it.
    """

    volume: Volume
    low: float
    high: float
    palette: Palette
    opacity: float
    transform: np.ndarray | None = None


def opengl_is_software(window) -> bool:
    info = (window.ReportCapabilities() or "").lower()
    return any(name in info for name in ("llvmpipe", "softpipe", "swrast", "software"))


def block_mean(voxels: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return voxels
    nz, ny, nx = (max(1, s // factor) for s in voxels.shape)
    cropped = voxels[: nz * factor, : ny * factor, : nx * factor]
    blocks = cropped.reshape(nz, factor, ny, factor, nx, factor)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32).astype(voxels.dtype)


def level_factor(volume: Volume, quality: Quality) -> int:
    if quality is Quality.INTERACTIVE:
        return max(1, math.ceil(max(volume.shape) / PROXY_MAX_VOXELS_SIDE))
    count = math.prod(volume.shape)
    return max(1, math.ceil((count / STILL_MAX_VOXELS) ** (1 / 3)))


def render_size(width: int, height: int, quality: Quality) -> tuple[int, int]:
    if quality is Quality.STILL:
        return width, height
    scale = min(1.0, INTERACTIVE_MAX_PIXELS_SIDE / max(width, height))
    return max(16, round(width * scale)), max(16, round(height * scale))


def composed(transform: np.ndarray | None, matrix: vtkMatrix4x4) -> vtkMatrix4x4:
    """``transform @ matrix``: a level's index-to-patient placement carried into another frame."""
    if transform is None:
        return matrix
    placed = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    product = np.asarray(transform, dtype=np.float64).reshape(4, 4) @ placed
    out = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(product[r, c]))
    return out


def composite_over(image: np.ndarray, ramp: np.ndarray, palette: Palette, opacity: float) -> np.ndarray:
    """``image (1 - a) + palette[ramp] a`` with ``a = opacity x ramp / 255``, a new image.

    ``image`` (H, W, 3) uint8; ``ramp`` (H, W) uint8, the layer's MIP over its window. Weights
    are out of 256 in uint16 (at most 255 x 256 + 128), as the 2-D blend does: a pixel where
    ``a`` is 0 comes back exactly as it was.
    """
    weight = np.uint16(round(opacity * 256))
    alpha = ramp.astype(np.uint16)
    alpha *= weight
    alpha += np.uint16(127)
    alpha //= np.uint16(255)
    mixed = palette_rgb(ramp, palette).astype(np.uint16)
    mixed *= alpha[..., None]
    np.subtract(np.uint16(256), alpha, out=alpha)
    mixed += image.astype(np.uint16) * alpha[..., None]
    mixed += np.uint16(128)
    mixed >>= 8
    return mixed.astype(np.uint8)


def _cropped(mapper: vtkVolumeMapper, crop: Sequence[float] | None, volume: Volume,
             level_spacing: Sequence[float]) -> None:
    """The mapper keeps only the voxels inside ``crop`` (None: all of them); mappers are cached."""
    if crop is None:
        mapper.SetCropping(0)
        return
    mapper.SetCropping(1)
    mapper.SetCroppingRegionPlanes(*cropping_planes(crop, volume, level_spacing))
    mapper.SetCroppingRegionFlagsToSubVolume()


def camera_vectors(camera: Camera3D) -> tuple[np.ndarray, np.ndarray]:
    """(direction from focal point to eye, view up) in LPS; 0/0 looks at the patient's front."""
    az, el = math.radians(camera.azimuth), math.radians(camera.elevation)
    eye = np.array([math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el)])
    up = np.array([-math.sin(el) * math.sin(az), math.sin(el) * math.cos(az), math.cos(el)])
    return eye, up


class VolumeRenderer:
    """One off-screen EGL window per process; not thread-safe (one render at a time)."""

    def __init__(self, mapper: str = "auto") -> None:
        self.window = vtkEGLRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(64, 64)
        self.renderer = vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.window.Render()
        if mapper == "auto":
            mapper = "cpu" if opengl_is_software(self.window) else "gpu"
        self.mapper_kind = mapper
        self.actor = vtkVolume()
        self.property = vtkVolumeProperty()
        self.property.SetInterpolationTypeToLinear()
        self.actor.SetProperty(self.property)
        self.renderer.AddVolume(self.actor)
        self.fused_actor = vtkVolume()
        self.fused_property = vtkVolumeProperty()
        self.fused_property.SetInterpolationTypeToLinear()
        self.fused_property.ShadeOff()
        self.fused_actor.SetProperty(self.fused_property)
        self.fused_actor.VisibilityOff()
        self.renderer.AddVolume(self.fused_actor)
        self._levels: OrderedDict[tuple, tuple] = OrderedDict()
        self._surfaces: OrderedDict[tuple, list[vtkActor]] = OrderedDict()
        self._shown_surfaces: list[vtkActor] = []

    def _level(self, volume: Volume, quality: Quality, mip: bool):
        factor = level_factor(volume, quality)
        key = (volume.series_id, id(volume), factor, mip)
        if key in self._levels:
            self._levels.move_to_end(key)
            return self._levels[key]
        voxels = np.ascontiguousarray(block_mean(volume.voxels, factor))
        spacing = [s * factor for s in volume.spacing]
        image = vtkImageData()
        image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
        image.SetSpacing(spacing[2], spacing[1], spacing[0])
        image.GetPointData().SetScalars(numpy_to_vtk(voxels.reshape(-1), deep=False))
        mapper: vtkVolumeMapper
        if self.mapper_kind == "gpu":
            gpu = vtkOpenGLGPUVolumeRayCastMapper()
            gpu.SetAutoAdjustSampleDistances(0)
            gpu.SetSampleDistance(min(spacing) * 0.5)
            mapper = gpu
        else:
            cpu = vtkFixedPointVolumeRayCastMapper()
            cpu.SetAutoAdjustSampleDistances(0)
            cpu.SetSampleDistance(min(spacing))
            cpu.SetImageSampleDistance(1.0)
            mapper = cpu
        mapper.SetInputData(image)
        if mip:
            mapper.SetBlendModeToMaximumIntensity()
        else:
            mapper.SetBlendModeToComposite()
        origin = np.asarray(volume.origin) + volume.direction @ (
            np.array([spacing[2], spacing[1], spacing[0]]) - np.array(volume.spacing[::-1])) / 2
        matrix = vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, float(volume.direction[r, c]))
            matrix.SetElement(r, 3, float(origin[r]))
        entry = (mapper, matrix, voxels, image)
        self._levels[key] = entry
        while len(self._levels) > MAPPER_CACHE:
            self._levels.popitem(last=False)
        return entry

    def _segment_surfaces(self, labels: Volume) -> list[vtkActor]:
        """One surface per shown segment of a reader's segmentation (discrete flying edges on its
        label map, in patient mm), kept per revision and look: the layer id names both."""
        key = (labels.series_id, id(labels))
        if key in self._surfaces:
            self._surfaces.move_to_end(key)
            return self._surfaces[key]
        voxels = np.ascontiguousarray(labels.voxels, dtype=np.uint8)
        image = vtkImageData()
        image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
        image.SetSpacing(*(float(s) for s in labels.spacing[::-1]))
        image.GetPointData().SetScalars(numpy_to_vtk(voxels.reshape(-1), deep=True))
        matrix = vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, float(labels.direction[r, c]))
            matrix.SetElement(r, 3, float(labels.origin[r]))
        actors = []
        present = set(np.unique(voxels).tolist())
        for number, colour, alpha in labels.presentation.label_style:
            if alpha <= 0 or number not in present:
                continue
            edges = vtkDiscreteFlyingEdges3D()
            edges.SetInputData(image)
            edges.SetValue(0, float(number))
            normals = vtkPolyDataNormals()
            normals.SetInputConnection(edges.GetOutputPort())
            mapper = vtkPolyDataMapper()
            mapper.SetInputConnection(normals.GetOutputPort())
            mapper.ScalarVisibilityOff()
            actor = vtkActor()
            actor.SetMapper(mapper)
            actor.SetUserMatrix(matrix)
            actor.GetProperty().SetColor(*(int(colour[n:n + 2], 16) / 255 for n in (1, 3, 5)))
            actor.GetProperty().SetOpacity(max(alpha, 0.35))
            actors.append(actor)
        self._surfaces[key] = actors
        while len(self._surfaces) > MAPPER_CACHE:
            self._surfaces.popitem(last=False)
        return actors

    def _show_surfaces(self, labels: Volume | None) -> None:
        for actor in self._shown_surfaces:
            self.renderer.RemoveActor(actor)
        self._shown_surfaces = self._segment_surfaces(labels) if labels is not None else []
        for actor in self._shown_surfaces:
            self.renderer.AddActor(actor)

    def render(self, *, volume: Volume, preset: Preset3D, camera: Camera3D, width: int, height: int,
               quality: Quality, window: tuple[float, float] | None = None,
               lut: np.ndarray | None = None,
               segmentation: Volume | None = None, transform: np.ndarray | None = None,
               fused: Sequence[FusedLayer] = (),
               crop: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB image (h, w, 3) uint8 plus the screen's right and down vectors in LPS.

        ``window`` (low, high in native units) and ``lut`` (256x3 uint8) colour the PET MIP;
        ``segmentation`` (a reader's label volume) adds each shown segment as a surface;
        ``transform`` carries ``volume`` into the frame the camera looks at (None: its own).
        ``fused`` are laid over the base in order (see the module docstring); one whose
        opacity is 0 is not rendered at all. ``crop`` (a box along ``volume``'s axes,
        :mod:`rendering.engine.crop`) keeps only the voxels inside it.
        """
        self._show_surfaces(segmentation)
        self.actor.VisibilityOn()
        self.fused_actor.VisibilityOff()
        mip = preset is Preset3D.PET_MIP
        mapper, matrix, _, image = self._level(volume, quality, mip)
        _cropped(mapper, crop, volume, image.GetSpacing()[::-1])
        self.actor.SetMapper(mapper)
        self.actor.SetUserMatrix(composed(transform, matrix))
        colour, opacity = vtkColorTransferFunction(), vtkPiecewiseFunction()
        if mip:
            low, high = window if window else (float(volume.voxels.min()), float(volume.voxels.max()))
            table = lut if lut is not None else np.stack([np.arange(256)] * 3, axis=1)
            for index in range(0, 256, 15):
                value = low + (high - low) * index / 255
                colour.AddRGBPoint(value, *(float(c) / 255 for c in table[index]))
            colour.AddRGBPoint(high, *(float(c) / 255 for c in table[255]))
            opacity.AddPoint(low, 1.0)
            opacity.AddPoint(high, 1.0)
            self.property.ShadeOff()
            background = table[0] / 255.0
        else:
            function = CT_PRESETS[preset]
            for value, rgb in function.colours:
                colour.AddRGBPoint(value, *rgb)
            for value, alpha in function.opacities:
                opacity.AddPoint(value, alpha)
            self.property.SetShade(int(function.shade))
            self.property.SetAmbient(0.3)
            self.property.SetDiffuse(0.7)
            self.property.SetSpecular(0.2)
            background = np.zeros(3)
        self.property.SetColor(colour)
        self.property.SetScalarOpacity(opacity)
        self.renderer.SetBackground(*(float(v) for v in background))
        w, h = render_size(width, height, quality)
        self.window.SetSize(w, h)
        eye, up = camera_vectors(camera)
        bounds = self.actor.GetBounds()
        centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2,
                           (bounds[4] + bounds[5]) / 2])
        half = max(bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4]) / 2
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre + eye * half * 4))
        cam.SetViewUp(*up)
        cam.SetParallelScale(half * 1.05 / camera.zoom)
        self.renderer.ResetCameraClippingRange()
        self.window.Render()
        image = np.ascontiguousarray(self._read_back(w, h)[..., :3])
        drawn = [layer for layer in fused if layer.opacity > 0]
        if drawn:
            self._hide_base()
            try:
                for layer in drawn:
                    ramp = self._fused_ramp(layer, quality, centre, eye, half, w, h)
                    image = composite_over(image, ramp, layer.palette, layer.opacity)
            finally:
                self._show_base()
        right = np.cross(-eye, up)
        return image, right, -up

    def _read_back(self, w: int, h: int) -> np.ndarray:
        """The window's (h, w, 4) RGBA, top row first (a view of VTK's buffer, flipped)."""
        buffer = vtkUnsignedCharArray()
        self.window.GetRGBACharPixelData(0, 0, w - 1, h - 1, 0, buffer)
        return vtk_to_numpy(buffer).reshape(h, w, 4)[::-1]

    def _hide_base(self) -> None:
        self.actor.VisibilityOff()
        for actor in self._shown_surfaces:
            actor.VisibilityOff()
        self.renderer.SetBackground(0.0, 0.0, 0.0)

    def _show_base(self) -> None:
        self.fused_actor.VisibilityOff()
        self.actor.VisibilityOn()
        for actor in self._shown_surfaces:
            actor.VisibilityOn()

    def _fused_ramp(self, layer: FusedLayer, quality: Quality, centre: np.ndarray, eye: np.ndarray,
                    half: float, w: int, h: int) -> np.ndarray:
        """A fused layer's MIP as uint8 over its window (0 at or below ``low``, 255 from ``high``),
        seen by the base's camera: same focal point, view up and parallel scale, the eye moved
        back only as far as the layer's own extent needs (a parallel projection: same picture)."""
        mapper, matrix, _, image = self._level(layer.volume, quality, True)
        self.fused_actor.SetMapper(mapper)
        self.fused_actor.SetUserMatrix(composed(layer.transform, matrix))
        low, high = layer.low, max(layer.high, layer.low + 1e-6)
        colour, opacity = vtkColorTransferFunction(), vtkPiecewiseFunction()
        colour.AddRGBPoint(low, 0.0, 0.0, 0.0)
        colour.AddRGBPoint(high, 1.0, 1.0, 1.0)
        opacity.AddPoint(low, 1.0)
        opacity.AddPoint(high, 1.0)
        self.fused_property.SetColor(colour)
        self.fused_property.SetScalarOpacity(opacity)
        self.fused_actor.VisibilityOn()
        bounds = np.array(self.fused_actor.GetBounds()).reshape(3, 2)
        corners = np.array([[bounds[0, a], bounds[1, b], bounds[2, c]]
                             for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        reach = float(np.linalg.norm(corners - centre, axis=1).max())
        cam = self.renderer.GetActiveCamera()
        cam.SetPosition(*(centre + eye * max(half * 4, reach * 2)))
        self.renderer.ResetCameraClippingRange()
        voxel_px = min(image.GetSpacing()) / (2 * cam.GetParallelScale() / h)
        sparse = quality is Quality.INTERACTIVE and voxel_px >= FUSED_SPARSE_VOXEL_PX
        mapper.SetImageSampleDistance(2.0 if sparse else 1.0)
        try:
            self.window.Render()
        finally:
            mapper.SetImageSampleDistance(1.0)
        return np.ascontiguousarray(self._read_back(w, h)[..., 0])
