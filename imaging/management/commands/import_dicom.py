"""``python manage.py import_dicom PATH...``: files, folders (recursive) and zip archives."""

from __future__ import annotations

import getpass
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from imaging import conf, storage
from imaging.services import IngestBatch, IngestOutcome, Reason, Status

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


class Command(BaseCommand):
    help = "Ingest DICOM files, folders and zip archives: validate, de-identify, encrypt, store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path)
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
        progress = tqdm(sources, unit="file", disable=bool(options["no_progress"]),
                        file=self.stderr._out)  # type: ignore[attr-defined]
        for label, path, member in progress:
            try:
                data = _read(path, member)
            except (OSError, zipfile.BadZipFile, KeyError) as exc:
                outcome = IngestOutcome(Status.REJECTED, Reason.NOT_DICOM, f"unreadable ({exc})")
                batch.reject(outcome)
            else:
                if member is not None and not data:
                    outcome = IngestOutcome(Status.REJECTED, Reason.OVERSIZE, "zip member too large")
                    batch.reject(outcome)
                else:
                    outcome = batch.ingest(data)
            if outcome.status is Status.REJECTED:
                rejected.append((label, outcome))
        progress.close()
        batch.close()
        counts: Counter[str] = batch.counts()
        for label, outcome in rejected:
            self.stdout.write(f"rejected {label}: {outcome.reason}: {outcome.detail}")
        self.stdout.write(f"stored {counts['stored']}, duplicates {counts['duplicate']}, "
                          f"rejected {counts['rejected']}")
