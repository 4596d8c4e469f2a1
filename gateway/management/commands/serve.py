"""Serve the gateway from several daphne processes on one port: the web tier of ``make run``.

One daphne is one event loop on one core. This command opens one listening
socket per process on the same address with ``SO_REUSEPORT`` (the kernel spreads
new connections across them by hash), hands each to a daphne child (``-e
fd:fileno=N``) and replaces a child that dies; the parent keeps every socket
open, so connections that arrive meanwhile wait in that socket's backlog
instead of being refused. Group messages (sign-out, revocation) reach every
process through the channel layer: Redis when configured, else
:mod:`gateway.hostlayer`. Each child runs its own render workers: the cores
are divided among the processes unless ``GATEWAY_RENDER_WORKERS`` says otherwise,
and started with the process (``GATEWAY_RENDER_PRESTART``), not by its first viewer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

RESTART_DELAY_S = 1.0
CRASH_WINDOW_S = 10.0
CRASHES_ALLOWED = 5
STOP_GRACE_S = 20.0


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


@dataclass
class Child:
    listener: socket.socket
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    crashes: list[float] = field(default_factory=list)


class Supervisor:
    """Keeps one daphne per listening socket running until told to stop."""

    def __init__(self, listeners: list[socket.socket], env: dict[str, str], extra: list[str]) -> None:
        self.children = [Child(listener) for listener in listeners]
        self.env = env
        self.extra = extra
        self.stopping = False

    def command(self, child: Child) -> list[str]:
        # daphne's fd endpoint adopts IPv4 sockets only (its domain argument stays a string).
        endpoint = f"fd:fileno={child.listener.fileno()}"
        return [sys.executable, "-m", "daphne", "-e", endpoint, *self.extra, "gateway.asgi:application"]

    def spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(  # noqa: S603  (this interpreter, fixed module, no shell)
            self.command(child), env=self.env, pass_fds=(child.listener.fileno(),))
        child.started = time.monotonic()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        for child in self.children:
            self.spawn(child)
        while not self.stopping:
            time.sleep(0.2)
            for child in self.children:
                if self.stopping or child.process is None or child.process.poll() is None:
                    continue
                if not self._restart(child):
                    self.shutdown()
                    return 1
        self.shutdown()
        return 0

    def _restart(self, child: Child) -> bool:
        if child.process is None:
            return False
        now = time.monotonic()
        child.crashes = [t for t in child.crashes if now - t < CRASH_WINDOW_S] + [now]
        print(f"serve: daphne {child.process.pid} exited with {child.process.returncode}; restarting",
              file=sys.stderr, flush=True)
        if len(child.crashes) > CRASHES_ALLOWED:
            print(f"serve: daphne keeps exiting ({len(child.crashes)} times in {CRASH_WINDOW_S:.0f} s); "
                  "giving up", file=sys.stderr, flush=True)
            return False
        time.sleep(RESTART_DELAY_S)
        self.spawn(child)
        return True

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in self.children:
            child.listener.close()
        if settings.RENDER_SHARED_DIR:  # the host's decrypted volumes: memory, not to outlive the server
            shutil.rmtree(settings.RENDER_SHARED_DIR, ignore_errors=True)


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
        env = dict(os.environ)
        env.setdefault("GATEWAY_RENDER_PRESTART", "1")
        if not int(env.get("GATEWAY_RENDER_WORKERS") or 0):
            env["GATEWAY_RENDER_WORKERS"] = str(max(1, cores() // processes))
        self.stdout.write(f"serving on http://{options['host']}:{port}/ from {processes} daphne processes "
                          f"({env['GATEWAY_RENDER_WORKERS']} render workers each)")
        self.stdout.flush()
        code = Supervisor(listeners, env, list(options["daphne_options"])).run()
        if code:
            raise CommandError("the web processes could not be kept running")
