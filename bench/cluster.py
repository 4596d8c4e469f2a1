"""Scale-out benchmark: frames/s of scrolling viewers with 1 remote render worker, then 2.

Starts the same loopback cluster as ``make test-cluster`` (tests/deploy/cluster.py:
PostgreSQL zone databases with least roles, Redis, nginx with TLS, two daphne processes,
render workers in remote mode; no SCP), signs a doctor in with password + TOTP through
nginx and opens ``--sessions`` viewer websockets (1x1 axial CT, 512x512), each scrolling
in a closed loop (next input when a frame arrives, at most 50 inputs/s like a wheel).
Measures frames/s with one render worker, adds a second worker on the same host and
measures again. Prints one JSON document:

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
    render_service,
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
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster = cluster_start(root, web=2, render=1, render_processes=1, scp=False,
                            phantom_slices=args.slices)
    try:
        cookie = sign_in(cluster, "dr.ada")
        one = asyncio.run(measure(cluster, cookie, sessions=args.sessions, seconds=args.seconds,
                                  warmup=args.warmup))
        second = render_service(cluster, 1, 1)
        second.start()
        cluster.render.append(second)
        deadline = time.monotonic() + 90
        while "serving channel" not in (second.log.read_text() if second.log.exists() else ""):
            if time.monotonic() > deadline:
                raise SystemExit(f"the second render worker did not start:\n{second.tail()}")
            time.sleep(0.2)
        two = asyncio.run(measure(cluster, cookie, sessions=args.sessions, seconds=args.seconds,
                                  warmup=args.warmup))
    finally:
        cluster_stop(cluster)
    print(json.dumps({
        "benchmark": "cluster scale-out (remote render workers over Redis, through nginx TLS)",
        "host": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                 "python": platform.python_version(), "machine": platform.machine()},
        "view": "1x1 axial CT 512x512, closed-loop scroll (<= 50 inputs/s per session)",
        "phantom_slices": args.slices,
        "render_workers_1": one, "render_workers_2": two,
        "scaling_ratio": round(two["frames_per_s_total"] / max(one["frames_per_s_total"], 1e-9), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
