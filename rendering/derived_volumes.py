"""Derived series made in a render worker: a filter of one volume or arithmetic of several.

``drv:<id>`` layers are built here from their recipe (:mod:`imaging.derived`) out of the worker's
own input volumes, then kept in its volume cache like any series; a preview filters only the
slice a view shows (a 2-D filter of it), for a reader choosing parameters — at half resolution
for the filters too slow for it at full resolution (``reduced`` in the answer, docs/filters.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gateway.i18n import gettext_noop
from rendering.encoding import Encoding
from rendering.engine.arithmetic import Grid, arithmetic, arithmetic_grid, derived_volume
from rendering.engine.core import RenderedFrame, RenderError
from rendering.engine.crop import CropError, crop_volume
from rendering.engine.filters import FilterError, filter_apply, filter_preview
from rendering.engine.reorient import ReorientError, reorient_volume
from rendering.operations import WorkerContext, frame_from_wire, frame_to_wire, operation
from rendering.viewstate import Quality, ViewKind, ViewState
from rendering.volume import Volume, VolumeError

PREVIEW_ID = "drv:preview"
PLANE_NORMALS = {ViewKind.AXIAL: (0.0, 0.0, 1.0), ViewKind.CORONAL: (0.0, 1.0, 0.0),
                 ViewKind.SAGITTAL: (1.0, 0.0, 0.0)}


class DerivedVolumes:
    """Builds ``drv:<id>`` volumes; ``load`` gives any series' volume (the worker source's)."""

    def __init__(self, load: Callable[[str], Volume]) -> None:
        self._load = load

    def build(self, layer_id: str) -> Volume:
        from imaging.derived import derived_get, derived_id_parse

        number = derived_id_parse(layer_id)
        if number is None:
            raise KeyError(layer_id)
        recipe = derived_get(number)
        volumes = [self._load(item["series"]).at_time(0) for item in recipe.inputs]
        try:
            if recipe.kind == "crop":
                return crop_volume(volumes[0], box=recipe.parameters["box"], series_id=layer_id,
                                   description=recipe.description)
            if recipe.kind == "reorient":
                return reorient_volume(volumes[0], name=recipe.operation, params=recipe.parameters,
                                       series_id=layer_id, description=recipe.description)
            values, grid = self._values(recipe, volumes)
            return derived_volume(values, volumes[0], series_id=layer_id, description=recipe.description,
                                  operation=recipe.operation, inputs=volumes, grid=grid)
        except (FilterError, ReorientError, CropError, VolumeError, ValueError) as error:
            raise RenderError(gettext_noop("the derived series cannot be made: %(error)s"),
                              error=error) from error

    @staticmethod
    def _values(recipe, volumes: list[Volume]) -> tuple[np.ndarray, Grid | None]:
        """The voxels and, for arithmetic, the grid of its space (recipes without one: the first's)."""
        if recipe.kind == "filter":
            return filter_apply(volume=volumes[0].voxels, spacing=volumes[0].spacing, name=recipe.operation,
                                params=recipe.parameters, dims=recipe.dims), None
        others = [(volume, None if item["matrix"] is None else np.asarray(item["matrix"]).reshape(4, 4),
                   float(item["weight"]))
                  for volume, item in zip(volumes[1:], recipe.inputs[1:], strict=True)]
        space, box = recipe.parameters.get("space", "reference"), recipe.parameters.get("box")
        grid = arithmetic_grid(volumes[0], [(volume, matrix) for volume, matrix, _ in others],
                               space=space, box=box)
        weight = float(recipe.inputs[0]["weight"])
        return arithmetic(recipe.operation, volumes[0], others, reference_weight=weight, space=space,
                          box=box), grid


@dataclass(frozen=True)
class PreviewFrame:
    """A ``filter_preview`` answer: the picture, and the in-plane factor the slice was filtered at."""

    frame: RenderedFrame
    reduced: int


def _preview_to_wire(preview: PreviewFrame) -> dict[str, Any]:
    return {"frame": frame_to_wire(preview.frame), "reduced": preview.reduced}


def _preview_from_wire(wire: dict[str, Any]) -> PreviewFrame:
    return PreviewFrame(frame_from_wire(wire["frame"]), int(wire["reduced"]))


def preview_slab(volume: Volume, focus_mm: tuple[float, float, float], *, name: str,
                 params: dict, series_id: str) -> tuple[Volume, int]:
    """Three slices around the one nearest ``focus_mm``, each the 2-D filter of that slice (its
    preview, see :func:`filter_preview`): a view of its plane through the focus shows the filtered
    slice (the reader's preview). With the preview's in-plane reduction factor (1: full resolution)."""
    k = int(np.clip(round(float(volume.patient_to_index(np.asarray(focus_mm))[0])), 0, volume.shape[0] - 1))
    preview = filter_preview(volume=volume.voxels[k:k + 1], spacing=volume.spacing, name=name, params=params)
    slab = np.repeat(preview.values, 3, axis=0)
    x, y, z = (float(v) for v in volume.index_to_patient((k - 1, 0, 0)))
    return replace(volume, voxels=slab, origin=(x, y, z), series_id=series_id,
                   presentation=replace(volume.presentation, time_points=1)), preview.reduced


def _on_slice_plane(state: ViewState, volume: Volume) -> bool:
    """Whether the view shows one of the volume's own slices (the only plane a preview covers)."""
    across = np.asarray(volume.direction)[:, 2]
    if state.view is ViewKind.NATIVE:
        return True
    normal = PLANE_NORMALS.get(state.view)
    return normal is not None and state.oblique_deg == (0.0, 0.0) and abs(float(across @ normal)) > 0.999


@operation("filter_preview", to_wire=_preview_to_wire, from_wire=_preview_from_wire)
def _filter_preview(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                    arguments: dict[str, Any]) -> PreviewFrame:
    """The view as it is, its base layer replaced by the 2-D filter of the slice it shows."""
    layer = state.layers[0]
    base = volumes[layer.series_id].at_time(layer.time_point)
    if not _on_slice_plane(state, base) or state.focus_mm is None:
        raise RenderError(gettext_noop("a preview shows the series' own slices: turn the view to its "
                                       "acquisition plane"))
    try:
        slab, reduced = preview_slab(base, state.focus_mm, name=str(arguments["filter"]),
                                     params=dict(arguments["parameters"]), series_id=PREVIEW_ID)
    except (FilterError, VolumeError) as error:
        raise RenderError.from_error(error) from error
    shown = replace(state, quality=Quality.INTERACTIVE,
                    layers=(replace(layer, series_id=PREVIEW_ID, time_point=0), *state.layers[1:]))
    return PreviewFrame(context.engine.render(shown, {**volumes, PREVIEW_ID: slab}, encoding=Encoding.JPEG),
                        reduced)
