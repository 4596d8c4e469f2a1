"""The process behind ``manage.py serve``: keeps one daphne per inherited listening socket running.

``manage.py serve`` checks its arguments and settings with Django, opens the
sockets and then replaces itself with this module (``exec``), so the parent
that only waits on its children does not hold Django's ~75 MB. Run only by
that command: ``python -m gateway.supervise --fds 8,9 [--shared-dir D] [-- daphne options]``.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

RESTART_DELAY_S = 1.0
CRASH_WINDOW_S = 10.0
CRASHES_ALLOWED = 5
STOP_GRACE_S = 20.0



PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux; else nothing).

    A supervisor killed outright (SIGKILL, the OOM killer) must not leave servers
    behind it holding the port and the sessions' sockets.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


@dataclass
class Child:
    listener: socket.socket
    process: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)


class Supervisor:
    """Keeps one daphne per listening socket running until told to stop."""

    def __init__(self, listeners: list[socket.socket], extra: list[str], shared_dir: str) -> None:
        self.children = [Child(listener) for listener in listeners]
        self.extra = extra
        self.shared_dir = shared_dir
        self.stopping = False

    def command(self, child: Child) -> list[str]:
        # daphne's fd endpoint adopts IPv4 sockets only (its domain argument stays a string).
        endpoint = f"fd:fileno={child.listener.fileno()}"
        return [sys.executable, "-m", "daphne", "-e", endpoint, *self.extra, "gateway.asgi:application"]

    def spawn(self, child: Child) -> None:
        # preexec_fn is safe here: the supervisor runs no threads.
        child.process = subprocess.Popen(  # noqa: S603  (this interpreter, fixed module, no shell)
            self.command(child), pass_fds=(child.listener.fileno(),), preexec_fn=die_with_parent)

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
        if self.shared_dir:  # the host's decrypted volumes: memory, not to outlive the server
            shutil.rmtree(self.shared_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fds", required=True, help="listening socket descriptors, comma-separated")
    parser.add_argument("--shared-dir", default="", help="removed on exit (the host's shared volumes)")
    parser.add_argument("daphne_options", nargs="*")
    arguments = parser.parse_args(argv)
    listeners = [socket.socket(fileno=int(fd)) for fd in arguments.fds.split(",")]
    return Supervisor(listeners, arguments.daphne_options, arguments.shared_dir).run()


if __name__ == "__main__":
    sys.exit(main())
