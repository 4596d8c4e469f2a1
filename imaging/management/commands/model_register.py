"""``python manage.py model_register MODEL.onnx --manifest MANIFEST.json``: offer a segmentation model."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imaging.segmentation_models import model_manifest_file, model_register
from rendering.engine.onnx_models import ModelError


class Command(BaseCommand):
    help = ("Register a trained ONNX segmentation model with its manifest; its SHA-256 is taken now "
            "and checked before every run.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument("--manifest", required=True)
        parser.add_argument("--operator", default="", help="who is registering it (audit)")

    def handle(self, *args: object, **options: object) -> None:
        try:
            manifest = model_manifest_file(str(options["manifest"]))
            model = model_register(path=str(options["path"]), manifest=manifest,
                                   actor=f"cli:{options['operator']}" if options["operator"] else "cli")
        except ModelError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"model {model.name} {model.version} registered "
                          f"(id {model.id}, sha256 {model.sha256})")
