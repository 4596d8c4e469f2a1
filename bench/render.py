"""Benchmark the viewer end to end: daphne, the websocket, the consumer, the render pool.

Serves a fresh demo (PET/CT phantom, CT 512x512xN) with ``manage.py serve`` (as
``make run``: one daphne per core) on a loopback port, signs a doctor in with
password + TOTP over HTTP, and drives viewer websockets with the `websockets` client.
Prints one JSON document:

    python bench/render.py [--slices 300] [--inputs 60] [--sessions 16] [--processes 0] [--workers 0]
                           [--series | --series-only | --views-only] [--rounds 9] [--no-peer]

Figures per view type: input-to-frame latency (p50/p95, ms) measured one input
at a time, frames/s, bytes per interactive frame; time to first image cold
(fresh workers) and warm; memory per session (PSS growth of the server's process
tree / sessions) and the tree's RSS and PSS with that many sessions open;
many sessions scrolling at once; and one session holding 16 views (a 4x4 grid, issue
#20): the grid's opening to every view's first frame, a scroll of view 0 to the last
view's frame of it, beside the same scroll with one view, and the server's memory with
the session at its default layout and at 16 views (``--views-only``: that figure alone).
``--series`` adds, and ``--series-only`` measures alone, radiographs, ultrasound cine and
a 10-series thumbnail strip (``bench/series.py``), with Orthanc's rendered radiograph as a
peer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.cookiejar
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rendering.protocol import frame_unpack  # noqa: E402

VIEWS_SCROLL_TARGET_MS = 300.0
FRAME_TIMEOUT_S = 30.0
QUIET_S = 0.5
PLANE_KINDS = frozenset({"native", "axial", "coronal", "sagittal", "oblique"})
GRID_4X4 = {"type": "grid", "rows": 4, "columns": 4,
            "cells": [[row, column, 1, 1] for row in range(4) for column in range(4)]}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(latencies: list[float], sizes: list[int]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
            "frames_per_second": round(len(latencies) / sum(latencies), 1),
            "bytes_per_frame": int(statistics.median(sizes)) if sizes else 0,
            "samples": len(latencies)}


def manage(env: dict[str, str], *arguments: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *arguments], cwd=ROOT,
                            env=env, capture_output=True, text=True, check=True, timeout=1800)
    return result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _totp(uri: str) -> str:
    from django_otp.oath import TOTP

    secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{TOTP(key, step=30, digits=6).token():06d}"


class Browserless:
    """Just enough of a browser to sign in: cookies, CSRF form tokens, redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _form(self, path: str, fields: dict[str, str]) -> str:
        page = self.opener.open(self.base + path, timeout=30).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **fields}).encode()
        request = urllib.request.Request(self.base + path, data=body,  # noqa: S310
                                         headers={"Origin": self.base, "Referer": self.base + path})
        return self.opener.open(request, timeout=30).geturl()

    def sign_in(self, username: str, password: str, otpauth: str) -> None:
        self._form("/accounts/login/", {"username": username, "password": password})
        landed = self._form("/accounts/otp/", {"otp_token": _totp(otpauth)})
        if landed.rstrip("/") != self.base:
            raise SystemExit(f"sign-in failed (landed on {landed})")

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


class Viewer:
    def __init__(self, socket_: websockets.ClientConnection) -> None:
        self.socket = socket_
        self.pending: list = []

    @classmethod
    async def open(cls, base: str, study: str, cookie: str) -> tuple[Viewer, dict]:
        url = base.replace("http", "ws", 1) + f"/ws/viewer/{study}/"
        connection = await websockets.connect(url, additional_headers={"Cookie": cookie,
                                                                      "Origin": base},
                                              max_size=2**24)
        viewer = cls(connection)
        ready = await viewer.text("ready")
        return viewer, ready

    async def text(self, kind: str) -> dict:
        while True:
            message = await self.socket.recv()
            if isinstance(message, str):
                body = json.loads(message)
                if body["type"] == "error":
                    raise RuntimeError(body)
                if body["type"] == kind:
                    return body
            else:
                frame = frame_unpack(message)
                await self.ack(frame)

    async def ack(self, frame) -> None:
        await self.socket.send(json.dumps({"type": "ack", "view": frame.view, "seq": frame.sequence}))

    async def frame(self, view: int, *, quality: int | None = None, after: int = 0):
        while True:
            message = await self.socket.recv()
            if isinstance(message, str):
                body = json.loads(message)
                if body["type"] == "error":
                    raise RuntimeError(body)
                continue
            frame = frame_unpack(message)
            await self.ack(frame)
            if frame.view == view and frame.sequence > after and (
                    quality is None or frame.quality == quality):
                return frame

    async def send(self, body: dict) -> None:
        await self.socket.send(json.dumps(body))

    async def settle(self, seconds: float = 0.4) -> None:
        """Drain frames (acknowledging them) until the socket is quiet."""
        while True:
            try:
                message = await asyncio.wait_for(self.socket.recv(), timeout=seconds)
            except TimeoutError:
                return
            if not isinstance(message, str):
                await self.ack(frame_unpack(message))

    async def layout(self, name: str) -> dict:
        await self.send({"type": "layout", "layout": name})
        ready = await self.text("ready")
        for index in range(len(ready["views"])):
            await self.send({"type": "resize", "view": index, "width": 512, "height": 512})
        await self.settle()
        return ready


async def _measure(viewer: Viewer, view: int, inputs: int, make_input) -> dict:
    latencies, sizes, sequence = [], [], 0
    for step in range(inputs):
        started = time.perf_counter()
        await viewer.send(make_input(step))
        frame = await viewer.frame(view, quality=0, after=sequence)
        latencies.append(time.perf_counter() - started)
        sizes.append(len(frame.image))
        sequence = frame.sequence
    await viewer.settle()
    return _summary(latencies, sizes)


def _scroll(view: int):
    return lambda step: {"type": "input", "view": view, "op": "scroll",
                         "delta": 1 if (step // 20) % 2 == 0 else -1}


async def _still(viewer: Viewer, view: int, repeats: int = 5) -> dict:
    """Input, its interactive frame, then the lossless still of that same state."""
    times, renders, size = [], [], 0
    for step in range(repeats):
        started = time.perf_counter()
        await viewer.send({"type": "input", "view": view, "op": "rotate",
                           "dazimuth": 7 + step, "delevation": 0})
        interactive = await viewer.frame(view, quality=0)
        frame = await viewer.frame(view, quality=1, after=interactive.sequence - 1)
        times.append(time.perf_counter() - started)
        renders.append(frame.overlay.get("render_ms", 0))
        size = len(frame.image)
        await viewer.settle(1.0)
    return {"input_to_still_p50_ms": round(statistics.median(times) * 1000, 1),
            "still_render_p50_ms": round(statistics.median(renders), 1),
            "bytes_per_frame": size}


async def _first_image(base: str, study: str, cookie: str) -> float:
    started = time.perf_counter()
    viewer, _ = await Viewer.open(base, study, cookie)
    await viewer.frame(0)
    elapsed = time.perf_counter() - started
    await viewer.socket.close()
    return elapsed


async def _crowd(base: str, study: str, cookie: str, sessions: int, inputs: int) -> dict:
    async def one() -> list[float]:
        viewer, _ = await Viewer.open(base, study, cookie)
        await viewer.layout("1x1")
        result = await _measure(viewer, 0, inputs, _scroll(0))
        await viewer.socket.close()
        return [result["p50_ms"], result["p95_ms"]]

    results = await asyncio.gather(*(one() for _ in range(sessions)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    good = [r for r in results if not isinstance(r, BaseException)]
    return {"sessions": sessions, "errors": len(errors),
            "p50_ms_median_of_sessions": round(statistics.median(r[0] for r in good), 1) if good else None,
            "p95_ms_worst_session": round(max(r[1] for r in good), 1) if good else None,
            "error_examples": [repr(e)[:200] for e in errors[:3]]}


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += _descendants(int(child))
    return found


def _is_render_worker(process: int) -> bool:
    try:
        return b"worker_entry" in Path(f"/proc/{process}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _memory_kb(pid: int, *, where=lambda process: True) -> dict[str, int]:
    """RSS and PSS (shared pages divided among their users) of ``pid`` and all its descendants
    (those ``where`` takes)."""
    totals = {"rss_kb": 0, "pss_kb": 0}
    for process in filter(where, _descendants(pid)):
        try:
            rollup = Path(f"/proc/{process}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in rollup.splitlines():
            if line.startswith("Rss:"):
                totals["rss_kb"] += int(line.split()[1])
            elif line.startswith("Pss:"):
                totals["pss_kb"] += int(line.split()[1])
    return totals


def _memory_by_role(pid: int) -> dict[str, dict[str, int]]:
    """The server's memory: the web tier (supervisor and daphne) and the render workers apart."""
    return {"web": _memory_kb(pid, where=lambda process: not _is_render_worker(process)),
            "render_workers": _memory_kb(pid, where=_is_render_worker),
            "whole_tree": _memory_kb(pid)}


async def next_frame(viewer: Viewer, timeout: float):
    """The next frame, acknowledged (text skipped, an error raised); None once quiet for ``timeout``."""
    while True:
        try:
            message = await asyncio.wait_for(viewer.socket.recv(), timeout=timeout)
        except TimeoutError:
            return None
        if isinstance(message, str):
            if json.loads(message)["type"] == "error":
                raise RuntimeError(message)
            continue
        frame = frame_unpack(message)
        await viewer.ack(frame)
        return frame


async def _every_view_framed(viewer: Viewer, views: int) -> None:
    framed: set[int] = set()
    while len(framed) < views:
        frame = await next_frame(viewer, FRAME_TIMEOUT_S)
        if frame is None:
            raise RuntimeError(f"views {sorted(set(range(views)) - framed)} got no frame")
        framed.add(frame.view)


async def _scroll_arrivals(viewer: Viewer, step: int) -> dict[int, tuple[float, float]]:
    """One scroll of view 0 on a quiet socket: per view, seconds to its (interactive) frame of it
    and the worker's render + encode ms of that frame; collected until the socket is quiet again
    (the stills that follow drained)."""
    started = time.perf_counter()
    await viewer.send(_scroll(0)(step))
    arrived: dict[int, tuple[float, float]] = {}
    while (frame := await next_frame(viewer, QUIET_S)) is not None:
        if frame.quality == 0 and frame.view not in arrived:
            arrived[frame.view] = (time.perf_counter() - started, frame.overlay.get("render_ms", 0.0))
    return arrived


def _spread_ms(seconds: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(percentile(seconds, 0.95) * 1000, 1), "samples": len(seconds)}


def _scrolls_summary(rounds: list[dict[int, tuple[float, float]]]) -> dict:
    """Over the rounds: scroll to the last view's frame, how many views moved, and the worker time
    (render + encode) of those frames added up."""
    moved = [len(arrived) for arrived in rounds]
    last = [max(seconds for seconds, _ in arrived.values()) for arrived in rounds]
    worker_ms = [sum(ms for _, ms in arrived.values()) for arrived in rounds]
    return {"scroll_to_last_view_frame": _spread_ms(last),
            "views_moved": {"min": min(moved), "max": max(moved)},
            "worker_ms_per_scroll_median": round(statistics.median(worker_ms), 1)}


def _modalities(ready: dict) -> dict[str, str]:
    return {series["uid"]: series["modality"] for series in ready["series"]}


def _shown(ready: dict) -> dict[str, int]:
    """How many views show each kind of view of each series (``axial PT``, ``axial CT+PT``)."""
    modality = _modalities(ready)
    shown = [f"{view['kind']} {'+'.join(modality[uid] for uid in view['layers'])}" for view in ready["views"]]
    return {label: shown.count(label) for label in sorted(set(shown))}


async def _planes_to_ct(viewer: Viewer, ready: dict) -> int:
    """Show the CT in every plane view that shows another series alone; how many changed."""
    modality = _modalities(ready)
    ct = next(uid for uid, name in modality.items() if name == "CT")
    changed = [index for index, view in enumerate(ready["views"])
               if view["kind"] in PLANE_KINDS and view["layers"] != [ct] and len(view["layers"]) == 1]
    for index in changed:
        await viewer.send({"type": "set", "view": index, "name": "series", "value": ct})
    await viewer.settle(1.0)
    return len(changed)


async def _sixteen_views(base: str, study: str, cookie: str, inputs: int, server_pid: int) -> dict:
    """One session: its default layout, then a 4x4 grid with link all on, then one view."""
    viewer, ready = await Viewer.open(base, study, cookie)
    await _every_view_framed(viewer, len(ready["views"]))
    await viewer.settle()
    at_default = _memory_by_role(server_pid)
    started = time.perf_counter()
    await viewer.send(GRID_4X4)
    grid = await viewer.text("ready")
    await _every_view_framed(viewer, len(grid["views"]))
    open_s = time.perf_counter() - started
    await viewer.settle()
    await viewer.send({"type": "input", "view": 0, "op": "link_all"})
    sixteen = _scrolls_summary([await _scroll_arrivals(viewer, step) for step in range(inputs)])
    at_sixteen = _memory_by_role(server_pid)
    to_ct = await _planes_to_ct(viewer, grid)
    ct = _scrolls_summary([await _scroll_arrivals(viewer, step) for step in range(inputs)])
    await viewer.layout("1x1")
    one = _scrolls_summary([await _scroll_arrivals(viewer, step) for step in range(inputs)])
    await viewer.socket.close()
    latency = sixteen["scroll_to_last_view_frame"]
    return {"views": len(grid["views"]), "shown": _shown(grid),
            "plane_views": sum(view["kind"] in PLANE_KINDS for view in grid["views"]),
            "link_all": True, "open_ms": round(open_s * 1000, 1), **sixteen,
            "target_ms": VIEWS_SCROLL_TARGET_MS, "pass": latency["median_ms"] <= VIEWS_SCROLL_TARGET_MS,
            "p95_within_target": latency["p95_ms"] <= VIEWS_SCROLL_TARGET_MS,
            "ct_in_every_plane_view": {"views_set_to_ct": to_ct, **ct},
            "peer_one_view": one,
            "ratio_16_views_to_1_view": round(
                latency["median_ms"] / one["scroll_to_last_view_frame"]["median_ms"], 2),
            "memory_kb": {f"default_layout_{len(ready['views'])}_views": at_default,
                          f"grid_{len(grid['views'])}_views": at_sixteen}}


async def _run(base: str, study: str, cookie: str, arguments, server_pid: int) -> dict:
    cold = await _first_image(base, study, cookie)
    warm = await _first_image(base, study, cookie)
    viewer, _ = await Viewer.open(base, study, cookie)
    figures: dict = {"time_to_first_image_s": {"cold": round(cold, 3), "warm": round(warm, 3)}}
    await viewer.layout("1x1")
    figures["mpr_scroll"] = await _measure(viewer, 0, arguments.inputs, _scroll(0))
    figures["wl_drag"] = await _measure(viewer, 0, arguments.inputs, lambda step: {
        "type": "input", "view": 0, "op": "window", "dc": 3 if step % 2 else -3, "dw": 5})
    await viewer.send({"type": "set", "view": 0, "name": "slab_mode", "value": "mip"})
    await viewer.send({"type": "set", "view": 0, "name": "slab_thickness", "value": 20})
    await viewer.settle()
    figures["slab_mip_20mm"] = await _measure(viewer, 0, arguments.inputs, _scroll(0))
    await viewer.layout("petct")
    figures["fusion_wl_drag"] = await _measure(viewer, 2, arguments.inputs, lambda step: {
        "type": "input", "view": 2, "op": "window", "dc": 3 if step % 2 else -3, "dw": 5})
    figures["petct_scroll_fusion_view"] = await _measure(viewer, 2, arguments.inputs, _scroll(2))
    await viewer.layout("2x2")
    figures["3d_rotate_interactive"] = await _measure(viewer, 3, arguments.inputs, lambda step: {
        "type": "input", "view": 3, "op": "rotate", "dazimuth": 4, "delevation": 0})
    figures["3d_still"] = await _still(viewer, 3)
    await viewer.socket.close()
    before = _memory_kb(server_pid)
    holders = [await Viewer.open(base, study, cookie) for _ in range(arguments.sessions)]
    for holder, _ in holders:
        await holder.frame(0)
    during = _memory_kb(server_pid)
    figures["memory_per_session_kb"] = round((during["pss_kb"] - before["pss_kb"]) / arguments.sessions)
    figures["memory_at_sessions_kb"] = {"sessions": arguments.sessions, **during}
    for holder, _ in holders:
        await holder.socket.close()
    figures["crowd_scrolling"] = await _crowd(base, study, cookie, arguments.sessions,
                                              max(10, arguments.inputs // 3))
    figures["sixteen_views"] = await _sixteen_views(base, study, cookie, arguments.inputs, server_pid)
    return figures


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=0,
                        help="CT slices (default 300, 32 with --series-only)")
    parser.add_argument("--inputs", type=int, default=60)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--processes", type=int, default=0, help="daphne processes (0: one per core)")
    parser.add_argument("--workers", type=int, default=0,
                        help="render workers per process (0: manage.py serve divides the cores)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--series", action="store_true", help="add the radiograph, cine and thumbnail figures")
    which.add_argument("--series-only", action="store_true", help="only those figures")
    which.add_argument("--views-only", action="store_true",
                       help="only the 16 views in one session figure (a 4x4 grid)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each series figure")
    parser.add_argument("--no-peer", action="store_true", help="no Orthanc peer for the radiograph")
    arguments = parser.parse_args()
    arguments.slices = arguments.slices or (32 if arguments.series_only else 300)
    return arguments


def _deploy(arguments: argparse.Namespace) -> tuple[dict[str, str], Path]:
    """A fresh gateway's databases, static files and demo (users, PET/CT) in a new directory."""
    var_dir = Path(tempfile.mkdtemp(prefix="bench-render-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env.update(GATEWAY_VAR_DIR=str(var_dir))
    if arguments.workers:
        env["GATEWAY_RENDER_WORKERS"] = str(arguments.workers)
    for zone in ("default", "identity", "audit"):
        manage(env, "migrate", "--database", zone, "--noinput", "-v0")
    manage(env, "collectstatic", "--noinput", "-v0")
    manage(env, "seed_demo", "--phantom-slices", str(arguments.slices))
    return env, var_dir


@contextlib.contextmanager
def _served(env: dict[str, str], processes: int, log: Path) -> Iterator[tuple[str, int]]:
    """``manage.py serve`` on a free loopback port until every daphne is up: (base URL, pid)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        server = subprocess.Popen([sys.executable, "manage.py", "serve", "--host", "127.0.0.1",
                                   "--port", str(port), "--processes", str(processes)], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)  # noqa: S310
                if len(_descendants(server.pid)) > processes:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(3)  # every daphne imports Django before it accepts
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    arguments = _arguments()
    load_at_start = os.getloadavg()
    env, var_dir = _deploy(arguments)
    study = manage(env, "shell", "--no-imports", "-c",
                   "from imaging.models import Study; print(Study.objects.get().study_instance_uid)"
                   ).strip()
    studies = None
    if arguments.series or arguments.series_only:
        import series

        studies = series.prepare(env, var_dir)
    credentials = json.loads((var_dir / "demo-credentials.json").read_text())
    processes = arguments.processes or len(os.sched_getaffinity(0))
    with _served(env, processes, var_dir / "server.log") as (base, server_pid):
        client = Browserless(base)
        client.sign_in("dr.ada", credentials["dr.ada"], credentials["totp"]["dr.ada"])
        cookie, figures = client.cookie_header(), {}
        load_at_measuring = os.getloadavg()
        if arguments.views_only:
            figures["sixteen_views"] = asyncio.run(
                _sixteen_views(base, study, cookie, arguments.inputs, server_pid))
        elif not arguments.series_only:
            figures.update(asyncio.run(_run(base, study, cookie, arguments, server_pid)))
        if studies is not None:
            figures["series"] = {"fresh_workers": arguments.series_only,
                                 **asyncio.run(series.measure(base, cookie, studies, arguments.rounds))}
    if studies is not None and not arguments.no_peer:
        figures["series"] = series.with_peer_ratio(
            figures["series"], series.orthanc_peer(studies.radiograph_file, arguments.rounds))
    print(json.dumps({
        "benchmark": "render",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "load_average": {"at_start": load_at_start, "at_measuring": load_at_measuring,
                         "at_end": os.getloadavg()},
        "server_log": str(var_dir / "server.log"),
        "study": {"ct_slices": arguments.slices, "viewport": "512x512"},
        "web_processes": processes,
        "render_workers_per_process": arguments.workers or max(1, len(os.sched_getaffinity(0)) // processes),
        **figures,
    }, indent=2))


if __name__ == "__main__":
    main()
