"""A gateway served the way ``make run`` serves it, and the real clients that meet it.

Behaviour at the socket (handshakes, close codes, Origin, request bodies,
rate limits) is tested here, against daphne on a loopback port, with a real
HTTP client (``http.client``/``urllib``) and a real websocket client
(``websockets``): ``WebsocketCommunicator`` and Django's test client skip the
server's own handling. The harness creates people with ``manage.py`` in the
served gateway's own databases and signs them in over HTTP with password and
TOTP, exactly as a browser does.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_otp.oath import TOTP
from websockets.exceptions import ConnectionClosed

from rendering.protocol import frame_unpack
from tests.conftest import REPO, ZONES, child_environment, free_port, manage

_CSRF_FIELD = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def totp_now(otpauth_uri: str) -> str:
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(otpauth_uri).query)["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{TOTP(key, step=30, digits=6).token():06d}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Browser:
    """One cookie jar against one gateway: what a signed-in browser tab holds."""

    base: str
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    def _opener(self, follow: bool) -> urllib.request.OpenerDirector:
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar)]
        if not follow:
            handlers.append(_NoRedirect())
        return urllib.request.build_opener(*handlers)

    def request(self, path: str, *, data: dict[str, str] | None = None, follow: bool = False,
                headers: dict[str, str] | None = None) -> Response:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=body,  # noqa: S310
                                         headers={"Origin": self.base, **(headers or {})})
        try:
            with self._opener(follow).open(request, timeout=30) as answer:
                return Response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, dict(error.headers), error.read())

    def form(self, path: str, fields: dict[str, str], *, follow: bool = False,
             action: str | None = None) -> Response:
        """GET the page at ``path`` for its CSRF token, then POST ``fields`` to ``action`` (or it)."""
        page = self.request(path, follow=True)
        match = _CSRF_FIELD.search(page.body)
        assert match, f"no CSRF token on {path} ({page.status})"
        return self.request(action or path, follow=follow,
                            data={"csrfmiddlewaretoken": match.group(1).decode(), **fields})

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


@dataclass(frozen=True)
class Person:
    username: str
    password: str
    otpauth: str


@dataclass
class ServedGateway:
    """``manage.py serve`` (daphne processes, as ``make run``) on a private var dir and a free port."""

    var_dir: Path
    env: dict[str, str]
    processes: int = 2
    port: int = 0
    process: subprocess.Popen[str] | None = None
    study_uid: str = ""
    _people: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.var_dir / "daphne.log"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def manage(self, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return manage(*arguments, env=self.env, timeout=timeout)

    def shell(self, code: str) -> str:
        done = self.manage("shell", "--no-imports", "-c", code)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def prepare(self, *, seed: bool) -> None:
        for zone in ZONES:
            migrated = self.manage("migrate", "--database", zone, "--noinput", "-v0")
            assert migrated.returncode == 0, migrated.stderr
        assert self.manage("collectstatic", "--noinput", "-v0").returncode == 0
        if seed:
            seeded = self.manage("seed_demo", "--phantom-slices", "40", timeout=600)
            assert seeded.returncode == 0, seeded.stderr
            self.study_uid = self.shell(
                "from imaging.models import Study; print(Study.objects.get().study_instance_uid)")

    def start(self) -> None:
        self.port = free_port()
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        # A file, not a pipe: a pipe nobody reads fills up and blocks daphne's logging.
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--processes", str(self.processes)],
                cwd=REPO, env={**child_environment(), **self.env}, stdout=log, stderr=log, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited early: {self.log_path.read_text()[-3000:]}")
            # Every socket is listening from the start; a connection is served once its daphne is up.
            with self.log_path.open("rb") as log:
                log.seek(logged)
                listening = log.read().count(b"Listening on TCP address")
            if listening >= self.processes:
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.processes} servers did not listen at {self.base} within 90 s")

    def server_pids(self) -> list[int]:
        """The daphne processes under ``manage.py serve`` (not their render workers)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []
        return [pid for pid in pids if b"daphne" in _cmdline(pid)]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def rss_kib(self) -> int:
        """Resident memory of the daphne processes together."""
        total = 0
        for pid in self.server_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return total

    # --- people -------------------------------------------------------------------------------

    def person(self, role: str = "doctor", *, username: str | None = None) -> Person:
        """A new account with a confirmed TOTP authenticator, in the served gateway's zones."""
        self._people += 1
        username = username or f"{role}-{self._people}-{secrets.token_hex(3)}"
        password = f"served {secrets.token_urlsafe(12)} gateway"
        created = self.manage("create_user", "--username", username, "--role", role,
                              "--password", password, "--operator", "tests")
        assert created.returncode == 0, created.stderr
        otpauth = next((line for line in created.stdout.splitlines()
                        if line.startswith("otpauth://")), "")
        return Person(username, password, otpauth)

    def sign_in(self, person: Person) -> Browser:
        """Password, then the current TOTP code, over HTTP; the browser's jar holds the session."""
        browser = Browser(self.base)
        first = browser.form("/accounts/login/",
                             {"username": person.username, "password": person.password})
        assert first.status == 302, (first.status, first.body[:300])
        second = browser.form("/accounts/otp/", {"otp_token": totp_now(person.otpauth)})
        assert second.status == 302, (second.status, second.body[:300])
        return browser

    def doctor(self) -> Browser:
        return self.sign_in(self.person("doctor"))


def gateway_serve(tmp_path: Path, *, seed: bool = False, env: dict[str, str] | None = None,
                  processes: int = 2) -> ServedGateway:
    """Migrate, optionally seed the demo, and serve from ``processes`` daphne; the caller stops it."""
    gateway = ServedGateway(var_dir=tmp_path, env={"GATEWAY_VAR_DIR": str(tmp_path),
                                                   "GATEWAY_RENDER_WORKERS": "1", **(env or {})},
                            processes=processes)
    gateway.prepare(seed=seed)
    gateway.start()
    return gateway


def viewer_socket(gateway: ServedGateway, browser: Browser | None, *, study: str | None = None,
                  origin: str | None = None, path: str | None = None) -> Any:
    """A real websocket client on the viewer route, with the browser's cookies and Origin."""
    from websockets.sync.client import connect

    headers = {"Cookie": browser.cookie_header} if browser is not None else {}
    url = f"{gateway.ws_base}{path or f'/ws/viewer/{study or gateway.study_uid}/'}"
    return connect(url, origin=origin or gateway.base, additional_headers=headers,  # type: ignore[arg-type]
                   open_timeout=60, close_timeout=5, max_size=2**24)


def serving_pid(gateway: ServedGateway, client_port: int) -> int | None:
    """The daphne process that holds the server end of the loopback connection from ``client_port``."""
    wanted = f":{gateway.port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted) and fields[2].endswith(f":{client_port:04X}"):
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in gateway.server_pids():
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if str(fd.readlink()) == target:
                    return pid
            except FileNotFoundError:
                continue
    return None


def viewer_until(ws, predicate, *, seconds: float = 60):
    """Read (and acknowledge, as the viewer does) until ``predicate(message)`` holds.

    Returns (that message, everything read).
    """
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        message = frame_unpack(raw) if isinstance(raw, bytes) else json.loads(raw)
        if isinstance(raw, bytes):
            ws.send(json.dumps({"type": "ack", "view": message.view, "seq": message.sequence}))
        seen.append(message)
        if predicate(message):
            return message, seen
    raise AssertionError(f"not seen within {seconds} s; last: {seen[-3:]}")


def is_frame(message) -> bool:
    return not isinstance(message, dict)


def closed_code(ws, *, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server closed without a close frame"
        return closed.rcvd.code
    raise AssertionError("still open")


def viewer_ready(ws):
    return viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "ready")[0]
