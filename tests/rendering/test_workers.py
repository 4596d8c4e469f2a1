"""The render worker pool: same frames as in-process, errors carried over, crashes survived."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from rendering.engine import FrameOfReferenceError, MissingVolumeError
from rendering.viewstate import ViewStateError
from rendering.workers import RenderPool, SourceSpec, VolumeCache, WorkerCrashed

from .conftest import decode, state


@pytest.fixture(scope="module")
def pool(phantom_dir):
    with RenderPool(sources={"phantom": SourceSpec("rendering.testing:PhantomSource",
                                                   {"root": str(phantom_dir)})}, size=2) as running:
        yield running


async def test_pool_frame_equals_in_process_frame(pool, phantom, engine):
    ct, pet, truth, volumes = phantom
    s = state(ct, view="coronal", focus_mm=truth["lesions"][0]["center_mm"], layers=[
        {"series_id": ct.series_id, "window_preset": "abdomen"},
        {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "palette": "hot_iron", "opacity": 0.5}])
    frame = await pool.render(s, source="phantom")
    assert np.array_equal(decode(frame), engine.pixels(s, volumes))
    assert frame.overlay == engine.render(s, volumes).overlay
    x, y = frame.overlay.crosshair_px
    probed = await pool.probe(s, source="phantom", x=x, y=y)
    assert probed.value == pytest.approx(truth["lesions"][0]["suv_max"], rel=0.02)


async def test_concurrent_requests_and_3d_through_the_pool(pool, phantom):
    ct, _, _, _ = phantom
    states = [state(ct, view=view, quality="interactive") for view in ("axial", "coronal", "sagittal")] * 3
    states.append(state(ct, view="3d", preset3d="ct_bone", quality="interactive"))
    frames = await asyncio.gather(*(pool.render(s, source="phantom") for s in states))
    assert all(frame.data[:3] == b"\xff\xd8\xff" for frame in frames)


async def test_the_event_loop_keeps_running_while_workers_render(pool, phantom):
    ct, _, _, _ = phantom
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await pool.render(state(ct, view="3d", preset3d="ct_soft_tissue"), source="phantom")
    task.cancel()
    assert ticks > 10


async def test_errors_cross_the_process_boundary_with_their_type(pool, phantom):
    ct, _pet, _, _ = phantom
    with pytest.raises(MissingVolumeError):
        await pool.render(state(ct, layers=[{"series_id": "1.2.3", "window_preset": "lung"}]),
                          source="phantom")
    with pytest.raises(Exception, match="unknown volume source"):
        await pool.render(state(ct), source="elsewhere")
    assert (await pool.ping())[0]["pid"] in pool.worker_pids()


def test_same_series_goes_to_the_same_worker(pool, phantom):
    _ct, pet, _, _ = phantom
    before = {s["index"]: s["served"] for s in pool.stats()}
    for _ in range(4):
        pool.render_sync(state(pet, layers=[{"series_id": pet.series_id, "window_preset": "pet_suv_0_5"}]),
                         source="phantom")
    served = {s["index"]: s["served"] - before[s["index"]] for s in pool.stats()}
    assert sorted(served.values()) == [0, 4]


def test_volume_cache_respects_its_budget(phantom):
    ct, pet, _, volumes = phantom

    class Source:
        def load(self, series_id):
            return volumes[series_id]

    cache = VolumeCache(budget_bytes=ct.nbytes + pet.nbytes // 2)
    cache.get("s", ct.series_id, Source())
    cache.get("s", pet.series_id, Source())
    assert cache.used_bytes <= cache.budget_bytes
    cache.get("s", pet.series_id, Source())
    assert cache.hits == 1


async def wait_for_marker(folder: Path, exclude: set[str]) -> int:
    for _ in range(600):
        found = {p.name for p in folder.glob("[0-9]*")} - exclude if folder.exists() else set()
        if found:
            return int(found.pop())
        await asyncio.sleep(0.05)
    raise AssertionError("no worker started loading")


def test_workers_set_their_source_up_before_they_report_ready(phantom_dir, tmp_path):
    marker = tmp_path / "setup"
    spec = SourceSpec("rendering.testing:PhantomSource", {"root": str(phantom_dir), "marker": str(marker)})
    with RenderPool(sources={"phantom": spec}, size=2) as pool:
        assert {p.name for p in marker.glob("setup-*")} == {f"setup-{pid}" for pid in pool.worker_pids()}


async def test_killed_worker_is_replaced_and_the_frame_still_arrives(phantom_dir, phantom, tmp_path):
    ct, _, _, _volumes = phantom
    marker = tmp_path / "loading"
    spec = SourceSpec("rendering.testing:PhantomSource",
                      {"root": str(phantom_dir), "delay_s": 1.0, "marker": str(marker)})
    async with RenderPool(sources={"slow": spec}, size=1) as pool:
        first_pid = pool.worker_pids()[0]
        request = asyncio.create_task(pool.render(state(ct), source="slow"))
        pid = await wait_for_marker(marker, set())
        assert pid == first_pid
        os.kill(pid, signal.SIGKILL)
        frame = await request
        assert decode(frame).shape == (512, 512)
        assert pool.stats()[0]["restarts"] == 1
        assert pool.worker_pids()[0] != first_pid
        again = await pool.render(state(ct), source="slow")
        assert again.data == frame.data


async def test_a_request_that_kills_two_workers_fails_and_the_pool_lives_on(phantom_dir, phantom, tmp_path):
    ct, _, _, _ = phantom
    marker = tmp_path / "loading"
    spec = SourceSpec("rendering.testing:PhantomSource",
                      {"root": str(phantom_dir), "delay_s": 1.0, "marker": str(marker)})
    async with RenderPool(sources={"slow": spec}, size=1) as pool:
        request = asyncio.create_task(pool.render(state(ct), source="slow"))
        seen: set[str] = set()
        for _ in range(2):
            pid = await wait_for_marker(marker, seen)
            seen.add(str(pid))
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            await request
        frame = await pool.render(state(ct), source="slow")
        assert frame.width == 512


async def test_frame_of_reference_mismatch_is_refused_through_the_pool(phantom_dir, phantom):
    ct, pet, _, _ = phantom
    spec = SourceSpec("tests.rendering.sources:ForeignFrameSource", {"root": str(phantom_dir)})
    layers = [{"series_id": ct.series_id, "window_preset": "abdomen"},
              {"series_id": f"foreign-{pet.series_id}", "window_preset": "pet_suv_0_5",
               "palette": "hot_iron"}]
    async with RenderPool(sources={"foreign": spec}, size=1) as pool:
        with pytest.raises(FrameOfReferenceError, match="registration"):
            await pool.render(state(ct, layers=layers), source="foreign")
        with pytest.raises(ViewStateError):
            await pool.render(state(ct).__class__(**{**state(ct).__dict__, "width": 10}), source="foreign")
        layers[1]["registration"] = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
        assert (await pool.render(state(ct, layers=layers), source="foreign")).width == 512


async def test_cancelled_request_that_was_not_sent_is_dropped(phantom_dir, phantom):
    ct, _, _, _ = phantom
    spec = SourceSpec("rendering.testing:PhantomSource", {"root": str(phantom_dir), "delay_s": 0.5})
    async with RenderPool(sources={"slow": spec}, size=1) as pool:
        first = asyncio.create_task(pool.render(state(ct), source="slow"))
        superseded = asyncio.create_task(pool.render(state(ct), source="slow"))
        await asyncio.sleep(0.1)
        superseded.cancel()
        await first
        await asyncio.sleep(0.1)
        assert superseded.cancelled()
        assert pool.stats()[0]["served"] == 1


async def test_queued_interactive_requests_are_served_before_a_queued_still(phantom_dir, phantom):
    ct, _, _, _ = phantom
    spec = SourceSpec("rendering.testing:PhantomSource", {"root": str(phantom_dir), "delay_s": 0.5})
    finished: list[str] = []

    async def render(name: str, quality: str) -> None:
        await pool.render(state(ct, quality=quality), source="slow")
        finished.append(name)

    async with RenderPool(sources={"slow": spec}, size=1) as pool:
        busy = asyncio.create_task(render("busy", "interactive"))
        await asyncio.sleep(0.1)
        queued = [asyncio.create_task(render("still", "still"))]
        await asyncio.sleep(0.01)
        queued += [asyncio.create_task(render(name, "interactive")) for name in ("first", "second")]
        await asyncio.gather(busy, *queued)
    assert finished == ["busy", "first", "second", "still"]
