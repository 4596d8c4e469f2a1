"""A NIfTI imported through the raw import page shows its own voxel values under the cursor (#20).

The gateway is served by daphne on a loopback port (``served_demo``); the
browser is Debian's chromium with a doctor signed in by password and TOTP. The
test writes a small NIfTI with SimpleITK whose every voxel holds a different
integer (``voxel_value`` of its index), uploads it through the raw import page's form,
follows the page's "Open in viewer" link, rests the pointer on a few voxels of
the first view and reads the probe line.

Truth is the test's own: the patient point the probe line names (LPS mm, which
is SimpleITK's physical space) is mapped to the nearest voxel with the file's
origin, spacing and direction, and the file's value there must be the one shown,
rounded only as the page's ``readerNumber`` rounds. Where the pointer is put
comes from what the server sent the page (the frame's plane), read off the
page's own websocket; the value is judged by the point the page names.
"""

from __future__ import annotations

import itertools
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from tests.rendering.test_measure_browser_served import (  # noqa: F401 (viewer: a fixture)
    WAIT_S,
    PageSocket,
    _on_page,
    _to_canvas,
    _until,
    settled_still,
    view_canvas,
    view_size,
    viewer,
)

pytestmark = [pytest.mark.server, pytest.mark.browser]

VIEW = 0
SIZE = (24, 20, 12)  # (i, j, k): columns, rows, slices
SPACING = (1.5, 1.2, 3.0)
ORIGIN = (-17.25, 31.5, -42.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # LPS: a NIfTI with the identity RAS affine
PAGE_POINT_MM = 0.05  # the probe line names the point to 0.1 mm
PROBE = re.compile(r"^(?P<value>-?\d+(?:\.\d+)?)(?: (?P<unit>\S+))? at \((?P<point>[^)]*)\) mm$")


def voxel_value(i, j, k):
    """A different integer for every voxel, inside int16: the index is read back from the value."""
    return i + SIZE[0] * j + SIZE[0] * SIZE[1] * k - 2000


def _nifti(path: Path) -> sitk.Image:
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(SIZE)), indexing="ij")
    image = sitk.GetImageFromArray(voxel_value(i, j, k).astype(np.int16))  # array [k, j, i]
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))  # what is judged is what the file holds


def _continuous_index(image: sitk.Image, point: np.ndarray) -> np.ndarray:
    """(i, j, k) of a patient point (LPS mm), with numpy from the file's geometry."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    axes = direction * np.asarray(image.GetSpacing(), dtype=np.float64)  # column n: one step of index n
    return np.linalg.solve(axes, point - np.asarray(image.GetOrigin(), dtype=np.float64))


def _nearest_voxels(image: sitk.Image, point: np.ndarray, slack_mm: float) -> set[tuple[int, int, int]]:
    """Every voxel whose centre may be nearest to a point known to ``slack_mm`` along each axis."""
    index = _continuous_index(image, point)
    slack = slack_mm / np.asarray(image.GetSpacing(), dtype=np.float64)
    ranges = [range(int(np.floor(c - s + 0.5)), int(np.floor(c + s + 0.5)) + 1) for c, s in zip(index, slack,
                                                                                                  strict=True)]
    return set(itertools.product(*ranges))


def _reader_number(value: float) -> str:
    """As the viewer's ``readerNumber``: 0, 1 or 2 decimals by size, trailing zeros dropped."""
    size = abs(value)
    text = f"{value:.{0 if size >= 100 else 1 if size >= 10 else 2}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _canvas(page):
    return view_canvas(page, VIEW)


def _settled_still(page, socket: PageSocket, *, after: int = 0):
    return settled_still(page, socket, VIEW, after=after, since_ready=True)


def _import(page, base: str, path: Path, patient_id: str) -> None:
    """Through the page's form, as a person would: the file, the patient, the series; then wait."""
    page.goto(f"{base}/imaging/raw-import")
    page.locator("#id_volume").set_input_files(str(path))
    page.locator("#id_target_0").check()
    page.locator("#id_patient_name").fill("Voxel^Probe")
    page.locator("#id_patient_id").fill(patient_id)
    page.locator("#id_modality").select_option("MR")
    page.locator("#id_series_description").fill("probe check")
    page.locator("form.raw-import button[type=submit]").click()
    result = page.locator("#raw-import-result")
    result.wait_for(timeout=WAIT_S * 1000)
    assert "The volume is built and ready to view." in (result.text_content() or ""), result.text_content()


def _probed(page, socket: PageSocket, after: int) -> tuple[dict[str, Any], str]:
    """The server's probe answer to the pointer's last place, and the probe line that shows it."""
    def answered():
        answers = [m for m in socket.texts[after:] if m.get("type") == "probe" and m.get("view") == VIEW]
        line = (page.text_content("#probe") or "").strip()
        return (answers[-1], line) if answers and line and PROBE.match(line) else None

    _until(page, answered, "the probe line")
    page.wait_for_timeout(300)  # a later answer (the pointer moved within the 100 ms throttle), if any
    return _until(page, answered, "the probe line, settled")


def test_a_nifti_imported_through_the_page_shows_its_own_voxel_values_under_the_cursor(
        served_demo, viewer, tmp_path):  # noqa: F811 (viewer: the fixture imported above)
    image = _nifti(tmp_path / "probe.nii.gz")
    assert image.GetSize() == SIZE and image.GetPixelID() == sitk.sitkInt16
    truth = sitk.GetArrayFromImage(image)  # [k, j, i]

    open_page, _ = viewer
    page, socket = open_page()
    _import(page, served_demo.base, tmp_path / "probe.nii.gz", f"PROBE-{secrets.token_hex(4)}")
    socket.texts.clear()
    socket.shown.clear()
    page.locator("#raw-import-result a.open").click()

    ready = _until(page, lambda: socket.last("ready"), "ready")
    assert [s["modality"] for s in ready["series"]] == ["MR"], ready["series"]
    frame = _settled_still(page, socket)

    # The study opens on the stack's middle: in this even stack half-way between slices 5 and 6, a
    # tie for the nearest slice (where a reversed slice order would not show either). PageUp (ten
    # slices) stops at the last slice's centre, and three ArrowDown steps come back to a slice centre
    # off the middle, where nothing is ambiguous.
    _canvas(page).focus()
    for key in ("PageUp", "ArrowDown", "ArrowDown", "ArrowDown"):
        page.keyboard.press(key)
        frame = _settled_still(page, socket, after=frame.sequence)
    plane = frame.overlay["plane"]
    normal = np.asarray(plane["normal"], dtype=np.float64)
    centre = np.asarray(plane["center_mm"], dtype=np.float64)
    index_on_plane = _continuous_index(image, centre)
    depth_axis = int(np.argmax(np.abs(_continuous_index(image, centre + normal) - index_on_plane)))
    depth = int(np.floor(index_on_plane[depth_axis] + 0.5))
    assert abs(index_on_plane[depth_axis] - depth) < 0.01 and depth in (3, SIZE[depth_axis] - 4), \
        (index_on_plane, depth_axis, plane)

    # Voxels well inside that slice, aimed at at their centres (the nearest voxel is plain), put on
    # the canvas by the frame's own plane.
    shown_size = view_size(page, VIEW)
    for fraction in ((0.3, 0.4), (0.55, 0.7), (0.8, 0.25)):
        voxel = [0, 0, 0]
        voxel[depth_axis] = depth
        in_plane = [axis for axis in range(3) if axis != depth_axis]
        for axis, part in zip(in_plane, fraction, strict=True):
            voxel[axis] = round(part * (SIZE[axis] - 1))
        voxel_centre = np.asarray(image.TransformIndexToPhysicalPoint(voxel), dtype=np.float64)
        x, y = _to_canvas(frame, voxel_centre)
        assert 0 < x < frame.width and 0 < y < frame.height, (voxel, x, y, frame.overlay)

        mark = len(socket.texts)
        page.mouse.move(*_on_page(shown_size, x, y))
        answer, line = _probed(page, socket, mark)
        parsed = PROBE.match(line)
        assert parsed is not None, line
        point = np.array([float(v) for v in parsed["point"].split(",")])
        assert np.abs(point - np.asarray(answer["point"])).max() <= PAGE_POINT_MM + 1e-9, (line, answer)

        # The truth at the point the page names: the NIfTI's value at the voxel nearest to it.
        nearest = _nearest_voxels(image, point, PAGE_POINT_MM)
        assert len(nearest) == 1, (line, nearest)
        (i, j, k), = nearest
        assert all(0 <= n < s for n, s in zip((i, j, k), SIZE, strict=True)), (line, point, nearest)
        assert tuple(image.TransformPhysicalPointToIndex(point.tolist())) == (i, j, k), (point, nearest)
        expected = int(truth[k, j, i])
        assert expected == voxel_value(i, j, k)
        assert parsed["value"] == _reader_number(expected), (line, (i, j, k), expected)
        assert answer["value"] == expected, (answer, (i, j, k), expected)
        assert (i, j, k) == tuple(voxel), (line, voxel)  # the pointer was where the frame's plane says

