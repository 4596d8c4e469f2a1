"""Remote rendering over the channel layer: same frames as local, signed messages, failover.

These run the serving loop (what ``manage.py render_worker`` runs) inside the test's
event loop over the in-memory channel layer; the multi-process version over Redis,
with a worker killed for real, is tests/deploy/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import time

import msgpack
import numpy as np
import pytest
from channels.layers import get_channel_layer

from rendering.engine import MissingVolumeError, RenderError
from rendering.operations import OPERATIONS
from rendering.remote import (
    RemoteRenderPool,
    RemoteUnavailable,
    ServeStats,
    render_serve,
    sign,
    verify,
)
from rendering.viewstate import viewstate_to_dict
from rendering.workers import RenderPool, SourceSpec

from .conftest import decode, state

KEY = b"k" * 32
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
             "render": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(scope="module")
def local_pool(phantom_dir):
    with RenderPool(sources={"phantom": SourceSpec("rendering.testing:PhantomSource",
                                                   {"root": str(phantom_dir)})}, size=1) as running:
        yield running


@pytest.fixture
def layers(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    yield


class Worker:
    """One serving loop (a render_worker) in this event loop."""

    def __init__(self, pool: RenderPool, name: str, key: bytes = KEY) -> None:
        self.stop = asyncio.Event()
        self.stats = ServeStats()
        self.task = asyncio.create_task(render_serve(pool=pool, key=key, name=name, stop=self.stop,
                                                     stats=self.stats))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


async def test_a_remote_frame_equals_the_local_frame(layers, local_pool, phantom, engine):
    ct, pet, truth, volumes = phantom
    s = state(ct, view="coronal", focus_mm=truth["lesions"][0]["center_mm"], layers=[
        {"series_id": ct.series_id, "window_preset": "abdomen"},
        {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "palette": "hot_iron",
         "opacity": 0.5}])
    worker = Worker(local_pool, "w1")
    remote = RemoteRenderPool(key=KEY)
    try:
        frame = await remote.render(s, source="phantom")
        assert np.array_equal(decode(frame), engine.pixels(s, volumes))
        assert frame.overlay == engine.render(s, volumes).overlay
        x, y = frame.overlay.crosshair_px
        probed = await remote.probe(s, source="phantom", x=x, y=y)
        assert probed.value == pytest.approx(truth["lesions"][0]["suv_max"], rel=0.02)
        described = await remote.describe(s, source="phantom")
        assert set(described) == {ct.series_id, pet.series_id}
        with pytest.raises(MissingVolumeError):
            await remote.render(state(ct, layers=[{"series_id": "9.9.9", "window_preset": "abdomen"}]),
                                source="phantom")
    finally:
        remote.close()
        await worker.close()
    assert worker.stats.served == 3 and worker.stats.failed == 1


def test_the_wire_form_round_trips(phantom, engine):
    ct, pet, truth, volumes = phantom
    slab = state(ct, view="coronal", slab={"mode": "mip", "thickness_mm": 12},
                 focus_mm=truth["lesions"][0]["center_mm"],
                 layers=[{"series_id": ct.series_id, "window_preset": "abdomen"},
                         {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "palette": "rainbow"}])
    frame = engine.render(slab, volumes)
    assert frame.overlay.slab == ("mip", 12.0)
    render = OPERATIONS["render"]
    assert render.from_wire(msgpack.unpackb(msgpack.packb(render.to_wire(frame)))) == frame
    x, y = frame.overlay.crosshair_px
    probe = OPERATIONS["probe"]
    probed = engine.probe(slab, volumes, x, y)
    assert probe.from_wire(msgpack.unpackb(msgpack.packb(probe.to_wire(probed)))) == probed


async def test_an_operation_registered_outside_the_pools_runs_local_and_remote(layers, local_pool, phantom):
    ct, pet, _, _ = phantom
    s = state(ct, layers=[{"series_id": ct.series_id, "window_preset": "abdomen"},
                          {"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}])
    truth = {ct.series_id: 2 * ct.voxels.size, pet.series_id: 2 * pet.voxels.size}
    assert await local_pool.request("layer_voxels", s, source="phantom", times=2) == truth
    worker = Worker(local_pool, "w1")
    remote = RemoteRenderPool(key=KEY)
    try:
        assert await remote.request("layer_voxels", s, source="phantom", times=2) == truth
        with pytest.raises(RenderError, match="unknown operation"):
            await remote.request("export_voxels", s, source="phantom")
    finally:
        remote.close()
        await worker.close()
    with pytest.raises(RenderError, match="unknown operation"):
        await local_pool.request("export_voxels", s, source="phantom")


async def test_a_worker_refuses_a_signed_request_for_an_unregistered_operation(layers, local_pool, phantom):
    ct, _, _, _ = phantom
    worker = Worker(local_pool, "w1")
    layer = get_channel_layer("render")
    reply = await layer.new_channel()
    try:
        await layer.send("render", sign(KEY, {
            "type": "render.request", "id": "r1", "op": "export_voxels", "reply": reply,
            "accept_by": time.time() + 5, "attempt": 0,
            "payload": {"state": viewstate_to_dict(state(ct)), "source": "phantom", "arguments": {}}}))
        while (answer := await asyncio.wait_for(layer.receive(reply), 10))["type"] != "render.reply":
            pass
    finally:
        await worker.close()
    assert answer["ok"] is False and "unknown operation" in answer["message"]


def test_signatures_bind_every_field():
    message = sign(KEY, {"id": "1", "op": "render", "payload": {"state": {"view": "axial"}}})
    assert verify(KEY, message)
    assert not verify(b"x" * 32, message)
    assert not verify(KEY, {**message, "op": "describe"})
    assert not verify(KEY, {key: value for key, value in message.items() if key != "sig"})


async def test_a_request_without_the_key_is_dropped(layers, local_pool, phantom):
    ct, _, _, _ = phantom
    worker = Worker(local_pool, "w1")
    stranger = RemoteRenderPool(key=b"not the gateway's key", queue_s=0.5, attempts=1)
    try:
        with pytest.raises(RemoteUnavailable):
            await stranger.render(state(ct), source="phantom")
    finally:
        stranger.close()
        await worker.close()
    assert worker.stats.dropped == 1 and worker.stats.served == 0


async def test_a_silent_worker_is_passed_over_within_two_seconds(layers, local_pool, phantom):
    """A worker that accepted a request and died (no more heartbeats): another one serves it."""
    ct, _, _, _ = phantom
    layer = get_channel_layer("render")
    remote = RemoteRenderPool(key=KEY, silence_s=1.0)
    taken = asyncio.Event()

    async def dies_after_accepting():
        message = await layer.receive("render")
        await layer.send(message["reply"], sign(KEY, {"id": message["id"], "type": "render.accepted"}))
        taken.set()

    dead = asyncio.create_task(dies_after_accepting())
    started = time.monotonic()
    request = asyncio.create_task(remote.render(state(ct), source="phantom"))
    await asyncio.wait_for(taken.wait(), 5)
    worker = Worker(local_pool, "survivor")
    try:
        frame = await asyncio.wait_for(request, 10)
    finally:
        remote.close()
        await worker.close()
        await dead
    assert frame.width == 512
    assert time.monotonic() - started < 2.5
    assert remote.retries == 1 and worker.stats.served == 1


async def test_a_stale_request_is_dropped_by_the_worker(layers, local_pool, phantom):
    """Requests nobody took in time were already sent again; the worker does not render them."""
    ct, _, _, _ = phantom
    remote = RemoteRenderPool(key=KEY, queue_s=0.3, attempts=4)
    request = asyncio.create_task(remote.render(state(ct), source="phantom"))
    await asyncio.sleep(0.5)
    worker = Worker(local_pool, "late")
    try:
        frame = await asyncio.wait_for(request, 10)
    finally:
        remote.close()
        await worker.close()
    assert frame.width == 512
    assert worker.stats.dropped >= 1 and worker.stats.served == 1
