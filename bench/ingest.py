"""Benchmark ingest: import_dicom and C-STORE (dcmtk storescu) of the phantom, and load_volume.

Writes a phantom PET/CT (CT slices x 512 x 512, PET half as many slices of
128 x 128) into a temporary var directory and prints one JSON document:

* ``import_dicom`` instances/s for the CT and the PET series (in-process
  ``call_command``; de-identification, encryption and fsync included; volumes
  not built here);
* C-STORE instances/s with ``storescu`` (``TCP_NODELAY=1``) to ``run_scp`` in a
  second, empty deployment, for the CT and the PET series;
* the time to build the CT volume once, and ``load_volume`` of it (median of 5).

    python bench/ingest.py [--slices 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ZONES = ("default", "identity", "audit")


def _manage(var: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env["GATEWAY_VAR_DIR"] = str(var)
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *arguments], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cstore(files_by_series: dict[str, list[Path]]) -> dict[str, float]:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu is not on PATH: apt-get install dcmtk")
    var = Path(tempfile.mkdtemp(prefix="bench-scp-"))
    for zone in ZONES:
        _manage(var, "migrate", "--database", zone, "--noinput")
    _manage(var, "create_user", "--username", "device.bench", "--role", "device")
    _manage(var, "device_register", "device.bench", "--ae-title", "BENCH")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    server = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "run_scp", "--port", str(port), "--no-volumes"],
        cwd=REPO, env={**env, "GATEWAY_VAR_DIR": str(var)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        rates = {}
        for name, files in files_by_series.items():
            started = time.perf_counter()
            subprocess.run([storescu, "-aet", "BENCH", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                            *map(str, files)], check=True, capture_output=True,
                           env={**os.environ, "TCP_NODELAY": "1"})
            rates[name] = len(files) / (time.perf_counter() - started)
        return rates
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(var, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    arguments = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    os.environ["GATEWAY_VAR_DIR"] = str(var)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
    import django
    from django.core.management import call_command

    django.setup()
    for zone in ZONES:
        call_command("migrate", database=zone, verbosity=0)

    from imaging.models import Series
    from imaging.phantom import phantom_write
    from imaging.volumes import load_volume, series_volume_build

    phantom = var / "phantom"
    truth = phantom_write(out_dir=phantom, slices=arguments.slices, patients=1, seed=7)
    folder = phantom / truth["patients"][0]["folder"]
    files = {"CT": sorted((folder / "CT").glob("*.dcm")), "PET": sorted((folder / "PT").glob("*.dcm"))}

    imported = {}
    for name, paths in files.items():
        started = time.perf_counter()
        call_command("import_dicom", str(paths[0].parent), no_volumes=True, no_progress=True,
                     stdout=open(os.devnull, "w"))  # noqa: SIM115
        imported[name] = len(paths) / (time.perf_counter() - started)

    ct = Series.objects.get(modality="CT")
    started = time.perf_counter()
    ct = series_volume_build(series=ct)
    build_s = time.perf_counter() - started
    loads = []
    for _ in range(5):
        started = time.perf_counter()
        volume = load_volume(ct)
        loads.append(time.perf_counter() - started)
        del volume
    shape = list(load_volume(ct).voxels.shape)

    cstore = _cstore(files)
    print(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "phantom": {"ct_instances": len(files["CT"]), "pet_instances": len(files["PET"]),
                    "ct_shape": shape},
        "import_dicom_instances_per_s": {k: round(v, 1) for k, v in imported.items()},
        "cstore_storescu_instances_per_s": {k: round(v, 1) for k, v in cstore.items()},
        "ct_volume_build_s": round(build_s, 3),
        "load_volume_s": {"median": round(statistics.median(loads), 3), "max": round(max(loads), 3)},
    }, indent=2))
    shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
