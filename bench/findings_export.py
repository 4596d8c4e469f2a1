"""Findings into the study as DICOM (issue #14): SR + SEG export of 10 lesions, target <= 2 s.

One phantom PET/CT patient is imported through ``manage.py import_dicom`` into a
fresh var directory; in this process (Django set up on the same settings) ten VOI
findings are measured by the registered operations and kept: five spheres and five
41 % threshold VOIs at the planted lesions. Each round stores the findings with
``findings_dicom_store`` (regions asked of the operation as the consumer does, the
SR and the ten SEGs written, encrypted and catalogued); the round's new series are
then removed so every round writes the same. The peer, timed in the same rounds,
is highdicom alone writing the same ten SEGs from the same masks and the same
source headers, in memory: the floor the gateway's own work sits on.

    .venv/bin/python bench/findings_export.py [--slices 120] [--rounds 7]

Prints JSON: median, p95 and throughput of both, and their ratio.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from render import manage, percentile  # noqa: E402

TARGET_S = 2.0


def _environment(var: Path) -> dict[str, str]:
    return {**os.environ, "GATEWAY_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "gateway.settings.local"}


def _prepare(var: Path, slices: int) -> Path:
    env = _environment(var)
    for zone in ("default", "identity", "audit"):
        manage(env, "migrate", "--database", zone, "--noinput")
    phantom = var / "phantom"
    manage(env, "make_phantom", "--out", str(phantom), "--slices", str(slices), "--patients", "1")
    manage(env, "import_dicom", "--no-progress", str(phantom))
    return phantom


def _findings(phantom: Path):
    """Ten kept VOIs at the lesions, measured by the registered operations."""
    import numpy as np

    from imaging.findings import Kept, finding_keep, findings_of
    from imaging.models import Series
    from imaging.volumes import load_volume
    from rendering.engine import planes
    from rendering.operations import operation_named
    from rendering.viewstate import viewstate_from_dict

    truth = json.loads((phantom / "truth.json").read_text())["patients"][0]
    ct, pet = Series.objects.get(modality="CT"), Series.objects.get(modality="PT")
    volumes = {s.series_instance_uid: load_volume(s) for s in (ct, pet)}
    for n, lesion in enumerate((truth["lesions"] * 2)[:10]):
        center = np.asarray(lesion["center_mm"], dtype=float)
        state = viewstate_from_dict({
            "view": "axial", "width": 512, "height": 512, "quality": "still", "focus_mm": list(center),
            "layers": [{"series_id": ct.series_instance_uid, "window_preset": "abdomen"},
                       {"series_id": pet.series_instance_uid, "window_preset": "pet_suv_0_10"}]})
        plane = planes.view_plane(state, volumes[ct.series_instance_uid])
        sphere = n < 5
        settings = ({"radius_mm": lesion["radius_mm"]} if sphere
                    else {"box_mm": lesion["radius_mm"] + 8, "mode": "fraction", "value": 0.41})
        operation = operation_named("measure_sphere" if sphere else "measure_threshold")
        result = operation.run(None, state, volumes, {"center_mm": list(center), **settings})
        kept = Kept(ct.series_instance_uid, "sphere" if sphere else "threshold",
                    [list(plane.screen(center))], {**plane.as_dict(), "width": 512, "height": 512},
                    operation.to_wire(result), settings)
        finding_keep(study_uid=ct.study.study_instance_uid, kept=kept, label=f"lesion {n + 1}",
                     author="bench", by_consultant=False)
    return ct.study.study_instance_uid, findings_of(ct.study.study_instance_uid), volumes


def _regions(findings, volumes):
    from imaging.findings_dicom import region_request, region_series
    from rendering.operations import operation_named
    from rendering.viewstate import viewstate_from_dict

    regions = {}
    operation = operation_named("region_mask")
    for finding in findings:
        state = viewstate_from_dict({"view": "axial", "layers": [
            {"series_id": region_series(finding), "window_center": 0, "window_width": 1}]})
        regions[finding.id] = operation.run(None, state, volumes, region_request(finding))
    return regions


def _gateway_round(study_uid: str, findings, volumes) -> float:
    from imaging.findings_dicom import findings_dicom_store
    from imaging.models import Instance, Series

    started = time.perf_counter()
    stored = findings_dicom_store(study_uid=study_uid, regions=_regions(findings, volumes), author="bench")
    elapsed = time.perf_counter() - started
    written = Series.objects.filter(series_instance_uid__in=[stored.sr_series, stored.seg_series])
    Instance.objects.filter(series__in=written).delete()
    written.delete()
    return elapsed


def _peer_round(findings, volumes) -> float:
    """highdicom alone: the same ten SEGs from the same masks and headers, in memory."""
    from pydicom.uid import generate_uid

    from imaging.findings_dicom import _segmentation, series_headers

    regions = _regions(findings, volumes)
    headers = {uid: series_headers(uid) for uid in {r.series_id for r in regions.values()}}
    started = time.perf_counter()
    series = generate_uid()
    for number, finding in enumerate(findings, start=1):
        region = regions[finding.id]
        _segmentation(finding, region, headers[region.series_id], series, number)
    return time.perf_counter() - started


def _summary(seconds: list[float], lesions: int) -> dict[str, float]:
    median = statistics.median(seconds)
    return {"median_ms": round(median * 1000, 1), "p95_ms": round(percentile(seconds, 0.95) * 1000, 1),
            "lesions_per_s": round(lesions / median, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="bench-findings-"))
    phantom = _prepare(var, args.slices)
    os.environ.update(_environment(var))
    import django

    django.setup()
    study_uid, findings, volumes = _findings(phantom)
    gateway, peer = [], []
    for _ in range(args.rounds):
        gateway.append(_gateway_round(study_uid, findings, volumes))
        peer.append(_peer_round(findings, volumes))
    report = {
        "bench": "findings_export", "lesions": len(findings), "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1m": round(os.getloadavg()[0], 2)},
        "gateway_sr_and_segs": _summary(gateway, len(findings)),
        "peer_highdicom_segs_only": _summary(peer, len(findings)),
        "ratio_gateway_to_peer": round(statistics.median(gateway) / statistics.median(peer), 2),
        "target_s": TARGET_S, "met": statistics.median(gateway) <= TARGET_S,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
