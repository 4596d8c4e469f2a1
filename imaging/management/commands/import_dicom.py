"""``python manage.py import_dicom PATH...``: files, folders (recursive) and zip archives.

pydicom reports a problem it tolerates (a value too long for its VR, an
invalid date) through :mod:`warnings`, its ``pydicom`` logger or both, once per
file: a 256-file series with the same defect printed it 256 times over the
progress bar. The import collects both channels instead and prints each
distinct notice once, with the number of times it was raised, after the
progress bar. Collecting changes nothing about ingest itself: a warning is
recorded, never raised, and an instance is stored or refused exactly as
before.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import multiprocessing
import os
import signal
import sys
import warnings
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
PYDICOM_LOGGER = "pydicom"

log = logging.getLogger(__name__)

# (kind, message): a warning's category name, or "pydicom <level>" for a record of pydicom's logger.
Notice = tuple[str, str]


class _NoticeCollector(logging.Handler):
    """Keeps the records of pydicom's logger; the full record (traceback included) goes to DEBUG here."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[tuple[int, str, str]] = []  # (level, level name, message): no tracebacks kept

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.levelname, record.getMessage()))
        log.debug("pydicom %s: %s", record.levelname, record.getMessage(), exc_info=record.exc_info)


def _notices(caught: list[warnings.WarningMessage], records: list[tuple[int, str, str]]) -> Counter[Notice]:
    """Count warnings and log records by (kind, text); a warning's logged twin counts once.

    pydicom's ``warn_and_log`` logs the text at WARNING and warns with it, so a
    WARNING record whose text matches a warning of the same block is that
    warning, not a second notice.
    """
    counted: Counter[Notice] = Counter((w.category.__name__, str(w.message)) for w in caught)
    unpaired = Counter(str(w.message) for w in caught)
    for level, level_name, text in records:
        if level == logging.WARNING and unpaired[text] > 0:
            unpaired[text] -= 1
            continue
        counted[(f"pydicom {level_name.lower()}", text)] += 1
    return counted


@contextlib.contextmanager
def notices_collected() -> Iterator[Counter[Notice]]:
    """Within the block, Python warnings and pydicom's log records are counted, not printed.

    The counter yielded is filled when the block ends. Warnings are recorded
    with the "always" filter (none is raised or lost to the once-per-location
    rule); pydicom's logger gets a collecting handler and stops propagating to
    the console. Blocks nest: the innermost one collects, and the logger's
    handlers and propagation are restored on exit, whatever happens inside.
    """
    counted: Counter[Notice] = Counter()
    logger = logging.getLogger(PYDICOM_LOGGER)
    collector = _NoticeCollector()
    outer = [handler for handler in logger.handlers if isinstance(handler, _NoticeCollector)]
    propagate = logger.propagate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for handler in outer:
            logger.removeHandler(handler)
        logger.addHandler(collector)
        logger.propagate = False
        try:
            yield counted
        finally:
            logger.removeHandler(collector)
            for handler in outer:
                logger.addHandler(handler)
            logger.propagate = propagate
            counted.update(_notices(caught, collector.records))


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


def _ingest_one(path: Path, member: str | None) -> IngestOutcome:
    try:
        data = _read(path, member)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        return IngestOutcome(Status.REJECTED, Reason.NOT_DICOM, f"unreadable ({exc})")
    if member is not None and not data:
        return IngestOutcome(Status.REJECTED, Reason.OVERSIZE, "zip member too large")
    return instance_ingest(data=data)


def _ingest_source(source: tuple[str, Path, str | None]) -> tuple[str, IngestOutcome, Counter[Notice]]:
    """Ingest one file; its notices travel back with the outcome (a forked worker's would be lost)."""
    label, path, member = source
    with notices_collected() as notices:
        outcome = _ingest_one(path, member)
    return label, outcome, notices


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
        notices: Counter[Notice] = Counter()
        try:
            with notices_collected() as outside_files:
                batch, rejected = self._run(sources, notices, options)
        finally:
            notices.update(outside_files)
            self._notices_write(notices)
        counts: Counter[str] = batch.counts()
        for label, outcome in sorted(rejected, key=lambda item: item[0]):
            self.stdout.write(f"rejected {label}: {outcome.reason}: {outcome.detail}")
        self.stdout.write(f"stored {counts['stored']}, duplicates {counts['duplicate']}, "
                          f"rejected {counts['rejected']}")

    def _notices_write(self, notices: Counter[Notice]) -> None:
        """Each distinct notice once, the most frequent first, with the number of times it was raised."""
        for (kind, text), times in sorted(notices.items(), key=lambda item: (-item[1], item[0])):
            self.stderr.write(f"warning (\N{MULTIPLICATION SIGN}{times}): {kind}: {text}",
                              style_func=self.style.WARNING)

    def _run(self, sources: list[tuple[str, Path, str | None]], notices: Counter[Notice],
             options: dict[str, object]) -> tuple[IngestBatch, list[tuple[str, IngestOutcome]]]:
        """Ingest every source (in worker processes when there are many), then close the batch."""
        batch = IngestBatch(actor=f"cli:{getpass.getuser()}", actor_role="operator", door="import",
                            build_volumes=not options["no_volumes"])
        rejected: list[tuple[str, IngestOutcome]] = []
        progress = tqdm(total=len(sources), unit="file", disable=bool(options["no_progress"]),
                        file=self.stderr._out)  # type: ignore[attr-defined]
        jobs = max(1, int(options["jobs"]))  # type: ignore[call-overload]
        results: Iterator[tuple[str, IngestOutcome, Counter[Notice]]]
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
            for label, outcome, found in results:
                batch.record(outcome)
                notices.update(found)
                if outcome.status is Status.REJECTED:
                    rejected.append((label, outcome))
                progress.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        progress.close()
        batch.close()
        return batch, rejected
