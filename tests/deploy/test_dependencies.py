"""What the gateway imports is what production installs.

Production installs ``requirements.lock`` alone (``make run``, the image); the
tests and linters add ``requirements-dev.lock``. A module that the code imports
but pyproject.toml does not declare is installed today only because something
else happens to pull it in, and disappears from the lock when that changes.
So every third-party import in the runtime packages (and every app and
middleware that the settings name) must be a declared dependency, pinned in the
runtime lock; the dev lock pins only what the runtime lock does not.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from gateway.settings import base
from tests.conftest import REPO

RUNTIME_PACKAGES = ("accounts", "gateway", "imaging", "rendering")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert found, requirement
    return normalized(found.group(1))


def locked(lock: str) -> set[str]:
    return {requirement_name(line) for line in (REPO / lock).read_text().splitlines()
            if re.match(r"[A-Za-z0-9]", line)}


DECLARED = {requirement_name(requirement) for requirement in PYPROJECT["project"]["dependencies"]}
DECLARED_DEV = {requirement_name(requirement)
                for requirement in PYPROJECT["project"]["optional-dependencies"]["dev"]}


def imported_modules() -> dict[str, set[str]]:
    """Top-level names of every absolute import in the runtime packages, with where they occur."""
    modules: dict[str, set[str]] = {}
    for package in RUNTIME_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    modules.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(REPO)))
    return modules


def third_party(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    return {name: where for name, where in modules.items()
            if name not in sys.stdlib_module_names and name not in RUNTIME_PACKAGES
            and name != "__future__"}


def test_every_runtime_import_is_a_declared_dependency_in_the_runtime_lock():
    imports = third_party(imported_modules())
    # The settings name apps and middleware by dotted path: those are imports too.
    for dotted in [*base.INSTALLED_APPS, *base.MIDDLEWARE]:
        imports.setdefault(dotted.partition(".")[0], set()).add("gateway/settings/base.py")
    imports = third_party(imports)
    assert {"django", "msgpack", "numpy", "pydicom"} <= set(imports)
    distributions = packages_distributions()
    runtime_lock = locked("requirements.lock")
    problems = []
    for name, where in sorted(imports.items()):
        provided = {normalized(distribution) for distribution in distributions.get(name, [])}
        if not provided:
            problems.append(f"{name} (imported in {sorted(where)}) is not installed at all")
        elif not provided & DECLARED:
            problems.append(f"{name} comes from {sorted(provided)}, not declared in [project.dependencies] "
                            f"(imported in {sorted(where)})")
        elif not provided & DECLARED & runtime_lock:
            problems.append(f"{name}: {sorted(provided)} is declared but missing from requirements.lock "
                            "(make lock)")
    assert problems == []


def test_the_locks_agree_with_pyproject_and_with_each_other():
    runtime_lock, dev_lock = locked("requirements.lock"), locked("requirements-dev.lock")
    assert DECLARED - runtime_lock == set(), "requirements.lock is stale: make lock"
    assert DECLARED_DEV - (runtime_lock | dev_lock) == set(), "requirements-dev.lock is stale: make lock"
    # Disjoint, so that both install together with --require-hashes --no-deps and the
    # runtime lock alone decides every version production runs.
    assert runtime_lock & dev_lock == set()
    assert not {"pytest", "mypy", "ruff", "hypothesis", "playwright"} & runtime_lock
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (REPO / lock).read_text()
        pinned = [line for line in text.splitlines() if re.match(r"[A-Za-z0-9]", line)]
        assert pinned and all("==" in line for line in pinned), lock
        assert text.count("==") <= text.count("--hash=sha256:"), f"{lock}: every pin carries its hashes"
