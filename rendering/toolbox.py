"""The viewer's mouse modes and quick functions: one table, announced in ``ready.vocabulary``.

The client builds its mode bar, its quick-function buttons, their keys and the key map from
:func:`toolbox_wire`, so what the key map shows is complete by construction: a function is
added here, with its label and key, or it is not offered. A mode binds the left mouse button to
one input operation (``input``; ``measure`` draws with the chosen measuring tool, ``crosshair``
places the crosshair); a quick function sends one input operation with no arguments. Keys are
``KeyboardEvent.key`` values: an upper-case letter is that letter with Shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from rendering.protocol import OPERATIONS


@dataclass(frozen=True)
class Mode:
    name: str
    label: str | Promise
    key: str
    input: str | None
    """The input operation a left-button drag sends (None: the mode draws or clicks instead)."""
    needs: str | None = None
    """Offered only where the vocabulary has this (``measure_tools``)."""


@dataclass(frozen=True)
class Quick:
    name: str
    """The input operation it sends (:data:`rendering.protocol.OPERATIONS`)."""
    label: str | Promise
    key: str


MODES: tuple[Mode, ...] = (
    Mode("window", _("window / level"), "W", "window"),
    Mode("zoom", _("zoom"), "Z", "zoom"),
    Mode("pan", _("pan"), "P", "pan"),
    Mode("scroll", _("scroll slices"), "S", "scroll"),
    Mode("rotate", _("rotate (3-D) / tilt (oblique)"), "R", "rotate"),
    Mode("measure", _("measure"), "M", None, needs="measure_tools"),
    Mode("crosshair", _("crosshair"), "C", "focus"),
)
"""In mode-bar order; the first is the left button's binding when a viewer opens."""

QUICK: tuple[Quick, ...] = (
    Quick("reset", _("reset window, zoom, pan, plane, turns and crosshair"), "r"),
    Quick("invert", _("invert grey scale"), "I"),
    Quick("flip_h", _("flip left-right"), "H"),
    Quick("flip_v", _("flip top-bottom"), "V"),
    Quick("rotate_cw", _("rotate 90° clockwise"), "t"),
    Quick("rotate_ccw", _("rotate 90° counter-clockwise"), "T"),
    Quick("fit", _("zoom to fit"), "f"),
    Quick("one_to_one", _("1:1 (one image pixel per screen pixel)"), "0"),
    Quick("link_all", _("link all views: scroll, window and zoom together (on/off)"), "k"),
)


def toolbox_wire(*, measuring: bool) -> dict[str, Any]:
    """The table in the active language (call it inside ``translation.override``)."""
    return {
        "modes": [{"name": mode.name, "label": str(mode.label), "key": mode.key, "input": mode.input}
                  for mode in MODES if mode.needs is None or measuring],
        "quick": [{"name": quick.name, "label": str(quick.label), "key": quick.key} for quick in QUICK
                  if quick.name in OPERATIONS],
    }
