"""A workspace's layout as a grid: rows x columns, each view one rectangle of slots.

A grid is data (the reader draws it in the viewer's grid editor, a bookmark keeps it)
and is checked here, strictly, whenever it comes in: at most 4 x 4 slots, every
cell a rectangle inside the grid, the cells tiling the grid exactly (no slot empty,
none shared). Cells are kept in reading order (top-left corner, row by row): view
``i`` of a workspace is drawn in cell ``i``. The named layouts are grids too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.i18n import gettext_noop
from rendering.said import SaidError

MAX_SIDE = 4
Cell = tuple[int, int, int, int]
"""(row, column, rows spanned, columns spanned), zero-based."""


class GridError(SaidError, ValueError):
    """A grid that cannot be drawn; the message says which part."""


@dataclass(frozen=True)
class Grid:
    rows: int
    columns: int
    cells: tuple[Cell, ...]

    @classmethod
    def even(cls, rows: int, columns: int) -> Grid:
        return cls(rows, columns, tuple((row, column, 1, 1)
                                        for row in range(rows) for column in range(columns)))

    def wire(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": self.columns, "cells": [list(cell) for cell in self.cells]}


NAMED_GRIDS = {
    "1x1": Grid.even(1, 1), "1x2": Grid.even(1, 2), "1x3": Grid.even(1, 3), "2x2": Grid.even(2, 2),
    "petct": Grid.even(2, 2), "compare": Grid.even(1, 2),
}
"""The built-in layouts (rendering.protocol.LAYOUTS) as grids."""


def _side(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise GridError(gettext_noop("a grid has 1 to %(most)s %(side)s"), most=MAX_SIDE, side=name)
    return value


def _cell(value: Any, rows: int, columns: int) -> Cell:
    numbers = value if isinstance(value, list) and len(value) == 4 else None
    if numbers is None or any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
        raise GridError(gettext_noop("a grid cell is four whole numbers: row, column, rows, columns"))
    row, column, height, width = numbers
    if row < 0 or column < 0 or height < 1 or width < 1 or row + height > rows or column + width > columns:
        raise GridError(gettext_noop("a grid cell lies outside its %(rows)s x %(columns)s grid"),
                        rows=rows, columns=columns)
    return row, column, height, width


def grid_parse(data: Any) -> Grid:
    """The grid ``data`` describes (its JSON form, :meth:`Grid.wire`), or :class:`GridError`."""
    if not isinstance(data, dict) or set(data) != {"rows", "columns", "cells"}:
        raise GridError(gettext_noop("a grid names its rows, columns and cells, nothing else"))
    rows, columns = _side(data, "rows"), _side(data, "columns")
    listed = data["cells"]
    if not isinstance(listed, list) or not 1 <= len(listed) <= rows * columns:
        raise GridError(gettext_noop("a grid has 1 to %(most)s cells"), most=rows * columns)
    cells = sorted(_cell(value, rows, columns) for value in listed)
    taken: set[tuple[int, int]] = set()
    for row, column, height, width in cells:
        slots = {(r, c) for r in range(row, row + height) for c in range(column, column + width)}
        if slots & taken:
            raise GridError(gettext_noop("two grid cells overlap"))
        taken |= slots
    if len(taken) != rows * columns:
        raise GridError(gettext_noop("the grid's cells leave a slot empty"))
    return Grid(rows, columns, tuple(cells))
