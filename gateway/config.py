"""Reading configuration and secrets from the environment.

Every setting has an embedded default that serves ``make run`` on a fresh
machine, and every default can be overridden by an environment variable.
Secrets come from ``NAME`` or from a file named by ``NAME_FILE`` (the usual
container/systemd credential convention); a secret file readable by group or
others is refused, because a key that other accounts can read is not a key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class ConfigurationError(RuntimeError):
    """A setting is missing or unsafe; the gateway must not start."""


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be 1/0, true/false, yes/no or on/off, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be an integer, not {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def private_file_check(path: Path) -> None:
    """Refuse a secret file or key directory that group or others can access."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"{path} has mode {mode:04o}; secrets must be private to their owner "
            f"(run: chmod {'700' if path.is_dir() else '600'} {path})"
        )


def private_directory_make(path: Path) -> None:
    """Create ``path`` (0700), or accept it only as a real directory of ours that nobody else may enter.

    For directories under world-writable places (``/dev/shm``): a directory another
    user made first, or a symbolic link, would let them plant or read its files.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory owned by this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def secret(name: str) -> str | None:
    """Return the secret from ``$NAME`` or from the file named by ``$NAME_FILE``."""
    value = os.environ.get(name)
    if value:
        return value
    file_name = os.environ.get(f"{name}_FILE")
    if not file_name:
        return None
    path = Path(file_name)
    if not path.is_file():
        raise ConfigurationError(f"{name}_FILE points at {path}, which is not a file")
    private_file_check(path)
    return path.read_text(encoding="utf-8").strip()


def private_file_write(path: Path, content: bytes) -> bool:
    """Create ``path`` with mode 0600 unless it exists; True when this call created it.

    The content goes to a temporary file that is fsynced and then hard-linked
    into place, so a crash never leaves a truncated secret and two processes
    racing on first start agree on one value.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def private_file_replace(path: Path, content: bytes) -> None:
    """Atomically replace ``path`` (mode 0600) with ``content``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
