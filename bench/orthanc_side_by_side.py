"""The gateway side by side with a real PACS (Debian's Orthanc) in one run on loopback (issue #12).

Writes the demo phantom (CT 512x512xN), starts a fresh gateway deployment
(migrate, a doctor with TOTP, a device allowed to C-STORE, ``run_scp``, the web
server from :func:`start_gateway`) and a fresh Orthanc with a temporary
configuration, C-STOREs the same CT instances into both with dcmtk's
``storescu`` (one association each, ``TCP_NODELAY=1``), then measures, with the
two sides interleaved:

* one slice at a time, input to frame: the gateway through a viewer websocket
  (one scroll input, wait for the interactive frame, acknowledge it), Orthanc
  through ``GET /instances/{id}/rendered`` with the same window and JPEG
  quality; beside them the in-process floor (numpy slice, window to uint8,
  Pillow JPEG q80) in this process;
* closed-loop crowds (each client scrolls, waits for its frame, scrolls
  again) for a fixed time after a warm-up: aggregate frames/s, worst-client
  p95, errors; every client of both sides is paced to 90 % of the input rate
  the viewer socket announces (it drops input beyond it), ``--max-rate``
  overrides;
* RSS and PSS of every gateway process (server(s), render workers, SCP and
  its children) and of Orthanc while 16 clients scroll, and the gateway's
  footprint: PSS plus the tmpfs volume copies that no process maps;
* ``uptime`` load before each phase, and the machine.

Prints one JSON document:

    python bench/orthanc_side_by_side.py [--slices 200] [--seconds 10] [--clients 1,4,8,16,32]

Every process and temporary directory is removed on exit, on error and on
Ctrl-C. The clients of both sides run in this one process (asyncio), so they
take CPU from the servers alike; ``client_cpu_s`` says how much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from render import Browserless, Viewer  # noqa: E402

ZONES = ("default", "identity", "audit")
CT_WINDOW = (40.0, 400.0)  # the gateway's default CT layer (rendering/session.py): centre, width
JPEG_QUALITY = 80  # the gateway's interactive frames (rendering/encoding.py)
GATEWAY_AE, ORTHANC_AE, DEVICE_AE = "FUSIONGW", "ORTHANC", "BENCH"
DOCTOR = "dr.bench"
FRAME_TIMEOUT_S = 15.0


# --- processes and cleanup -------------------------------------------------------------------


class Cleanup:
    """Every process group and directory this run made; :meth:`close` ends and removes them all."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []
        self.directories: list[Path] = []
        self.logs: Path | None = None

    def log_tails(self) -> str:
        """The end of every server log, for the error report (the logs go with the directory)."""
        if self.logs is None or not self.logs.is_dir():
            return ""
        return "\n".join(f"--- {log.name}\n{_tail(log)}" for log in sorted(self.logs.glob("*.log")))

    def spawn(self, arguments: list[str], *, log: Path, **kwargs: Any) -> subprocess.Popen:
        with open(log, "ab") as out:
            process = subprocess.Popen(arguments, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM the process's group (and any descendant that left it), SIGKILL what remains."""
        family = process_tree([process.pid])
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            for pid in family:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                process.poll()
                if not any(_alive(pid) for pid in family):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)
        if process in self.processes:
            self.processes.remove(process)

    def close(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process)
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ppids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their living descendants."""
    parents = _ppids()
    family, frontier = [p for p in roots if p in parents], list(roots)
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in family]
        family += children
        frontier = children
    return family


def _proc_memory(pid: int) -> dict[str, Any]:
    facts: dict[str, Any] = {"pid": pid}
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        facts["command"] = cmdline.replace(str(ROOT) + "/", "")[:120]
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                facts["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                facts["pss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return facts


def _mapped_pss_kb(pid: int, under: Path) -> int:
    """PSS of the process's mappings of files under ``under`` (the shared volume copies)."""
    total, inside = 0, False
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
                inside = len(head) == 6 and head[5].startswith(str(under) + "/")
            elif inside and line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def _tree_kb(directory: Path) -> int:
    return sum(path.lstat().st_blocks * 512 for path in directory.rglob("*")) // 1024


def memory_snapshot(roots: list[int], tmpfs: Path | None = None) -> dict[str, Any]:
    """Per-process RSS and PSS; with ``tmpfs``, the memory-backed files the tree keeps there.

    ``footprint_mb`` is what the tree costs the host: the PSS sum (a page shared by
    n processes counted 1/n in each) plus the tmpfs files not mapped by any of them.
    """
    processes = [_proc_memory(pid) for pid in process_tree(roots)]
    snapshot = {"rss_mb_total": round(sum(p.get("rss_mb", 0) for p in processes), 1),
                "pss_mb_total": round(sum(p.get("pss_mb", 0) for p in processes), 1),
                "processes": processes}
    footprint = snapshot["pss_mb_total"]
    if tmpfs is not None and tmpfs.is_dir():
        mapped = 0.0
        for facts in processes:
            facts["tmpfs_pss_mb"] = round(_mapped_pss_kb(facts["pid"], tmpfs) / 1024, 1)
            mapped += facts["tmpfs_pss_mb"]
        snapshot["tmpfs_files_mb"] = round(_tree_kb(tmpfs) / 1024, 1)
        footprint += max(0.0, snapshot["tmpfs_files_mb"] - mapped)
    snapshot["footprint_mb"] = round(footprint, 1)
    return snapshot


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the living tree (a process that already exited is not counted)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(roots):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited ({process.returncode}):\n{_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port} after {seconds} s:\n{_tail(log)}")


def _wait_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited ({process.returncode}):\n{_tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=2).read()  # noqa: S310
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} does not answer after {seconds} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- the phantom and the floor ---------------------------------------------------------------


@dataclass
class Phantom:
    files: list[Path]  # CT instances, ordered by slice position
    sop_instance_uids: list[str]
    hu: np.ndarray  # (slices, rows, columns) int16, Hounsfield units


def phantom_ct(out: Path, slices: int) -> Phantom:
    import pydicom

    from imaging.phantom import phantom_write

    truth = phantom_write(out_dir=out, slices=slices, patients=1, seed=0)
    folder = out / truth["patients"][0]["folder"] / "CT"
    datasets = []
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        datasets.append((float(ds.ImagePositionPatient[2]), path, ds))
    datasets.sort(key=lambda item: item[0])
    hu = np.stack([(ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope)
                    + float(ds.RescaleIntercept)).astype(np.int16) for _, _, ds in datasets])
    return Phantom([path for _, path, _ in datasets], [str(ds.SOPInstanceUID) for _, _, ds in datasets],
                   hu)


def window_uint8(slice_hu: np.ndarray, center: float, width: float) -> np.ndarray:
    low = center - width / 2
    scaled = (slice_hu.astype(np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def floor_render(hu: np.ndarray, index: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(window_uint8(hu[index], *CT_WINDOW)).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def floor_measure(hu: np.ndarray, repeats: int = 300) -> dict[str, Any]:
    """numpy slice + window to uint8 + Pillow JPEG q80 of one 512x512 slice, in this process."""
    times, sizes = [], []
    for step in range(repeats):
        index = (hu.shape[0] // 2 + step % 40) % hu.shape[0]
        started = time.perf_counter()
        image = floor_render(hu, index)
        times.append(time.perf_counter() - started)
        sizes.append(len(image))
    return {"median_ms": round(statistics.median(times) * 1000, 3),
            "p95_ms": round(_percentile(times, 0.95) * 1000, 3),
            "bytes_per_frame": int(statistics.median(sizes)), "samples": repeats,
            "method": "hu[k] (int16 view) -> float32 window -> clip -> uint8 -> "
                      "Pillow JPEG q80 (greyscale)"}


def image_difference(jpeg: bytes, hu: np.ndarray) -> dict[str, Any]:
    """Mean absolute grey-level difference to the closest windowed slice: are both sides one picture?"""
    from PIL import Image

    picture = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float32)
    best = None
    for index in range(hu.shape[0]):
        reference = window_uint8(hu[index], *CT_WINDOW).astype(np.float32)
        if reference.shape != picture.shape:
            return {"shape": list(picture.shape), "comparable": False}
        difference = float(np.mean(np.abs(picture - reference)))
        if best is None or difference < best[0]:
            best = (difference, index)
    if best is None:
        return {"shape": list(picture.shape), "comparable": False}
    return {"shape": list(picture.shape), "mean_abs_grey_difference": round(best[0], 2),
            "nearest_slice": best[1]}


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- the gateway -----------------------------------------------------------------------------


@dataclass
class Deployment:
    env: dict[str, str]
    var: Path
    logs: Path
    password: str = ""
    otpauth: str = ""
    server: subprocess.Popen | None = None
    server_kind: str = ""
    scp: subprocess.Popen | None = None
    scp_port: int = 0
    base: str = ""
    shared: Path | None = None
    setup_s: dict[str, float] = field(default_factory=dict)

    def roots(self) -> list[int]:
        return [p.pid for p in (self.server, self.scp) if p is not None]


def _manage(env: dict[str, str], *arguments: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *arguments], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise SystemExit(f"manage.py {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def gateway_prepare(cleanup: Cleanup, var: Path, logs: Path, workers: int | None) -> Deployment:
    """A fresh deployment: databases, a doctor (password + TOTP), a device that may C-STORE.

    The host-wide volume copies go to a tmpfs directory of this run's own (the
    default's place, ``/dev/shm``), so that they are measured and removed with it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env["GATEWAY_VAR_DIR"] = str(var)
    if workers:
        env["GATEWAY_RENDER_WORKERS"] = str(workers)
    deployment = Deployment(env=env, var=var, logs=logs)
    if Path("/dev/shm").is_dir():  # noqa: S108
        deployment.shared = Path(tempfile.mkdtemp(prefix="bench-orthanc-side-", dir="/dev/shm"))
        cleanup.directories.append(deployment.shared)
        env["GATEWAY_RENDER_SHARED_DIR"] = str(deployment.shared)
    started = time.perf_counter()
    for zone in ZONES:
        _manage(env, "migrate", "--database", zone, "--noinput", "-v0")
    _manage(env, "collectstatic", "--noinput", "-v0")
    deployment.setup_s["migrate_collectstatic"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    deployment.password = "bench-" + os.urandom(12).hex()
    created = _manage(env, "create_user", "--username", DOCTOR, "--role", "doctor",
                      "--password", deployment.password, "--operator", "bench")
    deployment.otpauth = next(line.strip() for line in created.splitlines()
                              if line.strip().startswith("otpauth://"))
    _manage(env, "create_user", "--username", "device.bench", "--role", "device", "--operator", "bench")
    _manage(env, "device_register", "device.bench", "--ae-title", DEVICE_AE, "--operator", "bench")
    deployment.setup_s["accounts"] = round(time.perf_counter() - started, 1)
    return deployment


def start_gateway(cleanup: Cleanup, deployment: Deployment, *, port: int, server: str = "auto") -> None:
    """Serve the deployment on 127.0.0.1:``port`` as an operator would.

    ``manage.py serve`` (the multi-process server) where this checkout has it,
    else daphne as the Makefile's ``serve`` target runs it. ``server`` forces
    one ("serve" or "daphne").
    """
    has_serve = (ROOT / "gateway" / "management" / "commands" / "serve.py").exists()
    kind = server if server != "auto" else ("serve" if has_serve else "daphne")
    if kind == "serve":
        arguments = [sys.executable, str(ROOT / "manage.py"), "serve", "--host", "127.0.0.1",
                     "--port", str(port)]
    else:
        arguments = [str(Path(sys.executable).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
                     "gateway.asgi:application"]
    log = deployment.logs / "gateway-server.log"
    deployment.server = cleanup.spawn(arguments, log=log, cwd=ROOT, env=deployment.env)
    deployment.server_kind = " ".join(["manage.py serve"] if kind == "serve" else ["daphne"])
    deployment.base = f"http://127.0.0.1:{port}"
    _wait_http(deployment.base + "/healthz", deployment.server, log)


def start_scp(cleanup: Cleanup, deployment: Deployment) -> None:
    """The C-STORE SCP, building volumes when an association ends (as in production)."""
    deployment.scp_port = _free_port()
    log = deployment.logs / "gateway-scp.log"
    deployment.scp = cleanup.spawn(
        [sys.executable, str(ROOT / "manage.py"), "run_scp", "--port", str(deployment.scp_port),
         "--ae-title", GATEWAY_AE], log=log, cwd=ROOT, env=deployment.env)
    _wait_port(deployment.scp_port, deployment.scp, log)


WAIT_FOR_VOLUME = """
import json, time
from imaging.models import Series, Study
deadline = time.monotonic() + {seconds}
while time.monotonic() < deadline:
    series = Series.objects.filter(modality="CT").first()
    if series is not None and series.volume_state != "pending":
        break
    time.sleep(0.25)
print(json.dumps({{"study": Study.objects.get().study_instance_uid,
                  "volume_state": series.volume_state if series else None,
                  "instances": series.instances.count() if series else 0}}))
"""


def gateway_study(deployment: Deployment, seconds: float = 600) -> dict[str, Any]:
    """The (de-identified) study UID once the CT volume is built."""
    out = _manage(deployment.env, "shell", "--no-imports", "-c", WAIT_FOR_VOLUME.format(seconds=seconds))
    return json.loads(out.strip().splitlines()[-1])


class CountingViewer(Viewer):
    """bench/render.py's viewer client, counting the frames it acknowledges by quality."""

    def __init__(self, socket_: Any) -> None:
        super().__init__(socket_)
        self.acked: dict[int, int] = {}
        self.limits: dict[str, Any] = {}

    async def ack(self, frame: Any) -> None:
        self.acked[frame.quality] = self.acked.get(frame.quality, 0) + 1
        await super().ack(frame)


def _scroll_delta(step: int) -> int:
    return 1 if (step // 20) % 2 == 0 else -1


async def gateway_open(deployment: Deployment, study: str, cookie: str) -> CountingViewer:
    viewer, ready = await CountingViewer.open(deployment.base, study, cookie)
    viewer.limits = ready.get("limits", {})  # type: ignore[attr-defined]
    await viewer.layout("1x1")
    return viewer  # type: ignore[return-value]


def input_interval(limits: dict[str, Any], max_rate: float | None) -> tuple[float, float]:
    """Seconds between a client's inputs: 90 % of the rate the viewer socket announces, or ``max_rate``.

    The viewer drops input beyond ``messages_per_second`` (acks are not counted),
    so an unpaced closed loop on a fast gateway measures the limiter; both sides
    are paced alike. ``max_rate`` 0 means unpaced.
    """
    rate = max_rate if max_rate is not None else 0.9 * float(limits.get("messages_per_second", 0))
    return (1.0 / rate if rate > 0 else 0.0), rate


async def _pace(started: float, interval: float) -> None:
    remaining = started + interval - time.perf_counter()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def gateway_frame(viewer: CountingViewer, step: int, after: int) -> Any:
    await viewer.send({"type": "input", "view": 0, "op": "scroll", "delta": _scroll_delta(step)})
    return await asyncio.wait_for(viewer.frame(0, quality=0, after=after), FRAME_TIMEOUT_S)


# --- Orthanc ---------------------------------------------------------------------------------


@dataclass
class Orthanc:
    process: subprocess.Popen
    http_port: int
    dicom_port: int
    version: str
    instance_ids: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit("Orthanc is not installed: apt-get install orthanc")
    return found


def start_orthanc(cleanup: Cleanup, directory: Path, logs: Path) -> Orthanc:
    """A fresh Orthanc: temporary storage, no plugins, HTTP from loopback only, no authentication.

    ``TCP_NODELAY=1`` in its environment turns Nagle off in its DICOM server
    (dcmtk reads it; ``TcpNoDelay`` covers only HTTP). Orthanc 1.10 has no
    bind-address option: it listens on every interface, but
    ``RemoteAccessAllowed: false`` refuses HTTP from anywhere but loopback and
    only the AE title BENCH from 127.0.0.1 may C-STORE.
    """
    binary = orthanc_binary()
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "bench-orthanc",
        "StorageDirectory": str(directory / "storage"), "IndexDirectory": str(directory / "index"),
        "Plugins": [], "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
        "DicomModalities": {"bench": [DEVICE_AE, "127.0.0.1", 104]},
        "WebDavEnabled": False, "SaveJobs": False, "KeepAlive": True, "TcpNoDelay": True,
    }
    path = directory / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = logs / "orthanc.log"
    process = cleanup.spawn([binary, str(path)], log=log, cwd=directory,
                            env={**os.environ, "TCP_NODELAY": "1"})
    _wait_http(f"http://127.0.0.1:{http_port}/system", process, log)
    system = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{http_port}/system", timeout=10).read())
    return Orthanc(process, http_port, dicom_port, str(system.get("Version")), config=config)


def orthanc_lookup(orthanc: Orthanc, sop_instance_uids: list[str]) -> None:
    for uid in sop_instance_uids:
        request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/tools/lookup",
                                         data=uid.encode(), method="POST")
        found = [entry["ID"] for entry in json.loads(urllib.request.urlopen(request, timeout=10).read())  # noqa: S310
                 if entry["Type"] == "Instance"]
        if not found:
            raise SystemExit(f"Orthanc does not hold {uid}")
        orthanc.instance_ids.append(found[0])


RENDERED_QUERY = urllib.parse.urlencode({"window-center": int(CT_WINDOW[0]),
                                         "window-width": int(CT_WINDOW[1]), "quality": JPEG_QUALITY})


class HttpClient:
    """One keep-alive HTTP/1.1 connection, as lean as the websocket client (asyncio streams)."""

    reconnects = 0  # stale keep-alive connections replaced, over all clients

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.served = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.served = 0

    async def get(self, path: str, accept: str = "image/jpeg") -> tuple[int, bytes]:
        """GET; a reused connection that the server closed before answering is replaced once."""
        if self.writer is None:
            await self.connect()
        try:
            return await self._get(path, accept)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as error:
            if self.served == 0 or (isinstance(error, asyncio.IncompleteReadError) and error.partial):
                raise
            await self.close()
            HttpClient.reconnects += 1
            await self.connect()
            return await self._get(path, accept)

    async def _get(self, path: str, accept: str) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            raise ConnectionError("not connected")
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: {accept}\r\n"
                          "Connection: keep-alive\r\n\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in head[1:] if ":" in line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            headers["connection"] = "close"
        self.served += 1
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class OrthancViewer:
    """A client that 'scrolls' through Orthanc: the next slice's rendered JPEG per input."""

    def __init__(self, orthanc: Orthanc) -> None:
        self.orthanc = orthanc
        self.http = HttpClient(orthanc.http_port)
        self.index = len(orthanc.instance_ids) // 2

    async def frame(self, step: int) -> bytes:
        self.index = min(max(self.index + _scroll_delta(step), 0), len(self.orthanc.instance_ids) - 1)
        status, body = await asyncio.wait_for(self.http.get(
            f"/instances/{self.orthanc.instance_ids[self.index]}/rendered?{RENDERED_QUERY}"),
            FRAME_TIMEOUT_S)
        if status != 200:
            raise RuntimeError(f"Orthanc answered {status}: {body[:200]!r}")
        return body


# --- C-STORE ---------------------------------------------------------------------------------


def cstore(files: list[Path], *, called: str, port: int) -> dict[str, Any]:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu is not on PATH: apt-get install dcmtk")
    started = time.perf_counter()
    result = subprocess.run([storescu, "-aet", DEVICE_AE, "-aec", called, "127.0.0.1", str(port),
                             *map(str, files)], capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "TCP_NODELAY": "1"})
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"storescu to {called} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return {"instances": len(files), "seconds": round(elapsed, 2),
            "instances_per_s": round(len(files) / elapsed, 1)}


# --- measurements ----------------------------------------------------------------------------


async def single_slice(deployment: Deployment, study: str, cookie: str, orthanc: Orthanc,
                       phantom: Phantom, *, samples: int, max_rate: float | None,
                       blocks: int = 4) -> dict[str, Any]:
    """One input at a time on each side, in alternating blocks; warm-ups not counted."""
    viewer = await gateway_open(deployment, study, cookie)
    interval, rate = input_interval(viewer.limits, max_rate)
    sequence, step = 0, 0
    for _ in range(20):
        started = time.perf_counter()
        frame = await gateway_frame(viewer, step, sequence)
        sequence, step = frame.sequence, step + 1
        await _pace(started, interval)
    await viewer.settle(0.3)
    gateway_sample = frame
    client = OrthancViewer(orthanc)
    for index in range(len(orthanc.instance_ids)):
        client.index = index - 1
        await client.frame(0)
    client.index = len(orthanc.instance_ids) // 2
    orthanc_sample = await client.frame(0)

    gateway_times: list[float] = []
    gateway_sizes: list[int] = []
    orthanc_times: list[float] = []
    orthanc_sizes: list[int] = []
    per_block = max(1, samples // blocks)
    ostep = 0
    for _ in range(blocks):
        for _ in range(per_block):
            started = time.perf_counter()
            frame = await gateway_frame(viewer, step, sequence)
            gateway_times.append(time.perf_counter() - started)
            gateway_sizes.append(len(frame.image))
            sequence, step = frame.sequence, step + 1
            await _pace(started, interval)
        await viewer.settle(0.3)
        for _ in range(per_block):
            started = time.perf_counter()
            body = await client.frame(ostep)
            orthanc_times.append(time.perf_counter() - started)
            orthanc_sizes.append(len(body))
            ostep += 1
            await _pace(started, interval)
    await viewer.socket.close()
    await client.http.close()
    return {
        "gateway": {**_latency(gateway_times, gateway_sizes),
                    "frame": {"encoding": str(gateway_sample.encoding), "width": gateway_sample.width,
                              "height": gateway_sample.height},
                    "vs_floor_image": image_difference(gateway_sample.image, phantom.hu)},
        "orthanc": {**_latency(orthanc_times, orthanc_sizes), "reconnects": HttpClient.reconnects,
                    "vs_floor_image": image_difference(orthanc_sample, phantom.hu)},
        "blocks": blocks, "order": "gateway block, then Orthanc block, repeated",
        "gateway_limits": viewer.limits, "input_cap_per_s": round(rate, 1), "interval_s": interval,
    }


def _latency(times: list[float], sizes: list[int]) -> dict[str, Any]:
    return {"p50_ms": _ms(statistics.median(times)), "p95_ms": _ms(_percentile(times, 0.95)),
            "samples": len(times), "bytes_per_frame": int(statistics.median(sizes))}


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    error: str = ""
    stills: int = 0


async def _closed_loop(frame_for_step, t_measure: float, t_end: float, result: ClientResult,
                       interval: float) -> None:
    step = 0
    try:
        while (started := time.perf_counter()) < t_end:
            await frame_for_step(step)
            done = time.perf_counter()
            step += 1
            if started >= t_measure and done <= t_end:
                result.latencies.append(done - started)
            await _pace(started, interval)
    except Exception as error:
        result.error = repr(error)[:200]


async def crowd_gateway(deployment: Deployment, study: str, cookie: str, clients: int, warmup: float,
                        seconds: float, sampler, interval: float) -> dict[str, Any]:
    opened = await asyncio.gather(*(gateway_open(deployment, study, cookie) for _ in range(clients)),
                                  return_exceptions=True)
    viewers = [v for v in opened if not isinstance(v, BaseException)]
    results = [ClientResult() for _ in viewers]
    open_errors = [repr(v)[:200] for v in opened if isinstance(v, BaseException)]

    def runner(viewer: CountingViewer):
        state = {"sequence": 0}

        async def one(step: int) -> None:
            frame = await gateway_frame(viewer, step, state["sequence"])
            state["sequence"] = frame.sequence
        return one

    for viewer in viewers:
        viewer.acked.clear()
    summary = await _crowd_run([runner(v) for v in viewers], results, warmup, seconds, sampler, interval)
    for viewer, result in zip(viewers, results, strict=True):
        result.stills = sum(n for quality, n in viewer.acked.items() if quality != 0)
    for viewer in viewers:
        with contextlib.suppress(Exception):
            await viewer.socket.close()
    return {**summary, **_crowd_summary(results, seconds, open_errors),
            "stills_acked": sum(r.stills for r in results)}


async def crowd_orthanc(orthanc: Orthanc, clients: int, warmup: float, seconds: float,
                        sampler, interval: float) -> dict[str, Any]:
    reconnects = HttpClient.reconnects
    viewers = [OrthancViewer(orthanc) for _ in range(clients)]
    opened = await asyncio.gather(*(v.http.connect() for v in viewers), return_exceptions=True)
    open_errors = [repr(e)[:200] for e in opened if isinstance(e, BaseException)]
    viewers = [v for v, e in zip(viewers, opened, strict=True) if not isinstance(e, BaseException)]
    results = [ClientResult() for _ in viewers]
    summary = await _crowd_run([v.frame for v in viewers], results, warmup, seconds, sampler, interval)
    for viewer in viewers:
        await viewer.http.close()
    return {**summary, **_crowd_summary(results, seconds, open_errors),
            "reconnects": HttpClient.reconnects - reconnects}


async def _crowd_run(loops: list, results: list[ClientResult], warmup: float, seconds: float,
                     sampler, interval: float) -> dict[str, Any]:
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + seconds
    sampling = asyncio.create_task(sampler(t_measure, t_end)) if sampler else None
    cpu_client = time.process_time()
    await asyncio.gather(*(_closed_loop(loop, t_measure, t_end, result, interval)
                           for loop, result in zip(loops, results, strict=True)))
    memory = await sampling if sampling else None
    out: dict[str, Any] = {"client_cpu_s": round(time.process_time() - cpu_client, 2)}
    if memory is not None:
        out["memory"] = memory
    return out


def _crowd_summary(results: list[ClientResult], seconds: float, open_errors: list[str]) -> dict[str, Any]:
    good = [r for r in results if not r.error and r.latencies]
    every = [t for r in results for t in r.latencies]
    errors = open_errors + [r.error for r in results if r.error]
    errors += ["no frame in the measured window"] * sum(1 for r in results if not r.error and not r.latencies)
    return {
        "clients": len(results) + len(open_errors),
        "frames_per_s": round(len(every) / seconds, 1),
        "p50_ms_all": _ms(statistics.median(every)) if every else None,
        "p95_ms_all": _ms(_percentile(every, 0.95)) if every else None,
        "p95_ms_worst_client": _ms(max(_percentile(r.latencies, 0.95) for r in good)) if good else None,
        "frames_per_client_min": min((len(r.latencies) for r in results), default=0),
        "errors": len(errors), "error_examples": errors[:3],
    }


def memory_sampler(roots: list[int], tmpfs: Path | None):
    """Sample the tree's memory each second of the measured window; keep the largest total."""

    async def sample(t_measure: float, t_end: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        best: dict[str, Any] | None = None
        samples = 0
        while time.perf_counter() < t_end - 0.2:
            snapshot = memory_snapshot(roots, tmpfs)
            samples += 1
            if best is None or snapshot["footprint_mb"] > best["footprint_mb"]:
                best = snapshot
            await asyncio.sleep(1.0)
        return {**(best or {}), "samples": samples, "kept": "the sample with the largest footprint"}

    return sample


async def crowds(deployment: Deployment, study: str, cookie: str, orthanc: Orthanc, counts: list[int],
                 warmup: float, seconds: float, memory_at: int, interval: float) -> dict[str, Any]:
    rounds: dict[str, Any] = {}
    for position, clients in enumerate(counts):
        sides = ["gateway", "orthanc"] if position % 2 == 0 else ["orthanc", "gateway"]
        entry: dict[str, Any] = {"order": sides}
        for side in sides:
            await asyncio.sleep(1.0)
            roots = deployment.roots() if side == "gateway" else [orthanc.process.pid]
            tmpfs = deployment.shared if side == "gateway" else None
            sampler = memory_sampler(roots, tmpfs) if clients == memory_at else None
            before = {"load_1_5_15": load(), "gateway_cpu_s": cpu_seconds(deployment.roots()),
                      "orthanc_cpu_s": cpu_seconds([orthanc.process.pid])}
            wall = time.perf_counter()
            if side == "gateway":
                result = await crowd_gateway(deployment, study, cookie, clients, warmup, seconds, sampler,
                                             interval)
            else:
                result = await crowd_orthanc(orthanc, clients, warmup, seconds, sampler, interval)
            wall = time.perf_counter() - wall
            result["load_before"] = before["load_1_5_15"]
            result["server_cpu_cores"] = {
                name: round((cpu_seconds(roots_) - before[f"{name}_cpu_s"]) / wall, 2)
                for name, roots_ in (("gateway", deployment.roots()), ("orthanc", [orthanc.process.pid]))}
            entry[side] = result
        g, o = entry["gateway"], entry["orthanc"]
        entry["ratio_frames_per_s_gateway_over_orthanc"] = _ratio(g["frames_per_s"], o["frames_per_s"])
        entry["ratio_worst_p95_gateway_over_orthanc"] = _ratio(g["p95_ms_worst_client"],
                                                              o["p95_ms_worst_client"])
        rounds[str(clients)] = entry
    return rounds


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# --- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    memory_kb = 0
    with contextlib.suppress(OSError, StopIteration):
        memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                             if line.startswith("MemTotal:")))
    storescu = subprocess.run(["storescu", "--version"], capture_output=True, text=True, check=False)
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory_kb / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "dcmtk": (storescu.stdout.splitlines() or [""])[0].strip()}


def git_facts() -> dict[str, Any]:
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "accounts",
                             "gateway", "imaging", "rendering", "manage.py", "requirements.lock"],
                            cwd=ROOT, capture_output=True, text=True, check=False).stdout
    dirty = [line for line in status.splitlines() if line.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_code_in_the_measured_tree": dirty,
            "note": "others edit this working tree while it runs: the gateway measured is the commit "
                    "plus these changes (git status --porcelain of the gateway's code, at start)"}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    one = result["single_slice"]
    rounds = result["crowds"]
    checks: dict[str, Any] = {}

    def check(name: str, value: float | None, limit: float, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        checks[name] = {"value": value, "target": f"{'<=' if at_most else '>='} {limit}", "met": met}

    check("single_slice_p50_over_orthanc", one["ratio_p50_gateway_over_orthanc"], 1.5, True)
    check("single_slice_p50_over_floor", one["ratio_p50_gateway_over_floor"], 5, True)
    if "16" in rounds:
        check("frames_per_s_16_over_orthanc", rounds["16"]["ratio_frames_per_s_gateway_over_orthanc"],
              0.8, False)
        check("worst_p95_ms_at_16", rounds["16"]["gateway"]["p95_ms_worst_client"], 150, True)
        check("errors_at_16", rounds["16"]["gateway"]["errors"], 0, True)
    if "32" in rounds:
        check("frames_per_s_32_over_orthanc", rounds["32"]["ratio_frames_per_s_gateway_over_orthanc"],
              0.6, False)
    check("cstore_over_orthanc", result["cstore"]["ratio_gateway_over_orthanc"], 0.6, False)
    memory = result.get("memory_at_16", {}).get("gateway")
    if memory:
        check("gateway_rss_mb_total_at_16", memory["rss_mb_total"], 600, True)
        check("gateway_footprint_mb_at_16", memory["footprint_mb"], 600, True)
    return checks


def run(arguments: argparse.Namespace, cleanup: Cleanup) -> dict[str, Any]:
    begun = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bench-orthanc-side-"))
    cleanup.directories.append(scratch)
    logs = scratch / "logs"
    cleanup.logs = logs
    for folder in ("logs", "gateway-var", "orthanc", "phantom"):
        (scratch / folder).mkdir()
    phases: dict[str, Any] = {}

    def phase(name: str) -> None:
        phases[name] = {"load_1_5_15_before": load(), "at_s": round(time.perf_counter() - begun, 1)}

    result: dict[str, Any] = {"benchmark": "orthanc_side_by_side", "git": git_facts(),
                              "machine": machine(), "phases": phases}
    phase("phantom")
    phantom = phantom_ct(scratch / "phantom", arguments.slices)
    result["study"] = {"ct_instances": len(phantom.files), "shape": list(phantom.hu.shape),
                       "window_center_width": list(CT_WINDOW), "jpeg_quality": JPEG_QUALITY}

    phase("start")
    deployment = gateway_prepare(cleanup, scratch / "gateway-var", logs, arguments.workers)
    start_scp(cleanup, deployment)
    start_gateway(cleanup, deployment, port=_free_port(), server=arguments.server)
    orthanc = start_orthanc(cleanup, scratch / "orthanc", logs)
    result["machine"]["orthanc"] = orthanc.version
    result["gateway"] = {"server": deployment.server_kind, "setup_s": deployment.setup_s,
                         "render_workers_env": deployment.env.get("GATEWAY_RENDER_WORKERS", "default")}

    phase("cstore")
    order = ["gateway", "orthanc"]
    stores: dict[str, Any] = {}
    for side in order:
        time.sleep(1.0)
        before = load()
        if side == "gateway":
            stores[side] = cstore(phantom.files, called=GATEWAY_AE, port=deployment.scp_port)
        else:
            stores[side] = cstore(phantom.files, called=ORTHANC_AE, port=orthanc.dicom_port)
        stores[side]["load_before"] = before
    waited = time.perf_counter()
    study = gateway_study(deployment)
    stores["gateway"]["volume_ready_after_storescu_s"] = round(time.perf_counter() - waited, 1)
    stores["gateway"]["volume_state"] = study["volume_state"]
    stores["gateway"]["instances_held"] = study["instances"]
    if study["volume_state"] != "ready":
        raise SystemExit(f"the gateway did not build the CT volume: {study}\n"
                         f"{_tail(logs / 'gateway-scp.log')}")
    orthanc_lookup(orthanc, phantom.sop_instance_uids)
    stores["ratio_gateway_over_orthanc"] = _ratio(stores["gateway"]["instances_per_s"],
                                                  stores["orthanc"]["instances_per_s"])
    stores["how"] = ("dcmtk storescu, all instances over one association per side, env TCP_NODELAY=1 "
                     "for storescu on both and for Orthanc's own (dcmtk) SCP; pynetdicom in the "
                     "gateway's SCP leaves Nagle on; the gateway side includes de-identification, "
                     "encryption at rest, fsync and the audit record (the volume is built after the "
                     "association, not in the rate); "
                     "Orthanc stores the files as received (SyncStorageArea default: fsync)")
    result["cstore"] = stores

    client = Browserless(deployment.base)
    client.sign_in(DOCTOR, deployment.password, deployment.otpauth)
    cookie = client.cookie_header()

    phase("floor")
    result["floor"] = floor_measure(phantom.hu)

    phase("single_slice")
    one = asyncio.run(single_slice(deployment, study["study"], cookie, orthanc, phantom,
                                   samples=arguments.samples, max_rate=arguments.max_rate))
    one["ratio_p50_gateway_over_orthanc"] = _ratio(one["gateway"]["p50_ms"], one["orthanc"]["p50_ms"])
    one["ratio_p95_gateway_over_orthanc"] = _ratio(one["gateway"]["p95_ms"], one["orthanc"]["p95_ms"])
    one["ratio_p50_gateway_over_floor"] = _ratio(one["gateway"]["p50_ms"], result["floor"]["median_ms"])
    one["orthanc_request"] = (f"GET /instances/{{id}}/rendered?{RENDERED_QUERY} with Accept: image/jpeg "
                              "(Orthanc 1.10 documents window-center, window-width and quality; "
                              "without the Accept header it answers PNG); native 512x512, no resize")
    one["gateway_request"] = ("viewer websocket, 1x1 layout at 512x512: one scroll input (delta +-1), "
                              "wait for its interactive frame, ack every frame")
    result["single_slice"] = one

    phase("crowds")
    memory_at = 16 if 16 in arguments.clients else max(arguments.clients)
    rounds = asyncio.run(crowds(deployment, study["study"], cookie, orthanc, arguments.clients,
                                arguments.warmup, arguments.seconds, memory_at, one["interval_s"]))
    result["crowds"] = rounds
    result["crowd_method"] = (f"closed loop per client (input, wait for its frame, next input), at most "
                              f"{one['input_cap_per_s']:g} inputs/s per client on both sides (90 % of "
                              "the viewer socket's announced message rate; 0 = unpaced); "
                              f"{arguments.warmup:g} s warm-up then {arguments.seconds:g} s measured; "
                              "sides interleaved per client count, the first side alternating; "
                              "gateway clients share one signed-in doctor session, one websocket each; "
                              "Orthanc clients one keep-alive HTTP/1.1 connection each")
    memory_key = f"memory_at_{memory_at}"
    result[memory_key] = {side: rounds[str(memory_at)][side].pop("memory", None)
                          for side in ("gateway", "orthanc")}
    result[memory_key]["note"] = ("gateway = the server process(es) and all their children (render "
                                  "workers) + the SCP and its children; sums of per-process RSS count "
                                  "shared pages (libraries, a volume mapped by several workers) once per "
                                  "process, PSS once in all; footprint = PSS sum + tmpfs volume files "
                                  "that no process maps")
    phase("end")
    result["targets"] = targets(result)
    result["run_s"] = round(time.perf_counter() - begun, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200, help="CT slices of the phantom (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per crowd round")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per crowd round")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[1, 4, 8, 16, 32], help="client counts, comma-separated")
    parser.add_argument("--samples", type=int, default=200, help="one-at-a-time inputs per side")
    parser.add_argument("--max-rate", type=float, default=None,
                        help="inputs/s per client on both sides (default 90%% of the gateway's "
                             "announced limit; 0 = unpaced)")
    parser.add_argument("--workers", type=int, default=None,
                        help="GATEWAY_RENDER_WORKERS (default: the gateway's own default)")
    parser.add_argument("--server", choices=("auto", "serve", "daphne"), default="auto",
                        help="auto: manage.py serve where it exists, else daphne")
    arguments = parser.parse_args()

    run_and_print(run, arguments)


def run_and_print(run: Callable[[argparse.Namespace, Cleanup], dict[str, Any]],
                  arguments: argparse.Namespace) -> None:
    """Run a benchmark, print its JSON; every process and temporary folder removed however it ends."""
    cleanup = Cleanup()

    def terminated(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminated)
    try:
        result = run(arguments, cleanup)
    except Exception:
        print(cleanup.log_tails(), file=sys.stderr)
        raise
    except KeyboardInterrupt as interrupt:
        cleanup.close()
        print(f"interrupted ({interrupt}); every process and temporary directory removed", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        cleanup.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
