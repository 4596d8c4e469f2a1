"""deploy/: the image, the compose file, the systemd units and the nginx template are checked here.

Docker and compose cannot run on this machine (no Docker engine), so the image's build
context is computed from /.dockerignore with the Docker SDK's own matcher (what
``docker build`` sends), the Dockerfile is parsed, and compose's wiring is checked; the
units are verified by systemd's own ``systemd-analyze verify`` and rated by
``systemd-analyze security --offline``; nginx -t accepts the filled-in template.
The processes these describe run for real in tests/deploy/test_cluster.py.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from docker.utils.build import exclude_paths

from tests.conftest import REPO, free_port
from tests.deploy.cluster import Cluster, nginx_binary, nginx_config, self_signed

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("fusion-gateway*"))
SERVICES = [unit for unit in UNITS if unit.suffix == ".service"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_every_piece(compose):
    assert {"postgres", "redis", "web", "render", "scp", "pacs", "nginx", "migrate", "checkpoint"} <= set(
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
    assert roles["pacs"] == roles["web"]  # the PACS worker reads PACS answers and writes retrievals


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


# What the image runs, and nothing else may be in its build context.
IMAGE_ALLOWLIST = ("manage.py", "pyproject.toml", "requirements.lock", "accounts", "gateway", "imaging",
                   "rendering", "templates", "deploy/postgres/clinical-roles.sql",
                   "deploy/postgres/identity-roles.sql", "deploy/postgres/audit-roles.sql")
# The docker CLI always sends these two, whatever .dockerignore says; neither holds a secret.
ALWAYS_SENT = {".dockerignore", "deploy/Dockerfile"}
RUNTIME_USER = "fusion-gateway"
KEPT_OUT = ["var/keys/master.key", "var/db/identity.sqlite3", "var/demo-credentials.json",
           ".venv/bin/python", ".venv/lib/python3.11/site-packages/pytest/__init__.py",
           ".git/HEAD", ".git/config", ".env", "server.pem", "deploy/secrets/secret-key",
           "deploy/secrets/tls.key", "requirements-dev.lock", "gateway/tls.pem", "gateway/.env",
           "gateway/__pycache__/settings.cpython-311.pyc", "imaging/var/db/clinical.sqlite3",
           "rendering/keys/render.key", "tests/conftest.py", "docs/deployment.md"]


def build_context(root: Path) -> set[str]:
    """The files ``docker build`` sends from ``root``: .dockerignore read as the docker CLI does."""
    ignore = root / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()] if ignore.exists() else []
    patterns = [pattern for pattern in patterns if pattern and not pattern.startswith("#")]
    paths = exclude_paths(str(root), patterns, dockerfile="deploy/Dockerfile")
    return {path for path in paths if (root / path).is_file()}


def allowlisted(path: str) -> bool:
    return any(path == entry or path.startswith(f"{entry}/") for entry in IMAGE_ALLOWLIST)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A copy of the checkout with the secrets and clutter a developer's tree holds planted in it."""
    root = tmp_path_factory.mktemp("context") / "repo"
    shutil.copytree(REPO, root, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "__pycache__", ".*_cache", ".hypothesis", "node_modules"))
    for path in KEPT_OUT:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("secret\n")
    return root


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def copy_sources(arguments: str) -> list[str]:
    words = [word for word in shlex.split(arguments) if not word.startswith("--")]
    return [source.removeprefix("./").rstrip("/") or "." for source in words[:-1]]


def test_build_context_holds_what_the_image_runs_and_no_secret(planted):
    context = build_context(planted)
    assert {"manage.py", "gateway/settings/base.py", "requirements.lock", "templates/base.html",
            "gateway/audit/schemas/dicom-audit-message.rng", "rendering/static/rendering/viewer.js",
            "deploy/postgres/audit-roles.sql"} <= context
    assert [path for path in KEPT_OUT if path in context] == []
    assert sorted(path for path in context if not allowlisted(path) and path not in ALWAYS_SENT) == []


def test_build_context_of_this_checkout_is_the_allowlist():
    assert sorted(path for path in build_context(REPO)
                  if not allowlisted(path) and path not in ALWAYS_SENT) == []


def test_only_the_root_dockerignore_applies():
    # BuildKit prefers <Dockerfile>.dockerignore beside the Dockerfile over the context's own.
    assert not (DEPLOY / "Dockerfile.dockerignore").exists()


def test_dockerfile_copies_only_allowlisted_paths_and_installs_the_runtime_lock(planted):
    instructions = dockerfile_instructions()
    context = build_context(planted)
    assert "ADD" not in {keyword for keyword, _ in instructions}
    copies = [arguments for keyword, arguments in instructions if keyword == "COPY"]
    for arguments in copies:
        assert "--from" not in arguments and f"--chown={RUNTIME_USER}" not in arguments, arguments
        for source in copy_sources(arguments):
            assert source in IMAGE_ALLOWLIST, f"COPY {source}: not on the image allowlist"
            assert source in context or any(path.startswith(f"{source}/") for path in context), source
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    installs = [word for word in shlex.split(runs) if word.endswith(".lock") or word.endswith(".txt")]
    assert installs == ["requirements.lock"]
    assert "--require-hashes" in runs and "--no-deps" in runs
    assert "[dev]" not in runs and "requirements-dev" not in (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_ends_as_the_unprivileged_user():
    instructions = dockerfile_instructions()
    users = [index for index, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    assert users, "the image must not run as root"
    last = users[-1]
    assert instructions[last][1] == RUNTIME_USER
    assert all(keyword in {"ENV", "CMD", "ENTRYPOINT", "EXPOSE", "LABEL", "HEALTHCHECK", "STOPSIGNAL"}
               for keyword, _ in instructions[last + 1:]), instructions[last + 1:]
    # The code is root's: copied without a chown to the service user and made unwritable by others.
    assert any(keyword == "RUN" and "chmod -R go-w /opt/fusion-gateway" in arguments
               for keyword, arguments in instructions[:last])


def test_compose_builds_from_the_root_and_its_migrate_finds_the_grants(compose, planted):
    context = build_context(planted)
    build = compose["x-app"]["build"]
    assert (build["context"], build["dockerfile"]) == ("..", "deploy/Dockerfile")
    script = compose["services"]["migrate"]["command"][-1]
    grants = [word for word in shlex.split(script) if word.endswith(".sql")]
    assert grants and all(grant in context for grant in grants), grants
    copied = {source for keyword, arguments in dockerfile_instructions() if keyword == "COPY"
              for source in copy_sources(arguments)}
    assert set(grants) <= copied
