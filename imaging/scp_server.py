"""The SCP as processes: one listening socket, several pynetdicom servers, one volume builder.

pydicom and pynetdicom are pure Python, so one process serves its
associations on one core whatever its threads. ``run_scp`` therefore binds
the socket once, forks ``processes`` children and, once each is ready, listens;
the children all accept from it, each a threaded pynetdicom server (an association per thread, its
C-STOREs ingested in that thread: no instance crosses a process boundary).
The socket is non-blocking: the children that wake for a connection race to
accept it and the losers go back to waiting; a child that is already
serving associations waits a little before accepting, so an idle child
takes a new association first. A further child runs the volume builder
(:mod:`imaging.volume_builder`) at a lower CPU priority, so a build never
slows the associations. The parent only supervises: a child that
dies is started again, and SIGTERM or SIGINT ends them all.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from django.db import connections
from pynetdicom.transport import ThreadedAssociationServer

from gateway.supervise import die_with_parent
from imaging.scp import scp_build

log = logging.getLogger(__name__)

BACKLOG = 64
BUSY_ACCEPT_DELAY_S = 0.05  # per association a child already serves, at most 0.25 s
RESTART_BACKOFF_S = 1.0
STARTUP_S = 60.0
BUILDER_NICENESS = 10


def bound_socket(address: tuple[str, int]) -> socket.socket:
    """A bound, non-blocking TCP socket the children share (the parent calls ``listen``)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock


class SharedSocketServer(ThreadedAssociationServer):
    """A pynetdicom threaded server accepting from a socket bound by the parent.

    Set ``listening`` on a subclass (:func:`_server_class`) before it is made.
    """

    listening: socket.socket

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver made; the shared one replaces it
        self.socket = self.listening
        self.server_address = self.listening.getsockname()

    def server_activate(self) -> None:
        pass  # already listening

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Connections this child accepted whose peer is still there: counted from the accept
        # on (the association's own thread starts a moment later), and not once the peer has
        # gone (a port probe lingers in pynetdicom until its timers run out).
        open_connections = [sock for sock in getattr(self, "_accepted", []) if _peer_present(sock)]
        self._accepted = open_connections
        if open_connections:
            time.sleep(min(0.25, BUSY_ACCEPT_DELAY_S * len(open_connections)))
        client, address = super().get_request()  # BlockingIOError when another child won
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._accepted.append(client)
        return client, address


def _peer_present(sock: socket.socket) -> bool:
    """Whether an accepted connection is open at both ends (reads nothing from it)."""
    if sock.fileno() < 0:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # open, nothing waiting
    except ValueError:
        return True  # TLS: no peeking below the record layer; count it
    except OSError:
        return False  # reset


def _server_class(listening: socket.socket) -> type[SharedSocketServer]:
    return type("SharedSocketServerBound", (SharedSocketServer,), {"listening": listening})


def _serve_child(listening: socket.socket, ae_title: str, ssl_context: ssl.SSLContext | None,
                 ready: Any, go: Any) -> None:
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ae, handlers = scp_build(ae_title=ae_title)
    server = ae.make_server(listening.getsockname()[:2], evt_handlers=handlers, ssl_context=ssl_context,
                            server_class=_server_class(listening))
    ready.set()
    go.wait()  # the socket listens once every child can accept
    server.serve_forever()


def _builder_child() -> None:
    die_with_parent(signal.SIGKILL)
    # The forked child holds the parent's SIGTERM handler (which only flags the parent's loop):
    # until the builder installs its own, a SIGTERM must end it, not be swallowed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.nice(BUILDER_NICENESS)  # a waiting device comes before a volume nobody may have opened yet
    from imaging.volume_builder import volume_builder_forever

    volume_builder_forever()


def scp_serve(*, address: tuple[str, int], ae_title: str, processes: int,
              ssl_context: ssl.SSLContext | None = None, volume_builder: bool = True,
              on_listening: Any = None) -> None:
    """Serve the SCP on ``address`` from ``processes`` children (and a builder); blocks.

    Parameters
    ----------
    address : (host, port)
        Where to listen.
    ae_title : str
        The called AE title the SCP answers to.
    processes : int
        How many children accept associations (each serves any number of them).
    ssl_context : ssl.SSLContext, optional
        Serve DICOM over TLS.
    volume_builder : bool
        Also run a volume builder child.
    on_listening : callable, optional
        Called with the bound address once the socket listens.
    """
    listening = bound_socket(address)
    context = multiprocessing.get_context("fork")
    go = context.Event()
    ready = {f"scp-{n}": context.Event() for n in range(max(1, processes))}
    specs: dict[str, tuple[Any, tuple[Any, ...]]] = {
        name: (_serve_child, (listening, ae_title, ssl_context, ready[name], go)) for name in ready}
    if volume_builder:
        specs["volume-builder"] = (_builder_child, ())
    children: dict[str, BaseProcess] = {}
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def start(name: str) -> None:
        target, arguments = specs[name]
        connections.close_all()  # a child opens its own database connections
        child = context.Process(target=target, args=arguments, name=name, daemon=False)
        child.start()
        children[name] = child

    try:
        for name in specs:
            start(name)
        # Listen only once every SCP child can accept: a peer that connects as soon as the
        # port answers finds all of them, not the first one started.
        deadline = time.monotonic() + STARTUP_S
        for name, event in ready.items():
            while not event.wait(0.2) and not stopping and time.monotonic() < deadline:
                if not children[name].is_alive():
                    break
        listening.listen(BACKLOG)
        go.set()
        if on_listening is not None:
            on_listening(listening.getsockname()[:2])
        while not stopping:
            time.sleep(0.2)
            for name, child in list(children.items()):
                if not child.is_alive() and not stopping:
                    log.error("SCP child %s exited with %s; starting it again", name, child.exitcode)
                    time.sleep(RESTART_BACKOFF_S)
                    start(name)
    finally:
        for child in children.values():
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in children.values():
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join()
        listening.close()
