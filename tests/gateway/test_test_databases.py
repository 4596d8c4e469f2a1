"""The suite's PostgreSQL test databases are named per run, so runs on one server never collide."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, child_environment

PRINT_NAMES = ("from gateway.settings import test; print(' '.join("
               "test.DATABASES[alias]['TEST']['NAME'] for alias in ('default', 'identity', 'audit')))")


def names_in_a_fresh_run(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    url = "postgres://postgres@127.0.0.1:5432/gateway_clinical"
    child_env = {**child_environment(), "GATEWAY_VAR_DIR": str(tmp_path), "DATABASE_URL": url,
                 "IDENTITY_DATABASE_URL": url, "AUDIT_DATABASE_URL": url, **env}
    return subprocess.run([sys.executable, "-c", PRINT_NAMES], cwd=REPO, env=child_env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_each_run_gets_its_own_names(tmp_path):
    first, second = names_in_a_fresh_run(tmp_path), names_in_a_fresh_run(tmp_path)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    first_names, second_names = first.stdout.split(), second.stdout.split()
    assert len(set(first_names)) == 3 and set(first_names).isdisjoint(second_names)
    assert all(name.startswith(f"test_gateway_{alias}_") and len(name) <= 63 - len("_gw99")
               for name, alias in zip(first_names, ("default", "identity", "audit"), strict=True))


def test_the_suffix_can_be_fixed_and_is_checked(tmp_path):
    fixed = names_in_a_fresh_run(tmp_path, GATEWAY_TEST_DB_SUFFIX="ci_42")
    assert fixed.stdout.split() == ["test_gateway_default_ci_42", "test_gateway_identity_ci_42",
                                    "test_gateway_audit_ci_42"]
    refused = names_in_a_fresh_run(tmp_path, GATEWAY_TEST_DB_SUFFIX="x; DROP DATABASE y")
    assert refused.returncode != 0 and "GATEWAY_TEST_DB_SUFFIX" in refused.stderr
