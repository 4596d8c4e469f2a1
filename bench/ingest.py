"""Benchmark ingest: import_dicom and C-STORE (dcmtk storescu) of the phantom, and load_volume.

Writes a phantom PET/CT (CT slices x 512 x 512, PET half as many slices of
128 x 128) into a temporary var directory and prints one JSON document:

* ``import_dicom`` instances/s for the CT and the PET series (in-process
  ``call_command``; de-identification, encryption and fsync included; volumes
  not built here);
* C-STORE instances/s with ``storescu`` (``TCP_NODELAY=1``) to ``run_scp`` in a
  second, empty deployment (de-identification, encryption, fsync and the
  per-C-STORE device policy check included; ``--no-volumes``, so no builder
  competes for the cores): the CT and the PET series of one patient over one
  association each, then a second patient's CT split over 4 associations from
  4 concurrent ``storescu`` processes (aggregate instances/s);
* the 1-, 5- and 15-minute load average (``os.getloadavg``) before and after
  each C-STORE run, since the machine may be shared, and the CPU time the SCP's
  processes spent per instance (from /proc: less disturbed by other load);
* the time to build the CT volume once, and ``load_volume`` of it (median of 5).

* with ``--orthanc``, the same runs into Debian's Orthanc (defaults: no
  de-identification, no encryption) right after, for ratios under the same load.

    python bench/ingest.py [--slices 300] [--orthanc] [--scp-arg=--processes=2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
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


def _load() -> str:
    """The load averages as ``uptime`` prints them (1, 5, 15 minutes)."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _storescu(storescu: str, port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([storescu, "-aet", "BENCH", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TCP_NODELAY": "1"})


def _timed(storescu: str, port: int, groups: list[list[Path]], scp_pid: int) -> dict[str, object]:
    load_before = _load()
    cpu_before = _tree_cpu_s(scp_pid)
    started = time.perf_counter()
    senders = [_storescu(storescu, port, files) for files in groups]
    for sender in senders:
        _, stderr = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise SystemExit(f"storescu failed: {stderr.decode(errors='replace')[-2000:]}")
    elapsed = time.perf_counter() - started
    count = sum(len(files) for files in groups)
    return {"instances": count, "associations": len(groups), "seconds": round(elapsed, 2),
            "instances_per_s": round(count / elapsed, 1),
            "scp_cpu_ms_per_instance": round((_tree_cpu_s(scp_pid) - cpu_before) * 1000 / count, 1),
            "load_before": load_before, "load_after": _load()}


def _cstore(runs: dict[str, list[list[Path]]], scp_arguments: list[str]) -> dict[str, object]:
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
        [sys.executable, str(REPO / "manage.py"), "run_scp", "--port", str(port), "--no-volumes",
         *scp_arguments],
        cwd=REPO, env={**env, "GATEWAY_VAR_DIR": str(var)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _port_wait(port)
        time.sleep(2)  # let forked children finish starting
        results: dict[str, object] = {name: _timed(storescu, port, groups, server.pid)
                                      for name, groups in runs.items()}
        stored = sqlite3.connect(var / "db" / "clinical.sqlite3").execute(
            "SELECT COUNT(*) FROM imaging_instance").fetchone()[0]
        expected = sum(len(files) for groups in runs.values() for files in groups)
        if stored != expected:
            raise SystemExit(f"the SCP stored {stored} of {expected} instances")
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(var, ignore_errors=True)


def _port_wait(port: int, seconds: float = 30.0) -> None:
    """Until something accepts on the loopback port; a server that never does ends the bench."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listened on port {port} within {seconds:.0f} s")


def _machine() -> dict[str, object]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def _orthanc(runs: dict[str, list[list[Path]]]) -> dict[str, object]:
    """The same C-STORE runs into Debian's Orthanc on loopback (its defaults: no de-identification,
    no encryption), for a ratio measured under the same load."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    storescu = shutil.which("storescu")
    if binary is None or storescu is None:
        raise SystemExit("--orthanc needs Debian's orthanc and dcmtk")
    folder = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
    port, http = _free_port(), _free_port()
    (folder / "orthanc.json").write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "DicomAet": "FUSIONGW", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": []}))
    # Orthanc speaks DICOM through dcmtk, which leaves Nagle on unless TCP_NODELAY is set.
    server = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"})
    try:
        _port_wait(port)
        return {name: _timed(storescu, port, groups, server.pid) for name, groups in runs.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--scp-arg", action="append", default=[],
                        help="extra run_scp argument, e.g. --scp-arg=--processes=2")
    parser.add_argument("--orthanc", action="store_true",
                        help="also time the same C-STORE runs into Debian's Orthanc, for ratios")
    parser.add_argument("--skip-import", action="store_true",
                        help="C-STORE only (no import_dicom, volume build or load_volume)")
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
    truth = phantom_write(out_dir=phantom, slices=arguments.slices, patients=2, seed=7)
    folder = phantom / truth["patients"][0]["folder"]
    files = {"CT": sorted((folder / "CT").glob("*.dcm")), "PET": sorted((folder / "PT").glob("*.dcm"))}
    second_ct = sorted((phantom / truth["patients"][1]["folder"] / "CT").glob("*.dcm"))
    cstore_runs = {"CT_1_association": [files["CT"]], "PET_1_association": [files["PET"]],
                   "CT_4_associations": [second_ct[n::4] for n in range(4)]}
    if arguments.skip_import:
        document: dict[str, object] = {"machine": _machine(), "phantom": {"ct_instances": len(files["CT"])},
                                       "cstore_storescu": _cstore(cstore_runs, arguments.scp_arg)}
        if arguments.orthanc:
            document["orthanc_cstore_storescu"] = _orthanc(cstore_runs)
        print(json.dumps(document, indent=2))
        shutil.rmtree(var, ignore_errors=True)
        return

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

    cstore = _cstore(cstore_runs, arguments.scp_arg)
    orthanc = _orthanc(cstore_runs) if arguments.orthanc else None
    print(json.dumps({
        "machine": _machine(),
        "phantom": {"ct_instances": len(files["CT"]), "pet_instances": len(files["PET"]),
                    "ct_shape": shape},
        "import_dicom_instances_per_s": {k: round(v, 1) for k, v in imported.items()},
        "cstore_storescu": cstore,
        **({"orthanc_cstore_storescu": orthanc} if orthanc else {}),
        "ct_volume_build_s": round(build_s, 3),
        "load_volume_s": {"median": round(statistics.median(loads), 3), "max": round(max(loads), 3)},
    }, indent=2))
    shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
