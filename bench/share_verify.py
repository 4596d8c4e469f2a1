"""Benchmark share verification: what every consultant request and websocket message pays.

Runs against a fresh embedded (SQLite, WAL) or, with DATABASE_URL set,
PostgreSQL deployment in a temporary var directory, and prints one JSON
document:

    python bench/share_verify.py [--requests N]

Measured per call, one by one:

``verify``
    ``capability_verify``: parse (a session's token is parsed once per
    process, LRU), one query for the share chain and its sealed root key,
    AES-256-GCM unseal, HMAC chain, share states and expiry, time and
    address caveats. This is the per-request / per-message check.
``verify_cold_parse``
    the same with the parse cache cleared before each call (a token seen for
    the first time by this process).
``verify_and_grant``
    ``verify`` plus ``grants(study.view, study)``: the resource caveats,
    with the query for the study's patient pseudonym.
``forwarded_verify``
    ``verify`` for a token forwarded once (a chain of two shares).
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_US = 200


def _setup() -> None:
    os.environ.setdefault("GATEWAY_VAR_DIR", tempfile.mkdtemp(prefix="bench-share-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
    import django
    from django.core.management import call_command

    django.setup()
    for zone in ("default", "identity", "audit"):
        call_command("migrate", database=zone, verbosity=0)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _timed(count: int, call: Callable[[], object], before: Callable[[], object] | None = None
           ) -> dict[str, float]:
    for _ in range(min(200, count)):  # warm the connection, caches and code paths
        call()
    latencies = []
    for _ in range(count):
        if before is not None:
            before()
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    median = statistics.median(latencies) * 1e6
    return {"calls": count, "median_us": round(median, 1),
            "p95_us": round(_percentile(latencies, 0.95) * 1e6, 1),
            "within_target": median <= TARGET_US}


def _fixtures() -> tuple[str, str, str]:
    """(root token, forwarded token, study UID), both shares redeemed."""
    from accounts.models import User
    from gateway.sharing import services
    from gateway.sharing.services import Scope
    from imaging.models import Patient, Study

    doctor = User.objects.create_user(username="dr.bench", password=None,
                                      role="doctor")
    doctor.is_verified = lambda: True  # type: ignore[method-assign]
    patient = Patient.objects.create(pseudonym="ab" * 32)
    study = Study.objects.create(patient=patient, study_instance_uid="2.25.123456789",
                                 study_description="PET-CT")
    for index in range(200):  # other shares in the table, so the lookup is not trivial
        services.share_mint(doctor=doctor, study_uid=study.study_instance_uid,
                            scope=Scope.STUDY, actions=["view"], hours=72,
                            recipient=f"consultant {index}", source_ip="10.0.0.1")
    minted = services.share_mint(doctor=doctor, study_uid=study.study_instance_uid,
                                 scope=Scope.PATIENT, actions=["view", "measure"], hours=72,
                                 client_cidr="10.0.0.0/8", recipient="Dr Bench",
                                 source_ip="10.0.0.1")
    result, _ = services.share_redeem(token=minted.token, pin=minted.pin, source_ip="10.1.2.3")
    assert result is services.PinResult.REDEEMED  # noqa: S101 - a benchmark precondition
    holder = services.capability_verify(minted.token, client_ip="10.1.2.3")
    forwarded = services.share_forward(holder=holder, token=minted.token,
                                       study_uid=study.study_instance_uid, actions=["view"],
                                       hours=24, recipient="Dr Colleague", source_ip="10.1.2.3")
    services.share_redeem(token=forwarded.token, pin=forwarded.pin, source_ip="10.1.2.4")
    return minted.token, forwarded.token, study.study_instance_uid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    arguments = parser.parse_args()
    _setup()
    from django.db import connections

    from gateway.policy import Permission
    from gateway.sharing import tokens
    from gateway.sharing.services import capability_verify

    token, forwarded, study_uid = _fixtures()
    count = arguments.requests

    def verify() -> object:
        return capability_verify(token, client_ip="10.1.2.3")

    def verify_and_grant() -> object:
        principal = capability_verify(token, client_ip="10.1.2.3")
        if not principal.grants(Permission.STUDY_VIEW, study_uid):
            raise SystemExit("the benchmark share does not grant its study")
        return principal

    print(json.dumps({
        "benchmark": "share_verify",
        "database": connections["default"].vendor,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "token_chars": {"root": len(token), "forwarded": len(forwarded)},
        "target_us": TARGET_US,
        "verify": _timed(count, verify),
        "verify_cold_parse": _timed(count, verify, before=tokens._token_parse.cache_clear),
        "verify_and_grant": _timed(count, verify_and_grant),
        "forwarded_verify": _timed(count, lambda: capability_verify(forwarded,
                                                                    client_ip="10.1.2.4")),
    }, indent=2))


if __name__ == "__main__":
    main()
