"""``python manage.py import_dicom PATH...``: files, folders (recursive) and zip archives."""

from __future__ import annotations

import getpass
import multiprocessing
import os
import signal
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from tqdm import tqdm

from imaging import conf, storage
from imaging.services import IngestBatch, IngestOutcome, Reason, Status, instance_ingest

ZIP_MEMBER_LIMIT = 100_000


def _sources(paths: list[Path]) -> Iterator[tuple[str, Path, str | None]]:
    """(label, path, zip member or None) for every candidate file."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _file_or_zip(child)
        elif path.is_file():
            yield from _file_or_zip(path)
        else:
            raise CommandError(f"{path}: no such file or folder")


def _file_or_zip(path: Path) -> Iterator[tuple[str, Path, str | None]]:
    if zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()][:ZIP_MEMBER_LIMIT]
        for member in members:
            yield f"{path}!{member.filename}", path, member.filename
    else:
        yield str(path), path, None


def _read(path: Path, member: str | None) -> bytes:
    if member is None:
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        if info.file_size > conf.max_object_bytes():
            return b"\0" * 0  # rejected below by size, without inflating it
        return archive.read(member)


def _ingest_source(source: tuple[str, Path, str | None]) -> tuple[str, IngestOutcome]:
    label, path, member = source
    try:
        data = _read(path, member)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        return label, IngestOutcome(Status.REJECTED, Reason.NOT_DICOM, f"unreadable ({exc})")
    if member is not None and not data:
        return label, IngestOutcome(Status.REJECTED, Reason.OVERSIZE, "zip member too large")
    return label, instance_ingest(data=data)


def _worker_start() -> None:
    connections.close_all()
    if sys.platform == "linux":
        # Die with the parent: a killed import must not leave workers writing behind it.
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Command(BaseCommand):
    help = "Ingest DICOM files, folders and zip archives: validate, de-identify, encrypt, store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                            help="worker processes (default: the CPU count, at most 4)")
        parser.add_argument("--no-volumes", action="store_true",
                            help="do not build series volumes now (they are built on first load)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: object, **options: object) -> None:
        paths: list[Path] = options["paths"]  # type: ignore[assignment]
        storage.storage_sweep()
        sources = list(_sources(paths))
        batch = IngestBatch(actor=f"cli:{getpass.getuser()}", actor_role="operator", door="import",
                            build_volumes=not options["no_volumes"])
        rejected: list[tuple[str, IngestOutcome]] = []
        progress = tqdm(total=len(sources), unit="file", disable=bool(options["no_progress"]),
                        file=self.stderr._out)  # type: ignore[attr-defined]
        jobs = max(1, int(options["jobs"]))  # type: ignore[call-overload]
        results: Iterator[tuple[str, IngestOutcome]]
        if jobs > 1 and len(sources) > 4 * jobs:
            # pydicom is pure Python: processes, not threads, use the cores. Each worker
            # opens its own database connections (closed here before the fork).
            connections.close_all()
            pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_start)
            results = pool.imap_unordered(_ingest_source, sources, chunksize=4)
        else:
            pool = None
            results = map(_ingest_source, sources)
        try:
            for label, outcome in results:
                batch.record(outcome)
                if outcome.status is Status.REJECTED:
                    rejected.append((label, outcome))
                progress.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        progress.close()
        batch.close()
        counts: Counter[str] = batch.counts()
        for label, outcome in sorted(rejected, key=lambda item: item[0]):
            self.stdout.write(f"rejected {label}: {outcome.reason}: {outcome.detail}")
        self.stdout.write(f"stored {counts['stored']}, duplicates {counts['duplicate']}, "
                          f"rejected {counts['rejected']}")
