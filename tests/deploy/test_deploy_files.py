"""deploy/: the compose file, the systemd units and the nginx template are checked here.

compose cannot run on this machine (no Docker engine), so it is parsed and its wiring
checked; the units are verified by systemd's own ``systemd-analyze verify`` and rated
by ``systemd-analyze security --offline``; nginx -t accepts the filled-in template.
The processes these describe run for real in tests/deploy/test_cluster.py.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.deploy.cluster import Cluster, nginx_binary, nginx_config, self_signed

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("fusion-gateway*"))
SERVICES = [unit for unit in UNITS if unit.suffix == ".service"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_every_piece(compose):
    assert {"postgres", "redis", "web", "render", "scp", "nginx", "migrate", "checkpoint"} <= set(
        compose["services"])
    assert compose["services"]["web"]["deploy"]["replicas"] == 2
    assert compose["services"]["render"]["deploy"]["replicas"] == 2


def test_compose_services_connect_as_their_least_roles(compose):
    services = compose["services"]
    roles = {name: {key: url.split("://")[1].split("@")[0]
                    for key, url in service.get("environment", {}).items() if key.endswith("DATABASE_URL")}
             for name, service in services.items() if "environment" in service}
    assert roles["web"] == {"DATABASE_URL": "gateway_clinical_app",
                            "IDENTITY_DATABASE_URL": "gateway_identity_app",
                            "AUDIT_DATABASE_URL": "gateway_audit_app"}
    assert set(roles["render"].values()) == {"gateway_render"}
    assert roles["scp"]["DATABASE_URL"] == roles["scp"]["IDENTITY_DATABASE_URL"] == "gateway_ingest"
    assert set(roles["migrate"].values()) == {"gateway_owner"}


def test_compose_keeps_secrets_out_of_the_file_and_the_backend_internal(compose):
    text = (DEPLOY / "compose.yaml").read_text().lower()
    assert "password=" not in text and "secret_key:" not in text
    assert compose["networks"]["backend"]["internal"] is True
    for name, service in compose["services"].items():
        if name in {"postgres", "redis"}:
            assert "ports" not in service, name
        if service.get("build") or service.get("image", "").startswith("fusion-gateway"):
            assert service["read_only"] is True and "ALL" in service["cap_drop"], name
    for name in ("nginx", "scp"):
        for port in compose["services"][name]["ports"]:
            assert port.startswith("${GATEWAY_"), f"{name} must bind the VPN address, not all interfaces"


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_units_are_hardened(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["User"] == "fusion-gateway"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["ReadWritePaths"] == "/var/lib/fusion-gateway"
    assert service["CapabilityBoundingSet"] == ""
    assert "Environment" not in service or "KEY=" not in service.get("Environment", "").replace("_FILE=", "")


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("checking the units needs systemd-analyze (Debian package systemd)")
    return found


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory) -> Path:
    """The units as installed: /opt/fusion-gateway pointed at this checkout, instances named."""
    directory = tmp_path_factory.mktemp("units")
    for unit in UNITS:
        text = unit.read_text().replace("/opt/fusion-gateway", str(REPO))
        name = unit.name.replace("@.service", "@1.service")
        (directory / name).write_text(text)
    return directory


def test_systemd_verify_accepts_every_unit(installed_units):
    binary = _systemd_analyze()
    for unit in sorted(installed_units.iterdir()):
        verified = subprocess.run([binary, "verify", "--man=no", f"./{unit.name}"], cwd=installed_units,
                                  capture_output=True, text=True, check=False)
        assert verified.returncode == 0 and verified.stderr.strip() == "", (unit.name, verified.stderr)


def test_systemd_rates_every_service_ok(installed_units):
    binary = _systemd_analyze()
    for unit in sorted(installed_units.glob("*.service")):
        rated = subprocess.run([binary, "security", "--offline=true", f"./{unit.name}"],
                               cwd=installed_units, capture_output=True, text=True, check=False)
        line = rated.stdout.strip().splitlines()[-1]
        exposure = float(line.split("level for")[1].split(":")[1].split()[0])
        assert exposure <= 2.0, (unit.name, line)


def test_nginx_accepts_the_template_and_sends_the_security_headers(tmp_path):
    nginx = nginx_binary()
    cert, key = self_signed(tmp_path)
    cluster = Cluster(root=tmp_path, var_dir=tmp_path / "var", names={}, channel="render",
                      https_port=free_port(), ca_file=cert)
    prefix = nginx_config(cluster, http_port=free_port(), web_ports=[free_port()], cert=cert, key=key)
    tested = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                            capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stderr
    site = (prefix / "site.conf").read_text()
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in site
    assert "TLSv1 " not in site and "TLSv1.1" not in site
    headers = (DEPLOY / "nginx" / "security-headers.conf").read_text()
    assert 'Strict-Transport-Security "max-age=31536000; includeSubDomains" always' in headers
