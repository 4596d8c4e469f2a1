"""Benchmark STOW-RS under hostile and large uploads: daphne's memory, time to answer, MB/s.

Serves an empty gateway with daphne on a loopback port (``tests.served``),
registers a device account, and sends, over a raw socket, sampling daphne's
RSS every 100 ms:

a. ``--gib`` GiB without ``Authorization`` (declared length, zeros pushed as
   fast as the server takes them, on past the answer as a hostile client would);
b. a declared 2 GiB ``Content-Length`` with 4 kB of body, without a token and
   with a valid one (limit 1 GiB);
c. ``--gib`` GiB authorised, chunked, over a lowered limit (the server
   restarted with ``GATEWAY_STOW_MAX_BYTES=--low-limit-mib``): one part's
   headers, then zeros;
d. just under ``--gib`` GiB authorised and valid: CT 512x512 instances of the
   phantom, in series of ``--series-slices`` slices with fresh UIDs (written
   to a scratch file first so that the client is not the bottleneck).

Prints one JSON document: per case the status, seconds to the answer, bytes
sent, MB/s, and daphne's peak RSS growth (for d, separately while the body
streams and while the instances are stored).

    python bench/stow_memory.py [--gib 1] [--low-limit-mib 256] [--timeout 120]

Run it from a checkout of an older commit to measure the code before the fix
(the cases that never get an answer then show ``"status": null``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.served import ServedGateway, gateway_serve  # noqa: E402

BOUNDARY = "bench-stow-9e2"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MIB = 1 << 20


class Sampler:
    """daphne's RSS every ``interval`` seconds, in a thread; marks split the run into phases."""

    def __init__(self, gateway: ServedGateway, interval: float = 0.1) -> None:
        self.gateway, self.interval = gateway, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.gateway.rss_kib()))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self.baseline = self.gateway.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def timeline(self, step: float) -> list[float]:
        """Peak RSS growth (MiB) in each ``step`` seconds of the run."""
        if not self.samples:
            return []
        start, peaks = self.samples[0][0], {}
        for t, rss in self.samples:
            slot = int((t - start) // step)
            peaks[slot] = max(peaks.get(slot, 0), rss)
        return [round((peaks[slot] - self.baseline) / 1024, 1) for slot in sorted(peaks)]

    def peak_mib(self, start: float = 0.0, end: float = float("inf")) -> float:
        window = [rss for t, rss in self.samples if start <= t <= end] or [self.baseline]
        return round((max(window) - self.baseline) / 1024, 1)


def _device_token(gateway: ServedGateway) -> str:
    created = gateway.manage("create_user", "--username", "device.bench-stow", "--role", "device",
                             "--operator", "bench")
    if created.returncode != 0:
        raise SystemExit(created.stderr)
    registered = gateway.manage("device_register", "device.bench-stow", "--ae-title", "BENCHSTOW",
                                "--operator", "bench")
    if registered.returncode != 0:
        raise SystemExit(registered.stderr)
    return registered.stdout.rsplit(":", 1)[1].strip()


def _head(*, length: int | None, token: str | None) -> bytes:
    lines = ["POST /dicomweb/studies HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {CONTENT_TYPE}",
             f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _zeros(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    chunk = bytes(size)
    for _ in range(total // size):
        yield chunk


def _file_chunks(path: Path, size: int = 256 * 1024) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(size):
            yield chunk


def _status(answer: bytes) -> int | None:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def _send(gateway: ServedGateway, head: bytes, chunks: Iterator[bytes], *, chunked: bool = False,
          timeout: float, sampler: Sampler | None = None) -> dict[str, Any]:
    """Push the body, on past an early answer; then wait for the answer (at most ``timeout``)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
    started = time.monotonic()
    sent, answered, answer, sent_at_answer, body_done = 0, None, b"", None, None
    dropped = False
    deadline = started + timeout
    try:
        sock.sendall(head)
        for chunk in chunks:
            if answered is None and select.select([sock], [], [], 0)[0]:
                answered, sent_at_answer = time.monotonic(), sent
                answer = sock.recv(65536)
            if time.monotonic() > deadline:
                break
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        body_done = time.monotonic()
        if answered is None:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                answer = sock.recv(65536)
                answered = time.monotonic()
            except TimeoutError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        dropped = True
        body_done = body_done or time.monotonic()
    finally:
        sock.close()
    end = body_done or time.monotonic()
    result: dict[str, Any] = {
        "status": _status(answer) if answer else None,
        "seconds_to_answer": round(answered - started, 3) if answered else None,
        "bytes_sent": sent,
        "bytes_sent_before_answer": sent_at_answer,
        "client_dropped_by_server": dropped,
        "send_seconds": round(end - started, 3),
        "MB_per_s": round(sent / 1e6 / max(end - started, 1e-6), 1),
    }
    if sampler is not None:
        result["peak_rss_growth_mib"] = sampler.peak_mib()
        if body_done and answered and answered > body_done:
            result["peak_rss_growth_mib_while_streaming"] = sampler.peak_mib(started, body_done)
            result["peak_rss_growth_mib_while_storing"] = sampler.peak_mib(body_done, answered)
    if answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.1 202"):
        result["answer_head"] = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")[:200]
    return result


def _valid_body(path: Path, *, total: int, series_slices: int) -> tuple[int, int]:
    """Write a multipart of CT 512x512 instances (fresh UIDs per series and slice) to ``path``."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from imaging.phantom import phantom_write

    scratch = Path(tempfile.mkdtemp(prefix="bench-stow-phantom-"))
    try:
        phantom_write(out_dir=scratch, slices=32, patients=1, seed=11)
        template = pydicom.dcmread(sorted(scratch.rglob("CT/*.dcm"))[0])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    closing = f"--{BOUNDARY}--\r\n".encode()
    part_head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    written = count = 0
    with path.open("wb") as out:
        while True:
            series_uid = generate_uid()
            for index in range(series_slices):
                template.SeriesInstanceUID = series_uid
                template.SOPInstanceUID = generate_uid()
                template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
                template.InstanceNumber = index + 1
                x, y, _ = template.ImagePositionPatient
                template.ImagePositionPatient = [x, y, float(index)]
                buffer = io.BytesIO()
                template.save_as(buffer, enforce_file_format=True)
                part = part_head + buffer.getvalue() + b"\r\n"
                if written + len(part) + len(closing) > total:
                    out.write(closing)
                    return written + len(closing), count
                out.write(part)
                written += len(part)
                count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--low-limit-mib", type=int, default=256)
    parser.add_argument("--series-slices", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    var = Path(tempfile.mkdtemp(prefix="bench-stow-"))
    body_path = var / "valid-body.bin"
    body_size, parts = _valid_body(body_path, total=min(size, 1 << 30) - MIB,
                                   series_slices=args.series_slices)
    load_before = os.getloadavg()
    gateway = gateway_serve(var, seed=False)
    results: dict[str, Any] = {}
    try:
        token = _device_token(gateway)
        with Sampler(gateway) as sampler:
            results["a_no_token_streamed"] = _send(
                gateway, _head(length=size, token=None), _zeros(size), timeout=args.timeout,
                sampler=sampler)
        with Sampler(gateway) as sampler:
            results["b_declared_2gib_no_token"] = _send(
                gateway, _head(length=2 << 30, token=None), iter([bytes(4096)]), timeout=30,
                sampler=sampler)
        with Sampler(gateway) as sampler:
            results["b_declared_2gib_with_token"] = _send(
                gateway, _head(length=2 << 30, token=token), iter([bytes(4096)]), timeout=30,
                sampler=sampler)
        with Sampler(gateway) as sampler:
            results["d_valid_authorised"] = _send(
                gateway, _head(length=body_size, token=token), _file_chunks(body_path),
                timeout=max(args.timeout, 900), sampler=sampler)
        results["d_valid_authorised"]["parts"] = parts
        results["d_valid_authorised"]["rss_growth_mib_every_5s"] = sampler.timeline(5.0)
        stored = gateway.shell("from imaging.models import Instance; print(Instance.objects.count())")
        results["d_valid_authorised"]["instances_stored"] = int(stored)
        body_path.unlink()
        gateway.stop()
        gateway.env["GATEWAY_STOW_MAX_BYTES"] = str(args.low_limit_mib * MIB)
        gateway.start()
        part_head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with Sampler(gateway) as sampler:
            results["c_chunked_over_lowered_limit"] = _send(
                gateway, _head(length=None, token=token), itertools.chain([part_head], _zeros(size)),
                chunked=True, timeout=args.timeout, sampler=sampler)
        results["c_chunked_over_lowered_limit"]["limit_mib"] = args.low_limit_mib
    finally:
        gateway.stop()
        shutil.rmtree(var, ignore_errors=True)
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(v, 2) for v in load_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "body_gib": args.gib,
        "cases": results,
    }, indent=2))


if __name__ == "__main__":
    main()
