"""Derived series: filters, image arithmetic and reorientations a reader asked for, recorded as recipes.

A derived series is its inputs and its operation, not voxels: a render worker makes it when it is
shown (:mod:`rendering.derived_volumes`) and keeps it in its cache. It is marked derived
everywhere (its layer id ``drv:<id>``, ``derived`` in the series list, its description) and is
never stored as an acquired series. Arithmetic resamples every input onto a grid on the first
one's lattice (its ``space``: the first's own grid, the union or intersection of the inputs'
extents, or a reader's box; :mod:`rendering.engine.arithmetic`) through the registration that
connects their frames, frozen into the recipe when it is made; the space (and box) are the
recipe's ``parameters``, ``{}`` in recipes made before spaces: the first's grid. A
reorientation (kind ``reorient``, :mod:`rendering.engine.reorient`) re-indexes one series'
voxels exactly: the same anatomy at the same patient mm on a turned, swapped or flipped grid; a
crop (kind ``crop``, :func:`rendering.engine.crop.crop_volume`) keeps the voxels in a box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from django.utils import timezone

from gateway.i18n import gettext_noop
from imaging.models import DerivedSeries, Study
from rendering.engine.arithmetic import ImageArithmeticError, space_check
from rendering.engine.filters import FILTERS, FilterError, filter_validate
from rendering.engine.reorient import OPERATIONS as REORIENT
from rendering.engine.reorient import ReorientError, reorient_validate
from rendering.said import SaidError

LAYER_PREFIX = "drv:"
CROP = "crop"
ARITHMETIC = {"difference": 2, "ratio": 2, "weighted_sum": 0}
"""Each operation and how many inputs it takes (0: two or more)."""
MAX_INPUTS = 4
WEIGHT_LIMIT = 1e6


class DerivedError(SaidError, ValueError):
    """A derived series that cannot be made (unknown operation, wrong inputs, bad parameter); said to
    the reader."""


def derived_layer_id(derived: DerivedSeries) -> str:
    return f"{LAYER_PREFIX}{derived.pk}"


def derived_id_parse(layer_id: str) -> int | None:
    if not layer_id.startswith(LAYER_PREFIX):
        return None
    number = layer_id[len(LAYER_PREFIX):]
    return int(number) if number.isdigit() and len(number) < 12 else None


def _inputs(series: Sequence[str], weights: Sequence[float] | None,
            matrices: Sequence[list[float] | None]) -> list[dict[str, Any]]:
    weights = list(weights) if weights else [1.0] * len(series)
    if len(weights) != len(series):
        raise DerivedError(gettext_noop("give one weight per input series"))
    if not all(isinstance(w, int | float) and math.isfinite(w) and abs(w) <= WEIGHT_LIMIT for w in weights):
        raise DerivedError(gettext_noop("weights are finite numbers within ±%(most)g"), most=WEIGHT_LIMIT)
    return [{"series": uid, "weight": float(weight), "matrix": matrix}
            for uid, weight, matrix in zip(series, weights, matrices, strict=True)]


def derived_create(*, study_uid: str, operation: str, series: Sequence[str], author: str,
                   parameters: dict[str, Any] | None = None, weights: Sequence[float] | None = None,
                   matrices: Sequence[list[float] | None] = (), dims: int = 3,
                   description: str = "", space: str = "reference",
                   box: Sequence[float] | None = None) -> DerivedSeries:
    """Record a filter of one series or arithmetic of several (``matrices``: each input into the
    first's frame, None for the same frame; ``space`` and ``box``: the arithmetic's output grid)."""
    if not 1 <= len(series) <= MAX_INPUTS or len(set(series)) != len(series):
        raise DerivedError(gettext_noop("a derived series takes 1 to %(most)s different series"),
                           most=MAX_INPUTS)
    matrices = list(matrices) or [None] * len(series)
    if operation in FILTERS:
        if len(series) != 1:
            raise DerivedError(gettext_noop("a filter takes one series"))
        if dims not in (2, 3):
            raise DerivedError(gettext_noop("a filter runs in 2-D (each slice) or 3-D"))
        if space != "reference" or box is not None:
            raise DerivedError(gettext_noop("space and box are for image arithmetic, not a filter"))
        try:
            checked = filter_validate(name=operation, params=parameters or {})
        except FilterError as error:
            raise DerivedError.from_error(error) from error
        kind, parameters = "filter", checked
    elif operation in ARITHMETIC:
        wanted = ARITHMETIC[operation]
        if (wanted and len(series) != wanted) or (not wanted and len(series) < 2):
            raise DerivedError(gettext_noop("%(operation)s takes %(count)s series") if wanted
                               else gettext_noop("%(operation)s takes two or more series"),
                               operation=operation, count=wanted)
        try:
            space_check(space, box)
        except ImageArithmeticError as error:
            raise DerivedError.from_error(error) from error
        kind, parameters = "arithmetic", {"space": space}
        if box is not None:
            parameters["box"] = [float(v) for v in box]
    elif operation == CROP:
        if len(series) != 1:
            raise DerivedError(gettext_noop("a crop takes one series"))
        if space != "box" or box is None:
            raise DerivedError(gettext_noop("a crop takes the space box and its box"))
        try:
            space_check(space, box)
        except ImageArithmeticError as error:
            raise DerivedError.from_error(error) from error
        kind, parameters = "crop", {"box": [float(v) for v in box]}
    elif operation in REORIENT:
        if len(series) != 1:
            raise DerivedError(gettext_noop("a reorientation takes one series"))
        if space != "reference" or box is not None:
            raise DerivedError(gettext_noop("space and box are for image arithmetic, not a reorientation"))
        try:
            turns = reorient_validate(name=operation, params=parameters or {})
        except ReorientError as error:
            raise DerivedError.from_error(error) from error
        kind, parameters = "reorient", dict(turns)
    else:
        raise DerivedError(gettext_noop("unknown operation %(operation)s"), operation=repr(operation))
    return DerivedSeries.objects.create(
        study=Study.objects.get(study_instance_uid=study_uid), kind=kind, operation=operation,
        parameters=parameters, dims=dims if kind == "filter" else 3,
        inputs=_inputs(series, weights, matrices), description=description[:128] or operation,
        author=author)


def derived_of(study_uids: Iterable[str]) -> list[DerivedSeries]:
    return list(DerivedSeries.objects.filter(study__study_instance_uid__in=list(study_uids),
                                             deleted_at__isnull=True).select_related("study"))


def derived_get(derived_id: int) -> DerivedSeries:
    found = DerivedSeries.objects.filter(pk=derived_id, deleted_at__isnull=True).first()
    if found is None:
        raise DerivedError(gettext_noop("no derived series %(number)s"), number=derived_id)
    return found


def derived_made(derived_id: int, shown: dict[str, Any]) -> None:
    DerivedSeries.objects.filter(pk=derived_id).update(shown=shown)


def derived_forget(derived_id: int) -> None:
    DerivedSeries.objects.filter(pk=derived_id).update(deleted_at=timezone.now())
