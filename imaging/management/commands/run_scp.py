"""``python manage.py run_scp [--port 11112] [--ae-title FUSIONGW]``: the C-STORE SCP."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from imaging import conf, storage
from imaging.scp import scp_build, tls_context


class Command(BaseCommand):
    help = ("Receive images from allowlisted devices over DICOM (C-ECHO, C-STORE); "
            "C-FIND/C-MOVE/C-GET are refused.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=conf.scp_port())
        parser.add_argument("--ae-title", default=conf.scp_ae_title())
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default loopback; 0.0.0.0 for modalities)")
        parser.add_argument("--tls-cert", help="PEM certificate: serve DICOM over TLS")
        parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
        parser.add_argument("--tls-client-ca", help="require device certificates signed by this CA")
        parser.add_argument("--no-volumes", action="store_true",
                            help="do not build volumes when an association ends")

    def handle(self, *args: object, **options: object) -> None:
        storage.storage_sweep()
        ae, handlers = scp_build(ae_title=str(options["ae_title"]),
                                 build_volumes=not options["no_volumes"])
        context = None
        if options["tls_cert"]:
            context = tls_context(certificate=str(options["tls_cert"]), key=str(options["tls_key"]),
                                  client_ca=options["tls_client_ca"])  # type: ignore[arg-type]
        address = (str(options["host"]), int(options["port"]))  # type: ignore[call-overload]
        self.stdout.write(f"SCP {options['ae_title']} listening on {address[0]}:{address[1]}"
                          f"{' (TLS)' if context else ''}")
        self.stdout.flush()
        ae.start_server(address, block=True, evt_handlers=handlers, ssl_context=context)
