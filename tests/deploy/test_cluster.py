"""The deployment as a real multi-process cluster: nginx (TLS) → 2 daphne → Redis → 2 render workers.

``make test-cluster`` (and the end of .ci/run). PostgreSQL, Redis and nginx on
loopback; every service connects to PostgreSQL as its least role. A scripted client
signs in with password + TOTP through nginx and scrolls the viewer while

* one render worker is SIGKILLed: frames resume within 2 s (the remote pool sends the
  silent worker's request to the other one);
* one ASGI process is SIGKILLed: the client reconnects through nginx to the other and
  frames resume;
* storescu pushes a second study into the SCP the whole time.

Afterwards the audit chain verifies and every stored instance is whole (decrypts,
parses, has the SOP Instance UID its row says; no temporary file is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from imaging.phantom import phantom_write
from tests.conftest import manage
from tests.deploy.cluster import (
    ClusterError,
    ViewerRun,
    cluster_start,
    cluster_stop,
    max_gap,
    owner_sql,
    sign_in,
    viewer_scroll,
    web_start,
)

pytestmark = [pytest.mark.cluster, pytest.mark.server, pytest.mark.postgres]

RESUME_S = 2.0
INSTANCES_WHOLE = """
import io, json, os
import pydicom
from django.conf import settings
from imaging import storage
from imaging.models import Instance
bad = []
rows = list(Instance.objects.values_list("sop_instance_uid", "object_id"))
for uid, object_id in rows:
    try:
        dataset = pydicom.dcmread(io.BytesIO(storage.object_get(object_id)), force=True)
        if dataset.SOPInstanceUID != uid:
            bad.append(uid)
    except Exception as error:
        bad.append(f"{uid}: {error!r}")
temporary = [name for _, _, names in os.walk(settings.IMAGING_STORAGE_DIR)
             for name in names if name.startswith(storage.TEMP_PREFIX)]
print(json.dumps({"instances": len(rows), "bad": bad, "temporary": temporary}))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("storescu") is None:
        pytest.fail("the cluster test needs dcmtk's storescu: apt-get install dcmtk (make sysdeps)")
    try:
        running = cluster_start(tmp_path_factory.mktemp("cluster"))
    except ClusterError as error:
        pytest.fail(f"the cluster did not start: {error}")
    try:
        yield running
    finally:
        cluster_stop(running)


def test_the_cluster_survives_a_render_worker_and_an_asgi_process_dying(cluster, tmp_path):
    pushed = tmp_path / "pushed"
    phantom_write(out_dir=pushed, slices=32, patients=1, seed=11)
    files = sorted(str(p) for p in pushed.rglob("*.dcm"))
    instances_before = owner_sql(cluster, "clinical", "SELECT count(*) FROM imaging_instance")[0][0]
    storescu = subprocess.Popen(
        ["storescu", "-aet", "PETCT1", "-aec", "FUSIONGW", "127.0.0.1", str(cluster.scp.port), *files],
        env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    cookie = sign_in(cluster, "dr.ada")
    report = asyncio.run(_scenario(cluster, cookie))
    output, _ = storescu.communicate(timeout=180)
    assert storescu.returncode == 0, output

    # The worker kill: frames went on within RESUME_S.
    assert report["render_kill_gap_s"] < RESUME_S, report
    assert report["render_killed_mid_frame"] and report["requests_sent_again"] >= 1, report
    assert report["frames_after_render_kill"] >= 10, report
    # The ASGI kill: the socket closed, the client came back through nginx, frames resumed.
    assert report["reconnected"], report
    assert report["asgi_resume_s"] < 10, report
    assert report["frames_after_reconnect"] >= 10, report
    assert report["errors"] == [], report
    # Only the ASGI kill closed the socket (a Redis read timeout once did too: see base.py).
    assert len(report["timeline"]["closes"]) == 1, report

    expected = instances_before + len(files)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        count, pending = owner_sql(cluster, "clinical", "SELECT (SELECT count(*) FROM imaging_instance), "
                                   "(SELECT count(*) FROM imaging_series "
                                   "WHERE volume_state IN ('pending', 'building'))")[0]
        if count == expected and pending == 0:
            break
        time.sleep(0.5)
    assert (count, pending) == (expected, 0), cluster.logs()

    cluster_stop(cluster, drop=False)
    env = cluster.env(clinical="gateway_clinical_app", identity="gateway_identity_app",
                      audit="gateway_audit_app")
    env = {k: v for k, v in env.items() if k.startswith(("GATEWAY_", "DATABASE_", "IDENTITY_", "AUDIT_"))}
    verified = manage("audit_verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    whole = manage("shell", "--no-imports", "-c", INSTANCES_WHOLE, env=cluster.owner_env(), timeout=300)
    assert whole.returncode == 0, whole.stderr
    facts = json.loads(whole.stdout.strip().splitlines()[-1])
    assert facts == {"instances": expected, "bad": [], "temporary": []}
    actions = {row[0] for row in owner_sql(cluster, "audit", "SELECT DISTINCT action FROM audit_auditevent")}
    assert {"auth.login", "render.start", "ingest"} <= actions
    print(json.dumps(report, indent=2))


async def _scenario(cluster, cookie: str) -> dict:
    run, stop = ViewerRun(), asyncio.Event()
    viewer = asyncio.create_task(viewer_scroll(cluster, cookie, run, stop))
    try:
        await _until(lambda: len(run.frames) >= 20, 60, "the first frames", run, cluster)
        # The PET/CT layout's first frames (a 3-D MIP among them) are abandoned when the
        # client switches to 1x1, but the workers finish rendering them: let that drain,
        # or the kill below may catch a worker busy with work nobody waits for.
        await asyncio.sleep(max(0.0, run.frames[0] + 4 - time.monotonic()))

        caught_busy = await asyncio.get_running_loop().run_in_executor(
            None, cluster.render[0].kill_while_busy)
        killed_at = time.monotonic()
        resent = 0
        # A lost request is sent again after 1 s of silence once accepted, or after the
        # 5 s queue limit when the worker died between taking and accepting it.
        while time.monotonic() - killed_at < 8 and (resent == 0 or time.monotonic() - killed_at < 4):
            await asyncio.sleep(0.25)
            resent = sum(service.log.read_text().count("sending it again") for service in cluster.web)
        render_gap = max_gap(run.frames, killed_at, time.monotonic())
        after_render_kill = len([t for t in run.frames if t > killed_at])

        closes_before = len(run.closes)
        victim = cluster.web[0]
        first_kill = asgi_killed_at = time.monotonic()
        victim.kill(signal.SIGKILL)
        await asyncio.sleep(2)
        if len(run.closes) == closes_before:
            # The socket was held by the other process: bring this one back, kill that one.
            await asyncio.get_running_loop().run_in_executor(None, web_start, victim)
            victim = cluster.web[1]
            asgi_killed_at = time.monotonic()
            victim.kill(signal.SIGKILL)
        await _until(lambda: len(run.closes) > closes_before, 10, "the socket to close", run, cluster)
        await _until(lambda: any(t > asgi_killed_at for t in run.reconnects)
                     and run.frames[-1] > run.reconnects[-1], 20, "frames after reconnecting", run, cluster)
        reconnected_at = next(t for t in run.reconnects if t > asgi_killed_at)
        resumed_at = next(t for t in run.frames if t > reconnected_at)
        await asyncio.sleep(3)
        return {
            "render_kill_gap_s": round(render_gap, 3),
            "render_killed_mid_frame": caught_busy, "requests_sent_again": resent,
            "frames_after_render_kill": after_render_kill,
            "reconnected": bool(run.reconnects),
            "asgi_resume_s": round(resumed_at - asgi_killed_at, 3),
            "frames_after_reconnect": len([t for t in run.frames if t > resumed_at]),
            "frames": len(run.frames), "errors": run.errors,
            "timeline": {"first_asgi_kill": 0.0, "asgi_kill": round(asgi_killed_at - first_kill, 3),
                         "closes": [round(t - first_kill, 3) for t in run.closes],
                         "reconnects": [round(t - first_kill, 3) for t in run.reconnects],
                         "close_reasons": run.close_reasons},
        }
    finally:
        stop.set()
        viewer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ClusterError):
            await viewer


async def _until(predicate, timeout: float, what: str, run: ViewerRun, cluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: frames={len(run.frames)} "
                                 f"closes={len(run.closes)} errors={run.errors}\n{cluster.logs()}")
        await asyncio.sleep(0.05)
