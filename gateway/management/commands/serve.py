"""Serve the gateway from several daphne processes on one port: the web tier of ``make run``.

One daphne is one event loop on one core. This command opens one listening
socket per process on the same address with ``SO_REUSEPORT`` (the kernel spreads
new connections across them by hash), hands each to a daphne child (``-e
fd:fileno=N``) and replaces a child that dies; the parent keeps every socket
open, so connections that arrive meanwhile wait in that socket's backlog
instead of being refused. Once the sockets are open the command replaces itself
with :mod:`gateway.supervise` (no Django in the long-lived parent). Group
messages (sign-out, revocation) reach every process through the channel layer:
Redis when configured, else :mod:`gateway.hostlayer`. Each child runs its own render workers: the cores
are divided among the processes unless ``GATEWAY_RENDER_WORKERS`` says otherwise,
and started with the process (``GATEWAY_RENDER_PRESTART``), not by its first viewer.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def cores() -> int:
    return len(os.sched_getaffinity(0))


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one address; port 0 picks a free port for all of them."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, port))
            listener.listen(1024)
            listener.set_inheritable(True)
            port = listener.getsockname()[1]
            sockets.append(listener)
    except OSError:
        for listener in sockets:
            listener.close()
        raise
    return sockets


class Command(BaseCommand):
    help = "Serve the gateway from several daphne processes on one address (make run's web tier)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--processes", type=int, default=0,
                            help="daphne processes (default GATEWAY_WEB_PROCESSES, else one per core)")
        parser.add_argument("daphne_options", nargs="*",
                            help="passed to each daphne after --, e.g. -- --proxy-headers")

    def handle(self, *args: Any, **options: Any) -> None:
        if ":" in options["host"]:
            raise CommandError("--host must be an IPv4 address or name (IPv6: the TLS proxy in front)")
        processes = options["processes"] or settings.WEB_PROCESSES or cores()
        if not 1 <= processes <= 64:
            raise CommandError("--processes must be between 1 and 64")
        try:
            listeners = listening_sockets(options["host"], options["port"], processes)
        except OSError as error:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {error}") from error
        port = listeners[0].getsockname()[1]
        os.environ.setdefault("GATEWAY_RENDER_PRESTART", "1")
        if not int(os.environ.get("GATEWAY_RENDER_WORKERS") or 0):
            os.environ["GATEWAY_RENDER_WORKERS"] = str(max(1, cores() // processes))
        self.stdout.write(f"serving on http://{options['host']}:{port}/ from {processes} daphne processes "
                          f"({os.environ['GATEWAY_RENDER_WORKERS']} render workers each)")
        self.stdout.flush()
        fds = ",".join(str(listener.fileno()) for listener in listeners)
        os.execv(sys.executable, [sys.executable, "-m", "gateway.supervise", "--fds", fds,  # noqa: S606
                                  "--shared-dir", settings.RENDER_SHARED_DIR, "--",
                                  *options["daphne_options"]])
