"""``python manage.py run_scp [--port 11112] [--ae-title FUSIONGW] [--processes N]``: the C-STORE SCP."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandParser

from imaging import conf, storage
from imaging.scp import tls_context
from imaging.scp_server import scp_serve


class Command(BaseCommand):
    help = ("Receive images from allowlisted devices over DICOM (C-ECHO, C-STORE); "
            "C-FIND/C-MOVE/C-GET are refused. Associations are served concurrently by "
            "--processes children; a volume builder child builds the series they touch.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=conf.scp_port())
        parser.add_argument("--ae-title", default=conf.scp_ae_title())
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default loopback; 0.0.0.0 for modalities)")
        parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                            help="processes accepting associations (default: the CPU count)")
        parser.add_argument("--tls-cert", help="PEM certificate: serve DICOM over TLS")
        parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
        parser.add_argument("--tls-client-ca", help="require device certificates signed by this CA")
        parser.add_argument("--no-volumes", action="store_true",
                            help="do not start the volume builder (run build_volumes --watch elsewhere)")

    def handle(self, *args: object, **options: object) -> None:
        storage.storage_sweep()
        context = None
        if options["tls_cert"]:
            context = tls_context(certificate=str(options["tls_cert"]), key=str(options["tls_key"]),
                                  client_ca=options["tls_client_ca"])  # type: ignore[arg-type]
        address = (str(options["host"]), int(options["port"]))  # type: ignore[call-overload]
        processes = max(1, int(options["processes"]))  # type: ignore[call-overload]

        def listening(bound: tuple[str, int]) -> None:
            self.stdout.write(f"SCP {options['ae_title']} listening on {bound[0]}:{bound[1]}"
                              f"{' (TLS)' if context else ''}, {processes} process(es)"
                              f"{'' if options['no_volumes'] else ', volume builder'}")
            self.stdout.flush()

        scp_serve(address=address, ae_title=str(options["ae_title"]), processes=processes,
                  ssl_context=context, volume_builder=not options["no_volumes"],
                  on_listening=listening)
