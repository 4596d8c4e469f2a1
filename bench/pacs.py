"""Retrieval from a real PACS (Debian's Orthanc) against the PACS's own ingest, in one run (issue #18).

Writes the demo phantom (``phantom_write(slices=N, patients=1)``: a CT of N
instances of 512x512 int16 and a PET of N/2; **only the N CT files are loaded
into the PACS**, so the study it holds is one CT series), starts a fresh Orthanc
on free loopback ports with temporary storage (``TCP_NODELAY=1`` in its
environment) that knows the gateway's AE title (``imaging.conf.scp_ae_title()``)
at the port of the gateway's SCP, and then, for each round (``--rounds``):

* **peer**: Orthanc emptied (REST ``DELETE /studies/{id}``), then dcmtk
  ``storescu`` (``TCP_NODELAY=1``) of the N files into it, one association:
  the PACS's own ingest, instances/s;
* **floor** (context, not a target): dcmtk ``getscu`` of the study from
  Orthanc to a temporary folder: what retrieval costs with no ingest behind it;
* **C-GET** and **C-MOVE** (order alternating per round), each in a fresh
  gateway (a child process of this script, with its own var directory copied
  from a freshly migrated template: empty databases of the three zones, empty
  object store): a doctor searches the PACS (``pacs_search``), then
  ``retrieval_request`` + ``retrieval_claim`` + ``retrieval_run`` as
  ``pacs_worker`` would run it. The job's instances/s is over the whole job,
  request to DONE: C-FIND of the series, the transfer, validation,
  de-identification, encryption and fsync of every instance (``IngestBatch``)
  and the volume build. For C-MOVE the gateway's SCP is started in-process
  (``scp_build`` + ``start_server``) with Orthanc's AE title a registered
  device. A thread polls the Retrieval row every 20 ms: the first instance
  received, the first series complete (its volume built), and then **open to
  first frame**: request -> first series complete -> ``load_volume`` of that
  series -> one 512x512 axial slice (the volume's centre, abdomen window,
  interactive JPEG) rendered in-process by ``rendering.engine`` (warmed up on a
  synthetic volume before the request, as a running render worker is). This is
  not the viewer's websocket: the progress page's polling, the socket and the
  worker queue are not in it.

``--profile`` adds one C-GET round under cProfile (thread CPU time, every
thread), not counted in the figures, and names where the CPU goes.

Prints one JSON document:

    python bench/pacs.py [--slices 300] [--rounds 3] [--profile]

Every process and temporary directory is removed on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from orthanc_side_by_side import (  # noqa: E402
    CT_WINDOW,
    DEVICE_AE,
    ORTHANC_AE,
    Cleanup,
    _free_port,
    _manage,
    _percentile,
    _ratio,
    _tail,
    _wait_http,
    cpu_seconds,
    cstore,
    git_facts,
    image_difference,
    load,
    machine,
    orthanc_binary,
    phantom_ct,
    run_and_print,
)

ZONES = ("default", "identity", "audit")
METHODS = ("c-get", "c-move")
POLL_S = 0.02
TARGET_RATIO = 0.8
TARGET_OPEN_S = 5.0


# --- Orthanc ---------------------------------------------------------------------------------


class Pacs:
    """A fresh Orthanc on free loopback ports; the gateway's AE is one of its DicomModalities."""

    def __init__(self, cleanup: Cleanup, folder: Path, logs: Path, *, gateway_ae: str, scp_port: int) -> None:
        self.http_port, self.dicom_port = _free_port(), _free_port()
        self.config = {
            "Name": "bench-pacs", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "Plugins": [],
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": ORTHANC_AE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckModalityHost": True,
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
            "DicomModalities": {"bench": [DEVICE_AE, "127.0.0.1", 104],
                                "gateway": [gateway_ae, "127.0.0.1", scp_port]},
            "WebDavEnabled": False, "SaveJobs": False, "KeepAlive": True, "TcpNoDelay": True,
        }
        path = folder / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        log = logs / "orthanc.log"
        # Orthanc's DICOM server is dcmtk, which leaves Nagle on unless TCP_NODELAY is set.
        self.process = cleanup.spawn([orthanc_binary(), str(path)], log=log, cwd=folder,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        _wait_http(self.url("/system"), self.process, log)
        self.system = self.rest("/system")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def rest(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.url(path), method=method)  # noqa: S310  (loopback)
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310  (loopback)
            body = answer.read()
        return json.loads(body) if body else None

    def empty(self) -> None:
        for study in self.rest("/studies"):
            self.rest(f"/studies/{study}", method="DELETE")
        if self.rest("/statistics")["CountInstances"]:
            raise SystemExit("Orthanc still holds instances after deleting every study")

    def instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


def getscu_floor(pacs: Pacs, *, calling: str, study_uid: str, expected: int, folder: Path) -> dict[str, Any]:
    """dcmtk getscu of the whole study from Orthanc into ``folder``: retrieval with no ingest behind it."""
    getscu = shutil.which("getscu")
    if getscu is None:
        return {"skipped": "getscu is not on PATH (dcmtk)"}
    folder.mkdir(parents=True)
    try:
        started = time.perf_counter()
        result = subprocess.run([getscu, "-aet", calling, "-aec", ORTHANC_AE, "-S",
                                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                                 "-od", str(folder), "127.0.0.1", str(pacs.dicom_port)],
                                capture_output=True, text=True, timeout=600,
                                env={**os.environ, "TCP_NODELAY": "1"}, check=False)
        elapsed = time.perf_counter() - started
        received = sum(1 for _ in folder.iterdir())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if result.returncode or received != expected:
        return {"error": f"getscu exit {result.returncode}, {received} of {expected} files: "
                         f"{result.stderr[-500:]}"}
    return {"instances": received, "seconds": round(elapsed, 2),
            "instances_per_s": round(received / elapsed, 1)}


# --- one gateway retrieval (child process) ---------------------------------------------------


class Timers:
    """Wall and thread-CPU time of ingest calls and of the job's phases, by wrapping (not editing) them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ingest_wall: list[float] = []
        self.ingest_cpu: list[float] = []
        self.ingest_ended: list[float] = []
        self.phases: dict[str, list[tuple[float, float]]] = {}

    def install(self) -> None:
        from imaging import pacs_retrieve
        from imaging.services import IngestBatch

        original_ingest = IngestBatch.ingest

        def ingest(batch: Any, data: bytes) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original_ingest(batch, data)
            finally:
                with self.lock:
                    self.ingest_ended.append(time.perf_counter())
                    self.ingest_wall.append(self.ingest_ended[-1] - wall)
                    self.ingest_cpu.append(time.thread_time() - cpu)

        setattr(IngestBatch, "ingest", ingest)  # noqa: B010  (wrapped in this process only)
        for name, phase in (("_series_of", "c_find_series"), ("_retrieve_series", "transfer_and_ingest"),
                            ("_series_ready", "volume_build")):
            setattr(pacs_retrieve, name, self._timed(getattr(pacs_retrieve, name), phase))

    def _timed(self, function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*arguments: Any, **keywords: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*arguments, **keywords)
            finally:
                self.phases.setdefault(phase, []).append((started, time.perf_counter()))
        return timed


class Watch(threading.Thread):
    """Polls the Retrieval row; when its first series is complete, opens it and renders one frame."""

    def __init__(self, pk: int, t0: float, frame_path: Path | None) -> None:
        super().__init__(daemon=True)
        self.pk, self.t0, self.frame_path = pk, t0, frame_path
        self.facts: dict[str, Any] = {}
        self.error = ""

    def run(self) -> None:
        from django.db import connections

        from imaging.models import JobState, Retrieval

        try:
            while True:
                row = Retrieval.objects.filter(pk=self.pk).values("received", "series", "state").first()
                now = time.perf_counter() - self.t0
                if row is None:
                    raise RuntimeError("the retrieval row went away")
                if row["series"] and row["series"][0].get("complete"):
                    self.facts["first_series_complete_s"] = now
                    self._open(row["series"][0]["uid"])
                    return
                if row["state"] not in (JobState.QUEUED, JobState.RUNNING):
                    raise RuntimeError(f"the retrieval ended ({row['state']}) with no series complete")
                time.sleep(POLL_S)
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
        finally:
            connections.close_all()

    def _open(self, series_uid: str) -> None:
        from imaging.models import Series
        from imaging.volumes import load_volume
        from rendering.engine.core import render
        from rendering.viewstate import viewstate_from_dict

        started = time.perf_counter()
        series = Series.objects.get(series_instance_uid=series_uid)
        volume = load_volume(series)
        loaded = time.perf_counter()
        frame = render(viewstate_from_dict(_first_view(series_uid)), {series_uid: volume})
        done = time.perf_counter()
        self.facts.update({"open_to_first_frame_s": done - self.t0, "load_volume_s": loaded - started,
                           "render_s": done - loaded, "volume_shape": list(volume.voxels.shape),
                           "frame": {"encoding": str(frame.encoding.value), "width": frame.width,
                                     "height": frame.height, "bytes": len(frame.data)}})
        if self.frame_path is not None:
            self.frame_path.write_bytes(frame.data)


def _first_view(series_uid: str) -> dict[str, Any]:
    return {"view": "axial", "layers": [{"series_id": series_uid, "window_preset": "abdomen"}],
            "width": 512, "height": 512, "quality": "interactive"}


def _render_warm() -> None:
    """The engine built and one 2-D frame rendered on a synthetic CT, as a running render worker has."""
    import numpy as np

    from rendering.engine.core import render
    from rendering.viewstate import viewstate_from_dict
    from rendering.volume import Volume

    voxels = np.zeros((16, 64, 64), dtype=np.int16)
    volume = Volume(voxels=voxels, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                    modality="CT", series_id="warm", frame_of_reference_uid="1.2.3")
    render(viewstate_from_dict(_first_view("warm")), {"warm": volume})


class ThreadProfiles:
    """cProfile (thread CPU time) in this thread and in every thread started while it runs."""

    def __init__(self) -> None:
        import cProfile

        self._factory = cProfile.Profile
        self.profiles: list[Any] = []
        self.main = cProfile.Profile(time.thread_time)

    def _start(self, *_arguments: Any) -> None:
        profile = self._factory(time.thread_time)
        self.profiles.append(profile)
        profile.enable()  # replaces this hook in the new thread

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start)
        self.main.enable()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]

    def summary(self, top: int = 25) -> dict[str, Any]:
        import pstats

        stats = pstats.Stats(self.main)
        for profile in self.profiles:
            with contextlib.suppress(TypeError):  # a thread that never ran a profiled call
                stats.add(profile)
        raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        total = sum(entry[2] for entry in raw.values()) or 1.0
        areas: dict[str, float] = {}
        for key, entry in raw.items():
            for area, share in _area_shares(raw, key, 0).items():
                areas[area] = areas.get(area, 0.0) + entry[2] * share

        def label(key: tuple[str, int, str]) -> str:
            filename, line, name = key
            short = filename.replace(str(ROOT) + "/", "")
            short = short.split("site-packages/")[-1]
            return f"{short}:{line}({name})" if line else name

        own = sorted(((k, v) for k, v in raw.items()
                      if str(ROOT) in k[0] and ".venv" not in k[0] and "/bench/" not in k[0]),
                     key=lambda item: item[1][3], reverse=True)
        by_self = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)
        return {
            "cpu_s_profiled": round(total, 2), "threads": 1 + len(self.profiles),
            "areas_how": "each function's own CPU by the module it is in; built-ins and Python "
                         "outside these modules (isinstance, dict.get, typing.cast...) are charged to "
                         "their callers' modules, up to 4 calls up",
            "areas_self_cpu_share": {k: round(v / total, 3)
                                     for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
            "top_self_cpu": [{"function": label(k), "self_s": round(v[2], 3), "calls": v[1]}
                             for k, v in by_self[:top]],
            "top_gateway_cumulative": [{"function": label(k), "cumulative_s": round(v[3], 3), "calls": v[1]}
                                       for k, v in own[:top]],
        }


def _area_shares(raw: dict[Any, Any], key: tuple[str, int, str], depth: int) -> dict[str, float]:
    """Shares of ``key``'s own time by area: its own, or (unplaced) its callers' as they called it."""
    area = _area(key[0], key[2])
    if area is not None:
        return {area: 1.0}
    callers = raw[key][4] if key in raw else {}
    total = sum(stats[2] for caller, stats in callers.items() if caller in raw)
    if depth >= 4 or total <= 0:
        return {"other built-ins" if key[0] == "~" else "other Python": 1.0}
    shares: dict[str, float] = {}
    for caller, stats in callers.items():
        if caller in raw:
            for name, share in _area_shares(raw, caller, depth + 1).items():
                shares[name] = shares.get(name, 0.0) + share * stats[2] / total
    return shares


def _area(filename: str, name: str) -> str | None:
    """A profiled function's part of the work, by where it is defined (None: not placed by itself)."""
    rules = (("pynetdicom", "pynetdicom (DIMSE, PDUs, its reactor threads)"),
             ("pydicom/", "pydicom (parse, encode, pixel decode)"),
             ("cryptography", "encryption (cryptography)"),
             ("imaging/storage", "object store (writes, fsync)"),
             ("imaging/deid", "de-identification"), ("imaging/volumes", "volume build"),
             ("imaging/pixels", "volume build"), ("imaging/presentation", "volume build"),
             ("imaging/services", "ingest (services.py)"), ("imaging/pacs_", "retrieval job"),
             ("gateway/audit", "audit"), ("django/", "Django ORM and the rest of Django"),
             ("sqlite3", "SQLite"), ("numpy", "numpy"), ("zlib", "zlib"), ("rendering/", "rendering"))
    for marker, area in rules:
        if marker in filename:
            return area
    if filename == "~":  # built-ins: name them where it says something
        for marker, area in (("sqlite3", "SQLite"), ("socket", "socket and select"),
                             ("select", "socket and select"), ("posix.fsync", "object store (writes, fsync)"),
                             ("numpy", "numpy"), ("zlib", "zlib"), ("_hashlib", "hashing (HMAC, SHA)"),
                             ("acquire", "locks and waits"), ("sleep", "locks and waits")):
            if marker in name:
                return area
    return None


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One retrieval by ``spec['method']`` into the fresh gateway named by GATEWAY_VAR_DIR."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import django

    django.setup()
    from accounts.models import User
    from accounts.services import user_create
    from imaging import conf
    from imaging.devices import device_endpoint_register
    from imaging.models import Instance, JobState, Series
    from imaging.pacs_query import Criteria, pacs_search
    from imaging.pacs_retrieve import retrieval_claim, retrieval_request, retrieval_run
    from imaging.report_settings import destination_register
    from imaging.scp import scp_build

    method: str = spec["method"]
    timers = Timers()
    timers.install()
    destination_register(name="PACS", ae_title=ORTHANC_AE, host="127.0.0.1", port=spec["dicom_port"],
                         actor="cli:bench", retrieve=method)
    password = "bench-" + os.urandom(12).hex()
    doctor = User.objects.create_user(username="dr.bench", password=password, role="doctor")
    setattr(doctor, "is_verified", lambda: True)  # signed in with a second factor  # noqa: B010
    server = None
    if method == "c-move":
        device = user_create(username="pacs.orthanc", password=password, role="device", actor="cli:bench")
        device_endpoint_register(user=device, ae_title=ORTHANC_AE)
        ae, handlers = scp_build(ae_title=conf.scp_ae_title())
        server = ae.start_server(("127.0.0.1", spec["scp_port"]), block=False, evt_handlers=handlers)
    _render_warm()
    result: dict[str, Any] = {"method": method, "load_before": load()}
    try:
        started = time.perf_counter()
        answers, problems = pacs_search(principal=doctor, criteria=Criteria(patient_id=spec["patient_id"]))
        result["search_s"] = time.perf_counter() - started
        if problems or len(answers) != 1:
            raise SystemExit(f"the PACS search answered {len(answers)} studies: {problems}")
        answer = answers[0]
        result["pacs_answer_instances"] = answer.instance_count
        frame_path = Path(spec["frame"]) if spec.get("frame") else None
        profiles = ThreadProfiles() if spec.get("profile") else None
        cpu = time.process_time()
        with profiles if profiles is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            retrieval = retrieval_request(principal=doctor, remote_study_id=answer.pk)
            watch = Watch(retrieval.pk, t0, frame_path)
            watch.start()
            claimed = retrieval_claim()
            if claimed is None or claimed.pk != retrieval.pk:
                raise SystemExit("the queued retrieval could not be claimed")
            finished = retrieval_run(claimed)
            job_s = time.perf_counter() - t0
            watch.join(timeout=120)
        result["process_cpu_s"] = time.process_time() - cpu
    finally:
        if server is not None:
            server.shutdown()
    result["load_after"] = load()
    if watch.error:
        raise SystemExit(f"watching the retrieval failed: {watch.error}")
    stored = Instance.objects.count()
    states = sorted(set(Series.objects.values_list("volume_state", flat=True)))
    if (finished.state != JobState.DONE or finished.received != spec["instances"]
            or stored != spec["instances"]):
        raise SystemExit(f"{method}: state {finished.state} ({finished.error!r}), received "
                         f"{finished.received} of {finished.expected}, {stored} stored")
    phases = {name: sum(end - begin for begin, end in spans) for name, spans in timers.phases.items()}
    result.update({
        "state": finished.state, "received": finished.received, "stored": stored, "volume_states": states,
        "series": len(finished.series), "job_s": job_s, "instances_per_s": finished.received / job_s,
        "watch": {**watch.facts, "first_instance_stored_s": min(timers.ingest_ended) - t0},
        "phases_s": phases,
        "ingest": {"calls": len(timers.ingest_wall),
                   "wall_ms_median": statistics.median(timers.ingest_wall) * 1000,
                   "wall_s_total": sum(timers.ingest_wall),
                   "cpu_ms_median": statistics.median(timers.ingest_cpu) * 1000,
                   "cpu_s_total": sum(timers.ingest_cpu)},
    })
    transfer = phases.get("transfer_and_ingest")
    if transfer:
        result["transfer_and_ingest_instances_per_s"] = finished.received / transfer
        result["transfer_outside_ingest_ms_per_instance"] = (
            (transfer - sum(timers.ingest_wall)) * 1000 / finished.received)
    if profiles is not None:
        result["profile"] = profiles.summary()
    return result


# --- the run ---------------------------------------------------------------------------------


def gateway_ae_title(env: dict[str, str]) -> str:
    out = _manage(env, "shell", "--no-imports", "-c",
                  "from imaging.conf import scp_ae_title; print(scp_ae_title())")
    return out.strip().splitlines()[-1]


def run_child(cleanup: Cleanup, template: Path, scratch: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` in a child process with a fresh var directory (a copy of the migrated template)."""
    var = Path(tempfile.mkdtemp(prefix="var-", dir=scratch))
    shutil.rmtree(var)
    shutil.copytree(template, var)
    out = var / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env["GATEWAY_VAR_DIR"] = str(var)
    env["GATEWAY_RENDER_SHARED_DIR"] = str(var / "shared")  # nothing outside the var directory
    log = scratch / "logs" / f"child-{spec['method']}-{spec['round']}.log"
    process = cleanup.spawn([sys.executable, str(Path(__file__).resolve()), "--child",
                             json.dumps({**spec, "out": str(out)})], log=log, cwd=ROOT, env=env)
    try:
        process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        cleanup.stop(process)
        raise SystemExit(f"the {spec['method']} retrieval did not end in 600 s:\n{_tail(log)}") from None
    cleanup.processes.remove(process)
    if process.returncode or not out.exists():
        raise SystemExit(f"the {spec['method']} retrieval failed ({process.returncode}):\n{_tail(log, 40)}")
    result: dict[str, Any] = json.loads(out.read_text())
    shutil.rmtree(var, ignore_errors=True)
    return result


def _stats(samples: list[float], digits: int = 2) -> dict[str, Any]:
    return {"median": round(statistics.median(samples), digits),
            "p95": round(_percentile(samples, 0.95), digits), "runs": [round(s, digits) for s in samples]}


def summarise(rounds: list[dict[str, Any]], peer_rate: float) -> dict[str, Any]:
    def pick(key: Callable[[dict[str, Any]], float | None]) -> list[float]:
        return [value for value in (key(r) for r in rounds) if value is not None]

    rate = pick(lambda r: r["instances_per_s"])
    summary = {
        "instances_per_s": _stats(rate, 1),
        "job_s": _stats(pick(lambda r: r["job_s"])),
        "first_instance_stored_s": _stats(pick(lambda r: r["watch"].get("first_instance_stored_s"))),
        "first_series_complete_s": _stats(pick(lambda r: r["watch"].get("first_series_complete_s"))),
        "open_to_first_frame_s": _stats(pick(lambda r: r["watch"].get("open_to_first_frame_s"))),
        "load_volume_s": _stats(pick(lambda r: r["watch"].get("load_volume_s")), 3),
        "render_first_frame_s": _stats(pick(lambda r: r["watch"].get("render_s")), 3),
        "phases_s": {name: _stats([r["phases_s"][name] for r in rounds if name in r["phases_s"]])
                     for name in ("c_find_series", "transfer_and_ingest", "volume_build")},
        "transfer_and_ingest_instances_per_s": _stats(
            pick(lambda r: r.get("transfer_and_ingest_instances_per_s")), 1),
        "ingest_wall_ms_per_instance": _stats(pick(lambda r: r["ingest"]["wall_ms_median"])),
        "ingest_cpu_ms_per_instance": _stats(pick(lambda r: r["ingest"]["cpu_ms_median"])),
        "transfer_outside_ingest_ms_per_instance": _stats(
            pick(lambda r: r.get("transfer_outside_ingest_ms_per_instance"))),
        "gateway_cpu_cores_busy": _stats(pick(lambda r: r["process_cpu_s"] / r["job_s"])),
        "orthanc_cpu_s": _stats(pick(lambda r: r.get("orthanc_cpu_s"))),
        "ratio_over_peer_storescu": _ratio(statistics.median(rate), peer_rate),
        "ratio_over_peer_storescu_per_round": [r.get("ratio_over_peer_same_round") for r in rounds],
    }
    return summary


def targets(result: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}

    def check(name: str, value: float | None, limit: float, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        checks[name] = {"value": value, "target": f"{'<=' if at_most else '>='} {limit}", "met": met}

    for method in METHODS:
        check(f"{method}_over_peer_storescu", result[method]["ratio_over_peer_storescu"], TARGET_RATIO, False)
    check("open_to_first_frame_s_median_c_get", result["c-get"]["open_to_first_frame_s"]["median"],
          TARGET_OPEN_S, True)
    check("open_to_first_frame_s_median_c_move", result["c-move"]["open_to_first_frame_s"]["median"],
          TARGET_OPEN_S, True)
    return checks


def _round_rows(raw: dict[str, Any]) -> dict[str, Any]:
    """A child's answer rounded for the document."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 3)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value
    return rounded(raw)


def run(arguments: argparse.Namespace, cleanup: Cleanup) -> dict[str, Any]:
    begun = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    cleanup.directories.append(scratch)
    logs = scratch / "logs"
    logs.mkdir()
    cleanup.logs = logs
    result: dict[str, Any] = {"benchmark": "pacs_retrieval", "git": git_facts(), "machine": machine(),
                              "load_1_5_15_start": load()}

    phantom = phantom_ct(scratch / "phantom", arguments.slices)
    import pydicom

    header = pydicom.dcmread(phantom.files[0], stop_before_pixels=True)
    pet = sum(1 for _ in (scratch / "phantom").rglob("PT/*.dcm"))
    result["study"] = {
        "loaded_into_the_pacs": f"the {len(phantom.files)} CT instances only (512x512 int16, one series); "
                                f"the phantom's {pet} PET instances were written but not loaded",
        "ct_instances": len(phantom.files), "shape": list(phantom.hu.shape),
        "bytes_per_instance": phantom.files[0].stat().st_size}

    template = scratch / "template-var"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env["GATEWAY_VAR_DIR"] = str(template)
    for zone in ZONES:
        _manage(env, "migrate", "--database", zone, "--noinput", "-v0")
    gateway_ae = gateway_ae_title(env)
    scp_port = _free_port()
    (scratch / "orthanc").mkdir()
    pacs = Pacs(cleanup, scratch / "orthanc", logs, gateway_ae=gateway_ae, scp_port=scp_port)
    result["machine"]["orthanc"] = {"version": pacs.system.get("Version"),
                                    "database_version": pacs.system.get("DatabaseVersion"),
                                    "dicom_aet": pacs.system.get("DicomAet")}
    result["gateway"] = {"ae_title": gateway_ae, "scp_port": scp_port}

    rounds: dict[str, list[dict[str, Any]]] = {"peer": [], "floor": [], "c-get": [], "c-move": []}
    for number in range(arguments.rounds):
        pacs.empty()
        time.sleep(1.0)
        before = load()
        stored = cstore(phantom.files, called=ORTHANC_AE, port=pacs.dicom_port)
        if pacs.instances() != len(phantom.files):
            raise SystemExit(f"Orthanc holds {pacs.instances()} of {len(phantom.files)} instances")
        rounds["peer"].append({**stored, "load_before": before, "round": number})
        if not arguments.no_floor:
            floor = getscu_floor(pacs, calling=gateway_ae, study_uid=str(header.StudyInstanceUID),
                                 expected=len(phantom.files), folder=scratch / f"getscu-{number}")
            rounds["floor"].append({**floor, "round": number})
        order = METHODS if number % 2 == 0 else tuple(reversed(METHODS))
        for method in order:
            time.sleep(1.0)
            spec = {"method": method, "round": number, "dicom_port": pacs.dicom_port, "scp_port": scp_port,
                    "patient_id": str(header.PatientID), "instances": len(phantom.files),
                    "frame": str(scratch / f"frame-{method}-{number}.jpg") if number == 0 else ""}
            orthanc_cpu = cpu_seconds([pacs.process.pid])
            answer = run_child(cleanup, template, scratch, spec)
            answer["orthanc_cpu_s"] = cpu_seconds([pacs.process.pid]) - orthanc_cpu
            answer["round"] = number
            answer["ratio_over_peer_same_round"] = _ratio(answer["instances_per_s"],
                                                          stored["instances_per_s"])
            rounds[method].append(answer)
    if arguments.profile:
        spec = {"method": "c-get", "round": "profile", "dicom_port": pacs.dicom_port, "scp_port": scp_port,
                "patient_id": str(header.PatientID), "instances": len(phantom.files), "profile": True}
        profiled = run_child(cleanup, template, scratch, spec)
        result["profile_c_get"] = {
            "note": "one extra C-GET round under cProfile with time.thread_time in every thread (the job, "
                    "pynetdicom's association and reactor threads, the watcher): CPU, not waits; "
                    "cProfile's overhead slows it, so its figures are not in the table",
            "job_s_under_profile": round(profiled["job_s"], 2), **profiled["profile"]}

    peer_rates = [r["instances_per_s"] for r in rounds["peer"]]
    result["peer_storescu_into_orthanc"] = {
        "instances_per_s": _stats(peer_rates, 1), "rounds": rounds["peer"],
        "how": "dcmtk storescu, all CT files over one association, TCP_NODELAY=1 for storescu and Orthanc; "
               "Orthanc emptied (REST DELETE of the study) before each round; its defaults: files stored "
               "as received, SyncStorageArea (fsync), no de-identification, no encryption"}
    if rounds["floor"]:
        rates = [r["instances_per_s"] for r in rounds["floor"] if "instances_per_s" in r]
        result["floor_getscu_from_orthanc"] = {
            **({"instances_per_s": _stats(rates, 1)} if rates else {}), "rounds": rounds["floor"],
            "how": "dcmtk getscu -S (study root C-GET) of the study from Orthanc into a temporary folder "
                   "(TCP_NODELAY=1), no ingest: what Orthanc and the wire cost a retrieval; context only"}
    peer = statistics.median(peer_rates)
    for method in METHODS:
        result[method] = summarise(rounds[method], peer)
        result[method]["rounds"] = [_round_rows({k: v for k, v in r.items() if k != "profile"})
                                    for r in rounds[method]]
    result["c-get"]["how"] = (
        "retrieval_request + retrieval_claim + retrieval_run in a fresh gateway (child process, var "
        "directory copied from a freshly migrated template: empty databases and object store); "
        "instances/s = CT instances / (request -> DONE): C-FIND of the series, C-GET, per instance "
        "validation, de-identification, AES-256-GCM encryption and fsync'd writes (IngestBatch), "
        "then the series' volume build; the PACS search before the request is not in it "
        "(search_s in each round)")
    result["c-move"]["how"] = (
        "as C-GET, with retrieve='c-move': Orthanc C-STOREs to the gateway's SCP started in-process in the "
        f"child (scp_build + start_server on 127.0.0.1:{scp_port}, AE {gateway_ae}); Orthanc's AE "
        f"{ORTHANC_AE} is a registered device; the same ingest behind the SCP")
    result["open_to_first_frame_how"] = (
        "request -> (a thread polling the Retrieval row every 20 ms) first series complete, i.e. received "
        "and its volume built -> load_volume of that series -> one 512x512 axial frame of the volume's "
        "centre, abdomen window (C 40 / W 400), interactive JPEG, by rendering.engine.core.render in the "
        "same process (engine warmed up on a synthetic volume before the request). Not the viewer's "
        "websocket, the progress page's polling or the render worker queue; pacs_worker's idle poll "
        "(--interval 1 s) before a job is claimed is not in it either (claimed at once here)")
    first = scratch / "frame-c-get-0.jpg"
    if first.exists():
        result["first_frame_vs_phantom"] = {
            **image_difference(first.read_bytes(), phantom.hu),
            "how": f"the C-GET round 0 frame against the phantom's own slices windowed at {CT_WINDOW} "
                   "(mean absolute grey difference to the nearest slice): the retrieved pixels rendered"}
    result["load_1_5_15_end"] = load()
    result["targets"] = targets(result)
    result["run_s"] = round(time.perf_counter() - begun, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300, help="CT instances of the study (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of peer, C-GET and C-MOVE (default 3)")
    parser.add_argument("--profile", action="store_true", help="add one C-GET round under cProfile")
    parser.add_argument("--no-floor", action="store_true", help="skip the getscu retrieval floor")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        spec = json.loads(arguments.child)
        Path(spec["out"]).write_text(json.dumps(child(spec)))
        return

    run_and_print(run, arguments)


if __name__ == "__main__":
    main()
