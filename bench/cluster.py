"""Scale-out benchmark: frames/s of scrolling viewers with 1 remote render worker, then 2.

Starts the same loopback cluster as ``make test-cluster`` (tests/deploy/cluster.py:
PostgreSQL zone databases with least roles, Redis, nginx with TLS, two daphne processes,
render workers in remote mode; no SCP), signs a doctor in with password + TOTP through
nginx and opens ``--sessions`` viewer websockets (1x1 axial CT, 512x512), each scrolling
in a closed loop (next input when a frame arrives, at most 50 inputs/s like a wheel).
Measures frames/s with two render workers and with one, alternating (``--rounds``
times) so that drift on a shared machine hits both alike. Prints one JSON document:

    python bench/cluster.py [--sessions 8] [--seconds 15] [--slices 120]

Needs PostgreSQL at 127.0.0.1:5432 (trust auth for the gateway roles), Redis at
127.0.0.1:6379 and nginx. Every process, the client included, shares this host's cores,
so the ratio says how far a second worker helps *here*; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.test")

from tests.deploy.cluster import (  # noqa: E402
    ViewerRun,
    cluster_start,
    cluster_stop,
    sign_in,
    viewer_scroll,
)


async def measure(cluster, cookie: str, *, sessions: int, seconds: float, warmup: float) -> dict:
    runs = [ViewerRun() for _ in range(sessions)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(viewer_scroll(cluster, cookie, run, stop)) for run in runs]
    await asyncio.sleep(warmup)
    start = time.monotonic()
    await asyncio.sleep(seconds)
    end = time.monotonic()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    per_session = [len([t for t in run.frames if start <= t <= end]) / (end - start) for run in runs]
    return {
        "sessions": sessions, "seconds": round(end - start, 2),
        "frames_per_s_total": round(sum(per_session), 1),
        "frames_per_s_per_session_median": round(statistics.median(per_session), 1),
        "frames_per_s_per_session_min": round(min(per_session), 1),
        "errors": sum(len(run.errors) for run in runs),
        "reconnects": sum(len(run.reconnects) for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--slices", type=int, default=120, help="CT slices of the phantom")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of 2 and 1 workers")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster = cluster_start(root, web=2, render=2, render_processes=1, scp=False,
                            phantom_slices=args.slices)
    rounds: dict[int, list[dict]] = {1: [], 2: []}
    load = [round(v, 2) for v in os.getloadavg()]
    try:
        cookie = sign_in(cluster, "dr.ada")
        # Alternate 2, 1, 2, 1, ... workers so that drift on a shared machine hits both alike.
        for _ in range(args.rounds):
            for workers in (2, 1):
                set_workers(cluster, workers)
                rounds[workers].append(asyncio.run(measure(
                    cluster, cookie, sessions=args.sessions, seconds=args.seconds, warmup=args.warmup)))
    finally:
        cluster_stop(cluster)
        shutil.rmtree(root, ignore_errors=True)
    totals = {n: [r["frames_per_s_total"] for r in rounds[n]] for n in rounds}
    medians = {n: statistics.median(totals[n]) for n in totals}
    print(json.dumps({
        "benchmark": "cluster scale-out (remote render workers over Redis, through nginx TLS)",
        "host": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "loadavg_before": load, "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "view": "1x1 axial CT 512x512, closed-loop scroll (<= 50 inputs/s per session)",
        "phantom_slices": args.slices, "rounds": args.rounds,
        "render_workers_1": {"frames_per_s_total": totals[1], "median": medians[1], "last": rounds[1][-1]},
        "render_workers_2": {"frames_per_s_total": totals[2], "median": medians[2], "last": rounds[2][-1]},
        "scaling_ratio": round(medians[2] / max(medians[1], 1e-9), 2),
    }, indent=2))


def set_workers(cluster, count: int) -> None:
    """Stop or (re)start the second render worker; wait until it serves."""
    second = cluster.render[1]
    if count == 1:
        second.stop()
        return
    if second.process is not None and second.process.poll() is None:
        return
    marker = second.log.read_text().count("serving channel") if second.log.exists() else 0
    second.start()
    deadline = time.monotonic() + 90
    while (second.log.read_text().count("serving channel") if second.log.exists() else 0) <= marker:
        if time.monotonic() > deadline or second.process.poll() is not None:
            raise SystemExit(f"the second render worker did not start:\n{second.tail()}")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
