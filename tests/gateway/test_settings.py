"""Settings behave as documented, checked in child processes with a clean environment."""

import base64
import os

from tests.conftest import manage

PRINT = ("shell", "--no-imports", "-c")


def _inline_keys() -> dict[str, str]:
    return {
        f"GATEWAY_{name}_KEYS": f"k1:{base64.b64encode(os.urandom(32)).decode()}"
        for name in ("MASTER", "PSEUDONYM", "AUDIT_SIGNING", "SHARE", "OTP")
    }


def _production_env(tmp_path, **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "gateway.settings.production",
        "GATEWAY_VAR_DIR": str(tmp_path),
        "GATEWAY_SECRET_KEY": base64.b64encode(os.urandom(48)).decode(),
        "GATEWAY_ALLOWED_HOSTS": "gateway.hospital.example",
        **_inline_keys(),
        **extra,
    }


def test_debug_is_off_unless_asked(tmp_path):
    env = {"GATEWAY_VAR_DIR": str(tmp_path)}
    command = "from django.conf import settings; print(settings.DEBUG)"
    assert manage(*PRINT, command, env=env).stdout.strip() == "False"
    assert manage(*PRINT, command, env={**env, "GATEWAY_DEBUG": "1"}).stdout.strip() == "True"


def test_an_unparseable_boolean_stops_the_process(tmp_path):
    result = manage("check", env={"GATEWAY_VAR_DIR": str(tmp_path), "GATEWAY_DEBUG": "maybe"})
    assert result.returncode != 0
    assert "GATEWAY_DEBUG must be" in result.stderr


def test_deploy_check_is_clean_under_production_settings(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=_production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_uses_host_prefixed_secure_cookies(tmp_path):
    command = ("from django.conf import settings as s; "
               "print(s.SESSION_COOKIE_NAME, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_NAME, "
               "s.SECURE_SSL_REDIRECT)")
    result = manage(*PRINT, command, env=_production_env(tmp_path))
    assert result.stdout.split() == ["__Host-gateway-session", "True", "__Host-gateway-csrf", "True"]


def test_production_refuses_to_start_without_its_secrets(tmp_path):
    env = _production_env(tmp_path)
    del env["GATEWAY_SECRET_KEY"]
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "GATEWAY_SECRET_KEY" in result.stderr
    assert not (tmp_path / "keys").exists()


def test_production_refuses_to_generate_keys(tmp_path):
    env = _production_env(tmp_path)
    del env["GATEWAY_MASTER_KEYS"]
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "no master key" in result.stderr


def test_production_requires_explicit_hosts(tmp_path):
    env = _production_env(tmp_path)
    del env["GATEWAY_ALLOWED_HOSTS"]
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "GATEWAY_ALLOWED_HOSTS" in result.stderr


def test_a_world_readable_key_stops_the_gateway_at_start(tmp_path):
    env = {"GATEWAY_VAR_DIR": str(tmp_path)}
    assert manage("check", env=env).returncode == 0
    (tmp_path / "keys" / "pseudonym.json").chmod(0o644)

    result = manage("check", env=env)
    assert result.returncode != 0
    assert "pseudonym.json has mode 0644" in result.stderr


def test_secret_files_must_be_private(tmp_path):
    secret_file = tmp_path / "django-secret"
    secret_file.write_text("s" * 60)
    secret_file.chmod(0o644)
    env = _production_env(tmp_path, GATEWAY_SECRET_KEY_FILE=str(secret_file))
    del env["GATEWAY_SECRET_KEY"]
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "chmod 600" in result.stderr
