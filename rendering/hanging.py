"""Hanging rules: which series a reader wants in which view, kept per user as data.

A rule names modalities and description fragments, never series: it is
matched against each study anew (``ViewerSession.hanging_apply``), as OHIF's
hanging protocols are. It is stored as JSON (``accounts.HangingRule.rule``)
and parsed here, strictly, both when it is saved and when it is read back:
the kinds, palettes and 3-D presets are the protocol's own vocabularies, every
list and string is bounded, and a key the format does not name is refused.
This module is plain data; the accounts app stores the rules.

The JSON form::

    {"match": {"modalities": ["CT", "PT"], "description": "whole body"},
     "views": [{"kind": "axial", "layers": [{"modality": "CT", "description": "AC",
                                             "palette": "grey", "opacity": 1.0}]},
               {"kind": "3d", "layers": [{"modality": "PT"}], "preset3d": "pet_mip"}]}

A layer with ``"prior": true`` takes its series from the patient's newest other study that has
its modality (CT with priors: the same kind of view of this CT and of the last one); the viewer
opens that study beside the first, as *Open beside* does, when such a rule is the first to fit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.i18n import gettext_noop
from rendering.protocol import HANGING_NAME, SETTINGS, Text
from rendering.said import Said, SaidError
from rendering.viewstate import MAX_LAYERS

RULES_PER_USER = 20
NAME_LENGTH = HANGING_NAME.max_length
DESCRIPTION_LENGTH = 64
MAX_MODALITIES = 8
MODALITY = re.compile(r"[A-Z0-9_]{1,16}")
GRIDS = {1: "1x1", 2: "1x2", 3: "1x3", 4: "2x2"}
MAX_VIEWS = len(GRIDS)
"""The layout a rule's views fill, by their count."""


def _choices(name: str) -> tuple[str, ...]:
    rule = SETTINGS[name]
    if not isinstance(rule, Text):
        raise TypeError(f"the protocol's {name!r} setting is not a choice")
    return rule.choices


KINDS = _choices("kind")
"""``native`` is each series' acquisition plane; every other kind needs a volume."""
PALETTES = _choices("palette")
PRESETS_3D = _choices("volume_preset")


class HangingRuleError(SaidError, ValueError):
    """A rule, or a rule's name, that cannot be kept: the message says which part and why (said to the
    reader; ``where`` is the part's path in the JSON form, or words for it)."""


@dataclass(frozen=True)
class LayerRule:
    modality: str
    description: str = ""
    """A case-insensitive fragment of the series description ("" for any)."""
    palette: str | None = None
    """None: the series' own default (grey, or inverted for MONOCHROME1 pictures)."""
    opacity: float = 1.0
    prior: bool = False
    """From the patient's newest other study that has this modality (a prior), not the one opened."""


@dataclass(frozen=True)
class ViewRule:
    kind: str
    layers: tuple[LayerRule, ...]
    preset3d: str | None = None
    """Only for ``3d`` views; None: PET MIP for PET and NM, CT bone otherwise."""


@dataclass(frozen=True)
class Hanging:
    """A parsed rule: when it applies (``modalities``, ``description``) and what it hangs."""

    modalities: tuple[str, ...]
    views: tuple[ViewRule, ...]
    description: str = ""

    @property
    def grid(self) -> str:
        return GRIDS[len(self.views)]

    @property
    def prior_modalities(self) -> frozenset[str]:
        """The modalities its prior layers take from another study (none: it hangs one study)."""
        return frozenset(layer.modality for view in self.views for layer in view.layers if layer.prior)

    def wire(self) -> dict[str, Any]:
        """The JSON form, as stored (and as :func:`hanging_parse` reads it back)."""
        match: dict[str, Any] = {"modalities": list(self.modalities)}
        if self.description:
            match["description"] = self.description
        views = []
        for view in self.views:
            layers = []
            for layer in view.layers:
                item: dict[str, Any] = {"modality": layer.modality}
                if layer.description:
                    item["description"] = layer.description
                if layer.palette is not None:
                    item["palette"] = layer.palette
                item["opacity"] = layer.opacity
                if layer.prior:
                    item["prior"] = True
                layers.append(item)
            shown: dict[str, Any] = {"kind": view.kind, "layers": layers}
            if view.preset3d is not None:
                shown["preset3d"] = view.preset3d
            views.append(shown)
        return {"match": match, "views": views}


Where = str | Said


def _object(value: Any, where: Where, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HangingRuleError(gettext_noop("%(where)s must be an object"), where=where)
    unknown = sorted(str(key)[:32] for key in set(value) - allowed)
    if unknown:
        raise HangingRuleError(gettext_noop("%(where)s has unknown field(s): %(fields)s"), where=where,
                               fields=", ".join(unknown[:3]))
    missing = sorted(required - set(value))
    if missing:
        raise HangingRuleError(gettext_noop("%(where)s needs %(fields)s"), where=where,
                               fields=", ".join(missing))
    return value


def _list(value: Any, where: Where, low: int, high: int) -> list[Any]:
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise HangingRuleError(gettext_noop("%(where)s must be a list of %(low)s to %(high)s items"),
                               where=where, low=low, high=high)
    return value


def _text(value: Any, where: Where, length: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= length or not value.isprintable():
        raise HangingRuleError(gettext_noop("%(where)s must be 1 to %(most)s printable characters"),
                               where=where, most=length)
    return value


def _modality(value: Any, where: Where) -> str:
    if not isinstance(value, str) or not MODALITY.fullmatch(value):
        raise HangingRuleError(gettext_noop("%(where)s must be a DICOM modality (CT, PT, MR…)"), where=where)
    return value


def _choice(value: Any, where: Where, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise HangingRuleError(gettext_noop("%(where)s must be one of %(choices)s"), where=where,
                               choices=str(list(choices)))
    return value


def _opacity(value: Any, where: Where) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 <= value <= 1):
        raise HangingRuleError(gettext_noop("%(where)s must be a number from 0 to 1"), where=where)
    return float(value)


def _layer(value: Any, where: str) -> LayerRule:
    data = _object(value, where, {"modality", "description", "palette", "opacity", "prior"}, {"modality"})
    if "prior" in data and not isinstance(data["prior"], bool):
        raise HangingRuleError(gettext_noop("%(where)s.prior must be true or false"), where=where)
    return LayerRule(
        modality=_modality(data["modality"], f"{where}.modality"),
        description=(_text(data["description"], f"{where}.description", DESCRIPTION_LENGTH)
                     if "description" in data else ""),
        palette=_choice(data["palette"], f"{where}.palette", PALETTES) if "palette" in data else None,
        opacity=_opacity(data["opacity"], f"{where}.opacity") if "opacity" in data else 1.0,
        prior=bool(data.get("prior", False)))


def _view(value: Any, where: str) -> ViewRule:
    data = _object(value, where, {"kind", "layers", "preset3d"}, {"kind", "layers"})
    kind = _choice(data["kind"], f"{where}.kind", KINDS)
    layers = _list(data["layers"], f"{where}.layers", 1, MAX_LAYERS)
    preset = None
    if "preset3d" in data:
        if kind != "3d":
            raise HangingRuleError(gettext_noop("%(where)s.preset3d is for 3d views only"), where=where)
        preset = _choice(data["preset3d"], f"{where}.preset3d", PRESETS_3D)
    return ViewRule(kind, tuple(_layer(layer, f"{where}.layers[{i}]") for i, layer in enumerate(layers)),
                    preset)


def hanging_parse(*, data: Any) -> Hanging:
    """Validate a rule's JSON form; raises :class:`HangingRuleError` naming the first fault."""
    top = _object(data, Said(gettext_noop("the rule")), {"match", "views"}, {"match", "views"})
    match = _object(top["match"], "match", {"modalities", "description"}, {"modalities"})
    modalities = [_modality(value, f"match.modalities[{i}]")
                  for i, value in enumerate(_list(match["modalities"], "match.modalities", 1,
                                                  MAX_MODALITIES))]
    if len(set(modalities)) != len(modalities):
        raise HangingRuleError(gettext_noop("match.modalities names a modality twice"))
    description = (_text(match["description"], "match.description", DESCRIPTION_LENGTH)
                   if "description" in match else "")
    views = _list(top["views"], "views", 1, MAX_VIEWS)
    return Hanging(tuple(modalities), tuple(_view(view, f"views[{i}]") for i, view in enumerate(views)),
                   description)


def description_fragment(text: str) -> str:
    """A series description as a rule keeps it: printable, at most 64 characters (a fragment
    of a longer one still finds it)."""
    return "".join(c for c in text if c.isprintable())[:DESCRIPTION_LENGTH].strip()


def hanging_name_clean(*, name: Any) -> str:
    """A rule's name as shown in the menu: trimmed, 1 to 64 printable characters."""
    if not isinstance(name, str):
        raise HangingRuleError(gettext_noop("a rule's name is text"))
    return _text(name.strip(), Said(gettext_noop("the name")), NAME_LENGTH)
