"""Benchmark the measurements of issue #14 on the phantom PET/CT, beside SimpleITK and numpy.

Serves a fresh demo (``manage.py seed_demo``: the phantom PET/CT, CT 512x512xN, PET
128x128xN/2) with ``manage.py serve`` on a loopback port, as ``bench/render.py`` does,
and measures on the same phantom files:

* sphere VOI, r = 10, 15 and 30 mm, on the PET (with SUVpeak and TLG) and on the CT;
* a 50 mm ellipse ROI on the fused CT + PET view (HU and SUV), its corner moving a
  pixel a round as while dragging a handle;
* a 41 % threshold VOI around a lesion: a box just larger than the lesion, and a
  200 mm box (``box_mm`` 100: the box reaches 100 mm from its centre);
* a 100 mm line profile through the lesion on the fused view (both layers);

each one (a) in-process through the registered operation (``OPERATIONS[name].run``),
(a') through the render pool's one request entry point (``RenderPool.request_sync``:
a worker process, the result crossing as msgpack), and (b) over the served viewer
websocket, ``measure`` sent to ``measurement`` received. The peers compute the same
statistics directly on the same arrays: SimpleITK (``LabelStatisticsImageFilter`` on
a sphere / ellipse mask, ``ConnectedThresholdImageFilter`` for the threshold VOI) and
plain numpy (boolean masks, a 26-connected flood by dilation). The peers do less: no
partial-voxel weights, no SUVpeak, no resampling onto the view's plane (they use the
nearest native slice). The in-process run, the pool and the peers are timed in turn within
each round, and each websocket round is followed by the same measurement in this process,
so that every ratio compares figures taken under the same load. Prints one JSON document:

    python bench/measure.py [--slices 300] [--rounds 30] [--no-served] [--no-pool]

Issue #14's targets: ellipse ROI while dragging p95 <= 30 ms, sphere r = 15 mm with
SUVpeak <= 100 ms, threshold VOI over a 200 mm box <= 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from render import Browserless, Viewer, _deploy, _served, frame_unpack, manage, percentile  # noqa: E402

SPHERE_RADII_MM = (10.0, 15.0, 30.0)
ELLIPSE_DIAMETER_MM = 50.0
LINE_LENGTH_MM = 100.0
BIG_BOX_MM = 100.0  # reaches 100 mm from the centre: a 200 mm box
FRACTION = 0.41
TARGETS_MS = {"ellipse_fused_50mm": ("p95", 30.0), "sphere_pet_r15": ("p50", 100.0),
              "threshold_41pct_box200mm": ("p50", 300.0)}
VIEWPORT = 512
PETCT_VIEWS = {"ct": 0, "pet": 1, "fused": 2}  # the PET/CT layout: CT, PET, CT + PET, 3-D


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(seconds) * 1000, 2),
            "p95_ms": round(percentile(seconds, 0.95) * 1000, 2),
            "per_second": round(len(seconds) / sum(seconds), 1), "samples": len(seconds)}


def _ratio(numerator: dict[str, float], denominator: dict[str, float]) -> float:
    """p50 over p50: how many times the first takes the second's time."""
    return round(numerator["p50_ms"] / denominator["p50_ms"], 2)


def _interleaved(calls: dict[str, Callable[[int], Any]], rounds: int,
                 warm: int = 2) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Each call timed once a round, in turn, so that all of them meet the same load."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    answers: dict[str, Any] = {}
    for step in range(warm + rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            answers[name] = call(step)
            if step >= warm:
                seconds[name].append(time.perf_counter() - started)
    return {name: _summary(samples) for name, samples in seconds.items()}, answers


# --- the peers: the same statistics straight from the arrays -------------------------------------


class Grid:
    """A volume's array in SUV or HU and its axis-aligned geometry, read here from the Volume's fields."""

    def __init__(self, volume: Any) -> None:
        if not np.allclose(volume.direction, np.eye(3)):
            raise SystemExit("the peers assume axial, axis-aligned volumes (the phantom's)")
        self.values = volume.voxels
        self.factor = volume.suv_factor or 1.0
        self.origin = np.asarray(volume.origin, dtype=np.float64)  # x, y, z
        self.step = np.asarray(volume.spacing[::-1], dtype=np.float64)  # x, y, z
        self.shape_xyz = np.asarray(volume.shape[::-1])

    def index_range(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """(z, y, x) slices of the voxels whose centres lie in the box [low, high] (mm)."""
        first = np.maximum(np.ceil((low_mm - self.origin) / self.step - 1e-6).astype(int), 0)
        last = np.floor((high_mm - self.origin) / self.step + 1e-6).astype(int) + 1
        last = np.minimum(last, self.shape_xyz)
        return slice(first[2], last[2]), slice(first[1], last[1]), slice(first[0], last[0])

    def centres(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, y, x = (self.origin[axis] + self.step[axis] * np.arange(part.start, part.stop)
                   for axis, part in zip((2, 1, 0), box, strict=True))
        return np.meshgrid(z, y, x, indexing="ij")

    def crop(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        return self.values[box].astype(np.float64) * self.factor

    def nearest_slice(self, z_mm: float) -> int:
        return int(np.clip(round((z_mm - self.origin[2]) / self.step[2]), 0, self.shape_xyz[2] - 1))


def _sphere_mask(grid: Grid, center: np.ndarray, radius: float):
    box = grid.index_range(center - radius, center + radius)
    z, y, x = grid.centres(box)
    inside = (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius**2
    return grid.crop(box), inside


def _sitk_statistics(values: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    image = sitk.GetImageFromArray(values)
    labels = sitk.GetImageFromArray(inside.astype(np.uint8))
    statistics_ = sitk.LabelStatisticsImageFilter()
    statistics_.UseHistogramsOn()
    statistics_.Execute(image, labels)
    return {"count": statistics_.GetCount(1), "mean": statistics_.GetMean(1), "sd": statistics_.GetSigma(1),
            "minimum": statistics_.GetMinimum(1), "maximum": statistics_.GetMaximum(1),
            "median": statistics_.GetMedian(1)}


def _numpy_statistics(values: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    chosen = values[inside]
    return {"count": int(chosen.size), "mean": float(chosen.mean()), "sd": float(chosen.std()),
            "minimum": float(chosen.min()), "maximum": float(chosen.max()),
            "median": float(np.median(chosen))}


def sphere_peer(statistics_of: Callable, grid: Grid, center: np.ndarray, radius: float) -> dict[str, float]:
    return statistics_of(*_sphere_mask(grid, center, radius))


def ellipse_peer(statistics_of: Callable, grids: list[Grid], center: np.ndarray,
                 radii: tuple[float, float]) -> list[dict[str, float]]:
    """Every layer's statistics inside the ellipse, on that layer's nearest native axial slice."""
    results = []
    for grid in grids:
        low = np.array([center[0] - radii[0], center[1] - radii[1], center[2]])
        high = np.array([center[0] + radii[0], center[1] + radii[1], center[2]])
        box = grid.index_range(low, high)
        k = grid.nearest_slice(center[2])
        box = (slice(k, k + 1), box[1], box[2])
        _, y, x = grid.centres(box)
        inside = ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 <= 1
        results.append(statistics_of(grid.crop(box)[0], inside[0]))
    return results


def line_peer(grids: list[Grid], start: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
    """Every layer's nearest-voxel values at evenly spaced points (NaN outside), as the gateway samples."""
    length = float(np.linalg.norm(end - start))
    profiles = []
    for grid in grids:
        count = min(256, max(2, math.ceil(length / (grid.step.min() / 2)) + 1))
        points = start + (end - start) * np.linspace(0.0, 1.0, count)[:, None]
        index = np.rint((points - grid.origin) / grid.step).astype(int)
        inside = np.all((index >= 0) & (index < grid.shape_xyz), axis=1)
        clipped = np.clip(index, 0, grid.shape_xyz - 1)
        values = grid.values[clipped[:, 2], clipped[:, 1], clipped[:, 0]].astype(np.float64) * grid.factor
        profiles.append(np.where(inside, values, np.nan))
    return profiles


def _threshold_box(grid: Grid, center: np.ndarray, reach: float) -> tuple[np.ndarray, tuple[int, ...]]:
    values = grid.crop(grid.index_range(center - reach, center + reach))
    return values, tuple(int(v) for v in np.unravel_index(int(np.argmax(values)), values.shape))


def threshold_peer_sitk(grid: Grid, center: np.ndarray, reach: float) -> dict[str, float]:
    values, seed = _threshold_box(grid, center, reach)
    image = sitk.GetImageFromArray(values)
    grow = sitk.ConnectedThresholdImageFilter()
    grow.SetSeedList([seed[::-1]])  # SimpleITK indexes (x, y, z)
    grow.SetLower(FRACTION * float(values[seed]))
    grow.SetUpper(float(values[seed]) + 1.0)
    grow.SetConnectivity(sitk.ConnectedThresholdImageFilter.FullConnectivity)
    region = grow.Execute(image)
    statistics_ = sitk.LabelStatisticsImageFilter()
    statistics_.Execute(image, region)
    voxel_ml = float(np.prod(grid.step)) / 1000
    return {"count": statistics_.GetCount(1), "volume_ml": statistics_.GetCount(1) * voxel_ml,
            "mean": statistics_.GetMean(1), "maximum": statistics_.GetMaximum(1)}


def threshold_peer_numpy(grid: Grid, center: np.ndarray, reach: float) -> dict[str, float]:
    """The region above 41 % of the box's maximum connected to it, grown by 26-neighbour dilation."""
    values, seed = _threshold_box(grid, center, reach)
    above = values >= FRACTION * values[seed]
    region = np.zeros_like(above)
    region[seed] = True
    while True:
        padded = np.pad(region, 1)
        grown = np.zeros_like(region)
        nz, ny, nx = region.shape
        for dz in range(3):
            for dy in range(3):
                for dx in range(3):
                    grown |= padded[dz:dz + nz, dy:dy + ny, dx:dx + nx]
        grown &= above
        if np.array_equal(grown, region):
            break
        region = grown
    chosen = values[region]
    return {"count": int(region.sum()), "volume_ml": int(region.sum()) * float(np.prod(grid.step)) / 1000,
            "mean": float(chosen.mean()), "maximum": float(chosen.max())}


# --- the gateway's measurements: scenarios ---------------------------------------------------------


def scenarios(ct: Any, pet: Any, lesion: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each measurement: its operation, view state, arguments per round, websocket message, peers."""
    from rendering.engine import planes
    from rendering.viewstate import viewstate_from_dict

    center = np.asarray(lesion["center_mm"], dtype=np.float64)
    ct_layer = {"series_id": ct.series_id, "window_preset": "abdomen"}
    pet_layer = {"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}
    fused_layers = [ct_layer, {**pet_layer, "palette": "hot_iron", "opacity": 0.5}]

    def view(layers: list[dict[str, Any]]) -> Any:
        return viewstate_from_dict({"view": "axial", "layers": layers, "focus_mm": list(center),
                                    "width": VIEWPORT, "height": VIEWPORT, "quality": "still"})

    fused = view(fused_layers)
    plane = planes.view_plane(fused, ct)
    x, y = plane.screen(center)
    half = ELLIPSE_DIAMETER_MM / 2 / plane.mm_per_pixel
    across = plane.right * LINE_LENGTH_MM / 2
    start, end = plane.screen(center - across), plane.screen(center + across)
    grids = {"ct": Grid(ct), "pet": Grid(pet)}

    def ellipse_points(step: int) -> list[list[float]]:
        moved = (step % 8) * 0.5  # a handle dragged a pixel every other round, and back
        return [[x - half, y - half], [x + half + moved, y + half + moved]]

    plan: dict[str, dict[str, Any]] = {}
    for layer, state in (("pet", view([pet_layer])), ("ct", view([ct_layer]))):
        for radius in SPHERE_RADII_MM:
            plan[f"sphere_{layer}_r{radius:g}"] = {
                "operation": "measure_sphere", "state": state, "view": PETCT_VIEWS[layer],
                "arguments": lambda step, r=radius: {"center_mm": list(center), "radius_mm": r},
                "message": {"tool": "sphere", "at": center, "radius_mm": radius},
                "sitk": lambda g=grids[layer], r=radius: sphere_peer(_sitk_statistics, g, center, r),
                "numpy": lambda g=grids[layer], r=radius: sphere_peer(_numpy_statistics, g, center, r)}
    radii = (ELLIPSE_DIAMETER_MM / 2, ELLIPSE_DIAMETER_MM / 2)
    plan["ellipse_fused_50mm"] = {
        "operation": "measure_area", "state": fused, "view": PETCT_VIEWS["fused"],
        "arguments": lambda step: {"shape": "ellipse", "points": ellipse_points(step)},
        "message": {"tool": "ellipse", "corners_mm": (center - plane.right * ELLIPSE_DIAMETER_MM / 2
                                                      - plane.down * ELLIPSE_DIAMETER_MM / 2,
                                                      center + plane.right * ELLIPSE_DIAMETER_MM / 2
                                                      + plane.down * ELLIPSE_DIAMETER_MM / 2)},
        "sitk": lambda: ellipse_peer(_sitk_statistics, [grids["ct"], grids["pet"]], center, radii),
        "numpy": lambda: ellipse_peer(_numpy_statistics, [grids["ct"], grids["pet"]], center, radii)}
    for name, reach in (("threshold_41pct_lesion", float(lesion["radius_mm"]) + 8.0),
                        ("threshold_41pct_box200mm", BIG_BOX_MM)):
        plan[name] = {
            "operation": "measure_threshold", "state": view([pet_layer]), "view": PETCT_VIEWS["pet"],
            "arguments": lambda step, b=reach: {"center_mm": list(center), "box_mm": b, "value": FRACTION},
            "message": {"tool": "threshold", "at": center, "radius_mm": reach, "fraction": FRACTION},
            "sitk": lambda b=reach: threshold_peer_sitk(grids["pet"], center, b),
            "numpy": lambda b=reach: threshold_peer_numpy(grids["pet"], center, b)}
    plan["line_fused_100mm"] = {
        "operation": "measure_line", "state": fused, "view": PETCT_VIEWS["fused"],
        "arguments": lambda step: {"points": [list(start), list(end)]},
        "message": {"tool": "line", "ends_mm": (center - across, center + across)},
        "numpy": lambda: line_peer([grids["ct"], grids["pet"]], center - across, center + across)}
    return plan


def _agreement(name: str, gateway: Any, peer: Any) -> dict[str, float] | None:
    """How far the gateway's headline numbers are from the peer's (relative)."""
    def rel(a: float, b: float) -> float:
        return round(abs(a - b) / max(abs(b), 1e-9), 4)

    if name.startswith("sphere"):
        (layer,) = gateway
        return {"maximum": rel(layer.maximum, peer["maximum"]), "mean": rel(layer.mean, peer["mean"]),
                "median": rel(layer.median, peer["median"])}
    if name.startswith("ellipse"):
        return {f"{layer.unit}_{key}": rel(getattr(layer, key), other[key])
                for layer, other in zip(gateway, peer, strict=True) for key in ("mean", "maximum")}
    if name.startswith("threshold"):
        return {"voxels": rel(gateway.voxels, peer["count"]), "mean": rel(gateway.mean, peer["mean"]),
                "maximum": rel(gateway.maximum, peer["maximum"])}
    return None


def here(plan: dict[str, dict[str, Any]], volumes: dict[str, Any], phantom: Path, rounds: int, *,
         pool: bool) -> dict[str, Any]:
    """In-process, through a one-worker pool and the peers, interleaved round by round."""
    from rendering.operations import operation_named
    from rendering.workers import RenderPool, SourceSpec

    spec = SourceSpec("rendering.testing:PhantomSource", {"root": str(phantom.resolve())})
    figures: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        workers = stack.enter_context(RenderPool(sources={"phantom": spec}, size=1)) if pool else None
        for name, item in plan.items():
            run = operation_named(item["operation"]).run
            calls: dict[str, Callable[[int], Any]] = {
                "in_process": lambda step, item=item, run=run: run(None, item["state"], volumes,
                                                                   item["arguments"](step))}
            if workers is not None:
                calls["pool"] = lambda step, item=item: workers.request_sync(
                    item["operation"], item["state"], source="phantom", **item["arguments"](step))
            for peer in ("sitk", "numpy"):
                if peer in item:
                    calls[f"peer_{peer}"] = lambda step, p=item[peer]: p()
            timings, answers = _interleaved(calls, rounds)
            entry: dict[str, Any] = dict(timings)
            for other in timings:
                if other.startswith("peer_"):
                    entry[f"in_process_over_{other}"] = _ratio(timings["in_process"], timings[other])
            if "pool" in timings:
                entry["pool_over_in_process"] = _ratio(timings["pool"], timings["in_process"])
            peer = "peer_sitk" if "peer_sitk" in answers else "peer_numpy"
            entry["agreement_with_peer"] = _agreement(name, answers["in_process"], answers[peer])
            figures[name] = entry
    return figures


# --- over the served websocket -------------------------------------------------------------------


async def _stills(viewer: Viewer, views: set[int], *, quiet_s: float = 1.5,
                  within_s: float = 180.0) -> dict[int, Any]:
    """The latest still frame of each of ``views`` once the socket is quiet (frames acknowledged)."""
    latest: dict[int, Any] = {}
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(viewer.socket.recv(), timeout=quiet_s)
        except TimeoutError:
            if views <= set(latest):
                return latest
            continue
        if isinstance(message, str):
            body = json.loads(message)
            if body["type"] == "error":
                raise RuntimeError(body)
            continue
        frame = frame_unpack(message)
        await viewer.ack(frame)
        if frame.quality == 1:
            latest[frame.view] = frame
    raise SystemExit(f"no still frame of views {sorted(views - set(latest))} within {within_s:g} s")


def _screen(frame: Any, point: np.ndarray) -> tuple[float, float]:
    plane = frame.overlay["plane"]
    offset = point - np.asarray(plane["center_mm"])
    mm = frame.overlay["mm_per_pixel"]
    return (round(float(offset @ np.asarray(plane["right"])) / mm + frame.width / 2, 1),
            round(float(offset @ np.asarray(plane["down"])) / mm + frame.height / 2, 1))


def _depth(frame: Any, point: np.ndarray) -> float:
    plane = frame.overlay["plane"]
    return float((point - np.asarray(plane["center_mm"])) @ np.asarray(plane["normal"]))


async def _to_lesion(viewer: Viewer, center: np.ndarray) -> dict[int, Any]:
    """Views 0-2 at 512 x 512, the shared crosshair scrolled to the lesion's slice: their stills there."""
    views = set(PETCT_VIEWS.values())
    for view in sorted(views):
        await viewer.send({"type": "resize", "view": view, "width": VIEWPORT, "height": VIEWPORT})
    frames = await _stills(viewer, views)
    depth = _depth(frames[0], center)
    await viewer.send({"type": "input", "view": 0, "op": "scroll", "delta": 1})
    moved = (await _stills(viewer, {0}))[0]
    step = depth - _depth(moved, center)
    if abs(step) < 1e-6:
        raise SystemExit("scrolling did not move the CT view")
    delta = round((depth - step) / step)
    if delta:
        await viewer.send({"type": "input", "view": 0, "op": "scroll", "delta": delta})
    return await _stills(viewer, views)


def _message(item: dict[str, Any], frame: Any, step: int) -> dict[str, Any]:
    spec = item["message"]
    body: dict[str, Any] = {"type": "measure", "view": item["view"], "tool": spec["tool"]}
    if "at" in spec:
        body["points"] = [list(_screen(frame, spec["at"]))]
        body["radius_mm"] = spec["radius_mm"]
        if "fraction" in spec:
            body["fraction"] = spec["fraction"]
    elif "corners_mm" in spec:
        (x0, y0), (x1, y1) = (_screen(frame, corner) for corner in spec["corners_mm"])
        moved = (step % 8) * 0.5
        body["points"] = [[x0, y0], [x1 + moved, y1 + moved]]
    else:
        body["points"] = [list(_screen(frame, end)) for end in spec["ends_mm"]]
    return body


async def served(base: str, study: str, cookie: str, plan: dict[str, dict[str, Any]], center: np.ndarray,
                 volumes: dict[str, Any], rounds: int) -> dict[str, Any]:
    """``measure`` sent to ``measurement`` received, each round followed by the same measurement
    in this process, so that the ratio of the two meets the same load."""
    from rendering.operations import operation_named

    viewer, ready = await Viewer.open(base, study, cookie)
    if ready["layout"] != "petct":
        raise SystemExit(f"the demo study did not open in the PET/CT layout: {ready['layout']}")
    frames = await _to_lesion(viewer, center)
    figures: dict[str, Any] = {}
    for name, item in plan.items():
        frame = frames[item["view"]]
        run = operation_named(item["operation"]).run
        seconds: dict[str, list[float]] = {"served": [], "in_process": []}
        for step in range(rounds + 2):
            started = time.perf_counter()
            await viewer.send(_message(item, frame, step))
            await viewer.text("measurement")
            between = time.perf_counter()
            run(None, item["state"], volumes, item["arguments"](step))
            if step >= 2:
                seconds["served"].append(between - started)
                seconds["in_process"].append(time.perf_counter() - between)
        figures[name] = {key: _summary(samples) for key, samples in seconds.items()}
    await viewer.socket.close()
    return figures


# --- the run -------------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300, help="CT slices of the phantom (default 300)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-served", action="store_true",
                        help="no served gateway: in-process and pool only")
    parser.add_argument("--no-pool", action="store_true")
    parser.add_argument("--processes", type=int, default=0, help="daphne processes (0: one per core)")
    arguments = parser.parse_args()
    arguments.workers = 0
    return arguments


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return 0.0


def main() -> None:
    arguments = _arguments()
    load_at_start = os.getloadavg()
    if arguments.no_served:
        from imaging.phantom import phantom_write

        var_dir, env = Path(tempfile.mkdtemp(prefix="bench-measure-")), None
        phantom_write(out_dir=var_dir / "demo" / "phantom", slices=arguments.slices)
    else:
        env, var_dir = _deploy(arguments)
    phantom = var_dir / "demo" / "phantom"

    from rendering.testing import volumes_from_phantom

    ct, pet, truth = volumes_from_phantom(phantom)
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    center = np.asarray(lesion["center_mm"], dtype=np.float64)
    plan = scenarios(ct, pet, lesion)
    load_at_measuring = os.getloadavg()
    volumes = {ct.series_id: ct, pet.series_id: pet}
    figures = here(plan, volumes, phantom, arguments.rounds, pool=not arguments.no_pool)
    if env is not None:
        study = manage(env, "shell", "--no-imports", "-c", "from imaging.models import Study; "
                       "print(Study.objects.get().study_instance_uid)").strip()
        credentials = json.loads((var_dir / "demo-credentials.json").read_text())
        processes = arguments.processes or len(os.sched_getaffinity(0))
        with _served(env, processes, var_dir / "server.log") as (base, _):
            client = Browserless(base)
            client.sign_in("dr.ada", credentials["dr.ada"], credentials["totp"]["dr.ada"])
            over_socket = asyncio.run(served(base, study, client.cookie_header(), plan, center, volumes,
                                             arguments.rounds))
        for name, timing in over_socket.items():
            figures[name]["served"] = timing["served"]
            figures[name]["in_process_beside_served"] = timing["in_process"]
            figures[name]["served_over_in_process"] = _ratio(timing["served"], timing["in_process"])
    targets = {}
    for name, (which, limit) in TARGETS_MS.items():
        got = figures[name]["in_process"][f"{which}_ms"]
        served_got = figures[name].get("served", {}).get(f"{which}_ms")
        targets[name] = {"target": f"{which} <= {limit:g} ms", "in_process_ms": got, "served_ms": served_got,
                         "met": got <= limit and (served_got is None or served_got <= limit)}
    print(json.dumps({
        "benchmark": "measure",
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
                    "memory_gib": _memory_gib(), "python": platform.python_version(),
                    "simpleitk": sitk.Version.VersionString(), "numpy": np.__version__},
        "load_average": {"at_start": load_at_start, "at_measuring": load_at_measuring,
                         "at_end": os.getloadavg()},
        "data": {"ct_shape": list(ct.shape), "ct_spacing_mm": list(ct.spacing), "pet_shape": list(pet.shape),
                 "pet_spacing_mm": list(pet.spacing), "lesion": lesion, "viewport": [VIEWPORT, VIEWPORT]},
        "rounds": arguments.rounds,
        "targets": targets,
        "scenarios": figures,
    }, indent=2))


if __name__ == "__main__":
    main()
