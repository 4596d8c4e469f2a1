"""``manage.py make_phantom``: write the synthetic FDG PET/CT phantom as DICOM files."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from imaging.phantom import phantom_write


class Command(BaseCommand):
    help = (
        "Write a synthetic whole-body FDG PET/CT study per patient as DICOM files "
        "(OUT/patient_NN/CT, OUT/patient_NN/PT) and its ground truth (OUT/truth.json)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        parser.add_argument("--slices", type=int, default=200, help="CT slices, 2 mm apart")
        parser.add_argument("--patients", type=int, default=1, help="number of patients")
        parser.add_argument("--seed", type=int, default=0, help="same seed, same output")

    def handle(self, *args, **options):
        try:
            truth = phantom_write(
                out_dir=options["out"],
                slices=options["slices"],
                patients=options["patients"],
                seed=options["seed"],
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        for patient in truth["patients"]:
            self.stdout.write(
                f"{patient['folder']}: {patient['files']['ct']} CT + {patient['files']['pet']} PT "
                f"files; CT series {patient['ct_series_instance_uid']}; "
                f"PT series {patient['pet_series_instance_uid']}"
            )
