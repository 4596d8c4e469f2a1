"""The render engine: a complete :class:`ViewState` plus volumes in, one encoded frame out.

Stateless between calls apart from caches (VTK mappers for 3-D), so any worker process
can serve any request. ``render`` and ``probe`` never touch the network or a database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gateway.i18n import gettext_noop
from rendering.encoding import Encoding, encoder_for
from rendering.engine import planes
from rendering.engine.crop import box_onto, crop_2d
from rendering.engine.palettes import (
    GREYSCALE,
    LUTS,
    indices_grey,
    label_rgb,
    palette_rgb,
    styled_label_tables,
    voi_indices,
    window_grey,
    window_indices,
)
from rendering.said import SaidError
from rendering.viewstate import Layer, Preset3D, Quality, SlabMode, ViewKind, ViewState, WindowUnit
from rendering.volume import MODALITIES_SUV, Voi, Volume

if TYPE_CHECKING:
    from rendering.engine.volume3d import FusedLayer, VolumeRenderer


class RenderError(SaidError):
    """The state cannot be rendered with these volumes; the message is safe to show the user.

    Its words are said to the reader (:func:`rendering.said.said`), translated there: a worker
    raises it with an English template marked ``gettext_noop`` and its values.
    """


class FrameOfReferenceError(RenderError):
    """Layers come from different frames of reference and no registration was supplied."""


class MissingVolumeError(RenderError):
    """A layer names a series the caller did not supply (or the source does not know)."""


@dataclass(frozen=True)
class LayerInfo:
    series_id: str
    modality: str
    window_center: float
    window_width: float
    unit: str
    palette: str
    opacity: float


@dataclass(frozen=True)
class Overlay:
    """Facts the client draws itself (no PHI): letters, scale, position, windows."""

    orientation: dict[str, str]
    """Letters for the ``left``, ``right``, ``top`` and ``bottom`` edges (L/R, A/P, H/F)."""
    mm_per_pixel: float | None
    """Of the encoded frame's pixels (None for 3-D); the scale bar."""
    slice_position_mm: float | None
    """Focus along the plane normal (axial z, coronal y, sagittal x; LPS mm)."""
    slice_index: int | None
    slice_count: int | None
    focus_mm: tuple[float, float, float] | None
    crosshair_px: tuple[float, float] | None
    """Where the focus lies in viewport pixels; reference lines of orthogonal views go through it."""
    plane: dict | None
    """Plane geometry (``center_mm``, ``right``, ``down``, ``normal``, ``mm_per_pixel``)."""
    layers: tuple[LayerInfo, ...] = field(default=())
    zoom: float | None = None
    """The 2-D camera's zoom, 1 = fitted to the viewport (None for 3-D)."""
    slab: tuple[str, float] | None = None
    """Slab mode and thickness in mm, when a slab is shown."""
    time_point: tuple[int, int] | None = None
    """(1-based time point, time points) of a dynamic base layer."""


@dataclass(frozen=True)
class RenderedFrame:
    data: bytes
    encoding: Encoding
    width: int
    """Encoded image size; an interactive 3-D frame may be smaller than the viewport (scale it up)."""
    height: int
    quality: Quality
    overlay: Overlay
    render_ms: float
    encode_ms: float


@dataclass(frozen=True)
class ProbeValue:
    series_id: str
    value: float | None
    unit: str


@dataclass(frozen=True)
class ProbeResult:
    point_mm: tuple[float, float, float]
    values: tuple[ProbeValue, ...]

    @property
    def value(self) -> float | None:
        """Value of the top-most layer that has one here (the fused overlay, else the base)."""
        for item in reversed(self.values):
            if item.value is not None:
                return item.value
        return None


@dataclass(frozen=True)
class _Resolved:
    layer: Layer
    volume: Volume
    transform: np.ndarray | None
    low: float
    high: float
    time_points: int = 1
    voi: Voi | None = None
    """A file VOI preset that is not a linear window (a VOI LUT, a SIGMOID window); None: linear."""

    def indices(self, values: np.ndarray) -> np.ndarray:
        """Sampled values as uint8 palette indices: the linear window, or the file's VOI exactly."""
        if self.voi is None:
            return window_indices(values, self.low, self.high)
        return voi_indices(values, self.voi, self.low, self.high)


def _file_voi(n: int, layer: Layer, volume: Volume) -> Voi | None:
    """The layer's file VOI preset where it is not linear (LINEAR_EXACT is exactly the linear path)."""
    if layer.voi is None or volume.colour:
        return None
    vois = volume.presentation.vois
    if layer.voi >= len(vois):
        raise RenderError(gettext_noop("layer %(layer)s: the series has %(count)s window preset(s) of its "
                                       "own, not %(asked)s"), layer=n, count=len(vois), asked=layer.voi + 1)
    voi = vois[layer.voi]
    return voi if voi.function in {"LUT", "SIGMOID"} else None


def _display_unit(volume: Volume, layer: Layer) -> str:
    if layer.window_unit is WindowUnit.SUV:
        return "SUV"
    return _value_unit(volume, layer.suv_factor)[1]


UNSPECIFIED_UNITS = frozenset({"", "US", "UNSPECIFIED", "NONE"})


def _value_unit(volume: Volume, suv_factor: float | None = None) -> tuple[float, str]:
    """(factor, unit) of the values a reader is shown: HU, SUV, the header's unit, counts, or raw.

    ``suv_factor``: the reading's own SUV factor (a layer's), where it has one.
    """
    if volume.colour:
        return 1.0, "RGB"
    if volume.modality == "CT":
        return 1.0, "HU"
    if suv_factor is not None and volume.modality in MODALITIES_SUV:
        return suv_factor, "SUV"
    if volume.uses_suv:
        return float(volume.suv_factor or 1.0), "SUV"
    stored = volume.presentation.units.upper()
    if stored not in UNSPECIFIED_UNITS:
        return 1.0, stored
    if volume.modality == "PT":
        return 1.0, "BQML"
    return 1.0, "CNTS" if volume.modality == "NM" else "raw"


def layer_values(state: ViewState, volumes: Mapping[str, Volume]
                 ) -> list[tuple[Volume, float, str, np.ndarray | None]]:
    """Each layer's volume (at its time point), the factor and unit of the values a reader is
    shown, and its registration into layer 0's frame (None: the same frame)."""
    return [(item.volume, *_value_unit(item.volume, item.layer.suv_factor), item.transform)
            for item in _resolve(state, volumes)]


def _resolve(state: ViewState, volumes: Mapping[str, Volume]) -> list[_Resolved]:
    resolved = []
    reference: str | None = None
    for n, layer in enumerate(state.layers):
        stored = volumes.get(layer.series_id)
        if stored is None:
            raise MissingVolumeError(gettext_noop("layer %(layer)s: series %(series)s is not available"),
                                     layer=n, series=layer.series_id)
        if layer.time_point >= stored.time_points:
            raise RenderError(gettext_noop("layer %(layer)s: the series has %(count)s time point(s), "
                                           "not %(asked)s"),
                              layer=n, count=stored.time_points, asked=layer.time_point + 1)
        volume = stored.at_time(layer.time_point)
        transform = None
        if layer.registration is not None:
            transform = np.array(layer.registration, dtype=np.float64).reshape(4, 4)
        if n == 0:
            reference = volume.frame_of_reference_uid
        elif transform is None and volume.frame_of_reference_uid != reference:
            raise FrameOfReferenceError(
                gettext_noop("layer %(layer)s (%(modality)s) is in a different frame of reference from "
                             "layer 0; fusing them needs a registration"),
                layer=n, modality=volume.modality)
        low = layer.window_center - layer.window_width / 2
        high = layer.window_center + layer.window_width / 2
        if layer.window_unit is WindowUnit.SUV:
            factor, unit = _value_unit(volume, layer.suv_factor)
            if unit != "SUV":
                raise RenderError(gettext_noop("layer %(layer)s: an SUV window needs a PET volume with an "
                                               "SUV factor"), layer=n)
            low, high = low / factor, high / factor
        resolved.append(_Resolved(layer, volume, transform, low, high, stored.time_points,
                                  _file_voi(n, layer, volume)))
    return resolved


def _blend(under: np.ndarray | None, over: np.ndarray, opacity: float,
           valid: np.ndarray | None) -> np.ndarray:
    """``over`` on ``under`` (black if None) at ``opacity``, where ``valid``; 8-bit fixed point.

    Weights out of 256 in uint16 (255 * 256 + 128 fits): no float image temporaries.
    """
    weight = round(opacity * 256)
    if under is None and weight == 256 and valid is None:
        return over
    alpha: np.ndarray | int = weight
    if valid is not None:
        alpha = valid[..., None].astype(np.uint16) * np.uint16(weight)
    mixed = over.astype(np.uint16)
    mixed *= alpha
    if under is not None:
        mixed += under.astype(np.uint16) * (np.uint16(256) - alpha)
    mixed += np.uint16(128)
    mixed >>= 8
    return mixed.astype(np.uint8)


def _base_colours(rgb: np.ndarray, item: _Resolved, valid: np.ndarray | None) -> np.ndarray:
    """The first layer, with the space outside its volume in the palette's lowest colour.

    So an inverted or rainbow palette shows the patient, not the scanner's field of view as a square.
    """
    image = _blend(None, rgb, item.layer.opacity, None)
    if valid is not None:
        image = image.copy() if image is rgb else image
        image[~valid] = _surround(item)
    return image


def _surround(item: _Resolved) -> np.ndarray:
    """The colour around a picture: the palette's lowest, or black where the file asks to be inverted.

    A MONOCHROME1 radiograph keeps a black surround, so its edges stay visible.
    """
    if item.volume.presentation.invert:
        return np.zeros(3, np.uint8)
    return LUTS[item.layer.palette][0]


def _styled_labels_over(image: np.ndarray | None, sampled: planes.Sampled, opacity: float,
                        style: tuple[tuple[int, str, float], ...]) -> np.ndarray:
    """A reader's segmentation: each segment in its own colour at its own opacity (hidden: 0)."""
    table, weights = styled_label_tables(style)
    labels = np.clip(np.rint(sampled.values), 0, 255).astype(np.uint8)
    alpha = ((weights[labels].astype(np.uint32) * np.uint32(round(opacity * 256))) >> 8).astype(np.uint16)
    if sampled.valid is not None:
        alpha *= sampled.valid
    under = np.zeros((*labels.shape, 3), dtype=np.uint8) if image is None else image
    mixed = table[labels].astype(np.uint16) * alpha[..., None]
    mixed += under.astype(np.uint16) * (np.uint16(256) - alpha[..., None])
    mixed += np.uint16(128)
    mixed >>= 8
    return mixed.astype(np.uint8)


def _labels_over(image: np.ndarray | None, sampled: planes.Sampled, opacity: float,
                 style: tuple[tuple[int, str, float], ...] = ()) -> np.ndarray:
    """A segmentation's colours where its segments are, over what the layers below drew (or black)."""
    if style:
        return _styled_labels_over(image, sampled, opacity, style)
    colours, inside = label_rgb(sampled.values)
    shown = inside if sampled.valid is None else inside & sampled.valid
    if image is None:
        image = np.zeros((*shown.shape, 3), dtype=np.uint8)
    return _blend(image, colours, opacity, shown)


def _shown_over(indices: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Where a fused layer covers the ones below: inside its volume and above its window's floor.

    Values under the floor are transparent, as fusion displays do, so the CT shows through
    instead of the palette's lowest colour.
    """
    above = indices > 0
    return above if valid is None else above & valid


def _time_shown(base: _Resolved) -> tuple[int, int] | None:
    return (base.layer.time_point + 1, base.time_points) if base.time_points > 1 else None


def _slab_shown(state: ViewState) -> tuple[str, float] | None:
    if state.slab.mode is SlabMode.NONE or state.slab.thickness_mm <= 0:
        return None
    return state.slab.mode.value, state.slab.thickness_mm


def _check_pictures(state: ViewState, resolved: list[_Resolved]) -> None:
    """Pictures (2-D images, cine, colour) are shown alone, in their own plane."""
    for n, item in enumerate(resolved):
        if item.volume.reformattable:
            continue
        if state.view is not ViewKind.NATIVE:
            raise RenderError(gettext_noop("layer %(layer)s: this series is shown in its own plane only "
                                           "(no reformat of 2-D images, cine or colour)"), layer=n)
        if len(resolved) > 1 and (item.volume.colour or item.volume.presentation.kind != "volume"):
            raise RenderError(gettext_noop("layer %(layer)s: 2-D images, cine and colour cannot be fused"),
                              layer=n)


def _layer_info(item: _Resolved) -> LayerInfo:
    layer = item.layer
    return LayerInfo(layer.series_id, item.volume.modality, layer.window_center, layer.window_width,
                     _display_unit(item.volume, layer), layer.palette.value, layer.opacity)


class RenderEngine:
    """Renders view states. One per process; not thread-safe (VTK)."""

    def __init__(self, *, mapper: str = "auto") -> None:
        self._mapper = mapper
        self._volume_renderer: VolumeRenderer | None = None

    @property
    def volume_renderer(self) -> VolumeRenderer:
        if self._volume_renderer is None:
            from rendering.engine.volume3d import VolumeRenderer

            self._volume_renderer = VolumeRenderer(self._mapper)
        return self._volume_renderer

    # --- public -----------------------------------------------------------------------------

    def render(self, state: ViewState, volumes: Mapping[str, Volume], *,
               encoding: Encoding | None = None) -> RenderedFrame:
        """Render and encode one frame (JPEG while interactive, lossless when still)."""
        started = time.perf_counter()
        resolved = _resolve(state, volumes)
        if state.view is ViewKind.VOLUME_3D:
            pixels, overlay = self._render_3d(state, resolved)
        else:
            pixels, overlay = self._render_2d(state, resolved)
        pixels = _inverted(state, pixels)
        rendered = time.perf_counter()
        encoder = encoder_for(state.quality, encoding)
        data = encoder.encode(pixels)
        finished = time.perf_counter()
        return RenderedFrame(
            data=data, encoding=encoder.encoding, width=int(pixels.shape[1]), height=int(pixels.shape[0]),
            quality=state.quality, overlay=overlay,
            render_ms=(rendered - started) * 1000, encode_ms=(finished - rendered) * 1000,
        )

    def pixels(self, state: ViewState, volumes: Mapping[str, Volume]) -> np.ndarray:
        """The unencoded 8-bit image (grey (H, W) or RGB (H, W, 3)); for tests and tools."""
        resolved = _resolve(state, volumes)
        if state.view is ViewKind.VOLUME_3D:
            return _inverted(state, self._render_3d(state, resolved)[0])
        return _inverted(state, self._render_2d(state, resolved)[0])

    def probe(self, state: ViewState, volumes: Mapping[str, Volume], x: float, y: float) -> ProbeResult:
        """Patient point and nearest-voxel value of every layer under viewport pixel (x, y).

        Values are HU for CT, SUVbw for PET with an SUV factor, else the stored unit.
        For 3-D views there is no single point: raises :class:`RenderError`.
        """
        if state.view is ViewKind.VOLUME_3D:
            raise RenderError(gettext_noop("probe is defined for 2-D views only"))
        if not (0 <= x <= state.width and 0 <= y <= state.height):
            raise RenderError(gettext_noop("probe position is outside the viewport"))
        resolved = _resolve(state, volumes)
        plane = planes.view_plane(state, resolved[0].volume)
        point = plane.point(x, y)
        values = []
        for item in resolved:
            if item.volume.colour:
                values.append(ProbeValue(item.layer.series_id, None, _value_unit(item.volume)[1]))
                continue
            raw = planes.probe_voxel(item.volume, point, item.transform)
            factor, unit = _value_unit(item.volume, item.layer.suv_factor)
            values.append(ProbeValue(item.layer.series_id, None if raw is None else raw * factor, unit))
        return ProbeResult(tuple(float(v) for v in point), tuple(values))  # type: ignore[arg-type]

    # --- 2-D --------------------------------------------------------------------------------

    def _render_2d(self, state: ViewState, resolved: list[_Resolved]) -> tuple[np.ndarray, Overlay]:
        _check_pictures(state, resolved)
        plane = planes.view_plane(state, resolved[0].volume)
        linear = state.quality is Quality.STILL
        if resolved[0].volume.colour:
            return self._render_colour(state, resolved[0], plane, linear)
        single_grey = (len(resolved) == 1 and resolved[0].layer.palette in GREYSCALE
                       and resolved[0].layer.opacity == 1.0 and not resolved[0].volume.labels)
        image: np.ndarray | None = None
        for item in resolved:
            sampled = planes.sample(plane, item.volume, mode=state.slab.mode,
                                    thickness_mm=state.slab.thickness_mm,
                                    linear=linear and not item.volume.labels, transform=item.transform)
            if item.volume.labels:
                image = _labels_over(image, sampled, item.layer.opacity, item.volume.presentation.label_style)
                continue
            if single_grey:
                palette = item.layer.palette
                image = (window_grey(sampled.values, item.low, item.high, palette) if item.voi is None
                         else indices_grey(item.indices(sampled.values), palette))
                if sampled.valid is not None:
                    image[~sampled.valid] = _surround(item)[0]
                break
            indices = item.indices(sampled.values)
            rgb = palette_rgb(indices, item.layer.palette)
            if image is None:
                image = _base_colours(rgb, item, sampled.valid)
            else:
                image = _blend(image, rgb, item.layer.opacity, _shown_over(indices, sampled.valid))
        if image is None:
            raise RenderError(gettext_noop("no layer to render"))
        image = crop_2d(image, plane, resolved[0].volume, state.crop_mm)
        return image, self._overlay_2d(state, resolved, plane)

    def _render_colour(self, state: ViewState, item: _Resolved, plane: planes.Plane,
                       linear: bool) -> tuple[np.ndarray, Overlay]:
        """A colour picture as stored (RGB; window and palette do not apply)."""
        sampled = planes.sample(plane, item.volume, mode=state.slab.mode,
                                thickness_mm=state.slab.thickness_mm, linear=linear)
        image = sampled.values if sampled.values.dtype == np.uint8 else (
            np.clip(sampled.values + 0.5, 0, 255).astype(np.uint8))
        if sampled.valid is not None:
            image = image.copy()
            image[~sampled.valid] = 0
        image = crop_2d(image, plane, item.volume, state.crop_mm)
        return np.ascontiguousarray(image), self._overlay_2d(state, [item], plane)

    def _overlay_2d(self, state: ViewState, resolved: list[_Resolved], plane: planes.Plane) -> Overlay:
        base = resolved[0].volume
        focus = np.asarray(state.focus_mm, dtype=np.float64) if state.focus_mm else base.center()
        slice_index = slice_count = None
        direction_index = base.patient_to_index(focus + plane.normal) - base.patient_to_index(focus)
        axis = planes._aligned_axis(direction_index)
        if axis is not None:
            slice_count = base.shape[axis]
            position = float(base.patient_to_index(focus)[axis])
            slice_index = int(np.clip(np.floor(position + 0.5), 0, slice_count - 1))
        return Overlay(
            orientation=planes.edge_letters(plane.right, plane.down),
            mm_per_pixel=plane.mm_per_pixel,
            slice_position_mm=float(focus @ plane.normal),
            slice_index=slice_index,
            slice_count=slice_count,
            focus_mm=tuple(float(v) for v in focus),  # type: ignore[arg-type]
            crosshair_px=plane.screen(focus),
            plane=plane.as_dict(),
            zoom=state.camera2d.zoom,
            slab=_slab_shown(state),
            time_point=_time_shown(resolved[0]),
            layers=tuple(_layer_info(item) for item in resolved),
        )

    # --- 3-D --------------------------------------------------------------------------------

    def _render_3d(self, state: ViewState, resolved: list[_Resolved]) -> tuple[np.ndarray, Overlay]:
        if not resolved[0].volume.reformattable:
            raise RenderError(gettext_noop("3-D needs a volume; this series is shown in its own plane only"))
        wanted = ("PT", "NM") if state.preset3d is Preset3D.PET_MIP else ("CT",)
        shown = [r for r in resolved if not r.volume.labels]
        item = next((r for r in shown if r.volume.modality in wanted), shown[0] if shown else resolved[0])
        segmentation = next((r.volume for r in resolved if r.volume.presentation.label_style), None)
        over = _fused_3d(resolved, item)
        rgb, right, down = self.volume_renderer.render(
            volume=item.volume, preset=state.preset3d, camera=state.camera3d,
            width=state.width, height=state.height, quality=state.quality,
            window=(item.low, item.high), lut=LUTS[item.layer.palette], segmentation=segmentation,
            transform=item.transform, fused=[_fused_layer(r) for r in over],
            crop=None if state.crop_mm is None else box_onto(state.crop_mm, resolved[0].volume, item.volume),
        )
        overlay = Overlay(
            orientation=planes.edge_letters(right, down), mm_per_pixel=None, slice_position_mm=None,
            slice_index=None, slice_count=None, focus_mm=None, crosshair_px=None, plane=None,
            layers=tuple(_layer_info(r) for r in resolved),
        )
        return rgb, overlay


def _fused_3d(resolved: list[_Resolved], base: _Resolved) -> list[_Resolved]:
    """The fused layers a 3-D view draws over its base, in their order: every layer after the
    first that is a picture's volume (not a segmentation, which is drawn as surfaces) and is not
    the base itself (a PET MIP's base may be a fused PET)."""
    over = []
    for n, item in enumerate(resolved):
        if n == 0 or item is base or item.volume.labels:
            continue
        if not item.volume.reformattable or item.volume.colour:
            raise RenderError(gettext_noop("layer %(layer)s: only a volume is fused in 3-D (not 2-D images, "
                                           "cine or colour)"), layer=n)
        over.append(item)
    return over


def _fused_layer(item: _Resolved) -> FusedLayer:
    from rendering.engine.volume3d import FusedLayer

    return FusedLayer(volume=item.volume, low=item.low, high=item.high, palette=item.layer.palette,
                      opacity=item.layer.opacity, transform=item.transform)


_default: RenderEngine | None = None


_INVERT_LUT = np.arange(255, -1, -1, dtype=np.uint8)


def _inverted(state: ViewState, pixels: np.ndarray) -> np.ndarray:
    """The reader's invert quick function: every 8-bit value v shown as 255 - v (a LUT)."""
    return _INVERT_LUT[pixels] if state.invert else pixels


def default_engine() -> RenderEngine:
    global _default
    if _default is None:
        _default = RenderEngine()
    return _default


def render(state: ViewState, volumes: Mapping[str, Volume], *,
           encoding: Encoding | None = None) -> RenderedFrame:
    """Render one frame with this process's engine (see :meth:`RenderEngine.render`)."""
    return default_engine().render(state, volumes, encoding=encoding)


def probe(state: ViewState, volumes: Mapping[str, Volume], x: float, y: float) -> ProbeResult:
    """Value under a viewport pixel (see :meth:`RenderEngine.probe`)."""
    return default_engine().probe(state, volumes, x, y)
