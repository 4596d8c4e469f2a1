"""``python manage.py import_raw FILE``: a NIfTI, NRRD or MetaImage volume as DICOM, through ingest.

The same service as the web page (:func:`imaging.raw_import.raw_volume_import`),
run by an operator at the server (audited as ``cli:<user>``, like ``import_dicom``).
Either name a new study (``--patient-name``, ``--patient-id`` ...) or join an
existing one by its replacement UID (``--study``). Unlike an upload, a
``.nhdr``/``.mhd`` header whose voxels lie in a separate file is accepted: the
operator can read those files anyway.
"""

from __future__ import annotations

import datetime as dt
import getpass
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imaging.access import StudyNotFound
from imaging.raw_import import (
    SCANNED_MODALITIES,
    CommandOperator,
    ExistingStudy,
    NewStudy,
    RawImportRefused,
    SeriesFacts,
    raw_volume_import,
)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


class Command(BaseCommand):
    help = ("Import a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) volume as DICOM "
            "into a new study or an existing one, through ingest (de-identified, encrypted, audited).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--patient-id", help="a new study of this patient (with --patient-name)")
        target.add_argument("--study", help="join this existing study (its replacement UID, as the "
                                            "viewer's address shows it)")
        parser.add_argument("--patient-name", default="", help="Family^Given")
        parser.add_argument("--issuer", default="", help="issuer of the patient ID")
        parser.add_argument("--birth-date", default="", help="YYYY-MM-DD")
        parser.add_argument("--sex", default="", choices=["", "F", "M", "O"])
        parser.add_argument("--study-description", default="")
        parser.add_argument("--study-date", default="", help="YYYY-MM-DD (default: today)")
        parser.add_argument("--frame-of-reference-series", default="",
                            help="with --study: a series of that study whose frame of reference the "
                                 "volume shares")
        parser.add_argument("--modality", default="OT", choices=list(SCANNED_MODALITIES))
        parser.add_argument("--series-description", default="")

    def handle(self, *args: object, **options: object) -> None:
        path: Path = options["file"]  # type: ignore[assignment]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        study: NewStudy | ExistingStudy
        if options["study"]:
            study = ExistingStudy(study_uid=str(options["study"]),
                                  frame_of_reference_series=str(options["frame_of_reference_series"]))
        else:
            if not options["patient_name"]:
                raise CommandError("a new study needs --patient-name as well as --patient-id")
            study = NewStudy(
                patient_name=str(options["patient_name"]), patient_id=str(options["patient_id"]),
                issuer_of_patient_id=str(options["issuer"]),
                birth_date=_date(str(options["birth_date"])) if options["birth_date"] else None,
                sex=str(options["sex"]), study_description=str(options["study_description"]),
                study_date=_date(str(options["study_date"])) if options["study_date"] else None)
        try:
            result = raw_volume_import(
                principal=CommandOperator(getpass.getuser()), path=path, filename=path.name, study=study,
                series=SeriesFacts(modality=str(options["modality"]),
                                   description=str(options["series_description"])),
                detached_allowed=True)
        except StudyNotFound as exc:
            raise CommandError(f"no such study: {options['study']}") from exc
        except RawImportRefused as refused:
            raise CommandError(f"refused ({refused.code}): {refused.message}") from refused
        self.stdout.write(f"imported {result.format}: {result.slices} slices as {result.instances} "
                          f"instance(s) in {result.seconds:.2f} s")
        self.stdout.write(f"study {result.study_uid} series {result.series_uid} volume {result.volume_state}"
                          + (f" ({result.volume_reason})" if result.volume_reason else ""))
