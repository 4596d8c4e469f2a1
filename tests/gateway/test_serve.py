"""``manage.py serve``: several daphne processes on one port, and what must reach all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from tests.served import (
    closed_code,
    gateway_serve,
    is_frame,
    serving_pid,
    viewer_ready,
    viewer_socket,
    viewer_until,
)

FUSED_VIEW = 2  # the PET/CT layout: CT, PET, CT + PET, PET MIP


def _viewers_on_every_process(gateway, browser, stack: contextlib.ExitStack) -> list:
    """Viewer sockets, opened until every daphne holds one (the kernel spreads them by hash)."""
    sockets, holders = [], set()
    while len(holders) < len(gateway.server_pids()) and len(sockets) < 24:
        ws = stack.enter_context(viewer_socket(gateway, browser))
        sockets.append(ws)
        holders.add(serving_pid(gateway, ws.socket.getsockname()[1]))
    assert holders == set(gateway.server_pids()), f"{len(sockets)} connections all landed on one process"
    for ws in sockets:
        viewer_ready(ws)
    return sockets


def test_sign_out_everywhere_closes_viewers_held_by_every_process_within_a_second(served_demo):
    assert len(served_demo.server_pids()) == 2
    browser = served_demo.doctor()
    with contextlib.ExitStack() as stack:
        sockets = _viewers_on_every_process(served_demo, browser, stack)
        done = browser.form("/accounts/security/", {}, action="/accounts/security/logout-everywhere/")
        assert done.status in (302, 303), done.status
        posted = time.monotonic()
        codes = [closed_code(ws, seconds=5) for ws in sockets]
        assert time.monotonic() - posted < 1.0
    assert codes == [4401] * len(sockets)


def test_an_account_deactivated_from_the_command_line_is_closed_on_every_process(served_demo):
    person = served_demo.person("doctor")
    with contextlib.ExitStack() as stack:
        sockets = _viewers_on_every_process(served_demo, served_demo.sign_in(person), stack)
        served_demo.shell("from accounts.models import User; "
                          f"u = User.objects.get(username={person.username!r}); "
                          "u.is_active = False; u.save()")
        changed = time.monotonic()
        codes = [closed_code(ws, seconds=5) for ws in sockets]
        assert time.monotonic() - changed < 1.0
    assert set(codes) == {4401}


@pytest.fixture
def bare_gateway(tmp_path):
    gateway = gateway_serve(tmp_path)
    yield gateway
    gateway.stop()


def test_a_process_that_dies_is_replaced_and_the_port_keeps_answering(bare_gateway):
    first, second = bare_gateway.server_pids()
    os.kill(first, signal.SIGKILL)
    for _ in range(10):
        with urllib.request.urlopen(f"{bare_gateway.base}/healthz", timeout=10) as response:  # noqa: S310
            assert response.status == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = bare_gateway.server_pids()
        if len(pids) == 2 and first not in pids:
            break
        time.sleep(0.2)
    assert second in pids and first not in pids and len(pids) == 2


def test_stopping_the_server_stops_every_process(bare_gateway):
    pids = bare_gateway.server_pids()
    bare_gateway.stop()
    assert bare_gateway.process is not None and bare_gateway.process.returncode == 0
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def _mapped_volume_files(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split()[-1] for line in maps.splitlines() if line.endswith(".vol")}


def test_render_workers_of_every_process_map_one_shared_copy_of_each_volume(served_demo):
    browser = served_demo.doctor()
    with contextlib.ExitStack() as stack:
        for ws in _viewers_on_every_process(served_demo, browser, stack):
            viewer_until(ws, lambda m: is_frame(m) and m.view == FUSED_VIEW)  # CT and PET rendered
        workers = [int(pid) for server in served_demo.server_pids()
                   for task in Path(f"/proc/{server}/task").iterdir()
                   for pid in (task / "children").read_text().split()]
        mapped = [_mapped_volume_files(pid) for pid in workers]
    assert len(workers) == 2
    assert mapped[0] == mapped[1] and len(mapped[0]) == 2, mapped  # CT and PET, once each on the host
    for name in mapped[0]:
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(name)).st_mode) == 0o700


def test_the_servers_go_when_the_supervisor_is_killed_outright(bare_gateway):
    pids = bare_gateway.server_pids()
    assert bare_gateway.process is not None
    os.kill(bare_gateway.process.pid, signal.SIGKILL)
    bare_gateway.process.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        time.sleep(0.2)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")], "daphne outlived its supervisor"
