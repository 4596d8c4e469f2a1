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


# --- a public corpus imported through the import door ------------------------------------------

CORPUS_MINIMUM = 150  # pydicom alone ships about 90 files; pydicom-data brings the total to about 240


def corpus_files() -> list[Path]:
    """pydicom's and pydicom-data's test files; fails (never skips) without pydicom-data."""
    from pydicom.data import get_testdata_files

    files = sorted({Path(p) for p in get_testdata_files("**/*") if Path(p).is_file()})
    assert len(files) > CORPUS_MINIMUM, (
        f"only {len(files)} corpus files: pydicom-data is not installed (make install-dev installs it)")
    return files


def corpus_name(path: Path) -> str:
    """A corpus file's name as the corpus knows it: ``CT_small.dcm``, ``dicomdirtests/77654033/CT2/17106``."""
    parts = path.parts
    for anchor in ("test_files", "data"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor):])
    return path.name


UNSHOWABLE_REASON = "the series mixes colour and greyscale images"


def corpus_unshowable_study(directory: Path) -> list[Path]:
    """One study made from two corpus files: a showable CT image, and a series mixing it with a colour one.

    The second series can never be shown (``UNSHOWABLE_REASON``); the study can, so
    its viewer opens and must list that series as unavailable, with why.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    study, shown, mixed = generate_uid(), generate_uid(), generate_uid()
    written = []
    for index, (name, series, number) in enumerate([("CT_small.dcm", shown, 1), ("CT_small.dcm", mixed, 2),
                                                    ("SC_rgb.dcm", mixed, 2)]):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = (
            "CORPUS-UNSHOWABLE", "Corpus^Unshowable", "OT", index + 1)
        path = directory / f"unshowable-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


@dataclass(frozen=True)
class StoredSeries:
    """One series as the served gateway stored it, and the corpus files it came from."""

    study: str
    uid: str
    modality: str
    state: str
    reason: str
    patient_id: str
    files: tuple[Path, ...]  # the stored (de-identified) objects, decrypted, in instance order
    sources: tuple[str, ...]  # the corpus files whose SOP Instance UID each stored object carries
    imported: tuple[str, ...] = ()  # of those, the file each stored object is (the others: duplicates)

    def __str__(self) -> str:
        names = list(self.imported or self.sources)
        more = f" (+{len(names) - 4})" if len(names) > 4 else ""
        return f"{self.modality or '?'} series of {', '.join(names[:4]) + more or 'no known file'}"


@dataclass
class ServedCorpus:
    gateway: ServedGateway
    series: list[StoredSeries]
    report: str  # import_dicom's output: what it stored, and each file it rejected with why

    def studies(self) -> dict[str, list[StoredSeries]]:
        found: dict[str, list[StoredSeries]] = {}
        for series in self.series:
            found.setdefault(series.study, []).append(series)
        return found

    def series_of(self, source: str) -> StoredSeries:
        """The stored series holding the corpus file ``source`` (a name as ``corpus_name`` gives it)."""
        matches = [s for s in self.series if source in s.sources]
        assert len(matches) == 1, f"{source} is in {len(matches)} stored series"
        return matches[0]


def gateway_import(gateway: ServedGateway, paths: list[Path], *, jobs: int = 1,
                   timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``manage.py import_dicom`` into the served gateway: the import door a hospital's files go through.

    One job imports the files in the order given, so of the files that share a SOP
    Instance UID the first is stored and the others are duplicates, every time.
    """
    return gateway.manage("import_dicom", "--no-progress", "--jobs", str(jobs), *map(str, paths),
                          timeout=timeout)


_STORED_SERIES = """
import json, pathlib
from imaging import storage
from imaging.identity.models import PatientIdentity, UIDMap
from imaging.models import Instance, Series
out = pathlib.Path({out!r})
rows = []
for series in Series.objects.select_related("study__patient").order_by("id"):
    instances = list(Instance.objects.filter(series=series).order_by("instance_number", "id"))
    for instance in instances:
        (out / f"{{instance.id}}.dcm").write_bytes(storage.object_get(instance.object_id))
    originals = dict(UIDMap.objects.filter(replacement__in=[i.sop_instance_uid for i in instances])
                     .values_list("replacement", "original"))
    patient = PatientIdentity.objects.filter(pseudonym=series.study.patient.pseudonym).first()
    rows.append({{"study": series.study.study_instance_uid, "uid": series.series_instance_uid,
                 "modality": series.modality, "state": series.volume_state, "reason": series.volume_reason,
                 "patient_id": patient.patient_id if patient else "",
                 "files": [str(out / f"{{i.id}}.dcm") for i in instances],
                 "originals": [originals.get(i.sop_instance_uid, "") for i in instances]}})
print(json.dumps(rows))
"""


def stored_series(gateway: ServedGateway, directory: Path, sources: dict[str, list[str]],
                  imported: dict[str, str] | None = None) -> list[StoredSeries]:
    """Every series the gateway stored, with its objects decrypted into ``directory`` for pydicom.

    ``sources`` maps an original SOP Instance UID to the corpus files that carry it, and
    ``imported`` to the one that was stored; the gateway's UID map (identity zone) ties
    each stored object back to them.
    """
    imported = imported or {}
    directory.mkdir(parents=True, exist_ok=True)
    rows = json.loads(gateway.shell(_STORED_SERIES.format(out=str(directory))).splitlines()[-1])
    return [StoredSeries(study=row["study"], uid=row["uid"], modality=row["modality"], state=row["state"],
                         reason=row["reason"], patient_id=row["patient_id"],
                         files=tuple(Path(f) for f in row["files"]),
                         sources=tuple(sorted({name for uid in row["originals"]
                                               for name in sources.get(uid, [])})),
                         imported=tuple(imported[uid] for uid in row["originals"] if uid in imported))
            for row in rows]


def corpus_import(gateway: ServedGateway, files: list[Path], directory: Path) -> ServedCorpus:
    """Import ``files`` through the import door and read back what was stored."""
    import pydicom

    done = gateway_import(gateway, files)
    assert done.returncode == 0, done.stderr[-3000:]
    rejected = {line.split(": ", 1)[0].removeprefix("rejected ")
                for line in done.stdout.splitlines() if line.startswith("rejected ")}
    sources: dict[str, list[str]] = {}
    imported: dict[str, str] = {}
    for path in files:
        try:
            uid = pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID")
        except Exception:  # not DICOM at all: the import rejected it too
            uid = None
        if uid:
            sources.setdefault(str(uid), []).append(corpus_name(path))
            if str(path) not in rejected:  # one job: the first accepted is stored, the rest are duplicates
                imported.setdefault(str(uid), corpus_name(path))
    return ServedCorpus(gateway, stored_series(gateway, directory / "stored", sources, imported), done.stdout)


def worklist_studies(browser: Browser, patient_id: str) -> dict[str, dict[str, Any]]:
    """The worklist's answer to a search by patient ID: each study's viewer link, and what cannot be shown.

    Keyed by the study UID of the viewer link, or by ``"unviewable-N"`` for a study
    the page offers no viewer for.
    """
    import lxml.html

    page = browser.request(f"/imaging/worklist?{urllib.parse.urlencode({'patient_id': patient_id})}")
    assert page.status == 200, (page.status, page.body[:300])
    studies: dict[str, dict[str, Any]] = {}
    for block in lxml.html.fromstring(page.body).xpath("//div[@class='study']"):
        links = [a.get("href", "") for a in block.xpath(".//a[@class='open']")]
        unavailable = [" ".join(d.text_content().split())
                       for d in block.xpath(".//div[@class='unavailable']")]
        match = re.fullmatch(r"/viewer/([0-9.]+)/", links[0]) if links else None
        key = match.group(1) if match else f"unviewable-{len(studies)}"
        studies[key] = {"links": links, "unavailable": unavailable,
                        "text": " ".join(block.text_content().split())}
    return studies
