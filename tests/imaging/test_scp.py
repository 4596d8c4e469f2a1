"""The C-STORE SCP against real dcmtk peers (echoscu, storescu, findscu)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, ZONES, child_environment, free_port, manage
from tests.imaging.conftest import phantom_files

pytestmark = pytest.mark.server


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: apt-get install dcmtk (make test installs it)")
    return path


@pytest.fixture
def scp(tmp_path):
    """A migrated gateway with device account CT01 and run_scp listening on a free port."""
    yield from _scp(tmp_path)


def _scp(tmp_path, *extra: str):
    for port, var, _ in _scp_started(tmp_path, *extra):
        yield port, var


def _scp_started(tmp_path, *extra: str):
    """As :func:`_scp`, yielding the run_scp process too."""
    var = tmp_path / "var"
    env = {"GATEWAY_VAR_DIR": str(var)}
    for zone in ZONES:
        assert manage("migrate", "--database", zone, "--noinput", env=env).returncode == 0
    created = manage("create_user", "--username", "device.ct01", "--role", "device", env=env)
    assert created.returncode == 0, created.stderr
    registered = manage("device_register", "device.ct01", "--ae-title", "CT01", env=env)
    assert registered.returncode == 0, registered.stderr
    port = free_port()
    child_env = child_environment()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "run_scp", "--port", str(port),
         "--ae-title", "FUSIONGW", *extra],
        cwd=REPO, env={**child_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"run_scp exited: {server.stdout.read()}")
            time.sleep(0.1)
    try:
        yield port, var, server
    finally:
        # generator.close() raises GeneratorExit at the yield: only a finally runs then.
        server.terminate()
        server.wait(timeout=10)


def _dcmtk(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(list(arguments), capture_output=True, text=True, timeout=120, env=env,
                          check=False)


def _rows(var: Path, sql: str, database: str = "clinical") -> list[tuple]:
    with sqlite3.connect(var / "db" / f"{database}.sqlite3") as db:
        return db.execute(sql).fetchall()


def test_echo_from_an_allowlisted_ae_is_accepted_and_others_are_refused(scp):
    port, _ = scp
    ok = _dcmtk(_tool("echoscu"), "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port))
    assert ok.returncode == 0, ok.stderr
    refused = _dcmtk(_tool("echoscu"), "-aet", "INTRUDER", "-aec", "FUSIONGW", "127.0.0.1", str(port))
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout


def test_storescu_from_allowlisted_ae_stores_and_is_audited(scp, phantom):
    port, var = scp
    out, _ = phantom
    files = [str(p) for p in phantom_files(out) if "patient_01" in str(p)]
    sent = _dcmtk(_tool("storescu"), "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port), *files)
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = _rows(var, "SELECT volume_state FROM imaging_series")
        if len(states) == 2 and {s for (s,) in states} == {"ready"}:
            break
        time.sleep(0.2)
    assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(len(files),)]
    assert {s for (s,) in _rows(var, "SELECT volume_state FROM imaging_series")} == {"ready"}
    events = _rows(var, "SELECT actor, outcome, details FROM audit_auditevent WHERE action = 'ingest'",
                   "audit")
    assert ("device.ct01", "success") in {(actor, outcome) for actor, outcome, _ in events}
    again = _dcmtk(_tool("storescu"), "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                   *files[:3])
    assert again.returncode == 0
    assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(len(files),)]


def test_storescu_from_another_ae_is_refused_and_stores_nothing(scp, phantom):
    port, var = scp
    out, _ = phantom
    sent = _dcmtk(_tool("storescu"), "-aet", "STRANGER", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                  str(phantom_files(out)[0]))
    assert sent.returncode != 0
    assert "Calling AE Title Not Recognized" in sent.stderr + sent.stdout
    assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(0,)]


def test_find_is_refused_and_a_bad_instance_gets_a_failure_status(scp, tmp_path):
    port, var = scp
    found = _dcmtk(_tool("findscu"), "-aet", "CT01", "-aec", "FUSIONGW", "-S", "-k",
                   "QueryRetrieveLevel=STUDY", "127.0.0.1", str(port))
    assert found.returncode != 0
    from pydicom.data import get_testdata_file
    # A structured report is not an image: no presentation context for it.
    report = _dcmtk(_tool("storescu"), "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                    get_testdata_file("rtplan.dcm"))
    assert report.returncode != 0 or "No presentation context" in report.stderr + report.stdout
    assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(0,)]


def test_a_truncated_pixel_stream_gets_a_failure_status_with_its_reason(scp, phantom, tmp_path):
    port, var = scp
    out, _ = phantom
    import pydicom

    dataset = pydicom.dcmread(phantom_files(out)[0])
    dataset.Rows = 1024  # the pixel data now holds half of what the header promises
    broken = tmp_path / "broken.dcm"
    dataset.save_as(broken)
    sent = _dcmtk(_tool("storescu"), "-d", "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                  str(broken))
    log = sent.stdout + sent.stderr
    assert "0xc000: Error: Cannot understand" in log, log
    assert "ErrorComment" in log and "truncated: pixel data holds" in log, log
    assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(0,)]


def _certificates(folder: Path) -> dict[str, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def issue(name: str, issuer_key, issuer_name, *, ca: bool, key=None, san: bool = False):
        key = key or ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer_name or subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        certificate = builder.sign(issuer_key or key, hashes.SHA256())
        return key, certificate

    ca_key, ca = issue("Fusion test CA", None, None, ca=True)
    paths = {}
    for name, (key, certificate) in {
        "ca": (ca_key, ca),
        "server": issue("localhost", ca_key, ca.subject, ca=False, san=True),
        "client": issue("CT01", ca_key, ca.subject, ca=False),
    }.items():
        paths[f"{name}.key"] = folder / f"{name}.key"
        paths[f"{name}.crt"] = folder / f"{name}.crt"
        paths[f"{name}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        paths[f"{name}.crt"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return paths


def test_tls_with_client_certificates(tmp_path):
    pem = _certificates(tmp_path)
    fixture = _scp(tmp_path, "--tls-cert", str(pem["server.crt"]), "--tls-key", str(pem["server.key"]),
                   "--tls-client-ca", str(pem["ca.crt"]))
    port, _ = next(fixture)
    try:
        echo = _tool("echoscu")
        common = ["-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port)]
        ok = _dcmtk(echo, "+tls", str(pem["client.key"]), str(pem["client.crt"]),
                    "+cf", str(pem["ca.crt"]), *common)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        plain = _dcmtk(echo, *common)
        assert plain.returncode != 0
        anonymous = _dcmtk(echo, "+tla", "+cf", str(pem["ca.crt"]), *common)
        assert anonymous.returncode != 0
    finally:
        fixture.close()


# The ways an IT admin takes a device off the SCP, as the ORM change each one makes.
DEVICE_DISABLED_BY = {
    "account deactivated": "User.objects.filter(username='{user}').update(is_active=False)",
    "endpoint deactivated": "DeviceEndpoint.objects.filter(ae_title='{ae}').update(active=False)",
    "AE title changed": "DeviceEndpoint.objects.filter(ae_title='{ae}').update(ae_title='{ae}X')",
    "AE title removed": "DeviceEndpoint.objects.filter(ae_title='{ae}').delete()",
    "role changed": "User.objects.filter(username='{user}').update(role='doctor')",
    "AE title given to another device": (
        "user_create(username='{user}.new', password='correct horse battery staple', "
        "role='device'); device_endpoint_register(user=User.objects.get(username='{user}.new'), "
        "ae_title='{ae}')"),
}
_SHELL_IMPORTS = ("from accounts.models import User; from accounts.services import user_create; "
                  "from imaging.devices import device_endpoint_register; "
                  "from imaging.models import DeviceEndpoint; ")


def _shell(var: Path, code: str) -> None:
    done = manage("shell", "-c", _SHELL_IMPORTS + code, env={"GATEWAY_VAR_DIR": str(var)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_device_disabled_mid_association_is_refused_from_its_next_c_store(scp, phantom):
    """One association per way of disabling a device: it stores one instance, the device is
    disabled from outside, and the next C-STOREs on the same association get 0x0124."""
    import pydicom
    from pynetdicom import AE

    port, var = scp
    out, _ = phantom
    files = iter(p for p in phantom_files(out) if "patient_01" in str(p) and "CT" in p.parts)
    cases = {f"DEV{n}": (f"device.dev{n}", how) for n, how in enumerate(DEVICE_DISABLED_BY)}
    _shell(var, "; ".join(
        f"device_endpoint_register(user=user_create(username='{user}', password='correct horse "
        f"battery staple', role='device'), ae_title='{ae}')" for ae, (user, _) in cases.items()))
    stored = 0
    for ae_title, (user, how) in cases.items():
        first, second, third = (pydicom.dcmread(next(files)) for _ in range(3))
        client = AE(ae_title=ae_title)
        client.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        association = client.associate("127.0.0.1", port, ae_title="FUSIONGW")
        assert association.is_established, how
        try:
            assert association.send_c_store(first).Status == 0x0000, how
            stored += 1
            assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(stored,)], how
            _shell(var, DEVICE_DISABLED_BY[how].format(user=user, ae=ae_title))
            for refused in (second, third):
                status = association.send_c_store(refused)
                assert status.Status == 0x0124, (how, status)
                assert "not allowed" in status.ErrorComment, (how, status)
        finally:
            association.release()
        assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(stored,)], how
    denied = dict(_rows(var, "SELECT actor, COUNT(*) FROM audit_auditevent WHERE action = 'ingest' "
                             "AND outcome = 'denied' GROUP BY actor", "audit"))
    assert denied == {f"ae:{ae_title}": 2 for ae_title in cases}


def test_a_c_store_succeeds_without_building_and_the_builder_builds_after(tmp_path, phantom):
    """The association builds nothing (no builder here): its series stay pending, no volume
    object exists, until build_volumes builds them."""
    fixture = _scp(tmp_path, "--no-volumes")
    port, var = next(fixture)
    try:
        out, _ = phantom
        files = [str(p) for p in phantom_files(out) if "patient_01" in str(p)]
        sent = _dcmtk(_tool("storescu"), "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                      *files)
        assert sent.returncode == 0, sent.stderr
        assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(len(files),)]
        time.sleep(1)  # were anything building behind the association, it would show now
        assert _rows(var, "SELECT volume_state, volume_object FROM imaging_series") == [
            ("pending", ""), ("pending", "")]
        assert list((var / "objects").rglob("vol-*")) == []
    finally:
        fixture.close()
    built = manage("build_volumes", env={"GATEWAY_VAR_DIR": str(var)})
    assert built.returncode == 0, built.stderr
    assert "built 2 volume(s)" in built.stdout
    assert {s for (s,) in _rows(var, "SELECT volume_state FROM imaging_series")} == {"ready"}
    assert len(list((var / "objects").rglob("vol-*"))) == 2


def _serving_pid(scp_pid: int, server_port: int, client_port: int) -> int | None:
    """The run_scp child whose socket is this connection (read from /proc)."""
    children = [int(pid) for task in Path(f"/proc/{scp_pid}/task").iterdir()
                for pid in (task / "children").read_text().split()]
    for child in children:
        inodes = set()
        for line in Path(f"/proc/{child}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
                inodes.add(fields[9])
        for fd in Path(f"/proc/{child}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return child
    return None


def test_two_associations_at_once_are_served_by_two_processes_each_status_its_own(tmp_path, phantom):
    """Two associations open together land on two SCP processes; each C-STORE's status is its
    own instance's outcome (a truncated instance among good ones gets 0xC000)."""
    import threading

    import pydicom
    from pynetdicom import AE

    fixture = _scp_started(tmp_path, "--processes", "2", "--no-volumes")
    port, var, server = next(fixture)
    try:
        out, _ = phantom
        ct = [p for p in phantom_files(out) if "patient_01" in str(p) and "CT" in p.parts]
        sends = {}
        for n in range(2):
            good = [pydicom.dcmread(path) for path in ct[n * 4:(n + 1) * 4]]
            broken = pydicom.dcmread(ct[20 + n])
            broken.Rows = 1024  # the pixel data holds half of what the header promises
            sends[n] = [*good[:2], broken, *good[2:]]
        established = threading.Barrier(3)
        done = threading.Barrier(3)
        statuses: dict[int, list[tuple[int, str]]] = {}
        client_ports: dict[int, int] = {}
        errors = []

        def associate(n: int) -> None:
            client = AE(ae_title="CT01")
            first = sends[n][0]
            client.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
            association = client.associate("127.0.0.1", port, ae_title="FUSIONGW")
            try:
                assert association.is_established
                client_ports[n] = association.dul.socket.socket.getsockname()[1]
                established.wait(timeout=60)
                statuses[n] = [(int(status.Status), str(status.get("ErrorComment", "")))
                               for status in (association.send_c_store(ds) for ds in sends[n])]
                done.wait(timeout=120)
            except Exception as exc:  # reported below, in the test's thread
                errors.append(exc)
                established.abort()
                done.abort()
            finally:
                association.release()

        threads = [threading.Thread(target=associate, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        established.wait(timeout=60)
        deadline = time.monotonic() + 10
        pids = {}
        while time.monotonic() < deadline and len(pids) < 2:
            pids = {n: pid for n in client_ports
                    if (pid := _serving_pid(server.pid, port, client_ports[n])) is not None}
            time.sleep(0.1)
        done.wait(timeout=120)
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert len(set(pids.values())) == 2, pids
        for n in range(2):
            codes = [code for code, _ in statuses[n]]
            assert codes == [0x0000, 0x0000, 0xC000, 0x0000, 0x0000], statuses[n]
            assert "truncated: pixel data holds" in statuses[n][2][1]
        assert _rows(var, "SELECT COUNT(*) FROM imaging_instance") == [(8,)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # each batch is audited as its association ends
            rejected = _rows(var, "SELECT details FROM audit_auditevent WHERE action = 'ingest' "
                                  "AND outcome = 'failure'", "audit")
            if len(rejected) == 2:
                break
            time.sleep(0.2)
        assert len(rejected) == 2, rejected
        assert all('"reasons":{"truncated":1}' in details for (details,) in rejected), rejected
    finally:
        fixture.close()


def test_a_structured_report_and_a_presentation_state_are_negotiated_and_stored(scp, phantom, tmp_path):
    """storescu --required proposes only the classes of the files it sends: each must be accepted."""
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    from tests.imaging.test_documents import incoming_report

    port, var = scp
    out, truth = phantom
    files = sorted((out / truth["patients"][0]["folder"]).rglob("*.dcm"))
    report, _ = incoming_report(files)
    image = pydicom.dcmread(files[0])
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image], series_instance_uid=generate_uid(), series_number=98,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Test",
        manufacturer_model_name="Test", software_versions="1", device_serial_number="1",
        content_label="STATE")
    paths = [tmp_path / "report.dcm", tmp_path / "state.dcm"]
    report.save_as(paths[0], enforce_file_format=True)
    state.save_as(paths[1], enforce_file_format=True)
    sent = _dcmtk(_tool("storescu"), "--required", "-aet", "CT01", "-aec", "FUSIONGW", "127.0.0.1", str(port),
                  *map(str, paths))
    assert sent.returncode == 0, sent.stderr + sent.stdout
    stored = {uid for (uid,) in _rows(var, "SELECT sop_class_uid FROM imaging_instance")}
    assert stored == {str(report.SOPClassUID), str(state.SOPClassUID)}
