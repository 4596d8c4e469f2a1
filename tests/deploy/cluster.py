"""A real multi-process gateway on loopback: what deploy/ describes, started by a test.

PostgreSQL (scratch zone databases provisioned with deploy/postgres, every service
connected as its least role), Redis (the machine's server; a channel name of this
run's own), nginx with deploy/nginx's template and a self-signed certificate, N
daphne processes behind it, M ``render_worker`` processes (remote mode) and the
C-STORE SCP. Used by tests/deploy/test_cluster.py and bench/cluster.py.

The client half signs in through nginx with password + TOTP, like a browser, and
drives the viewer websocket (scroll, acknowledge, reconnect).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path

from tests.conftest import REPO, free_port, manage
from tests.deploy.postgres import ZONE_SQL, pg_url, zone_env, zones_create, zones_drop

NGINX_DIR = REPO / "deploy" / "nginx"
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_TIMEOUT = 90
INPUT_INTERVAL_S = 0.02


class ClusterError(AssertionError):
    pass


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None
    process: subprocess.Popen | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=handle,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        handle.close()

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def kill_while_busy(self, timeout: float = 10.0) -> bool:
        """SIGKILL this render worker while its render process is running (mid-frame).

        True when the child was caught on the CPU; False when it never was within ``timeout``
        (then it is killed anyway).
        """
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline, busy = time.monotonic() + timeout, False
        while time.monotonic() < deadline and not busy:
            for child in children.read_text().split():
                try:
                    state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                busy = busy or state == "R"
            if not busy:
                time.sleep(0.0005)
        self.kill(signal.SIGKILL)
        return busy

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    root: Path
    var_dir: Path
    names: dict[str, str]
    channel: str
    https_port: int
    ca_file: Path
    web: list[Service] = field(default_factory=list)
    render: list[Service] = field(default_factory=list)
    scp: Service | None = None
    nginx: Service | None = None
    credentials: dict = field(default_factory=dict)
    study_uid: str = ""

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def services(self) -> list[Service]:
        return [s for s in [*self.render, *self.web, self.scp, self.nginx] if s is not None]

    def env(self, *, clinical: str, identity: str, audit: str) -> dict[str, str]:
        return service_env(self, clinical=clinical, identity=identity, audit=audit)

    def owner_env(self) -> dict[str, str]:
        return zone_env(self.names, clinical="gateway_owner", identity="gateway_owner",
                        audit="gateway_owner", var_dir=self.var_dir)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.tail()}" for s in self.services())


def service_env(cluster: Cluster, *, clinical: str, identity: str, audit: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    return {**base, **zone_env(cluster.names, clinical=clinical, identity=identity, audit=audit,
                               var_dir=cluster.var_dir),
            "DJANGO_SETTINGS_MODULE": "gateway.settings.local",
            "REDIS_URL": REDIS_URL, "GATEWAY_RENDER_MODE": "remote",
            "GATEWAY_RENDER_CHANNEL": cluster.channel,
            "GATEWAY_HTTPS": "1", "GATEWAY_BEHIND_PROXY": "1",
            "GATEWAY_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "GATEWAY_LOG_LEVEL": "WARNING"}


# --- pieces -----------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        raise ClusterError("the cluster test needs nginx: apt-get install nginx-light "
                           "(make sysdeps installs it)")
    return found


def redis_check() -> None:
    parsed = urllib.parse.urlparse(REDIS_URL)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=3) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                raise ClusterError(f"Redis at {REDIS_URL} did not answer PING")
    except OSError as error:
        raise ClusterError(f"the cluster test needs Redis at {REDIS_URL}: {error}") from error


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own CA (made here, never reused)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fusion-gateway test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def nginx_config(cluster: Cluster, *, http_port: int, web_ports: list[int], cert: Path,
                 key: Path) -> Path:
    """deploy/nginx's template filled in for loopback, inside a minimal main configuration."""
    values = {
        "GATEWAY_SERVER_NAME": "127.0.0.1 localhost",
        "GATEWAY_HTTPS_LISTEN": f"127.0.0.1:{cluster.https_port}",
        "GATEWAY_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "GATEWAY_TLS_CERT": str(cert), "GATEWAY_TLS_KEY": str(key),
        "GATEWAY_STATIC_ROOT": str(cluster.var_dir / "static"),
        "GATEWAY_UPSTREAM_SERVERS": " ".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;"
                                             for port in web_ports),
        "GATEWAY_NGINX_DIR": str(NGINX_DIR),
    }
    template = (NGINX_DIR / "gateway.conf.template").read_text()
    site = re.sub(r"\$\{(GATEWAY_[A-Z_]+)\}", lambda m: values[m.group(1)], template)
    if re.search(r"\$\{GATEWAY_[A-Z_]+\}", site):
        raise ClusterError("unfilled placeholder in the nginx template")
    prefix = cluster.root / "nginx"
    for sub in ("logs", "temp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    user = pwd.getpwuid(os.getuid()).pw_name
    main = f"""
{'user ' + user + ';' if os.getuid() == 0 else ''}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/site.conf;
}}
"""
    (prefix / "nginx.conf").write_text(main)
    return prefix


def _wait_port(port: int, service: Service, deadline: float) -> None:
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            raise ClusterError(f"{service.name} exited early:\n{service.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise ClusterError(f"{service.name} did not open port {port}:\n{service.tail()}")


def _wait_line(service: Service, text: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            raise ClusterError(f"{service.name} exited early:\n{service.tail()}")
        if text in service.log.read_text(errors="replace") if service.log.exists() else False:
            return
        time.sleep(0.1)
    raise ClusterError(f"{service.name} never printed {text!r}:\n{service.tail()}")


def _python(*arguments: str) -> list[str]:
    return [sys.executable, str(REPO / "manage.py"), *arguments]


def web_service(cluster: Cluster, index: int, port: int) -> Service:
    env = cluster.env(clinical="gateway_clinical_app", identity="gateway_identity_app",
                      audit="gateway_audit_app")
    daphne = str(Path(sys.executable).with_name("daphne"))
    return Service(f"web{index}", [daphne, "--proxy-headers", "-b", "127.0.0.1", "-p", str(port),
                                   "gateway.asgi:application"], env, cluster.root / f"web{index}.log",
                   port=port)


def web_start(service: Service) -> None:
    service.start()
    assert service.port is not None
    _wait_port(service.port, service, time.monotonic() + START_TIMEOUT)


def render_service(cluster: Cluster, index: int, processes: int) -> Service:
    # Render workers reach only the clinical zone, read-only; the other two URLs name
    # databases this role may not even connect to.
    env = cluster.env(clinical="gateway_render", identity="gateway_render", audit="gateway_render")
    return Service(f"render{index}", _python("render_worker", "--workers", str(processes),
                                             "--name", f"render{index}"),
                   env, cluster.root / f"render{index}.log")


# --- the whole cluster ----------------------------------------------------------------------------


def cluster_start(root: Path, *, web: int = 2, render: int = 2, render_processes: int = 1,
                  scp: bool = True, phantom_slices: int = 40) -> Cluster:
    """Provision, seed and start everything; raises :class:`ClusterError` with logs on failure."""
    nginx = nginx_binary()
    redis_check()
    suffix = uuid.uuid4().hex[:10]
    names = {zone: f"gateway_c_{zone}_{suffix}" for zone in ZONE_SQL}
    var_dir = root / "var"
    var_dir.mkdir(parents=True)
    cert, key = self_signed(root)
    cluster = Cluster(root=root, var_dir=var_dir, names=names, channel=f"render.{suffix}",
                      https_port=free_port(), ca_file=cert)
    try:
        zones_create(names, var_dir)
        app_env = {k: v for k, v in cluster.env(clinical="gateway_clinical_app",
                                                 identity="gateway_identity_app",
                                                 audit="gateway_audit_app").items()
                   if k.startswith(("GATEWAY_", "DATABASE_", "IDENTITY_", "AUDIT_", "REDIS_"))}
        for step in (("collectstatic", "--noinput"), ("seed_demo", "--phantom-slices", str(phantom_slices))):
            done = manage(*step, env=app_env, timeout=600)
            if done.returncode != 0:
                raise ClusterError(f"{step[0]} failed: {done.stderr}")
        cluster.credentials = json.loads((var_dir / "demo-credentials.json").read_text())
        found = manage("shell", "--no-imports", "-c",
                       "from imaging.models import Study; print(Study.objects.get().study_instance_uid)",
                       env=cluster.owner_env())
        cluster.study_uid = found.stdout.strip()

        deadline = time.monotonic() + START_TIMEOUT
        cluster.render = [render_service(cluster, i, render_processes) for i in range(render)]
        for service in cluster.render:
            service.start()
        web_ports = [free_port() for _ in range(web)]
        cluster.web = [web_service(cluster, i, port) for i, port in enumerate(web_ports)]
        for service in cluster.web:
            service.start()
        if scp:
            scp_port = free_port()
            env = cluster.env(clinical="gateway_ingest", identity="gateway_ingest",
                              audit="gateway_audit_app")
            cluster.scp = Service("scp", _python("run_scp", "--port", str(scp_port)), env,
                                  root / "scp.log", port=scp_port)
            cluster.scp.start()
        prefix = nginx_config(cluster, http_port=free_port(), web_ports=web_ports, cert=cert, key=key)
        cluster.nginx = Service("nginx", [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                dict(os.environ), root / "nginx.log", port=cluster.https_port)
        tested = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                capture_output=True, text=True, check=False)
        if tested.returncode != 0:
            raise ClusterError(f"nginx -t refused the configuration:\n{tested.stderr}")
        cluster.nginx.start()
        for service in [*cluster.web, cluster.scp, cluster.nginx]:
            if service is not None and service.port is not None:
                _wait_port(service.port, service, deadline)
        for service in cluster.render:
            _wait_line(service, "serving channel", deadline)
        return cluster
    except BaseException:
        logs = cluster.logs()
        cluster_stop(cluster)
        if logs:
            sys.stderr.write(logs + "\n")
        raise


def cluster_stop(cluster: Cluster, *, drop: bool = True) -> None:
    for service in reversed(cluster.services()):
        service.stop()
    if drop:
        zones_drop(cluster.names)


def owner_sql(cluster: Cluster, zone: str, statement: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(pg_url(cluster.names[zone], "gateway_owner")) as connection:
        return connection.execute(statement).fetchall()  # type: ignore[arg-type]


# --- the client ---------------------------------------------------------------------------------


def totp_now(otpauth_uri: str) -> str:
    from django_otp.oath import TOTP

    secret = urllib.parse.parse_qs(urllib.parse.urlparse(otpauth_uri).query)["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{TOTP(key, step=30, digits=6).token():06d}"


_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def sign_in(cluster: Cluster, username: str) -> str:
    """Password, then TOTP, through nginx like a browser; the Cookie header of the session."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar),
                                         urllib.request.HTTPSHandler(context=cluster.ssl_context()))

    def post(path: str, fields: dict[str, str]) -> str:
        page = opener.open(f"{cluster.base}{path}", timeout=30).read().decode()
        match = _CSRF.search(page)
        if match is None:
            raise ClusterError(f"no CSRF token on {path}")
        request = urllib.request.Request(  # noqa: S310
            f"{cluster.base}{path}", data=urllib.parse.urlencode(
                {**fields, "csrfmiddlewaretoken": match.group(1)}).encode(),
            headers={"Referer": f"{cluster.base}{path}", "Origin": cluster.base})
        with opener.open(request, timeout=30) as response:
            return response.geturl()

    post("/accounts/login/", {"username": username, "password": cluster.credentials[username]})
    landed = post("/accounts/otp/", {"otp_token": totp_now(cluster.credentials["totp"][username])})
    if landed.rstrip("/") != cluster.base:
        raise ClusterError(f"sign-in with TOTP ended at {landed}, not the start page")
    cookies = [cookie for cookie in jar if "session" in cookie.name]
    if not cookies:
        raise ClusterError("no session cookie after sign-in")
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in jar)


@dataclass
class ViewerRun:
    """What one scrolling viewer saw: frame arrival times, reconnects, errors."""

    frames: list[float] = field(default_factory=list)
    closes: list[float] = field(default_factory=list)
    reconnects: list[float] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    close_reasons: list[str] = field(default_factory=list)


async def viewer_scroll(cluster: Cluster, cookie: str, run: ViewerRun, stop: asyncio.Event, *,
                        reconnect: bool = True, layout: str = "1x1") -> None:
    """Scroll view 0 up and down, one input per frame received (a closed loop), until ``stop``.

    On a closed socket it reconnects through nginx (any ASGI process) and carries on.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from rendering.protocol import frame_unpack

    url = f"wss://127.0.0.1:{cluster.https_port}/ws/viewer/{cluster.study_uid}/"
    direction, last_input = 1, 0.0
    while not stop.is_set():
        try:
            async with connect(url, ssl=cluster.ssl_context(), origin=cluster.base,  # type: ignore[arg-type]
                               additional_headers={"Cookie": cookie}, max_size=16 << 20,
                               open_timeout=10) as socket_:
                if run.closes:
                    run.reconnects.append(time.monotonic())
                ready = json.loads(await socket_.recv())
                if ready.get("type") != "ready":
                    raise ClusterError(f"expected ready, got {ready}")
                if layout != ready.get("layout"):
                    await socket_.send(json.dumps({"type": "layout", "layout": layout}))
                while not stop.is_set():
                    message = await asyncio.wait_for(socket_.recv(), timeout=30)
                    if isinstance(message, str):
                        item = json.loads(message)
                        if item.get("type") == "error":
                            run.errors.append(item)
                        continue
                    frame = frame_unpack(message)
                    run.frames.append(time.monotonic())
                    await socket_.send(json.dumps({"type": "ack", "view": frame.view,
                                                   "seq": frame.sequence}))
                    if frame.view != 0:
                        continue
                    # A wheel gives at most ~50 steps a second; it also keeps input + acks
                    # under the consumer's 120 messages a second.
                    pause = last_input + INPUT_INTERVAL_S - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    last_input = time.monotonic()
                    index, count = frame.overlay.get("slice") or (1, 1)
                    if index >= count:
                        direction = -1
                    elif index <= 1:
                        direction, last_input = 1, 0.0
                    await socket_.send(json.dumps({"type": "input", "view": 0, "op": "scroll",
                                                   "delta": direction}))
        except (ConnectionClosed, OSError, InvalidStatus, TimeoutError) as error:
            run.closes.append(time.monotonic())
            run.close_reasons.append(repr(error))
            if not reconnect:
                raise ClusterError(f"viewer socket closed: {error!r}") from error
            await asyncio.sleep(0.2)


def max_gap(times: list[float], start: float, end: float) -> float:
    """Longest wait between frames within [start, end] (counting from start)."""
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside]
    return max((b - a for a, b in itertools.pairwise(points)), default=end - start)
