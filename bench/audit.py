"""Benchmark the audit log: sustained appends and chain verification speed.

Runs against a fresh embedded (SQLite, WAL) or, with AUDIT_DATABASE_URL and
DATABASE_URL set, PostgreSQL deployment in a temporary var directory, and
prints one JSON document:

    python bench/audit.py [--appends N] [--verify-events N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setup() -> None:
    os.environ.setdefault("GATEWAY_VAR_DIR", tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
    import django
    from django.core.management import call_command

    django.setup()
    for zone in ("default", "audit"):
        call_command("migrate", database=zone, verbosity=0)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _appends(count: int) -> dict[str, float]:
    from gateway.audit.catalogue import Action, Outcome
    from gateway.audit.services import audit_record

    latencies = []
    started = time.perf_counter()
    for index in range(count):
        before = time.perf_counter()
        audit_record(actor=f"user{index % 50}", actor_role="doctor", action=Action.STUDY_OPEN,
                     outcome=Outcome.SUCCESS, patient_pseudonym=f"{index:064x}",
                     study=f"2.25.{index}", source_ip="10.0.0.7", details={"view": "axial"})
        latencies.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    return {"events": count, "seconds": round(elapsed, 3),
            "appends_per_second": round(count / elapsed, 1),
            "median_ms": round(statistics.median(latencies) * 1000, 3),
            "p95_ms": round(_percentile(latencies, 0.95) * 1000, 3)}


def _verification(repeats: int) -> dict[str, float]:
    from gateway.audit.verification import chain_verify

    durations, events = [], 0
    for _ in range(repeats):
        before = time.perf_counter()
        report = chain_verify()
        durations.append(time.perf_counter() - before)
        if not report.ok:
            raise SystemExit(f"the benchmark chain failed verification: {report.problem}")
        events = report.events
    median = statistics.median(durations)
    return {"events": events, "median_s": round(median, 3),
            "p95_s": round(_percentile(durations, 0.95), 3),
            "events_per_second": round(events / median, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--verify-events", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    _setup()
    from django.db import connections

    appends = _appends(arguments.appends)
    remaining = max(0, arguments.verify_events - arguments.appends)
    if remaining:
        _appends(remaining)
    print(json.dumps({
        "benchmark": "audit",
        "database": connections["audit"].vendor,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "append": appends,
        "verify": _verification(arguments.repeats),
    }, indent=2))


if __name__ == "__main__":
    main()
