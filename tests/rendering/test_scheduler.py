"""Latest wins, bounded in-flight frames, stale frames never sent, a still after input."""

import asyncio

import pytest

from rendering.scheduler import Quality, ViewScheduler


class Recorder:
    def __init__(self, render_seconds: float = 0.01, fail_on: set[int] | None = None):
        self.render_seconds = render_seconds
        self.fail_on = fail_on or set()
        self.rendered: list[tuple[int, Quality]] = []
        self.pushed: list[tuple[int, Quality, str]] = []
        self.failed: list[int] = []
        self.max_outstanding = 0
        self.scheduler: ViewScheduler | None = None

    async def render(self, state, quality):
        self.rendered.append((state, quality))
        self.max_outstanding = max(self.max_outstanding, self.scheduler.outstanding)
        await asyncio.sleep(self.render_seconds)
        if state in self.fail_on:
            raise RuntimeError(f"worker died rendering {state}")
        return f"frame-of-{state}"

    async def push(self, sequence, quality, frame):
        self.pushed.append((sequence, quality, frame))

    async def failure(self, sequence, error):
        self.failed.append(sequence)


def _scheduler(recorder: Recorder, **options) -> ViewScheduler:
    recorder.scheduler = ViewScheduler(render=recorder.render, push=recorder.push,
                                       on_failure=recorder.failure, **options)
    return recorder.scheduler


async def _settle(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


async def test_a_burst_of_input_renders_the_latest_state_not_every_state():
    recorder = Recorder(render_seconds=0.02)
    scheduler = _scheduler(recorder, still_delay=10)
    for state in range(1, 101):
        scheduler.submit(state)
        await asyncio.sleep(0)
    while recorder.pushed and scheduler.outstanding:
        scheduler.acknowledge(recorder.pushed[-1][0])
        await asyncio.sleep(0.005)
    await _settle(0.1)
    scheduler.acknowledge(10**6)
    await _settle(0.1)
    rendered_states = [state for state, _ in recorder.rendered]
    assert len(rendered_states) < 10
    assert rendered_states[-1] == 100
    assert recorder.pushed[-1][2] == "frame-of-100"
    await scheduler.close()


async def test_no_more_than_two_frames_are_outstanding_without_acknowledgement():
    recorder = Recorder(render_seconds=0.005)
    scheduler = _scheduler(recorder, still_delay=10)
    for state in range(1, 30):
        scheduler.submit(state)
        await asyncio.sleep(0.01)
    assert len(recorder.pushed) == 2
    assert recorder.max_outstanding <= 2
    scheduler.acknowledge(recorder.pushed[-1][0])
    await _settle(0.05)
    assert recorder.pushed[-1][2] == "frame-of-29"
    await scheduler.close()


async def test_sequence_numbers_only_increase_and_stale_frames_are_dropped():
    durations = {1: 0.08, 2: 0.01}

    recorder = Recorder()

    async def uneven_render(state, quality):
        recorder.rendered.append((state, quality))
        await asyncio.sleep(durations.get(state, 0.01))
        return f"frame-of-{state}"

    scheduler = ViewScheduler(render=uneven_render, push=recorder.push,
                              on_failure=recorder.failure, still_delay=10)
    recorder.scheduler = scheduler
    scheduler.submit(1)
    scheduler.submit(2)
    await _settle(0.15)
    sent = [sequence for sequence, _, _ in recorder.pushed]
    assert sent == [2]
    await scheduler.close()


async def test_a_lossless_still_follows_when_input_stops():
    recorder = Recorder(render_seconds=0.005)
    scheduler = _scheduler(recorder, still_delay=0.05)
    scheduler.submit(7)
    await _settle(0.03)
    scheduler.acknowledge(1)
    await _settle(0.15)
    assert [(seq, quality) for seq, quality, _ in recorder.pushed] == [
        (1, Quality.INTERACTIVE), (1, Quality.STILL)]
    await _settle(0.15)
    assert len(recorder.pushed) == 2
    await scheduler.close()


async def test_new_input_cancels_the_pending_still():
    recorder = Recorder(render_seconds=0.005)
    scheduler = _scheduler(recorder, still_delay=0.08)
    scheduler.submit(1)
    await _settle(0.03)
    scheduler.acknowledge(1)
    scheduler.submit(2)
    await _settle(0.03)
    scheduler.acknowledge(2)
    await _settle(0.2)
    stills = [seq for seq, quality, _ in recorder.pushed if quality is Quality.STILL]
    assert stills == [2]
    await scheduler.close()


async def test_a_failed_render_is_reported_and_the_view_keeps_working():
    recorder = Recorder(render_seconds=0.005, fail_on={1})
    scheduler = _scheduler(recorder, still_delay=10)
    scheduler.submit(1)
    await _settle(0.05)
    assert recorder.failed == [1]
    scheduler.submit(2)
    await _settle(0.05)
    assert recorder.pushed[-1][2] == "frame-of-2"
    await scheduler.close()


async def test_a_closed_scheduler_refuses_input_and_sends_nothing_more():
    recorder = Recorder(render_seconds=0.05)
    scheduler = _scheduler(recorder)
    scheduler.submit(1)
    await scheduler.close()
    await _settle(0.1)
    assert recorder.pushed == []
    with pytest.raises(RuntimeError):
        scheduler.submit(2)


async def test_new_input_cancels_a_still_already_rendering_and_is_not_held_up_by_it():
    recorder = Recorder(render_seconds=0.005)
    scheduler = _scheduler(recorder, still_delay=0.02, max_in_flight=1)
    scheduler.submit(1)
    await _settle(0.02)
    scheduler.acknowledge(1)
    recorder.render_seconds = 0.5  # the still is slow
    await _settle(0.05)
    assert recorder.rendered[-1] == (1, Quality.STILL)
    recorder.render_seconds = 0.005
    scheduler.submit(2)
    await _settle(0.05)
    assert [(seq, quality) for seq, quality, _ in recorder.pushed] == [
        (1, Quality.INTERACTIVE), (2, Quality.INTERACTIVE)], "the interactive frame waited for the still"
    scheduler.acknowledge(2)
    await _settle(0.1)
    assert recorder.pushed[-1][:2] == (2, Quality.STILL)
    assert scheduler.outstanding == 1  # the still just sent, awaiting its acknowledgement
    await scheduler.close()
